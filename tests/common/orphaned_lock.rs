//! An orphaned `Lock` waiter (issue 18, handler cancellation): a client
//! waits for a held lock, then resets its call's stream or drops its
//! connection. etcd deletes the waiter's key at once (its `Mutex.Lock`
//! unlocks when the call's context ends); a server that keeps the waiter
//! running leaves the key behind, and once the holder unlocks, the orphan
//! takes the lock for a client that is gone.
//!
//! Shared by `tests/abuse_cancellation.rs` and the measurement driver
//! `examples/abuse_orphaned_lock.rs` (included there with `#[path]`, next
//! to `raw_client.rs`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metastore::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    RangeRequest, RangeResponse,
};
use metastore::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

use super::raw_client::{Call, Connection, Message, Result};

/// How the waiter's client abandons its Lock call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandon {
    /// RST_STREAM(CANCEL) on the call's stream: a canceled context.
    ResetStream,
    /// The TCP connection closes: a client process that died.
    DropConnection,
}

/// What happened after the waiter abandoned its call.
#[derive(Debug, Clone)]
pub struct OrphanReport {
    /// How long the waiter's key stayed; `None`: still there after the wait.
    pub key_gone_after: Option<Duration>,
    /// After the holder unlocked, how long a new client waited for the
    /// lock; `None`: not acquired within the wait (the orphan took it).
    pub next_acquired_after: Option<Duration>,
}

/// Runs the scenario on lock `name` against the server at `addr`; every
/// wait is at most `patience`.
pub async fn abandon_lock_waiter(
    addr: SocketAddr,
    name: &str,
    how: Abandon,
    patience: Duration,
) -> Result<OrphanReport> {
    let control = Connection::connect(addr, 1 << 20).await?;
    // Every lease is kept alive from `control` throughout, so no key here
    // goes away by expiry: what removes the waiter's key is the server.
    let holder_lease = grant(&control).await?;
    let waiter_lease = grant(&control).await?;
    let next_lease = grant(&control).await?;
    let keep_alive = tokio::spawn(keep_alive(
        control.clone(),
        vec![holder_lease, waiter_lease, next_lease],
    ));
    let holder: LockResponse = control
        .unary("/v3lockpb.Lock/Lock", &lock_request(name, holder_lease))
        .await?;

    let waiter_connection = Connection::connect(addr, 1 << 20).await?;
    let mut waiter = waiter_connection.call("/v3lockpb.Lock/Lock").await?;
    waiter.send(&lock_request(name, waiter_lease), true)?;
    let waiter_key = Bytes::from(format!("{name}/{waiter_lease:x}"));
    wait_until(patience, || key_exists(&control, &waiter_key))
        .await?
        .ok_or("the waiter's key never appeared")?;

    let abandoned = Instant::now();
    match how {
        Abandon::ResetStream => waiter.reset(),
        Abandon::DropConnection => waiter_connection.drop_connection(),
    }
    let key_gone_after = wait_until(patience, || async {
        key_exists(&control, &waiter_key)
            .await
            .map(|exists| !exists)
    })
    .await?
    .map(|()| abandoned.elapsed());

    let _: UnlockResponse = control
        .unary(
            "/v3lockpb.Lock/Unlock",
            &UnlockRequest {
                key: holder.key.clone(),
            },
        )
        .await?;
    let unlocked = Instant::now();
    let next_request = lock_request(name, next_lease);
    let next = control.unary::<_, LockResponse>("/v3lockpb.Lock/Lock", &next_request);
    let next_acquired_after = match tokio::time::timeout(patience, next).await {
        Ok(Ok(_)) => Some(unlocked.elapsed()),
        Ok(Err(error)) => return Err(error),
        Err(_) => None,
    };
    keep_alive.abort();
    drop(waiter);
    Ok(OrphanReport {
        key_gone_after,
        next_acquired_after,
    })
}

fn lock_request(name: &str, lease: i64) -> LockRequest {
    LockRequest {
        name: Bytes::copy_from_slice(name.as_bytes()),
        lease,
    }
}

pub async fn grant(connection: &Connection) -> Result<i64> {
    let granted: LeaseGrantResponse = connection
        .unary(
            "/etcdserverpb.Lease/LeaseGrant",
            &LeaseGrantRequest { ttl: 30, id: 0 },
        )
        .await?;
    Ok(granted.id)
}

/// Renews `leases` every 500 ms until aborted.
pub async fn keep_alive(connection: Connection, leases: Vec<i64>) -> Result<()> {
    let mut call: Call = connection
        .call("/etcdserverpb.Lease/LeaseKeepAlive")
        .await?;
    loop {
        for &id in &leases {
            call.send(&LeaseKeepAliveRequest { id }, false)?;
            match call.next::<LeaseKeepAliveResponse>().await? {
                Message::Message(_) => {}
                Message::End(code, message) => {
                    return Err(format!("keepalive ended {code}: {message}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn key_exists(connection: &Connection, key: &Bytes) -> Result<bool> {
    let response: RangeResponse = connection
        .unary(
            "/etcdserverpb.KV/Range",
            &RangeRequest {
                key: key.clone(),
                count_only: true,
                ..Default::default()
            },
        )
        .await?;
    Ok(response.count > 0)
}

/// Polls `condition` every 10 ms for at most `patience`: `Some(())` once
/// it held, `None` if it never did.
pub async fn wait_until<Check, Checking>(
    patience: Duration,
    mut condition: Check,
) -> Result<Option<()>>
where
    Check: FnMut() -> Checking,
    Checking: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if condition().await? {
            return Ok(Some(()));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
