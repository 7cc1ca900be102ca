//! Member and cluster IDs, derived exactly as etcd derives them, so a
//! MetaStore cluster bootstrapped with etcd's flags has the IDs etcd would
//! give it (tools, dashboards and `etcdctl member list` show the same
//! numbers), and two clusters bootstrapped with different
//! `--initial-cluster-token`s never share a cluster ID (the peer handshake
//! refuses to merge them).
//!
//! etcd (`etcdserver/api/membership`): a member's ID is the first 8 bytes,
//! big-endian, of SHA-1 over its peer URLs sorted and concatenated, then
//! the cluster token, then (for a member added at runtime) the Unix time
//! in decimal. The cluster ID is the same over the sorted member IDs, each
//! as 8 big-endian bytes.

use sha1::{Digest, Sha1};

pub mod configurations;
pub mod join;

pub use configurations::{Configurations, GroupConfiguration};

/// etcd's default `--initial-cluster-token`.
pub const DEFAULT_CLUSTER_TOKEN: &str = "etcd-cluster";

/// The ID of a member with these peer URLs in a cluster bootstrapped with
/// `cluster_token`; `added_at_unix_seconds` for a member added at runtime
/// (`MemberAdd`), `None` for one listed in `--initial-cluster`.
pub fn member_id(
    peer_urls: &[&str],
    cluster_token: &str,
    added_at_unix_seconds: Option<i64>,
) -> u64 {
    let mut sorted = peer_urls.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for url in sorted {
        hasher.update(url.as_bytes());
    }
    hasher.update(cluster_token.as_bytes());
    if let Some(seconds) = added_at_unix_seconds {
        hasher.update(seconds.to_string().as_bytes());
    }
    first_eight_bytes(&hasher.finalize())
}

/// The ID of a cluster whose initial members have these IDs.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut sorted = member_ids.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for id in sorted {
        hasher.update(id.to_be_bytes());
    }
    first_eight_bytes(&hasher.finalize())
}

/// The data directory of member `name` of a cluster bootstrapped with
/// `config`: every initial member's ID and the cluster's, as etcd derives
/// them.
pub fn bootstrap(
    config: &crate::config::ClusterConfig,
    name: &str,
) -> crate::data_dir::ClusterBootstrap {
    let members: Vec<crate::data_dir::MemberRecord> = config
        .members
        .iter()
        .map(|member| {
            let urls: Vec<&str> = member.peer_urls.iter().map(String::as_str).collect();
            crate::data_dir::MemberRecord {
                id: member_id(&urls, &config.token, None),
                name: member.name.clone(),
                peer_urls: member.peer_urls.clone(),
                is_learner: false,
            }
        })
        .collect();
    let ids: Vec<u64> = members.iter().map(|member| member.id).collect();
    let member_id = members
        .iter()
        .find(|member| member.name == name)
        .map_or(0, |member| member.id);
    crate::data_dir::ClusterBootstrap {
        cluster_id: cluster_id(&ids),
        member_id,
        members,
    }
}

fn first_eight_bytes(digest: &[u8]) -> u64 {
    u64::from_be_bytes(digest[..8].try_into().expect("SHA-1 gives 20 bytes"))
}

/// What the other members said of themselves when they connected (their
/// name and client URLs, `peer::frame::MemberAttributes`), for
/// `MemberList`. Kept in memory: a member that has not connected since
/// this one started is listed without client URLs.
#[derive(Debug, Default)]
pub struct MemberDirectory {
    /// Taken only when a peer connects and when `MemberList` is served.
    attributes:
        std::sync::Mutex<std::collections::BTreeMap<u64, crate::peer::frame::MemberAttributes>>,
}

impl MemberDirectory {
    pub fn record(&self, member: u64, attributes: crate::peer::frame::MemberAttributes) {
        self.lock().insert(member, attributes);
    }

    /// The name `member` announced, if it did.
    pub fn name(&self, member: u64) -> Option<String> {
        self.lock()
            .get(&member)
            .map(|attributes| attributes.name.clone())
    }

    /// The client URLs `member` announced, if it did.
    pub fn client_urls(&self, member: u64) -> Option<Vec<String>> {
        self.lock()
            .get(&member)
            .map(|attributes| attributes.client_urls.clone())
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::BTreeMap<u64, crate::peer::frame::MemberAttributes>,
    > {
        self.attributes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Read off etcd 3.4.23's startup log ("added-peer-id", "cluster-id")
    // for these exact flags.

    #[test]
    fn three_members_as_etcd_derives_them() {
        // --initial-cluster alpha=http://127.0.0.1:23801,beta=…:23802,
        // gamma=…:23803 --initial-cluster-token vector-token
        let ids: Vec<u64> = [
            "http://127.0.0.1:23801",
            "http://127.0.0.1:23802",
            "http://127.0.0.1:23803",
        ]
        .iter()
        .map(|url| member_id(&[url], "vector-token", None))
        .collect();
        assert_eq!(
            ids,
            [0x981f3fc2e795eba9, 0x6a2c8df2cbc0377d, 0x480be0a7a71aa05f]
        );
        assert_eq!(cluster_id(&ids), 0x512e806f5c147c5a);
        let mut reversed = ids.clone();
        reversed.reverse();
        assert_eq!(
            cluster_id(&reversed),
            0x512e806f5c147c5a,
            "order does not matter"
        );
    }

    #[test]
    fn several_peer_urls_and_the_default_token() {
        // --initial-cluster solo=http://127.0.0.1:23804,solo=http://127.0.0.2:23804
        let id = member_id(
            &["http://127.0.0.2:23804", "http://127.0.0.1:23804"],
            DEFAULT_CLUSTER_TOKEN,
            None,
        );
        assert_eq!(id, 0x1d81ccfeeb576faa);
        assert_eq!(cluster_id(&[id]), 0x7c52deb706e57e5c);
    }

    #[test]
    fn the_token_and_the_time_change_the_id() {
        let url = ["http://10.0.0.1:2380"];
        let base = member_id(&url, DEFAULT_CLUSTER_TOKEN, None);
        assert_ne!(base, member_id(&url, "other-token", None));
        assert_ne!(
            base,
            member_id(&url, DEFAULT_CLUSTER_TOKEN, Some(1_700_000_000))
        );
    }
}
