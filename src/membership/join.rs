//! The first start of a member added to a running cluster
//! (`--initial-cluster-state existing`, after `etcdctl member add`).
//!
//! As etcd's joining member does, it asks the other members listed in
//! `--initial-cluster` about the cluster (`peer::join`: the cluster ID,
//! the shard count, the bootstrap members and the members now), checks
//! that its `--initial-cluster` lists the running cluster's members, and
//! takes the ID the cluster gave it. Its data directory is then made with
//! the cluster's shard count and bootstrap members, and with the running
//! cluster's member list in `membership.json`, which is written first: a
//! start that dies before the data directory's own file exists is a first
//! start again.
//!
//! Blocking (std sockets): it runs before the cores start.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::ClusterConfig;
use crate::data_dir::ClusterBootstrap;
use crate::peer::frame::HelloAnswer;
use crate::peer::join::{ClusterDescription, JOIN_QUESTION, own_member_id};

use super::Configurations;

/// How long a member joining keeps asking before it gives up (the other
/// members may be starting too).
const ASK_FOR: Duration = Duration::from_secs(15);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the data directory of a joining member is made with.
#[derive(Debug)]
pub struct Joined {
    pub bootstrap: ClusterBootstrap,
    pub shard_count: usize,
}

/// Learns the running cluster from the other members of `config` and
/// writes `membership.json` into `data_dir` (created if needed). `shards`:
/// the operator's `--shards`, which must match the cluster's if given.
pub fn join(
    config: &ClusterConfig,
    name: &str,
    data_dir: &Path,
    shards: Option<usize>,
) -> Result<Joined, String> {
    let own = config.verify_bootstrap(name)?;
    let others: Vec<SocketAddr> = config
        .members
        .iter()
        .filter(|member| member.name != name)
        .flat_map(|member| &member.peer_urls)
        .filter_map(|url| crate::config::parse_client_url(url).ok())
        .map(|url| url.address)
        .collect();
    let running = ask_any(&others)?;
    let listed: Vec<Vec<String>> = config
        .members
        .iter()
        .map(|member| member.peer_urls.clone())
        .collect();
    let member_id = own_member_id(&listed, &own.peer_urls, &running)
        .map_err(|error| format!("error validating peerURLs: {error}"))?;
    if let Some(requested) = shards.filter(|requested| *requested != running.shard_count) {
        return Err(format!(
            "--shards {requested}: the running cluster has {} shards (leave --shards out to take the cluster's)",
            running.shard_count
        ));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|error| format!("{}: {error}", data_dir.display()))?;
    Configurations::create_joined(
        Some(data_dir),
        running.shard_count,
        &running.initial_members,
        &running.members,
    )
    .map_err(|error| error.to_string())?;
    tracing::info!(
        member_id = format!("{member_id:x}"),
        cluster_id = format!("{:x}", running.cluster_id),
        members = running.members.len(),
        "joining a running cluster"
    );
    Ok(Joined {
        bootstrap: ClusterBootstrap {
            cluster_id: running.cluster_id,
            member_id,
            members: running.initial_members,
        },
        shard_count: running.shard_count,
    })
}

/// Asks each address in turn, again and again, until one answers or
/// [`ASK_FOR`] passed.
fn ask_any(addresses: &[SocketAddr]) -> Result<ClusterDescription, String> {
    if addresses.is_empty() {
        return Err("--initial-cluster-state existing: --initial-cluster lists no other member to ask about the cluster".to_owned());
    }
    let deadline = Instant::now() + ASK_FOR;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        for address in addresses {
            match ask(*address) {
                Ok(description) => return Ok(description),
                Err(error) => last_error = format!("{address}: {error}"),
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "cannot fetch cluster info from peer urls: could not retrieve cluster information from the given URLs ({last_error})"
    ))
}

fn ask(address: SocketAddr) -> Result<ClusterDescription, String> {
    let mut stream =
        TcpStream::connect_timeout(&address, ATTEMPT_TIMEOUT).map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(ATTEMPT_TIMEOUT))
        .map_err(|error| error.to_string())?;
    let mut question = Vec::new();
    JOIN_QUESTION.encode(&mut question);
    stream
        .write_all(&question)
        .map_err(|error| error.to_string())?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let read = stream.read(&mut chunk).map_err(|error| error.to_string())?;
        if read == 0 {
            return Err("the member closed the connection before answering".to_owned());
        }
        received.extend_from_slice(&chunk[..read]);
        let answer = HelloAnswer::decode(received[0]).map_err(|error| error.to_string())?;
        if answer != HelloAnswer::Accepted {
            return Err(format!("the member refused: {answer:?}"));
        }
        if let Some(description) =
            ClusterDescription::decode(&received[1..]).map_err(|error| error.to_string())?
        {
            return Ok(description);
        }
    }
}
