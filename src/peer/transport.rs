//! Raft messages and forwarded calls between members over TCP
//! (`docs/peer-protocol.md`).
//!
//! Each member dials every other member once and sends all of its groups'
//! messages for that member over that one connection, batched: whatever
//! the shard workers queued while the last batch was written leaves in the
//! next frame. Messages arrive on the connections other members dialed and
//! go to the shard workers' channels. Delivery is best effort, as Raft
//! expects of a network: a queue that is full or a connection that breaks
//! drops messages, and the sender redials with a backoff.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use protobuf::Message as _;
use raft::eraftpb::Message;

use super::forward::{ForwardReply, ForwardRequest};
use super::frame::{
    BATCH_TARGET_BYTES, Batch, Hello, HelloAnswer, MemberAttributes, PeerFrameError,
};
use super::join::{ClusterDescription, JOIN_QUESTION};
use super::queues::{PeerQueueTable, PeerQueues};
use super::snapshot_stream::{SnapshotAssembly, is_snapshot, split};
use crate::data_dir::MemberRecord;
use crate::membership::{Configurations, MemberDirectory};
use crate::shard::ShardCommand;
use crate::shard::forwarding::{CallQueues, ForwardTable};
use crate::shard::peers::PeerOutbox;

/// Messages queued per peer before new ones are dropped: Raft resends
/// what matters, and a peer that does not take them is down or slow.
pub const PEER_QUEUE_CAPACITY: usize = 4096;

/// Who this member is, for handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    pub cluster_id: u64,
    pub member_id: u64,
}

/// What a member sends another.
#[derive(Debug)]
pub enum Outgoing {
    /// A Raft message of the group (shard) named.
    Raft(u32, Message),
    /// A call for the lead member (`shard::forwarding`).
    Request(ForwardRequest),
    /// The answer to a call the other member forwarded.
    Reply(ForwardReply),
}

impl Outgoing {
    /// Adds itself to `batch`; returns about how many bytes it adds.
    fn add_to(self, batch: &mut Batch) -> usize {
        match self {
            Outgoing::Raft(shard, message) => {
                let size = message.compute_size() as usize;
                batch.messages.push((shard, message));
                size
            }
            Outgoing::Request(request) => {
                let size = request.encoded_len();
                batch.requests.push(request);
                size
            }
            Outgoing::Reply(reply) => {
                let size = reply.encoded_len();
                batch.replies.push(reply);
                size
            }
        }
    }
}

/// A shard worker's outbox: its messages go to the queue of the member
/// they are addressed to.
pub struct PeerRoutes {
    pub shard: u32,
    pub queues: PeerQueues,
    /// Messages dropped because a queue was full or no route existed.
    pub dropped: Rc<Cell<u64>>,
}

impl PeerOutbox for PeerRoutes {
    fn send(&self, message: Message) {
        let to = message.to;
        if !self
            .queues
            .try_send(to, Outgoing::Raft(self.shard, message))
        {
            self.dropped.set(self.dropped.get() + 1);
        }
    }
}

/// Sends what is queued for member `to` at `address`, until every sender
/// of the queue is gone: dials, handshakes, then writes batches. A failed
/// dial or write drops the batch and redials after a backoff (10 ms,
/// doubling to 1 s). Snapshots go to a task of their own
/// ([`send_snapshots_to_peer`]); `shards` hear how each went. Each new
/// connection's first frame carries this member's `attributes`, and so
/// does a frame every [`ANNOUNCE_INTERVAL`] (one of its own when idle).
pub async fn send_to_peer(
    identity: PeerIdentity,
    (to, address): (u64, SocketAddr),
    queue: flume::Receiver<Outgoing>,
    table: Arc<PeerQueueTable>,
    shards: Rc<[flume::Sender<ShardCommand>]>,
    attributes: Rc<MemberAttributes>,
) {
    let (snapshots, snapshot_queue) = flume::bounded(SNAPSHOTS_QUEUED);
    monoio::spawn(send_snapshots_to_peer(
        identity,
        to,
        address,
        snapshot_queue,
        shards.clone(),
    ));
    // A snapshot leaves the batch for its own connection.
    let divert = |item: Outgoing| match item {
        Outgoing::Raft(shard, message) if is_snapshot(&message) => {
            if snapshots.try_send((shard, message)).is_err() {
                report_snapshot(&shards, shard, to, false);
            }
            None
        }
        other => Some(other),
    };
    let mut backoff = Duration::from_millis(10);
    let mut connection: Option<TcpStream> = None;
    let mut announced_at: Option<std::time::Instant> = None;
    loop {
        let announce_due =
            connection.is_none() || announced_at.is_none_or(|at| at.elapsed() >= ANNOUNCE_INTERVAL);
        let first = match monoio::time::timeout(ANNOUNCE_INTERVAL / 10, queue.recv_async()).await {
            Ok(Ok(first)) => divert(first),
            Ok(Err(_)) => return,
            // The member was removed (or moved): copies of its queue may
            // linger on cores that have not sent since, but nothing is
            // for it any more.
            Err(_) if !table.contains(to) => return,
            // Nothing to send, but the member should hear who this one is
            // (two followers may never exchange a Raft message).
            Err(_) if announce_due => None,
            Err(_) => continue,
        };
        let mut batch = Batch::default();
        let mut batch_bytes = first.map_or(0, |first| first.add_to(&mut batch));
        while batch_bytes < BATCH_TARGET_BYTES {
            let Ok(next) = queue.try_recv() else {
                break;
            };
            if let Some(next) = divert(next) {
                batch_bytes += next.add_to(&mut batch);
            }
        }
        if batch == Batch::default() && !announce_due {
            continue;
        }
        if connection.is_none() {
            match dial(identity, to, address).await {
                Ok(stream) => {
                    connection = Some(stream);
                    backoff = Duration::from_millis(10);
                }
                Err(error) => {
                    tracing::debug!(to, %address, %error, "cannot reach peer; dropping a batch");
                    monoio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        if connection.is_some()
            && (announce_due || announced_at.is_none_or(|at| at.elapsed() >= ANNOUNCE_INTERVAL))
        {
            batch.attributes = Some((*attributes).clone());
            announced_at = Some(std::time::Instant::now());
        }
        let mut frame = Vec::with_capacity(batch_bytes + 256);
        batch.encode(&mut frame);
        if let Some(stream) = connection.as_mut() {
            let (written, _) = stream.write_all(frame).await;
            if let Err(error) = written {
                tracing::debug!(to, %error, "peer connection broke; redialing");
                connection = None;
                announced_at = None;
            }
        }
    }
}

/// How often a sender repeats who this member is (`MemberAttributes`),
/// with traffic or without: a member that restarted learns it again, and
/// a connection that broke while idle is found and redialed.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(10);

/// Snapshots waiting for a member's snapshot connection; more are
/// reported failed at once (Raft asks again after a heartbeat).
const SNAPSHOTS_QUEUED: usize = 4;

/// Tells group `shard`'s worker whether its snapshot reached member `to`.
fn report_snapshot(shards: &[flume::Sender<ShardCommand>], shard: u32, to: u64, finished: bool) {
    if let Some(worker) = shards.get(shard as usize) {
        let _ = worker.try_send(ShardCommand::SnapshotReport { to, finished });
    }
}

/// Streams each snapshot queued for member `to` in chunks, on a new
/// connection per snapshot (so the member pair's main connection keeps
/// carrying heartbeats), and reports the outcome to the group's worker.
async fn send_snapshots_to_peer(
    identity: PeerIdentity,
    to: u64,
    address: SocketAddr,
    queue: flume::Receiver<(u32, Message)>,
    shards: Rc<[flume::Sender<ShardCommand>]>,
) {
    while let Ok((shard, message)) = queue.recv_async().await {
        let index = message.get_snapshot().get_metadata().index;
        let bytes = message.get_snapshot().data.len();
        let sent = stream_snapshot(identity, to, address, shard, message).await;
        match &sent {
            Ok(()) => {
                tracing::info!(
                    to,
                    shard,
                    index,
                    bytes,
                    "sent a snapshot to a member behind the log"
                )
            }
            Err(error) => tracing::warn!(to, shard, index, %error, "sending a snapshot failed"),
        }
        report_snapshot(&shards, shard, to, sent.is_ok());
    }
}

async fn stream_snapshot(
    identity: PeerIdentity,
    to: u64,
    address: SocketAddr,
    shard: u32,
    message: Message,
) -> Result<(), PeerError> {
    let mut stream = dial(identity, to, address).await?;
    for chunk in split(shard, message) {
        let mut frame = Vec::with_capacity(chunk.data.len() + 256);
        Batch {
            snapshot_chunks: vec![chunk],
            ..Default::default()
        }
        .encode(&mut frame);
        let (written, _) = stream.write_all(frame).await;
        written?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] PeerFrameError),
    #[error("peer refused the handshake: {0:?}")]
    Refused(HelloAnswer),
    #[error("peer closed the connection")]
    Closed,
    #[error("peer named shard {0}, which does not exist here")]
    UnknownShard(u32),
}

/// Dials member `to` and introduces this member.
pub async fn dial(
    identity: PeerIdentity,
    to: u64,
    address: SocketAddr,
) -> Result<TcpStream, PeerError> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut hello = Vec::with_capacity(Hello::LEN);
    Hello {
        cluster_id: identity.cluster_id,
        from_member: identity.member_id,
        to_member: to,
    }
    .encode(&mut hello);
    let (written, _) = stream.write_all(hello).await;
    written?;
    let (read, answer) = stream.read(vec![0u8; 1]).await;
    if read? == 0 {
        return Err(PeerError::Closed);
    }
    match HelloAnswer::decode(answer[0])? {
        HelloAnswer::Accepted => Ok(stream),
        refused => Err(PeerError::Refused(refused)),
    }
}

/// Where what arrives from other members goes.
#[derive(Clone)]
pub struct PeerInbox {
    /// Each shard's worker, indexed by shard: Raft messages.
    pub shards: Rc<[flume::Sender<ShardCommand>]>,
    /// Calls for this member to carry out as the lead member, with the
    /// member that forwarded each, spread over the cores.
    pub calls: CallQueues,
    /// This member's callers waiting for the lead member's answers.
    pub waiting: Arc<ForwardTable>,
    /// What other members said of themselves.
    pub directory: Arc<MemberDirectory>,
}

impl PeerInbox {
    /// Hands on what one frame from member `from` carried: each message to
    /// the worker of its shard, each call to the executors, each answer to
    /// its caller, each snapshot chunk to the connection's `assembly` (a
    /// whole snapshot to its worker). `Ok(false)`: the workers are gone
    /// (the member stops).
    pub async fn deliver(
        &self,
        from: u64,
        batch: Batch,
        assembly: &mut SnapshotAssembly,
    ) -> Result<bool, PeerError> {
        if let Some(attributes) = batch.attributes {
            self.directory.record(from, attributes);
        }
        let mut messages = batch.messages;
        for chunk in batch.snapshot_chunks {
            if let Some(whole) = assembly.accept(chunk)? {
                messages.push(whole);
            }
        }
        for (shard, message) in messages {
            let worker = self
                .shards
                .get(shard as usize)
                .ok_or(PeerError::UnknownShard(shard))?;
            if worker
                .send_async(ShardCommand::Peer(Box::new(message)))
                .await
                .is_err()
            {
                return Ok(false);
            }
        }
        for request in batch.requests {
            if !self.calls.push(from, request) {
                return Ok(false);
            }
        }
        for reply in batch.replies {
            self.waiting.answer(reply);
        }
        Ok(true)
    }
}

/// Who may connect (the members as this one applied them, read at each
/// handshake, so a member added since is accepted and one removed is
/// not), and what a member joining the cluster is told (`super::join`).
pub struct Acceptance {
    pub configurations: Arc<Configurations>,
    /// The members the cluster was bootstrapped with.
    pub initial_members: Vec<MemberRecord>,
    pub shard_count: usize,
}

impl Acceptance {
    fn members(&self) -> Vec<u64> {
        self.configurations
            .members()
            .iter()
            .map(|member| member.id)
            .collect()
    }

    fn describe(&self, cluster_id: u64) -> ClusterDescription {
        ClusterDescription {
            cluster_id,
            shard_count: self.shard_count,
            initial_members: self.initial_members.clone(),
            members: self.configurations.members(),
        }
    }
}

/// Accepts other members' connections and hands on what they send
/// (`PeerInbox::deliver`). Runs until the listener fails.
pub async fn serve_peers(
    listener: TcpListener,
    identity: PeerIdentity,
    acceptance: Rc<Acceptance>,
    inbox: PeerInbox,
) -> std::io::Result<()> {
    loop {
        let (stream, address) = listener.accept().await?;
        let (acceptance, inbox) = (acceptance.clone(), inbox.clone());
        monoio::spawn(async move {
            if let Err(error) = receive_from_peer(stream, identity, &acceptance, &inbox).await {
                tracing::warn!(%address, %error, "peer connection ended");
            }
        });
    }
}

/// One accepted connection: the handshake, then frames until it closes
/// (or, for a member joining, the cluster's description).
async fn receive_from_peer(
    stream: TcpStream,
    identity: PeerIdentity,
    acceptance: &Acceptance,
    inbox: &PeerInbox,
) -> Result<(), PeerError> {
    let mut reader = Reader {
        stream,
        buffered: Vec::new(),
        chunk: Vec::with_capacity(READ_CHUNK_BYTES),
    };
    let hello = loop {
        if let Some(hello) = Hello::decode(&reader.buffered)? {
            break hello;
        }
        reader.read_more().await?;
    };
    reader.buffered.drain(..Hello::LEN);
    if hello == JOIN_QUESTION {
        let mut answer = vec![HelloAnswer::Accepted as u8];
        acceptance.describe(identity.cluster_id).encode(&mut answer);
        let (written, _) = reader.stream.write_all(answer).await;
        written?;
        return Ok(());
    }
    let members = acceptance.members();
    let answer = HelloAnswer::judge(&hello, identity.cluster_id, identity.member_id, &members);
    let (written, _) = reader.stream.write_all(vec![answer as u8]).await;
    written?;
    if answer != HelloAnswer::Accepted {
        return Err(PeerError::Refused(answer));
    }
    let mut assembly = SnapshotAssembly::default();
    loop {
        while let Some((batch, used)) = Batch::decode(&reader.buffered)? {
            reader.buffered.drain(..used);
            if !inbox
                .deliver(hello.from_member, batch, &mut assembly)
                .await?
            {
                // The workers are gone: this member is stopping.
                return Ok(());
            }
        }
        reader.read_more().await?;
    }
}

/// Bytes read from a socket and not decoded yet.
struct Reader {
    stream: TcpStream,
    buffered: Vec<u8>,
    /// What the next read fills (monoio reads into an owned buffer).
    chunk: Vec<u8>,
}

const READ_CHUNK_BYTES: usize = 64 * 1024;

impl Reader {
    /// Appends what the socket has; `Closed` at end of stream.
    async fn read_more(&mut self) -> Result<(), PeerError> {
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.clear();
        let (read, chunk) = self.stream.read(chunk).await;
        let read = read?;
        self.buffered.extend_from_slice(&chunk[..read]);
        self.chunk = chunk;
        if read == 0 {
            return Err(PeerError::Closed);
        }
        Ok(())
    }
}
