//! Reading a WAL back without changing it, then resuming it.
//!
//! `Wal::read` returns a [`WalReading`]: every readable record and how the
//! readable log ends ([`LogEnd`]). Nothing on the device is touched, so the
//! caller can first weigh evidence the log itself does not hold. A shard's
//! damaged last frame looks exactly like a torn final write, but if another
//! shard's log proves the frame had been made durable, it was acknowledged
//! and dropping it would lose data (Protocol-Aware Recovery; see
//! `shard::recovery`). Only once the node has decided does
//! [`WalReading::resume`] drop the torn tail and open the log for writing.

use super::device::{AlignedBuffer, BLOCK_SIZE, DeviceFile, StorageDevice};
use super::error::{WalError, is_out_of_space};
use super::log::{Record, Wal, WalOptions};
use super::recovery::{self, Recovered};

/// Where and why the readable part of a log ends early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDamage {
    /// The segment file holding the bad spot.
    pub file: String,
    /// Byte offset of the bad spot in `file`.
    pub offset: u64,
    pub reason: String,
}

/// How the readable part of a WAL ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LogEnd {
    /// Where nothing was ever written: zeros or the end of the last file.
    #[default]
    Clean,
    /// Bytes after the last valid frame that are not a valid frame, and
    /// nothing valid after them. Within this log alone that is a torn
    /// final write (never acknowledged) or a damaged last frame; the two
    /// look the same, and only evidence from other logs tells them apart.
    Damaged(LogDamage),
    /// A bad spot followed by valid later data: acknowledged records were
    /// lost. The log cannot resume; its readable prefix is still returned.
    Corrupt(LogDamage),
}

impl LogEnd {
    /// The damage, if the log does not end cleanly.
    pub fn damage(&self) -> Option<&LogDamage> {
        match self {
            LogEnd::Clean => None,
            LogEnd::Damaged(damage) | LogEnd::Corrupt(damage) => Some(damage),
        }
    }
}

/// A WAL read back, not yet resumed.
pub struct WalReading<D: StorageDevice> {
    pub(super) device: D,
    pub(super) recovered: Recovered<D::File>,
}

impl<D: StorageDevice> WalReading<D> {
    /// Reads every retained segment of the WAL on `device`. Errors only on
    /// I/O failures and on logs with no usable beginning (an oversized file,
    /// an unreadable oldest segment header); every other problem is a
    /// [`LogEnd`].
    pub async fn read(device: D) -> Result<WalReading<D>, WalError> {
        let recovered = recovery::recover(&device).await?;
        Ok(WalReading { device, recovered })
    }

    /// The records read, in sequence order.
    pub fn records(&self) -> &[Record] {
        &self.recovered.records
    }

    /// Takes the records out (they can be large); the reading can still
    /// resume.
    pub fn take_records(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.recovered.records)
    }

    /// How the readable log ends.
    pub fn end(&self) -> &LogEnd {
        &self.recovered.end
    }

    /// The log's id (random per WAL, in every header). 0 when it could not
    /// be read.
    pub fn log_id(&self) -> u64 {
        self.recovered.log_id
    }

    /// The sequence of the last readable record (0: none). Records are
    /// numbered without gaps from the first one ever written, released or
    /// not, so this is also how far the log reaches.
    pub fn readable_through(&self) -> u64 {
        self.recovered.next_record_sequence - 1
    }

    /// Opens the log for writing after its end: a damaged or torn tail is
    /// dropped (its bytes are overwritten by later frames) and segments
    /// holding nothing valid after it are removed. Refuses a corrupt log.
    /// The caller decides first that the damage may be dropped.
    pub async fn resume(self, options: WalOptions) -> Result<Wal<D>, WalError> {
        options.validate()?;
        let WalReading {
            device,
            mut recovered,
        } = self;
        match &recovered.end {
            LogEnd::Corrupt(damage) => {
                return Err(WalError::Corrupt {
                    file: damage.file.clone(),
                    offset: damage.offset,
                    reason: damage.reason.clone(),
                });
            }
            LogEnd::Damaged(damage) => tracing::warn!(
                file = %damage.file,
                offset = damage.offset,
                removed_segments = recovered.remove_on_resume.len(),
                "WAL recovery: dropping an unacknowledged torn write at the end of the log ({})",
                damage.reason
            ),
            LogEnd::Clean => {}
        }
        for name in &recovered.remove_on_resume {
            device
                .remove_file(name)
                .await
                .map_err(WalError::io("removing a torn segment", name))?;
        }
        if !recovered.remove_on_resume.is_empty() {
            device.sync_directory().await.map_err(WalError::io(
                "syncing the WAL directory after removing a torn segment",
                "WAL directory",
            ))?;
        }
        // A dropped torn tail is still on disk until the next frame
        // overwrites it. Erase its first block now, durably, before the file
        // grows: a frame cut short by the file's end reads as whole once the
        // file goes on with zeros, and a later recovery (after a restart
        // that wrote nothing) would bring back records this one dropped.
        if let Some(active) = recovered.active.as_mut()
            && recovered.dropped_tail
        {
            let mut zeros = AlignedBuffer::with_capacity(BLOCK_SIZE);
            zeros.resize(BLOCK_SIZE);
            let (result, _zeros) = active.file.write_at(active.write_offset, zeros).await;
            result.map_err(WalError::io("erasing a dropped torn tail", &active.name))?;
            active.file.sync_data().await.map_err(WalError::io(
                "syncing an erased torn tail (fdatasync)",
                &active.name,
            ))?;
            active.capacity = active.capacity.max(active.write_offset + BLOCK_SIZE as u64);
        }
        // Give a shortened or old-size active segment its full size again,
        // so the next frames do not rotate early. Not synced here: the next
        // `sync_data` of this file makes it durable with the frame. On a
        // full disk it keeps the size it has: the node starts read-only
        // rather than not at all.
        if let Some(active) = recovered.active.as_mut()
            && active.capacity < options.segment_bytes
        {
            match active.file.allocate(options.segment_bytes).await {
                Ok(()) => active.capacity = options.segment_bytes,
                Err(error) if is_out_of_space(&error) => tracing::warn!(
                    file = %active.name,
                    %error,
                    "cannot grow the active WAL segment: the disk is full"
                ),
                Err(error) => {
                    return Err(WalError::io(
                        "preallocating the active segment",
                        &active.name,
                    )(error));
                }
            }
        }
        let mut wal = Wal::from_recovered(device, options, recovered);
        wal.adopt_leftover_spare().await?;
        Ok(wal)
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::FRAME_HEADER_LEN;
    use super::super::tests::{SMALL, assert_records, frame_offsets, open, run, sync_frame};
    use super::super::{MemoryDevice, Wal};
    use super::*;

    /// Within one log a damaged last frame cannot be told from a torn write,
    /// so reading reports it (where, and why) and changes nothing; only the
    /// node, which can consult other shards' logs (`shard::durable_loss`),
    /// decides to drop it by resuming.
    #[test]
    fn flipped_bit_in_the_last_frame_is_reported_and_dropped_only_on_resume() {
        run(async {
            let device = MemoryDevice::new();
            let (mut wal, _) = open(&device).await;
            let mut expected = Vec::new();
            for frame in 0..4 {
                expected.extend(sync_frame(&mut wal, &[frame * 500 + 1]).await);
            }
            sync_frame(&mut wal, &[6000, 10]).await;
            drop(wal);
            let name = device.file_names()[0].clone();
            let offsets = frame_offsets(&device.file_bytes(&name).expect("segment"));
            device
                .flip_bit(&name, offsets[4] as usize + 3000, 5)
                .expect("flip");
            let before = device.file_bytes(&name).expect("segment");
            let reading = Wal::read(device.clone()).await.expect("read");
            assert_records(reading.records(), &expected);
            assert_eq!(reading.readable_through(), expected.len() as u64);
            let LogEnd::Damaged(damage) = reading.end() else {
                panic!("a damaged end expected, got {:?}", reading.end())
            };
            assert_eq!(
                (damage.file.as_str(), damage.offset),
                (name.as_str(), offsets[4])
            );
            assert!(damage.reason.contains("checksum"), "{}", damage.reason);
            drop(reading);
            assert_eq!(
                device.file_bytes(&name).expect("segment"),
                before,
                "reading changes nothing"
            );
            let (mut wal, records) = open(&device).await;
            assert_records(&records, &expected);
            expected.extend(sync_frame(&mut wal, &[42]).await);
            drop(wal);
            let (_, records) = open(&device).await;
            assert_records(&records, &expected);
        });
    }

    /// A bad spot with valid frames after it: reading still returns the
    /// records before it (for `metastore repair`), but the log cannot resume.
    #[test]
    fn corruption_inside_the_log_is_read_up_to_the_damage_and_refuses_to_resume() {
        run(async {
            let device = MemoryDevice::new();
            let (mut wal, _) = open(&device).await;
            let mut expected = Vec::new();
            for frame in 0..5 {
                let synced = sync_frame(&mut wal, &[frame * 300 + 7]).await;
                if frame < 2 {
                    expected.extend(synced);
                }
            }
            drop(wal);
            let name = device.file_names()[0].clone();
            let offsets = frame_offsets(&device.file_bytes(&name).expect("segment"));
            device
                .flip_bit(&name, offsets[2] as usize + FRAME_HEADER_LEN + 1, 0)
                .expect("flip");
            let reading = Wal::read(device.clone()).await.expect("read");
            assert_records(reading.records(), &expected);
            assert!(
                matches!(reading.end(), LogEnd::Corrupt(damage) if damage.offset == offsets[2]),
                "{:?}",
                reading.end()
            );
            match reading.resume(SMALL).await {
                Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, offsets[2]),
                Err(other) => panic!("expected corruption, got {other:?}"),
                Ok(_) => panic!("a corrupt log must not resume"),
            }
        });
    }
}
