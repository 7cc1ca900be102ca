//! Calls a member that does not take writes forwards to the lead member,
//! and their answers (`docs/peer-protocol.md`, "Forwarded calls"). Pure:
//! the domain types and their protobuf form inside a peer frame.
//!
//! A forwarded call carries the client's request as etcd's own message
//! (`PutRequest`, `TxnRequest`, …), so the lead member evaluates exactly
//! what the client sent; an answer carries etcd's response message, or
//! one of the storage layer's errors by a stable number.

use crate::data_dir::MemberRecord;
use crate::lease::table::LeaseStatus;
use crate::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use crate::proto::etcdserverpb::{Member, MemberUpdateRequest};
use crate::shard::WriteOutcome;
use crate::shard::member_change::MemberChange;
use crate::store::error::KvError;
use crate::store::write::{WriteRequest, WriteResponse};

use super::frame::PeerFrameError;

/// What a member asks the lead member to do on its behalf.
#[derive(Debug, Clone, PartialEq)]
pub enum ForwardedCall {
    /// Put, DeleteRange, Txn or LeaseRevoke: evaluated and proposed by the
    /// lead member, answered once readable there.
    Write(WriteRequest),
    GrantLease {
        id: i64,
        ttl_seconds: i64,
    },
    Compact {
        revision: i64,
        physical: bool,
    },
    /// A keep-alive: only the lead member's lease deadlines count.
    RenewLease {
        id: i64,
    },
    /// A lease's remaining TTL as the lead member's deadlines say.
    LeaseStatus {
        id: i64,
    },
    /// MemberAdd, MemberRemove or MemberPromote: answered `Done` once the
    /// change is applied.
    ChangeMember(MemberChange),
}

/// The lead member's answer to a [`ForwardedCall`].
#[derive(Debug, Clone, PartialEq)]
pub enum ForwardedAnswer {
    Written(WriteOutcome),
    /// A grant or a compaction is done.
    Done,
    /// A renewal: the lease's TTL, 0 when the lease is unknown.
    Renewed {
        ttl_seconds: i64,
    },
    /// `None`: no such lease.
    LeaseStatus(Option<LeaseStatus>),
    Failed(KvError),
}

/// A call with the number its caller will match the answer by.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardRequest {
    pub id: u64,
    pub call: ForwardedCall,
}

/// An answer with the number of the call it answers.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardReply {
    pub id: u64,
    pub answer: ForwardedAnswer,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WireCall {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(
        oneof = "WireCallKind",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13"
    )]
    kind: Option<WireCallKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum WireCallKind {
    #[prost(message, tag = "2")]
    Put(PutRequest),
    #[prost(message, tag = "3")]
    DeleteRange(DeleteRangeRequest),
    #[prost(message, tag = "4")]
    Txn(TxnRequest),
    #[prost(int64, tag = "5")]
    LeaseRevoke(i64),
    #[prost(message, tag = "6")]
    GrantLease(LeaseGrantRequest),
    #[prost(message, tag = "7")]
    Compact(CompactionRequest),
    #[prost(int64, tag = "8")]
    RenewLease(i64),
    #[prost(int64, tag = "9")]
    LeaseStatus(i64),
    #[prost(uint64, tag = "10")]
    RemoveMember(u64),
    /// etcd's own `Member` (its client URLs unused).
    #[prost(message, tag = "11")]
    AddMember(Member),
    #[prost(uint64, tag = "12")]
    PromoteMember(u64),
    /// etcd's own request.
    #[prost(message, tag = "13")]
    UpdateMember(MemberUpdateRequest),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WireAnswer {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(oneof = "WireAnswerKind", tags = "2, 3, 4, 5, 6, 7, 8, 9")]
    kind: Option<WireAnswerKind>,
    /// The revision a write took (0: none; revisions start at 1).
    #[prost(int64, tag = "16")]
    revision: i64,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum WireAnswerKind {
    #[prost(message, tag = "2")]
    Put(PutResponse),
    #[prost(message, tag = "3")]
    DeleteRange(DeleteRangeResponse),
    #[prost(message, tag = "4")]
    Txn(TxnResponse),
    #[prost(message, tag = "5")]
    LeaseRevoke(LeaseRevokeResponse),
    #[prost(bool, tag = "6")]
    Done(bool),
    #[prost(int64, tag = "7")]
    Renewed(i64),
    #[prost(message, tag = "8")]
    LeaseStatus(WireLeaseStatus),
    /// A [`KvError`] by its number in [`ERROR_CODES`].
    #[prost(uint32, tag = "9")]
    Failed(u32),
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
struct WireLeaseStatus {
    #[prost(bool, tag = "1")]
    found: bool,
    #[prost(int64, tag = "2")]
    remaining_seconds: i64,
    #[prost(int64, tag = "3")]
    granted_seconds: i64,
}

/// The wire numbers of the storage layer's errors. Append only: a number
/// never changes meaning. `ShardUnavailable` travels without its shard
/// (the caller's member has no use for the other member's shard number).
const ERROR_CODES: [(u32, KvError); 26] = [
    (1, KvError::EmptyKey),
    (2, KvError::KeyNotFound),
    (3, KvError::ValueProvided),
    (4, KvError::LeaseProvided),
    (5, KvError::TooManyOps),
    (6, KvError::DuplicateKey),
    (7, KvError::Compacted),
    (8, KvError::FutureRevision),
    (9, KvError::LeaseNotFound),
    (10, KvError::LeaseExists),
    (11, KvError::LeaseTtlTooLarge),
    (12, KvError::RequestTooLarge),
    (13, KvError::EmptyRequestOp),
    (14, KvError::NoSpace),
    (15, KvError::ShardUnavailable(0)),
    (16, KvError::NotLeader),
    (17, KvError::LeaderChanged),
    (18, KvError::RequestTimedOut),
    (19, KvError::UnhealthyCluster),
    (20, KvError::MemberNotFound),
    (21, KvError::MemberExists),
    (22, KvError::PeerUrlExists),
    (23, KvError::NotEnoughStartedMembers),
    (24, KvError::MemberNotLearner),
    (25, KvError::LearnerNotReady),
    (26, KvError::TooManyLearners),
];

fn error_code(error: &KvError) -> u32 {
    let error = match error {
        KvError::ShardUnavailable(_) => &KvError::ShardUnavailable(0),
        other => other,
    };
    ERROR_CODES
        .iter()
        .find(|(_, known)| known == error)
        .map(|(code, _)| *code)
        .expect("every KvError has a wire number")
}

fn error_of(code: u32) -> Result<KvError, PeerFrameError> {
    ERROR_CODES
        .iter()
        .find(|(known, _)| *known == code)
        .map(|(_, error)| error.clone())
        .ok_or_else(|| PeerFrameError::Undecodable(format!("unknown error number {code}")))
}

fn missing(what: &str) -> PeerFrameError {
    PeerFrameError::Undecodable(format!("a forwarded {what} names no kind"))
}

impl ForwardRequest {
    /// About how many bytes it takes in a frame.
    pub fn encoded_len(&self) -> usize {
        prost::Message::encoded_len(&self.to_wire())
    }

    pub(super) fn to_wire(&self) -> WireCall {
        let kind = match &self.call {
            ForwardedCall::Write(WriteRequest::Put(put)) => WireCallKind::Put(put.clone()),
            ForwardedCall::Write(WriteRequest::DeleteRange(delete)) => {
                WireCallKind::DeleteRange(delete.clone())
            }
            ForwardedCall::Write(WriteRequest::Txn(txn)) => WireCallKind::Txn(txn.clone()),
            ForwardedCall::Write(WriteRequest::LeaseRevoke(id)) => WireCallKind::LeaseRevoke(*id),
            ForwardedCall::GrantLease { id, ttl_seconds } => {
                WireCallKind::GrantLease(LeaseGrantRequest {
                    ttl: *ttl_seconds,
                    id: *id,
                })
            }
            ForwardedCall::Compact { revision, physical } => {
                WireCallKind::Compact(CompactionRequest {
                    revision: *revision,
                    physical: *physical,
                })
            }
            ForwardedCall::RenewLease { id } => WireCallKind::RenewLease(*id),
            ForwardedCall::LeaseStatus { id } => WireCallKind::LeaseStatus(*id),
            ForwardedCall::ChangeMember(MemberChange::Remove(id)) => {
                WireCallKind::RemoveMember(*id)
            }
            ForwardedCall::ChangeMember(MemberChange::Promote(id)) => {
                WireCallKind::PromoteMember(*id)
            }
            ForwardedCall::ChangeMember(MemberChange::Update { id, peer_urls }) => {
                WireCallKind::UpdateMember(MemberUpdateRequest {
                    id: *id,
                    peer_ur_ls: peer_urls.clone(),
                })
            }
            ForwardedCall::ChangeMember(MemberChange::Add(record)) => {
                WireCallKind::AddMember(Member {
                    id: record.id,
                    name: record.name.clone(),
                    peer_ur_ls: record.peer_urls.clone(),
                    client_ur_ls: Vec::new(),
                    is_learner: record.is_learner,
                })
            }
        };
        WireCall {
            id: self.id,
            kind: Some(kind),
        }
    }

    pub(super) fn from_wire(wire: WireCall) -> Result<Self, PeerFrameError> {
        let call = match wire.kind.ok_or_else(|| missing("call"))? {
            WireCallKind::Put(put) => ForwardedCall::Write(WriteRequest::Put(put)),
            WireCallKind::DeleteRange(delete) => {
                ForwardedCall::Write(WriteRequest::DeleteRange(delete))
            }
            WireCallKind::Txn(txn) => ForwardedCall::Write(WriteRequest::Txn(txn)),
            WireCallKind::LeaseRevoke(id) => ForwardedCall::Write(WriteRequest::LeaseRevoke(id)),
            WireCallKind::GrantLease(grant) => ForwardedCall::GrantLease {
                id: grant.id,
                ttl_seconds: grant.ttl,
            },
            WireCallKind::Compact(compact) => ForwardedCall::Compact {
                revision: compact.revision,
                physical: compact.physical,
            },
            WireCallKind::RenewLease(id) => ForwardedCall::RenewLease { id },
            WireCallKind::LeaseStatus(id) => ForwardedCall::LeaseStatus { id },
            WireCallKind::RemoveMember(id) => ForwardedCall::ChangeMember(MemberChange::Remove(id)),
            WireCallKind::PromoteMember(id) => {
                ForwardedCall::ChangeMember(MemberChange::Promote(id))
            }
            WireCallKind::UpdateMember(request) => {
                ForwardedCall::ChangeMember(MemberChange::Update {
                    id: request.id,
                    peer_urls: request.peer_ur_ls,
                })
            }
            WireCallKind::AddMember(member) => {
                ForwardedCall::ChangeMember(MemberChange::Add(MemberRecord {
                    id: member.id,
                    name: member.name,
                    peer_urls: member.peer_ur_ls,
                    is_learner: member.is_learner,
                }))
            }
        };
        Ok(Self { id: wire.id, call })
    }
}

impl ForwardReply {
    /// About how many bytes it takes in a frame.
    pub fn encoded_len(&self) -> usize {
        prost::Message::encoded_len(&self.to_wire())
    }

    pub(super) fn to_wire(&self) -> WireAnswer {
        let mut revision = 0;
        let kind = match &self.answer {
            ForwardedAnswer::Written(outcome) => {
                revision = outcome.revision.unwrap_or(0);
                match &outcome.response {
                    WriteResponse::Put(put) => WireAnswerKind::Put(put.clone()),
                    WriteResponse::DeleteRange(delete) => {
                        WireAnswerKind::DeleteRange(delete.clone())
                    }
                    WriteResponse::Txn(txn) => WireAnswerKind::Txn(txn.clone()),
                    WriteResponse::LeaseRevoke(revoke) => WireAnswerKind::LeaseRevoke(*revoke),
                }
            }
            ForwardedAnswer::Done => WireAnswerKind::Done(true),
            ForwardedAnswer::Renewed { ttl_seconds } => WireAnswerKind::Renewed(*ttl_seconds),
            ForwardedAnswer::LeaseStatus(status) => WireAnswerKind::LeaseStatus(WireLeaseStatus {
                found: status.is_some(),
                remaining_seconds: status.map_or(0, |status| status.remaining_seconds),
                granted_seconds: status.map_or(0, |status| status.granted_ttl_seconds),
            }),
            ForwardedAnswer::Failed(error) => WireAnswerKind::Failed(error_code(error)),
        };
        WireAnswer {
            id: self.id,
            kind: Some(kind),
            revision,
        }
    }

    pub(super) fn from_wire(wire: WireAnswer) -> Result<Self, PeerFrameError> {
        let revision = (wire.revision > 0).then_some(wire.revision);
        let written = |response| ForwardedAnswer::Written(WriteOutcome { response, revision });
        let answer = match wire.kind.ok_or_else(|| missing("answer"))? {
            WireAnswerKind::Put(put) => written(WriteResponse::Put(put)),
            WireAnswerKind::DeleteRange(delete) => written(WriteResponse::DeleteRange(delete)),
            WireAnswerKind::Txn(txn) => written(WriteResponse::Txn(txn)),
            WireAnswerKind::LeaseRevoke(revoke) => written(WriteResponse::LeaseRevoke(revoke)),
            WireAnswerKind::Done(_) => ForwardedAnswer::Done,
            WireAnswerKind::Renewed(ttl_seconds) => ForwardedAnswer::Renewed { ttl_seconds },
            WireAnswerKind::LeaseStatus(status) => {
                ForwardedAnswer::LeaseStatus(status.found.then_some(LeaseStatus {
                    remaining_seconds: status.remaining_seconds,
                    granted_ttl_seconds: status.granted_seconds,
                }))
            }
            WireAnswerKind::Failed(code) => ForwardedAnswer::Failed(error_of(code)?),
        };
        Ok(Self {
            id: wire.id,
            answer,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::proto::etcdserverpb::ResponseHeader;

    fn put(key: &'static str) -> PutRequest {
        PutRequest {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            lease: 7,
            ..Default::default()
        }
    }

    #[test]
    fn every_call_round_trips() {
        let calls = [
            ForwardedCall::Write(WriteRequest::Put(put("a"))),
            ForwardedCall::Write(WriteRequest::DeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"a"),
                range_end: Bytes::from_static(b"b"),
                prev_kv: true,
            })),
            ForwardedCall::Write(WriteRequest::Txn(TxnRequest::default())),
            ForwardedCall::Write(WriteRequest::LeaseRevoke(-3)),
            ForwardedCall::GrantLease {
                id: 9,
                ttl_seconds: 60,
            },
            ForwardedCall::Compact {
                revision: 12,
                physical: true,
            },
            ForwardedCall::RenewLease { id: 4 },
            ForwardedCall::LeaseStatus { id: 5 },
            ForwardedCall::ChangeMember(MemberChange::Remove(6)),
            ForwardedCall::ChangeMember(MemberChange::Promote(7)),
            ForwardedCall::ChangeMember(MemberChange::Update {
                id: 9,
                peer_urls: vec!["http://10.0.0.9:2380".to_owned()],
            }),
            ForwardedCall::ChangeMember(MemberChange::Add(MemberRecord {
                id: 8,
                name: String::new(),
                peer_urls: vec!["http://10.0.0.8:2380".to_owned()],
                is_learner: true,
            })),
        ];
        for (id, call) in calls.into_iter().enumerate() {
            let request = ForwardRequest {
                id: (id as u64 + 1) << 40,
                call,
            };
            let back = ForwardRequest::from_wire(request.to_wire()).expect("decodes");
            assert_eq!(back, request);
        }
    }

    #[test]
    fn every_answer_round_trips() {
        let header = Some(ResponseHeader {
            revision: 4,
            ..Default::default()
        });
        let mut answers = vec![
            ForwardedAnswer::Written(WriteOutcome {
                response: WriteResponse::Put(PutResponse {
                    header,
                    prev_kv: None,
                }),
                revision: Some(4),
            }),
            ForwardedAnswer::Written(WriteOutcome {
                response: WriteResponse::Txn(TxnResponse::default()),
                revision: None,
            }),
            ForwardedAnswer::Written(WriteOutcome {
                response: WriteResponse::DeleteRange(DeleteRangeResponse::default()),
                revision: Some(1),
            }),
            ForwardedAnswer::Written(WriteOutcome {
                response: WriteResponse::LeaseRevoke(LeaseRevokeResponse::default()),
                revision: None,
            }),
            ForwardedAnswer::Done,
            ForwardedAnswer::Renewed { ttl_seconds: 0 },
            ForwardedAnswer::LeaseStatus(None),
            ForwardedAnswer::LeaseStatus(Some(LeaseStatus {
                remaining_seconds: 0,
                granted_ttl_seconds: 5,
            })),
        ];
        answers.extend(
            ERROR_CODES
                .iter()
                .map(|(_, error)| ForwardedAnswer::Failed(error.clone())),
        );
        for (id, answer) in answers.into_iter().enumerate() {
            let reply = ForwardReply {
                id: id as u64,
                answer,
            };
            let back = ForwardReply::from_wire(reply.to_wire()).expect("decodes");
            assert_eq!(back, reply);
        }
    }

    #[test]
    fn error_numbers_are_unique_and_shards_do_not_travel() {
        for (index, (code, error)) in ERROR_CODES.iter().enumerate() {
            assert_eq!(*code as usize, index + 1, "numbers run 1, 2, …");
            assert_eq!(error_code(error), *code);
        }
        assert_eq!(error_code(&KvError::ShardUnavailable(5)), 15);
    }

    #[test]
    fn unknown_errors_and_empty_kinds_are_refused() {
        let mut wire = ForwardReply {
            id: 1,
            answer: ForwardedAnswer::Done,
        }
        .to_wire();
        wire.kind = Some(WireAnswerKind::Failed(999));
        assert!(ForwardReply::from_wire(wire.clone()).is_err());
        wire.kind = None;
        assert!(ForwardReply::from_wire(wire).is_err());
        let call = WireCall { id: 1, kind: None };
        assert!(ForwardRequest::from_wire(call).is_err());
    }
}
