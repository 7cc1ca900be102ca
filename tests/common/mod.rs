//! Shared harness for MetaStore's integration tests.
//!
//! * [`MetastoreServer`] spawns the `metastore` binary on a free loopback port.
//! * [`EtcdServer`] spawns a real `etcd` (if installed) for differential tests.
//! * [`GrpcClient`] is a deliberately tiny unary gRPC client written directly
//!   on top of `h2` (prior-knowledge HTTP/2), independent of the server's own
//!   codec, so framing bugs on either side cannot cancel each other out.
//! * [`GrpcStream`] (`stream.rs`) is its bidi-streaming counterpart (Watch,
//!   LeaseKeepAlive), with bounded waits so tests can assert silence.
//! * [`raw_client`] has raw h2 connections that stop reading, reset
//!   streams or drop their connection (abuse tests); [`orphaned_lock`] the
//!   orphaned Lock waiter scenario. Both are also used by `examples/`.

#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub mod cluster;
pub mod history;
pub mod orphaned_lock;
pub mod raw_client;
pub mod raw_h2;
mod stream;
pub mod workload;
#[allow(unused_imports)] // not every test crate streams
pub use stream::{GrpcStream, StreamItem};

/// How long a server may take to answer its first gRPC call.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one unary call made through [`GrpcClient`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Error code used by [`GrpcClient`] for failures below gRPC (connection
/// refused, reset, protocol error, timeout...). Real gRPC codes are 0..=16.
pub const TRANSPORT_ERROR: i32 = -1;

/// Returns a loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A free port below Linux's ephemeral range (32768 and up by default),
/// for a server that is killed and restarted on the same port: while it
/// is down, other processes' outgoing connections (cluster members
/// redialing it) take ephemeral local ports, and one of them may be its
/// old port, so the restart could not bind. Ports are handed out from a
/// per-process counter starting at a random offset, each checked free.
pub fn stable_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        (std::process::id() % u32::from(SPAN)) as u16 + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A child process whose stderr (and stdout) are drained into a buffer by a
/// background thread, so the pipe never fills up and the output can be shown
/// when something goes wrong.
struct CapturedChild {
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    what: String,
}

impl CapturedChild {
    fn spawn(mut cmd: Command, what: &str) -> std::io::Result<CapturedChild> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let output = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = output.clone();
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 8192];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut o = out.lock().unwrap();
                            o.extend_from_slice(&buf[..n]);
                            // Keep memory bounded for chatty servers: retain the tail.
                            const MAX: usize = 4 << 20;
                            if o.len() > MAX {
                                let cut = o.len() - MAX / 2;
                                o.drain(..cut);
                            }
                        }
                    }
                }
            });
        }
        Ok(CapturedChild {
            child,
            output,
            what: what.to_string(),
        })
    }

    /// The captured output so far (at most the last `max` bytes).
    fn output_tail(&self, max: usize) -> String {
        let o = self.output.lock().unwrap();
        let start = o.len().saturating_sub(max);
        String::from_utf8_lossy(&o[start..]).into_owned()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `addr` with a KV.Range until the server answers with a gRPC response.
/// `accept_error_status`: count a gRPC error status as "up" too (the server
/// speaks gRPC, even if it rejects the call).
fn wait_for_grpc(
    proc_: &mut CapturedChild,
    addr: SocketAddr,
    accept_error_status: bool,
) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut last = String::from("no attempt made");
    while Instant::now() < deadline {
        if let Some(status) = proc_.exited() {
            return Err(format!("{} exited early with {status}", proc_.what));
        }
        match probe(addr) {
            Ok(()) => return Ok(()),
            Err((code, msg)) if code >= 0 && accept_error_status => {
                eprintln!(
                    "note: {} answered the readiness probe with gRPC error {code}: {msg}",
                    proc_.what
                );
                return Ok(());
            }
            Err((code, msg)) => last = format!("code {code}: {msg}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{} did not answer a gRPC call within {:?} (last: {last})",
        proc_.what, STARTUP_TIMEOUT
    ))
}

/// One readiness probe: a KV.Range of key "health" (what `etcdctl endpoint
/// health` reads). Runs on its own thread and runtime so that it can be called
/// from sync code and from inside a test's tokio runtime alike.
pub fn probe(addr: SocketAddr) -> GrpcResult<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let fut = async {
                let mut c = GrpcClient::connect(addr).await?;
                let req = metastore::proto::etcdserverpb::RangeRequest {
                    key: Bytes::from_static(b"health"),
                    ..Default::default()
                };
                c.unary::<_, metastore::proto::etcdserverpb::RangeResponse>(
                    "/etcdserverpb.KV/Range",
                    &req,
                )
                .await
                .map(|_| ())
            };
            tokio::time::timeout(Duration::from_secs(2), fut)
                .await
                .unwrap_or_else(|_| Err((TRANSPORT_ERROR, "probe timed out".into())))
        })
    })
    .join()
    .unwrap_or_else(|_| Err((TRANSPORT_ERROR, "probe thread panicked".into())))
}

// ---------------------------------------------------------------------------
// MetaStore
// ---------------------------------------------------------------------------

/// A running `metastore` binary, killed on drop.
pub struct MetastoreServer {
    proc_: CapturedChild,
    port: u16,
    /// Where /metrics and the health endpoints are served.
    metrics_port: u16,
    /// The temp data dir this server owns, if the caller did not give one.
    _data_dir: Option<tempfile::TempDir>,
}

impl MetastoreServer {
    /// Spawns `metastore --cores 2 --shards 4 ...` on a free loopback port with
    /// a fresh data dir. `extra_args` are appended (later flags win in clap
    /// only if the server allows overrides, so do not repeat the defaults).
    pub fn start(extra_args: &[&str]) -> MetastoreServer {
        Self::launch(None, extra_args, &[])
    }

    /// Like [`start`](Self::start), run through `wrapper` (a program and
    /// its arguments that execs the server, e.g. `prlimit --nofile=256 --`).
    pub fn start_wrapped(wrapper: &[&str], extra_args: &[&str]) -> MetastoreServer {
        Self::launch_wrapped(None, wrapper, extra_args, &[])
    }

    /// Like [`start`](Self::start) with extra environment variables (e.g.
    /// `FAILPOINTS` for fault injection; test builds compile it in).
    pub fn start_with_env(extra_args: &[&str], environment: &[(&str, &str)]) -> MetastoreServer {
        Self::launch(None, extra_args, environment)
    }

    /// Like [`start`](Self::start) on an existing data directory that
    /// outlives the server (restart and crash tests).
    pub fn start_in(data_dir: &std::path::Path, extra_args: &[&str]) -> MetastoreServer {
        Self::launch(Some(data_dir), extra_args, &[])
    }

    fn launch(
        given_dir: Option<&std::path::Path>,
        extra_args: &[&str],
        environment: &[(&str, &str)],
    ) -> MetastoreServer {
        Self::launch_wrapped(given_dir, &[], extra_args, environment)
    }

    fn launch_wrapped(
        given_dir: Option<&std::path::Path>,
        wrapper: &[&str],
        extra_args: &[&str],
        environment: &[(&str, &str)],
    ) -> MetastoreServer {
        let mut last_err = String::new();
        for attempt in 0..3 {
            let port = free_port();
            let owned_dir = match given_dir {
                Some(_) => None,
                None => Some(
                    tempfile::Builder::new()
                        .prefix("metastore-test-")
                        .tempdir()
                        .expect("create temp data dir"),
                ),
            };
            let data_dir_path: std::path::PathBuf = match (&owned_dir, given_dir) {
                (Some(owned), _) => owned.path().to_owned(),
                (None, Some(given)) => given.to_owned(),
                (None, None) => unreachable!("one of the two is always set"),
            };
            let url = format!("http://127.0.0.1:{port}");
            let mut cmd = match wrapper.split_first() {
                None => Command::new(env!("CARGO_BIN_EXE_metastore")),
                Some((program, wrapper_args)) => {
                    let mut cmd = Command::new(program);
                    cmd.args(wrapper_args).arg(env!("CARGO_BIN_EXE_metastore"));
                    cmd
                }
            };
            let mut args: Vec<String> = vec![
                "--name".into(),
                "default".into(),
                "--data-dir".into(),
                data_dir_path.to_str().unwrap().into(),
                "--listen-client-urls".into(),
                url.clone(),
                "--advertise-client-urls".into(),
                url.clone(),
            ];
            let has = |flag: &str| extra_args.iter().any(|a| a.split('=').next() == Some(flag));
            if !has("--cores") {
                args.extend(["--cores".into(), "2".into()]);
            }
            if !has("--shards") {
                args.extend(["--shards".into(), "4".into()]);
            }
            if !has("--log-level") {
                args.extend(["--log-level".into(), "info".into()]);
            }
            let metrics_port = free_port();
            if !has("--listen-metrics-urls") {
                args.extend([
                    "--listen-metrics-urls".into(),
                    format!("http://127.0.0.1:{metrics_port}"),
                ]);
            }
            args.extend(extra_args.iter().map(|s| s.to_string()));
            cmd.args(&args);
            cmd.envs(environment.iter().copied());
            let mut proc_ = CapturedChild::spawn(cmd, "metastore")
                .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_metastore")));
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            match wait_for_grpc(&mut proc_, addr, true) {
                Ok(()) => {
                    return MetastoreServer {
                        proc_,
                        port,
                        metrics_port,
                        _data_dir: owned_dir,
                    };
                }
                Err(e) => {
                    proc_.kill();
                    let out = proc_.output_tail(16 * 1024);
                    last_err = format!(
                        "{e}\n--- metastore args: {args:?}\n--- metastore output (tail) ---\n{out}\n--- end ---"
                    );
                    // Retry only when we probably lost a race for the port.
                    let port_race = out.contains("Address already in use")
                        || out.contains("AddrInUse")
                        || out.contains("address already in use");
                    if !port_race || attempt == 2 {
                        break;
                    }
                }
            }
        }
        panic!("failed to start metastore: {last_err}");
    }

    /// Starts the binary with exactly `args` (no defaults added: a cluster
    /// member's flags), serving clients on `port` and metrics on
    /// `metrics_port`; its output tail if it does not answer a gRPC call.
    pub fn start_exact(
        args: &[String],
        port: u16,
        metrics_port: u16,
    ) -> Result<MetastoreServer, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_metastore"));
        cmd.args(args);
        let mut proc_ = CapturedChild::spawn(cmd, "metastore").map_err(|e| e.to_string())?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        match wait_for_grpc(&mut proc_, addr, true) {
            Ok(()) => Ok(MetastoreServer {
                proc_,
                port,
                metrics_port,
                _data_dir: None,
            }),
            Err(e) => {
                proc_.kill();
                Err(format!("{e}\n{}", proc_.output_tail(16 * 1024)))
            }
        }
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the server.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.pid() as i32, signal);
        }
    }

    /// `http://127.0.0.1:<port>` of the metrics and health endpoints.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Last `max` bytes of the server's stdout+stderr.
    pub fn output_tail(&self, max: usize) -> String {
        self.proc_.output_tail(max)
    }

    /// The server's process ID (a wrapper execs it, keeping the ID).
    pub fn pid(&self) -> u32 {
        self.proc_.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.proc_.exited().is_none()
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.proc_.exited()
    }

    /// SIGKILLs the server and waits for it: a crash, not a shutdown.
    pub fn kill_hard(&mut self) {
        self.proc_.kill();
    }
}

impl Drop for MetastoreServer {
    fn drop(&mut self) {
        let exited = self.proc_.exited();
        self.proc_.kill();
        if std::thread::panicking() || exited.is_some() {
            eprintln!(
                "--- metastore (port {}) {}; output tail ---\n{}\n--- end metastore output ---",
                self.port,
                match exited {
                    Some(s) => format!("had exited by itself with {s}"),
                    None => "was running".to_string(),
                },
                self.proc_.output_tail(8 * 1024)
            );
        }
    }
}

/// Whichever server a test runs against; dropping it stops the server.
pub enum TestServer {
    Metastore(MetastoreServer),
    Etcd(EtcdServer),
}

/// MetaStore started with `args`, or, when `TEST_AGAINST_ETCD` is set, a
/// real etcd given the same flags (MetaStore takes etcd's flag names), to
/// check that a test's expectations are etcd's. Returns the server and its
/// endpoint; `None` when etcd was asked for but is not installed.
pub fn start_metastore_or_etcd(args: &[&str]) -> Option<(TestServer, String)> {
    if std::env::var_os("TEST_AGAINST_ETCD").is_some() {
        let etcd = EtcdServer::start_with(args)?;
        let endpoint = etcd.endpoint();
        eprintln!("running against real etcd at {endpoint}");
        Some((TestServer::Etcd(etcd), endpoint))
    } else {
        let metastore = MetastoreServer::start(args);
        let endpoint = metastore.endpoint();
        Some((TestServer::Metastore(metastore), endpoint))
    }
}

// ---------------------------------------------------------------------------
// Real etcd
// ---------------------------------------------------------------------------

/// `etcdctl --endpoints ENDPOINT args...` (API v3, 3 s dial and 10 s
/// command timeouts), with every `ETCDCTL_*` variable of the test's own
/// environment removed so it cannot redirect or reshape the call. Later
/// flags in `args` override these (e.g. `--command-timeout=30s`).
pub fn etcdctl_command(endpoint: &str, args: &[&str]) -> Command {
    let mut command = Command::new("etcdctl");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCDCTL_") {
            command.env_remove(name);
        }
    }
    command
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=10s")
        .args(args);
    command
}

/// Whether a program is on PATH.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|d| {
                let p = d.join(prog);
                p.is_file()
            })
        })
        .unwrap_or(false)
}

/// Handles a missing tool: panics under CI (which must run these tests),
/// otherwise prints a loud SKIPPED message and returns false.
pub fn require_tool(prog: &str) -> bool {
    if on_path(prog) {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("`{prog}` is not installed but CI is set: CI must run the etcd comparison tests");
    }
    eprintln!();
    eprintln!("==================================================================");
    eprintln!(
        "SKIPPED: {prog} not installed (install etcd 3.4, e.g. `apt-get install etcd-server etcd-client`)"
    );
    eprintln!("==================================================================");
    eprintln!();
    false
}

/// A running single-member real etcd, killed on drop.
pub struct EtcdServer {
    proc_: CapturedChild,
    client_port: u16,
    peer_port: u16,
    _data_dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd with default settings, or returns None (after printing a
    /// SKIPPED message) when etcd is not installed and CI is not set.
    pub fn start() -> Option<EtcdServer> {
        Self::start_with(&[])
    }

    pub fn start_with(extra_args: &[&str]) -> Option<EtcdServer> {
        if !require_tool("etcd") {
            return None;
        }
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let client_port = free_port();
            let mut peer_port = free_port();
            while peer_port == client_port {
                peer_port = free_port();
            }
            let data_dir = tempfile::Builder::new()
                .prefix("etcd-test-")
                .tempdir()
                .expect("create temp data dir");
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let mut cmd = Command::new("etcd");
            cmd.args([
                "--name",
                "default",
                "--data-dir",
                data_dir.path().to_str().unwrap(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("default={peer}"),
                "--initial-cluster-state",
                "new",
            ]);
            cmd.args(extra_args);
            // Keep etcd from picking up settings from the environment.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("ETCD_") {
                    cmd.env_remove(k);
                }
            }
            let mut proc_ = CapturedChild::spawn(cmd, "etcd").expect("spawn etcd");
            let addr: SocketAddr = format!("127.0.0.1:{client_port}").parse().unwrap();
            match wait_for_grpc(&mut proc_, addr, false) {
                Ok(()) => {
                    return Some(EtcdServer {
                        proc_,
                        client_port,
                        peer_port,
                        _data_dir: data_dir,
                    });
                }
                Err(e) => {
                    proc_.kill();
                    let out = proc_.output_tail(16 * 1024);
                    last_err = format!("{e}\n--- etcd output (tail) ---\n{out}\n--- end ---");
                    if !out.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("failed to start etcd: {last_err}");
    }

    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.client_port).parse().unwrap()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    pub fn output_tail(&self, max: usize) -> String {
        self.proc_.output_tail(max)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.proc_.kill();
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 for the metrics and health endpoints
// ---------------------------------------------------------------------------

/// A plain HTTP/1.1 GET (or `method`); returns (status, body).
pub fn http_request(url: &str, method: &str, path: &str) -> (u16, String) {
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    std::io::Write::write_all(&mut stream, request.as_bytes()).expect("send request");
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, decode_body(head, body))
}

/// Undoes chunked transfer encoding if the server used it.
pub fn decode_body(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut decoded = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        decoded.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    decoded
}

// ---------------------------------------------------------------------------
// Minimal unary gRPC client over h2
// ---------------------------------------------------------------------------

/// Result of a unary call: the decoded response, or (grpc-status, grpc-message).
/// Failures below gRPC are reported with code [`TRANSPORT_ERROR`].
pub type GrpcResult<T> = Result<T, (i32, String)>;

fn transport<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> (i32, String) + '_ {
    move |e| (TRANSPORT_ERROR, format!("{what}: {e}"))
}

/// A single HTTP/2 connection speaking prior-knowledge h2c. Clones share the
/// connection (each call is its own stream), so clones can run concurrently.
#[derive(Clone)]
pub struct GrpcClient {
    addr: SocketAddr,
    send: h2::client::SendRequest<Bytes>,
}

impl GrpcClient {
    pub async fn connect(addr: SocketAddr) -> GrpcResult<GrpcClient> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(transport("connect"))?;
        tcp.set_nodelay(true).ok();
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_frame_size(1 << 20)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(transport("h2 handshake"))?;
        tokio::spawn(async move {
            // Connection errors surface through the individual requests.
            let _ = conn.await;
        });
        Ok(GrpcClient { addr, send })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Frames one message the gRPC way: flag 0 (uncompressed), u32 BE length, bytes.
    pub fn frame(msg: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(5 + msg.len());
        b.put_u8(0);
        b.put_u32(msg.len() as u32);
        b.extend_from_slice(msg);
        b.freeze()
    }

    /// Calls `path` (e.g. "/etcdserverpb.KV/Range") with `req`.
    pub async fn unary<Req, Resp>(&mut self, path: &str, req: &Req) -> GrpcResult<Resp>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let body = Self::frame(&req.encode_to_vec());
        match tokio::time::timeout(CALL_TIMEOUT, self.unary_raw(path, body)).await {
            Ok(Ok(msg)) => Resp::decode(msg)
                .map_err(|e| (TRANSPORT_ERROR, format!("decode response of {path}: {e}"))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err((
                TRANSPORT_ERROR,
                format!("{path}: timed out after {CALL_TIMEOUT:?}"),
            )),
        }
    }

    /// Sends an already framed body and returns the single response message
    /// payload (without the 5-byte prefix).
    pub async fn unary_raw(&mut self, path: &str, body: Bytes) -> GrpcResult<Bytes> {
        self.unary_raw_chunked(path, body, 0).await
    }

    /// Like [`Self::unary_raw`], but sends the body in DATA frames of at most
    /// `chunk` bytes each (0: one send), to exercise the server's reassembly.
    pub async fn unary_raw_chunked(
        &mut self,
        path: &str,
        body: Bytes,
        chunk: usize,
    ) -> GrpcResult<Bytes> {
        let uri = format!("http://{}{}", self.addr, path);
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "metastore-tests/0.1")
            .body(())
            .unwrap();
        let mut send = self
            .send
            .clone()
            .ready()
            .await
            .map_err(transport("h2 ready"))?;
        let (response, mut stream) = send
            .send_request(request, false)
            .map_err(transport("send request"))?;
        // h2 buffers data beyond the peer's flow-control window and flushes it
        // as WINDOW_UPDATEs arrive. A server may answer (and reset the stream)
        // before reading all of a too-large body; that is fine, so an error
        // here is only reported if no response arrives.
        let send_err = if chunk == 0 || body.len() <= chunk {
            stream.send_data(body, true).err()
        } else {
            let mut rest = body;
            let mut err = None;
            while !rest.is_empty() && err.is_none() {
                let part = rest.split_to(chunk.min(rest.len()));
                err = stream.send_data(part, rest.is_empty()).err();
                // Let the connection task write this frame on its own.
                tokio::task::yield_now().await;
            }
            err
        };

        let response = match response.await {
            Ok(r) => r,
            Err(e) => {
                let extra = send_err
                    .map(|s| format!(" (send: {s})"))
                    .unwrap_or_default();
                return Err((TRANSPORT_ERROR, format!("response: {e}{extra}")));
            }
        };
        let (parts, mut recv) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err((
                TRANSPORT_ERROR,
                format!("HTTP status {} (headers {:?})", parts.status, parts.headers),
            ));
        }
        // Trailers-only response: grpc-status is in the headers.
        if let Some(st) = grpc_status(&parts.headers)?
            && st.0 != 0
        {
            return Err(st);
        }

        let mut data = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(transport("receive body"))?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = recv
            .trailers()
            .await
            .map_err(transport("receive trailers"))?;
        let status = match trailers.as_ref().map(grpc_status).transpose()?.flatten() {
            Some(st) => st,
            None => match grpc_status(&parts.headers)? {
                Some(st) => st,
                None => {
                    return Err((
                        TRANSPORT_ERROR,
                        format!(
                            "no grpc-status in headers {:?} or trailers {:?}",
                            parts.headers, trailers
                        ),
                    ));
                }
            },
        };
        if status.0 != 0 {
            return Err(status);
        }

        let mut data = data.freeze();
        if data.len() < 5 {
            return Err((
                TRANSPORT_ERROR,
                format!("grpc-status 0 but response body is {} bytes", data.len()),
            ));
        }
        let flag = data.get_u8();
        let len = data.get_u32() as usize;
        if flag != 0 {
            return Err((
                TRANSPORT_ERROR,
                format!("unexpected compressed flag {flag}"),
            ));
        }
        if data.len() != len {
            return Err((
                TRANSPORT_ERROR,
                format!(
                    "framed length {len} but {} bytes follow (unary response must be exactly one message)",
                    data.len()
                ),
            ));
        }
        Ok(data)
    }
}

/// Reads (grpc-status, percent-decoded grpc-message) from a header map.
fn grpc_status(h: &http::HeaderMap) -> GrpcResult<Option<(i32, String)>> {
    let Some(v) = h.get("grpc-status") else {
        return Ok(None);
    };
    let code: i32 = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| (TRANSPORT_ERROR, format!("bad grpc-status {v:?}")))?;
    let msg = h
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Ok(Some((code, msg)))
}

/// gRPC's grpc-message encoding: %XX escapes of UTF-8 bytes.
pub fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// Misc helpers
// ---------------------------------------------------------------------------

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`: peak RSS), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Seed for randomized tests: `TEST_SEED` if set, otherwise time based.
/// Always printed so a failure can be reproduced.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("TEST_SEED") {
        Ok(s) => s.parse().expect("TEST_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("{test}: seed = {seed} (rerun with TEST_SEED={seed})");
    seed
}

/// A compact line diff of two multi-line strings, for readable failures.
pub fn line_diff(left: &str, right: &str, left_name: &str, right_name: &str) -> String {
    let a: Vec<&str> = left.lines().collect();
    let b: Vec<&str> = right.lines().collect();
    // LCS table (inputs are small: pretty-printed responses).
    let (n, m) = (a.len(), b.len());
    if n * m > 4_000_000 {
        return format!("--- {left_name}\n{left}\n+++ {right_name}\n{right}\n");
    }
    let mut t = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            t[i][j] = if a[i] == b[j] {
                t[i + 1][j + 1] + 1
            } else {
                t[i + 1][j].max(t[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || t[i][j + 1] >= t[i + 1][j]) {
            ops.push(('+', b[j]));
            j += 1;
        } else {
            ops.push(('-', a[i]));
            i += 1;
        }
    }
    // Print changed lines with 3 lines of context.
    let mut out = format!("--- {left_name}\n+++ {right_name}\n");
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.0 != ' ')
        .map(|(k, _)| k)
        .collect();
    let near = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= 3);
    let mut skipped = false;
    let mut printed = 0;
    for (k, (c, line)) in ops.iter().enumerate() {
        if printed >= 200 {
            out.push_str("  ... (diff truncated at 200 lines)\n");
            break;
        }
        if near(k) {
            printed += 1;
            if skipped {
                out.push_str("  ...\n");
                skipped = false;
            }
            out.push_str(&format!("{c} {line}\n"));
        } else {
            skipped = true;
        }
    }
    out
}
