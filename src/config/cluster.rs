//! etcd's clustering flags (`--initial-cluster` and friends), with etcd's
//! names, defaults and checks.
//!
//! A configuration whose initial cluster has one member is MetaStore alone
//! (`ServerConfig::cluster` is `None`): one Raft voter per shard, no peer
//! listener, exactly as before clusters existed. Two or more members make a
//! cluster member (`ClusterConfig`).

use std::net::SocketAddr;
use std::time::Duration;

use super::{ClientUrl, parse_client_url};

/// etcd's longest `--election-timeout` ("should be set less than 50 seconds").
const MAX_ELECTION_TIMEOUT: Duration = Duration::from_secs(50);

/// The clustering flags as given.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterFlags {
    /// Comma-separated peer URLs of this member to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Comma-separated URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',', value_parser = parse_client_url)]
    pub listen_peer_urls: Vec<ClientUrl>,
    /// Initial cluster configuration for bootstrapping: name=peer-url,... (default: this member alone).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, value_enum, default_value = "new")]
    pub initial_cluster_state: InitialClusterState,
    /// Initial cluster token for the cluster during bootstrap: clusters with different tokens never merge.
    #[arg(long, default_value = crate::membership::DEFAULT_CLUSTER_TOKEN)]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub election_timeout: u64,
    /// Enable the Raft pre-vote algorithm to prevent disruption when a member rejoins.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub pre_vote: bool,
    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_reconfig_check: bool,
    /// The most learners (non-voting members) the cluster may have.
    #[arg(long, default_value_t = 1)]
    pub max_learners: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialClusterState {
    New,
    Existing,
}

/// One member of `--initial-cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    /// As given (normalized without a trailing slash): member IDs hash them.
    pub peer_urls: Vec<String>,
}

/// A cluster member's validated clustering configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Every initial member, in `--initial-cluster` order.
    pub members: Vec<InitialMember>,
    pub token: String,
    /// Where other members' connections are accepted.
    pub listen_peer_addresses: Vec<SocketAddr>,
    pub heartbeat_interval: Duration,
    /// Heartbeats without a leader before a member campaigns (the lower
    /// bound of raft-rs's randomized election timeout).
    pub election_ticks: usize,
    pub pre_vote: bool,
    /// Refuse membership changes that would cost the quorum (etcd's
    /// checks, `shard::member_change`).
    pub strict_reconfig_check: bool,
    pub max_learners: usize,
    /// `--initial-advertise-peer-urls`, normalized.
    pub advertised_peer_urls: Vec<String>,
    /// `existing`: this member was added to a running cluster (MemberAdd)
    /// and learns the cluster from its peers on its first start
    /// (`membership::join`).
    pub initial_cluster_state: InitialClusterState,
}

/// Parses `name=url,name=url,...`; a name may appear more than once (a
/// member with several peer URLs), as in etcd.
pub fn parse_initial_cluster(text: &str) -> Result<Vec<InitialMember>, String> {
    let invalid = |why: String| format!("invalid value '{text}' for '--initial-cluster': {why}");
    let mut members: Vec<InitialMember> = Vec::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let (name, url) = item
            .split_once('=')
            .ok_or_else(|| invalid(format!("{item:?} is not name=peer-url")))?;
        if name.is_empty() {
            return Err(invalid(format!("{item:?} has an empty name")));
        }
        parse_client_url(url).map_err(invalid)?;
        let url = url.trim_end_matches('/').to_owned();
        if members
            .iter()
            .any(|member| member.name != name && member.peer_urls.contains(&url))
        {
            return Err(invalid(format!("peer URL {url} is listed twice")));
        }
        match members.iter_mut().find(|member| member.name == name) {
            Some(member) => member.peer_urls.push(url),
            None => members.push(InitialMember {
                name: name.to_owned(),
                peer_urls: vec![url],
            }),
        }
    }
    if members.is_empty() {
        return Err(invalid("no members".to_owned()));
    }
    Ok(members)
}

/// Checks the clustering flags as etcd does (`embed.Config.Validate`,
/// `ServerConfig.VerifyBootstrap`). `None`: this member alone.
pub fn cluster_config(flags: &ClusterFlags, name: &str) -> Result<Option<ClusterConfig>, String> {
    if flags.election_timeout < 5 * flags.heartbeat_interval {
        return Err(format!(
            "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
            flags.election_timeout, flags.heartbeat_interval
        ));
    }
    if Duration::from_millis(flags.election_timeout) > MAX_ELECTION_TIMEOUT {
        return Err(format!(
            "--election-timeout[{}ms] is too long, and should be set less than 50 seconds",
            flags.election_timeout
        ));
    }
    let advertised: Vec<String> = flags
        .initial_advertise_peer_urls
        .iter()
        .map(|url| {
            parse_client_url(url)
                .map(|_| url.trim_end_matches('/').to_owned())
                .map_err(|error| {
                    format!("invalid value '{url}' for '--initial-advertise-peer-urls': {error}")
                })
        })
        .collect::<Result<_, _>>()?;
    // etcd: without --initial-cluster the cluster is this member alone,
    // under its own name and advertised peer URLs.
    let members = match &flags.initial_cluster {
        Some(text) => parse_initial_cluster(text)?,
        None => vec![InitialMember {
            name: name.to_owned(),
            peer_urls: advertised.clone(),
        }],
    };
    if members.len() == 1 {
        verify_bootstrap(&members, name, &advertised)?;
        return Ok(None);
    }
    let election_ticks = (flags.election_timeout / flags.heartbeat_interval) as usize;
    Ok(Some(ClusterConfig {
        members,
        token: flags.initial_cluster_token.clone(),
        listen_peer_addresses: flags
            .listen_peer_urls
            .iter()
            .map(|url| url.address)
            .collect(),
        heartbeat_interval: Duration::from_millis(flags.heartbeat_interval),
        election_ticks,
        pre_vote: flags.pre_vote,
        strict_reconfig_check: flags.strict_reconfig_check,
        max_learners: flags.max_learners,
        initial_cluster_state: flags.initial_cluster_state,
        advertised_peer_urls: advertised,
    }))
}

impl ClusterConfig {
    /// etcd's `VerifyBootstrap`, for a member's first start only: once its
    /// data directory exists the cluster's membership is what counts, so a
    /// member whose peer URLs moved (MemberUpdate) restarts with its new
    /// URLs whatever `--initial-cluster` still says.
    /// Answers this member's entry in `--initial-cluster`.
    pub fn verify_bootstrap(&self, name: &str) -> Result<&InitialMember, String> {
        verify_bootstrap(&self.members, name, &self.advertised_peer_urls)
    }
}

/// This member is in `members` under `name`, with the peer URLs it
/// advertises: its entry.
fn verify_bootstrap<'a>(
    members: &'a [InitialMember],
    name: &str,
    advertised: &[String],
) -> Result<&'a InitialMember, String> {
    let Some(local) = members.iter().find(|member| member.name == name) else {
        return Err(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        ));
    };
    let mut listed = local.peer_urls.clone();
    let mut given = advertised.to_vec();
    listed.sort();
    given.sort();
    if listed != given {
        return Err(format!(
            "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={} (\"{}\"(resolved from {:?}) != \"{}\"(resolved from {:?}))",
            local.peer_urls.join(","),
            advertised.join(","),
            listed.join(","),
            local.peer_urls,
            given.join(","),
            advertised,
        ));
    }
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        cluster: ClusterFlags,
    }

    fn flags(arguments: &[&str]) -> ClusterFlags {
        let mut all = vec!["test"];
        all.extend_from_slice(arguments);
        Only::try_parse_from(all).expect("parses").cluster
    }

    #[test]
    fn defaults_are_one_member() {
        assert!(
            cluster_config(&flags(&[]), "default")
                .expect("valid")
                .is_none()
        );
        // etcd names the single member after --name.
        assert!(
            cluster_config(&flags(&[]), "infra0")
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn three_members() {
        let config = cluster_config(
            &flags(&[
                "--initial-cluster",
                "a=http://127.0.0.1:2380,b=http://127.0.0.2:2380,c=http://127.0.0.3:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.2:2380",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ]),
            "b",
        )
        .expect("valid")
        .expect("a cluster");
        assert_eq!(config.members.len(), 3);
        assert_eq!(config.election_ticks, 10);
        assert_eq!(config.heartbeat_interval, Duration::from_millis(50));
    }

    #[test]
    fn etcd_errors() {
        let cluster = "a=http://127.0.0.1:2380,b=http://127.0.0.2:2380";
        let verified = |name: &str| {
            cluster_config(&flags(&["--initial-cluster", cluster]), name)
                .expect("checked at bootstrap only")
                .expect("a cluster")
                .verify_bootstrap(name)
                .map(|local| local.name.clone())
        };
        let error = verified("c").unwrap_err();
        assert!(error.contains("couldn't find local name \"c\""), "{error}");
        let error = verified("a").unwrap_err();
        assert!(
            error.contains("missing from --initial-advertise-peer-urls"),
            "{error}"
        );
        let error = cluster_config(
            &flags(&["--initial-cluster", "b=http://127.0.0.2:2380"]),
            "a",
        )
        .unwrap_err();
        assert!(
            error.contains("couldn't find local name"),
            "alone, checked at once: {error}"
        );
        let error = cluster_config(
            &flags(&["--heartbeat-interval", "300", "--election-timeout", "1000"]),
            "default",
        )
        .unwrap_err();
        assert!(error.contains("at least as 5 times"), "{error}");
        let error = parse_initial_cluster("a=http://127.0.0.1:2380,b").unwrap_err();
        assert!(error.contains("--initial-cluster"), "{error}");
        let error = parse_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:1").unwrap_err();
        assert!(error.contains("listed twice"), "{error}");
    }
}
