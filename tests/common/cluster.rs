//! Real `metastore` processes as one cluster on loopback (the cluster
//! tests' harness): each member on ports of its own outside the ephemeral
//! range (members restart on them), started together, killed, signalled,
//! restarted, joined to the cluster after a MemberAdd; and which member
//! is the lead member, as `Status` names it.

use std::time::{Duration, Instant};

use etcd_client::Client;

use super::{MetastoreServer, stable_port};

/// Members of a cluster the tests start.
pub const MEMBERS: usize = 3;
/// Each client call's limit: past it the outcome is unknown.
pub const CALL_LIMIT: Duration = Duration::from_secs(3);

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    pub data_dir: tempfile::TempDir,
    pub server: Option<MetastoreServer>,
}

impl Member {
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn arguments(
        &self,
        initial_cluster: &str,
        timing: Timing,
        extra: &[String],
    ) -> Vec<String> {
        let peer_url = self.peer_url();
        [
            "--name",
            &self.name,
            "--data-dir",
            self.data_dir.path().to_str().expect("utf-8 path"),
            "--listen-client-urls",
            &self.endpoint(),
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            initial_cluster,
            "--listen-metrics-urls",
            &format!("http://127.0.0.1:{}", self.metrics_port),
            "--cores",
            "1",
            "--shards",
            "2",
        ]
        .iter()
        .map(|argument| argument.to_string())
        .chain([
            "--heartbeat-interval".to_owned(),
            timing.heartbeat_ms.to_string(),
            "--election-timeout".to_owned(),
            timing.election_ms.to_string(),
        ])
        .chain(extra.iter().cloned())
        .collect::<Vec<String>>()
        .into_iter()
        // `extra` may set the cores: then drop the default's pair.
        .fold(Vec::new(), |mut arguments, argument| {
            if argument == "1"
                && arguments
                    .last()
                    .is_some_and(|flag: &String| flag == "--cores")
                && extra.iter().any(|flag| flag == "--cores")
            {
                arguments.pop();
            } else {
                arguments.push(argument);
            }
            arguments
        })
    }
}

/// `--heartbeat-interval` and `--election-timeout`, in milliseconds.
#[derive(Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_ms: u64,
}

/// Fast failover for the fault tests.
pub const FAST: Timing = Timing {
    heartbeat_ms: 50,
    election_ms: 500,
};

pub struct Cluster {
    pub members: Vec<Member>,
    pub initial_cluster: String,
    pub timing: Timing,
    /// More flags for every member.
    pub extra: Vec<String>,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(FAST)
    }

    pub fn start_with(timing: Timing) -> Cluster {
        Cluster::start_with_flags(timing, &[])
    }

    pub fn start_with_flags(timing: Timing, extra: &[&str]) -> Cluster {
        let members: Vec<Member> = (0..MEMBERS)
            .map(|index| Member {
                name: format!("m{index}"),
                // Members restart on their ports: keep them out of the
                // range the others' redials take local ports from.
                client_port: stable_port(),
                peer_port: stable_port(),
                metrics_port: stable_port(),
                data_dir: tempfile::tempdir().expect("data dir"),
                server: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}=http://127.0.0.1:{}", member.name, member.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            members,
            initial_cluster,
            timing,
            extra: extra.iter().map(|flag| flag.to_string()).collect(),
        };
        // All at once: a member answers a linearizable read (the readiness
        // probe) only once a quorum is up.
        cluster.start_together(&(0..MEMBERS).collect::<Vec<_>>());
        cluster
    }

    /// Starts the members at `indexes` at the same time and waits until
    /// each is ready: a member answers a linearizable read (the readiness
    /// probe) only once a quorum of its groups is up, so members started
    /// one after another could wait on each other.
    pub fn start_together(&mut self, indexes: &[usize]) {
        let servers: Vec<MetastoreServer> = std::thread::scope(|scope| {
            let starts: Vec<_> = indexes
                .iter()
                .map(|index| {
                    let member = &self.members[*index];
                    let arguments =
                        member.arguments(&self.initial_cluster, self.timing, &self.extra);
                    scope.spawn(move || {
                        MetastoreServer::start_exact(
                            &arguments,
                            member.client_port,
                            member.metrics_port,
                        )
                        .unwrap_or_else(|error| {
                            panic!("member {} did not start: {error}", member.name)
                        })
                    })
                })
                .collect();
            starts
                .into_iter()
                .map(|start| start.join().expect("start thread"))
                .collect()
        });
        for (index, server) in indexes.iter().zip(servers) {
            self.members[*index].server = Some(server);
        }
    }

    /// Waits (at most `limit`) until member `index`'s process exits by
    /// itself, and returns how it ended.
    pub fn wait_for_exit(&mut self, index: usize, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        let server = self.members[index].server.as_mut().expect("started");
        loop {
            if let Some(status) = server.exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "member {index} did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a stopped member again on its ports. A start that finds its
    /// peer port still taken is tried again for up to 20 s, a guard for a
    /// port another process took meanwhile (the failures that led to it
    /// came from other members' redials taking ports in the ephemeral
    /// range as local ports; a SIGKILLed member's listeners were gone
    /// within a second in every later trial), which the test is not about.
    pub fn restart(&mut self, index: usize) {
        let member = &mut self.members[index];
        let arguments = member.arguments(&self.initial_cluster, self.timing, &self.extra);
        let deadline = Instant::now() + Duration::from_secs(20);
        let server = loop {
            match MetastoreServer::start_exact(&arguments, member.client_port, member.metrics_port)
            {
                Ok(server) => break server,
                Err(error)
                    if error.contains("Address already in use") && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(error) => panic!("member {} did not start: {error}", member.name),
            }
        };
        member.server = Some(server);
    }

    /// A member not started yet, on ports of its own: to be added with
    /// MemberAdd (at [`Member::peer_url`]) and then started with
    /// [`Self::start_joining`].
    pub fn new_member(&mut self, name: &str) -> usize {
        self.members.push(Member {
            name: name.to_owned(),
            client_port: stable_port(),
            peer_port: stable_port(),
            metrics_port: stable_port(),
            data_dir: tempfile::tempdir().expect("data dir"),
            server: None,
        });
        self.members.len() - 1
    }

    /// Starts member `index` as one added to the running cluster starts
    /// (`--initial-cluster-state existing`, `--initial-cluster` naming it
    /// beside the others, as `etcdctl member add` prints). Every member's
    /// `--initial-cluster` names it from now on.
    pub fn start_joining(&mut self, index: usize) -> Result<(), String> {
        let member = &self.members[index];
        self.initial_cluster = format!(
            "{},{}={}",
            self.initial_cluster,
            member.name,
            member.peer_url()
        );
        let mut extra = self.extra.clone();
        extra.extend(["--initial-cluster-state".to_owned(), "existing".to_owned()]);
        let arguments = member.arguments(&self.initial_cluster, self.timing, &extra);
        let server =
            MetastoreServer::start_exact(&arguments, member.client_port, member.metrics_port)?;
        self.members[index].server = Some(server);
        Ok(())
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    pub fn kill(&mut self, index: usize) {
        if let Some(mut server) = self.members[index].server.take() {
            server.kill_hard();
        }
    }

    pub fn signal(&self, index: usize, signal: i32) {
        if let Some(server) = &self.members[index].server {
            server.signal(signal);
        }
    }
}

pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The index of the member that names itself the lead member in `Status`.
pub async fn lead_member(endpoints: &[String]) -> Option<usize> {
    for (index, endpoint) in endpoints.iter().enumerate() {
        let Ok(Ok(mut client)) =
            tokio::time::timeout(CALL_LIMIT, Client::connect([endpoint], None)).await
        else {
            continue;
        };
        if let Ok(Ok(status)) = tokio::time::timeout(CALL_LIMIT, client.status()).await
            && let Some(header) = status.header()
            && header.member_id() == status.leader()
        {
            return Some(index);
        }
    }
    None
}

/// The lead member, once one member takes writes (a put through any
/// member succeeds) and names itself the lead member.
pub async fn settled_lead_member(endpoints: &[String], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Ok(mut client)) =
            tokio::time::timeout(CALL_LIMIT, Client::connect([&endpoints[0]], None)).await
            && let Ok(Ok(_)) =
                tokio::time::timeout(CALL_LIMIT, client.put("settled", "yes", None)).await
            && let Some(lead) = lead_member(endpoints).await
        {
            return lead;
        }
        assert!(Instant::now() < deadline, "no member took writes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ID of the member serving `endpoint` (its `Status`).
pub async fn member_id_of(endpoint: &str) -> u64 {
    let mut client = Client::connect([endpoint], None).await.expect("connect");
    client
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id()
}
