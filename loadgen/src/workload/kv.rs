//! The KV workloads: `put`, `range`, `txn-put` and `txn-mixed`, each one
//! unary call per request, built as etcd's `benchmark` builds them.

use std::sync::Arc;

use bytes::Bytes;
use metastore::grpc::Status;
use metastore::proto::etcdserverpb::{
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
    request_op,
};

use crate::grpc_client::Channel;
use crate::keys::{KeyGenerator, Rng, random_value};
use crate::pacing::Ticket;
use crate::runner::{Client, Completion};

pub const PUT_PATH: &str = "/etcdserverpb.KV/Put";
pub const RANGE_PATH: &str = "/etcdserverpb.KV/Range";
pub const TXN_PATH: &str = "/etcdserverpb.KV/Txn";

/// Seeds differ per client so clients pick different keys.
fn client_rng(client_index: usize) -> Rng {
    Rng::new(0x5eed_0000 + client_index as u64)
}

/// `put`: one Put of a `--val-size` random value per request.
pub struct PutClient {
    keys: Arc<KeyGenerator>,
    value: Bytes,
    rng: Rng,
}

impl PutClient {
    pub fn new(client_index: usize, keys: Arc<KeyGenerator>, value_size: usize) -> Self {
        let mut rng = client_rng(client_index);
        // One value per client, as etcd's tool reuses one value per run:
        // generating random bytes per request would cost the client time
        // the server is being measured on.
        let value = random_value(value_size, &mut rng);
        Self { keys, value, rng }
    }
}

impl Client for PutClient {
    async fn execute(&mut self, channel: &Channel, ticket: Ticket) -> Completion {
        let key = self.keys.key(ticket.sequence, &mut self.rng);
        put(channel, key, self.value.clone()).await.into()
    }
}

/// One Put; the response is not needed beyond its status.
pub async fn put(channel: &Channel, key: Bytes, value: Bytes) -> Result<(), Status> {
    let request = PutRequest {
        key,
        value,
        ..Default::default()
    };
    channel
        .unary::<_, PutResponse>(PUT_PATH, &request)
        .await
        .map(drop)
}

/// What `range` reads.
#[derive(Debug, Clone)]
pub struct RangeSpec {
    pub key: Bytes,
    pub range_end: Bytes,
    /// `--consistency s`.
    pub serializable: bool,
    pub limit: i64,
    pub count_only: bool,
}

impl RangeSpec {
    fn request(&self) -> RangeRequest {
        RangeRequest {
            key: self.key.clone(),
            range_end: self.range_end.clone(),
            limit: self.limit,
            serializable: self.serializable,
            count_only: self.count_only,
            ..Default::default()
        }
    }
}

/// `range`: the same Range request over and over.
pub struct RangeClient {
    request: RangeRequest,
}

impl RangeClient {
    pub fn new(spec: &RangeSpec) -> Self {
        Self {
            request: spec.request(),
        }
    }
}

impl Client for RangeClient {
    async fn execute(&mut self, channel: &Channel, _ticket: Ticket) -> Completion {
        channel
            .unary::<_, RangeResponse>(RANGE_PATH, &self.request)
            .await
            .map(drop)
            .into()
    }
}

/// `txn-put`: a Txn with no compares and `--txn-ops` puts.
pub struct TxnPutClient {
    keys: Arc<KeyGenerator>,
    ops_per_txn: u64,
    value: Bytes,
}

impl TxnPutClient {
    pub fn new(
        client_index: usize,
        keys: Arc<KeyGenerator>,
        value_size: usize,
        ops_per_txn: u64,
    ) -> Self {
        let mut rng = client_rng(client_index);
        let value = random_value(value_size, &mut rng);
        Self {
            keys,
            ops_per_txn: ops_per_txn.max(1),
            value,
        }
    }
}

impl Client for TxnPutClient {
    async fn execute(&mut self, channel: &Channel, ticket: Ticket) -> Completion {
        // etcd: key number (i * ops + j) modulo the key space for op j of
        // request i, whether or not --sequential-keys is given, so one txn's
        // puts never repeat a key (a Txn may not put a key twice).
        let success = (0..self.ops_per_txn)
            .map(|op| {
                let sequence = ticket.sequence * self.ops_per_txn + op;
                put_op(self.keys.sequential_key(sequence), self.value.clone())
            })
            .collect();
        let request = TxnRequest {
            success,
            ..Default::default()
        };
        channel
            .unary::<_, TxnResponse>(TXN_PATH, &request)
            .await
            .map(drop)
            .into()
    }
}

fn put_op(key: Bytes, value: Bytes) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

/// Section indexes of `txn-mixed`.
pub const MIXED_READ: usize = 0;
pub const MIXED_WRITE: usize = 1;

/// `txn-mixed`: reads (a Txn holding one Range) and writes (a Txn holding
/// one Put) in a `--rw-ratio` reads-per-write mix, reported separately.
pub struct TxnMixedClient {
    read: RangeSpec,
    keys: Arc<KeyGenerator>,
    value: Bytes,
    /// Probability that a request is a read: ratio / (1 + ratio).
    read_probability: f64,
    rng: Rng,
}

impl TxnMixedClient {
    pub fn new(
        client_index: usize,
        read: RangeSpec,
        keys: Arc<KeyGenerator>,
        value_size: usize,
        read_write_ratio: f64,
    ) -> Self {
        let mut rng = client_rng(client_index);
        let value = random_value(value_size, &mut rng);
        Self {
            read,
            keys,
            value,
            read_probability: read_write_ratio / (1.0 + read_write_ratio),
            rng,
        }
    }
}

impl Client for TxnMixedClient {
    async fn execute(&mut self, channel: &Channel, ticket: Ticket) -> Completion {
        let (section, operation) = if self.rng.chance(self.read_probability) {
            let range = request_op::Request::RequestRange(self.read.request());
            (
                MIXED_READ,
                RequestOp {
                    request: Some(range),
                },
            )
        } else {
            let key = self.keys.key(ticket.sequence, &mut self.rng);
            (MIXED_WRITE, put_op(key, self.value.clone()))
        };
        let request = TxnRequest {
            success: vec![operation],
            ..Default::default()
        };
        let result = channel
            .unary::<_, TxnResponse>(TXN_PATH, &request)
            .await
            .map(drop);
        Completion { section, result }
    }
}
