//! What the monitoring thread asks of a core: a copy of its metrics, or
//! proof that it and its shards are serving.
//!
//! Each core runs one task answering these. The monitoring thread puts a
//! deadline on every answer, so a stalled core shows up as a failed health
//! check (or a scrape without that core's numbers), never as a hung
//! endpoint.

use std::rc::Rc;
use std::sync::Arc;

use futures_channel::oneshot;

use crate::metrics::{CoreMetrics, CoreSnapshot};
use crate::shard::ShardCommand;
use crate::store::key_space::KeySpace;
use crate::store::shard_map::ShardId;

pub enum CoreRequest {
    /// A copy of everything the core recorded.
    Metrics(oneshot::Sender<CoreSnapshot>),
    /// Serve a serializable read from every shard this core owns and have
    /// each of their workers answer; `Err` names the shard that could not.
    Probe(oneshot::Sender<Result<(), String>>),
}

/// What a core's control task works with.
pub struct CoreControl {
    pub metrics: Rc<CoreMetrics>,
    pub space: Arc<KeySpace>,
    /// The shards this core owns, with their command channels.
    pub owned_shards: Vec<(ShardId, flume::Sender<ShardCommand>)>,
}

impl CoreControl {
    /// Answers requests until the monitoring thread goes away.
    pub async fn serve(self, requests: flume::Receiver<CoreRequest>) {
        while let Ok(request) = requests.recv_async().await {
            match request {
                CoreRequest::Metrics(reply) => {
                    let _ = reply.send(self.metrics.snapshot());
                }
                CoreRequest::Probe(reply) => {
                    let _ = reply.send(self.probe().await);
                }
            }
        }
    }

    async fn probe(&self) -> Result<(), String> {
        let watermark = self.space.clock().watermark();
        for (shard, commands) in &self.owned_shards {
            // A serializable read, as a client's would be served here.
            let _ = self.space.memtable(*shard).get(b"health", watermark);
            let (reply, answered) = oneshot::channel();
            commands
                .send_async(ShardCommand::Probe { reply })
                .await
                .map_err(|_| format!("shard {shard} has stopped"))?;
            answered
                .await
                .map_err(|_| format!("shard {shard} has stopped"))?;
        }
        Ok(())
    }
}
