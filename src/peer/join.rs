//! What a member added to a running cluster asks on its first start
//! (`--initial-cluster-state existing`), and the answer
//! (`docs/peer-protocol.md`, "Joining"). Pure.
//!
//! etcd's joining member fetches the member list from a peer
//! (`GetClusterFromRemotePeers`) to learn the cluster's ID and its own.
//! A MetaStore member needs two more facts before its groups can start:
//! the shard count, and the configuration every group started with (the
//! bootstrap members), because its groups replay the other members' logs
//! from the beginning (or install a snapshot that names its own).
//!
//! The question is a handshake whose three numbers are 0 (no member and no
//! cluster have ID 0); the answer byte is `Accepted`, then one frame:
//! `length u32 BE | crc32c(body) u32 BE | body`, the body this module's
//! [`ClusterDescription`] as JSON. The accepting member then closes.

use bytes::BufMut;
use serde::{Deserialize, Serialize};

use super::frame::{Hello, MAX_FRAME_BYTES, PeerFrameError};
use crate::data_dir::MemberRecord;

/// The handshake that asks for a [`ClusterDescription`].
pub const JOIN_QUESTION: Hello = Hello {
    cluster_id: 0,
    from_member: 0,
    to_member: 0,
};

/// A running cluster as one of its members describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterDescription {
    pub cluster_id: u64,
    pub shard_count: usize,
    /// The members the cluster was bootstrapped with: every group's first
    /// configuration.
    pub initial_members: Vec<MemberRecord>,
    /// The members now, as the describing member applied them.
    pub members: Vec<MemberRecord>,
}

impl ClusterDescription {
    pub fn encode(&self, buffer: &mut impl BufMut) {
        let body = serde_json::to_vec(self).expect("a description always serializes");
        buffer.put_u32(body.len() as u32);
        buffer.put_u32(crc32c::crc32c(&body));
        buffer.put_slice(&body);
    }

    /// `Ok(None)`: more bytes are needed.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, PeerFrameError> {
        if bytes.len() < 8 {
            return Ok(None);
        }
        let length = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
        if length > MAX_FRAME_BYTES {
            return Err(PeerFrameError::FrameTooLarge(length));
        }
        let Some(body) = bytes.get(8..8 + length as usize) else {
            return Ok(None);
        };
        let checksum = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != checksum {
            return Err(PeerFrameError::Checksum("cluster description"));
        }
        serde_json::from_slice(body)
            .map(Some)
            .map_err(|error| PeerFrameError::Undecodable(error.to_string()))
    }
}

/// etcd's `ValidateClusterAndAssignIDs`: the joining member's
/// `--initial-cluster` must list the running cluster's members, matched by
/// peer URLs; the answer is this member's ID (the member whose peer URLs
/// are `own_peer_urls`).
pub fn own_member_id(
    listed_peer_urls: &[Vec<String>],
    own_peer_urls: &[String],
    running: &ClusterDescription,
) -> Result<u64, String> {
    if listed_peer_urls.len() != running.members.len() {
        return Err(format!(
            "member count is unequal: --initial-cluster lists {}, the running cluster has {}",
            listed_peer_urls.len(),
            running.members.len()
        ));
    }
    let sorted = |urls: &[String]| {
        let mut urls = urls.to_vec();
        urls.sort();
        urls
    };
    let mut listed: Vec<Vec<String>> = listed_peer_urls.iter().map(|urls| sorted(urls)).collect();
    let mut existing: Vec<Vec<String>> = running
        .members
        .iter()
        .map(|member| sorted(&member.peer_urls))
        .collect();
    listed.sort();
    existing.sort();
    if let Some((local, remote)) = listed.iter().zip(&existing).find(|(a, b)| a != b) {
        return Err(format!(
            "unmatched member while checking PeerURLs (\"{}\" != \"{}\")",
            remote.join(","),
            local.join(",")
        ));
    }
    let own = sorted(own_peer_urls);
    running
        .members
        .iter()
        .find(|member| sorted(&member.peer_urls) == own)
        .map(|member| member.id)
        .ok_or_else(|| {
            format!(
                "the running cluster has no member with this member's peer URLs {}: add it first (etcdctl member add)",
                own.join(",")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::configurations::test_member as member;

    fn running() -> ClusterDescription {
        ClusterDescription {
            cluster_id: 77,
            shard_count: 4,
            initial_members: vec![member(1, false), member(2, false)],
            members: vec![member(1, false), member(2, false), member(9, true)],
        }
    }

    #[test]
    fn a_description_round_trips_in_pieces() {
        let mut bytes = Vec::new();
        running().encode(&mut bytes);
        for cut in [0, 3, 8, bytes.len() - 1] {
            assert_eq!(ClusterDescription::decode(&bytes[..cut]), Ok(None));
        }
        assert_eq!(ClusterDescription::decode(&bytes), Ok(Some(running())));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(ClusterDescription::decode(&bytes).is_err());
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(ClusterDescription::decode(&huge).is_err());
    }

    #[test]
    fn the_joining_member_finds_itself_as_etcd_does() {
        let urls = |id: u64| member(id, false).peer_urls;
        let listed = [urls(9), urls(1), urls(2)];
        assert_eq!(own_member_id(&listed, &urls(9), &running()), Ok(9));
        let error = own_member_id(&listed[..2], &urls(9), &running()).unwrap_err();
        assert!(error.contains("member count is unequal"), "{error}");
        let wrong = [urls(9), urls(1), urls(3)];
        let error = own_member_id(&wrong, &urls(9), &running()).unwrap_err();
        assert!(error.contains("unmatched member"), "{error}");
        let error = own_member_id(&listed, &urls(5), &running()).unwrap_err();
        assert!(error.contains("member add"), "{error}");
    }
}
