//! Leases: time-limited grants that keys attach to (etcd's lessor).
//!
//! - [`table`]: the node's lease table, shared by all cores: which leases
//!   exist, their TTLs and deadlines. Pure apart from reading the clock the
//!   caller passes in.
//! - [`id`]: etcd's lease ID generator, for grants without an ID.
//! - [`expiry`]: the expiry task's deadline heap, which finds expired
//!   leases without scanning the table.
//!
//! Where leases live:
//! - A lease is logged by its *home shard* ([`home_shard`]): the grant is a
//!   record in that shard's WAL, and the shard's snapshots list its leases.
//!   A lease enters the table only once its grant is durable, so no key can
//!   attach to a lease a crash could lose.
//! - Which keys are attached is not stored here: each shard's memtable
//!   indexes its own keys by lease (single writer), so attaching costs the
//!   put's shard nothing extra and replay rebuilds it.
//! - A revocation is a write over every shard (all held, so no put can
//!   attach meanwhile) that deletes the attached keys at one revision and
//!   logs the revocation on the home shard; the lease leaves the table once
//!   that is durable everywhere.
//! - Expiry is not logged (as in etcd): deadlines live in memory, a
//!   restarted server gives every lease its full TTL again, and the core-0
//!   expiry task revokes leases whose deadline passed.

pub mod expiry;
pub mod id;
pub mod table;

use crate::store::shard_map::{ShardId, ShardMap};

/// etcd's `MaxLeaseTTL`: larger TTLs are refused ("too large lease TTL").
pub const MAX_LEASE_TTL_SECONDS: i64 = 9_000_000_000;

/// etcd's minimum TTL with its default timing (100 ms heartbeat, 1 s
/// election timeout): `ceil(1.5 * election timeout)` = 2 s. Shorter grants
/// are raised to it, as etcd does, so a lease cannot expire before a client
/// could renew it.
pub const MIN_LEASE_TTL_SECONDS: i64 = 2;

/// How often expired leases are looked for (etcd checks every 500 ms).
pub const EXPIRY_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// The shard whose log holds `lease`'s grant and revocation.
pub fn home_shard(shard_map: &ShardMap, lease: i64) -> ShardId {
    shard_map.shard_of(&lease.to_be_bytes())
}
