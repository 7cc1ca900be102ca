//! `lease-keepalive`: each client grants one lease before the clock
//! starts, then each request is one keep-alive round trip on the client's
//! own `LeaseKeepAlive` stream (as etcd's benchmark does).

use metastore::grpc::{Code, Status};
use metastore::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
};

use crate::grpc_client::{CallStream, Channel};
use crate::pacing::Ticket;
use crate::runner::{Client, Completion};

pub const LEASE_GRANT_PATH: &str = "/etcdserverpb.Lease/LeaseGrant";
pub const LEASE_KEEP_ALIVE_PATH: &str = "/etcdserverpb.Lease/LeaseKeepAlive";

pub struct KeepAliveClient {
    ttl_seconds: i64,
    /// Set by `prepare`.
    lease_id: i64,
    stream: Option<CallStream>,
}

impl KeepAliveClient {
    pub fn new(ttl_seconds: i64) -> Self {
        Self {
            ttl_seconds,
            lease_id: 0,
            stream: None,
        }
    }

    async fn keep_alive(&mut self) -> Result<(), Status> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| Status::internal("keep-alive stream not prepared"))?;
        stream
            .send(&LeaseKeepAliveRequest { id: self.lease_id }, false)
            .await?;
        let response: LeaseKeepAliveResponse = stream
            .receive()
            .await?
            .ok_or_else(|| Status::unavailable("keep-alive stream ended"))?;
        // etcd answers a keep-alive for a lease it no longer has with TTL 0.
        if response.ttl <= 0 {
            return Err(Status::new(
                Code::NotFound,
                format!("lease {:x} expired", self.lease_id),
            ));
        }
        Ok(())
    }
}

impl Client for KeepAliveClient {
    async fn prepare(&mut self, channel: &Channel) -> Result<(), Status> {
        let granted: LeaseGrantResponse = channel
            .unary(
                LEASE_GRANT_PATH,
                &LeaseGrantRequest {
                    ttl: self.ttl_seconds,
                    id: 0,
                },
            )
            .await?;
        if !granted.error.is_empty() {
            return Err(Status::new(
                Code::Unknown,
                format!("lease grant: {}", granted.error),
            ));
        }
        self.lease_id = granted.id;
        self.stream = Some(channel.open(LEASE_KEEP_ALIVE_PATH).await?);
        Ok(())
    }

    async fn execute(&mut self, _channel: &Channel, _ticket: Ticket) -> Completion {
        self.keep_alive().await.into()
    }
}
