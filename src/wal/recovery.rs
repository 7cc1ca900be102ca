//! Recovery: reads every retained segment, returns the valid records, and
//! says where and how the readable log ends (`LogEnd`). It changes nothing
//! on the device: `WalReading::resume` acts on the outcome.
//!
//! The rule (docs/wal-format.md, "Recovery"):
//! - Frames must follow each other with consecutive frame sequence numbers
//!   and record sequences; segments must continue exactly where the
//!   previous one stopped.
//! - Reading a segment stops at the first position that is not a valid next
//!   frame (an all-zero block, or anything invalid).
//! - Then every block after that position (in this and any later segment
//!   that does not continue the log) is scanned for a frame header with a
//!   valid checksum, this log's id and a frame sequence greater than the one
//!   expected. If one exists, acknowledged data after the stop point is lost:
//!   `LogEnd::Corrupt`, naming the file and offset of the stop point.
//! - Otherwise what follows is a damaged tail (`LogEnd::Damaged`) or nothing
//!   at all (`LogEnd::Clean`). Resuming drops the tail, removes later
//!   segments holding nothing valid, and writes on from the stop point.
//!
//! Why this is safe: every sync writes whole new blocks after all
//! acknowledged frames, and frames are acknowledged one at a time. So a
//! crash can damage only the one frame (and, on rotation, the one segment
//! header) being written, and nothing acknowledged can follow it. A damaged
//! last frame that was durable (bit rot, not a crash) looks the same here;
//! the node tells them apart with other shards' logs (`shard::durable_loss`).
//!
//! Memory: segments are read through a 1 MiB window; a frame is read whole
//! only after its length was checked against the file's real length.

use bytes::Bytes;

use super::device::{BLOCK_SIZE, DeviceFile, StorageDevice};
use super::error::WalError;
use super::format::{
    FIRST_FRAME_OFFSET, FRAME_HEADER_LEN, FrameHeader, MAX_FRAME_PAYLOAD, SegmentHeader,
    decode_frame_header, decode_records, decode_segment_header, frame_len_for_payload, is_zeroed,
    parse_segment_file_name,
};
use super::log::{ActiveSegment, Record, Segment, new_log_id};
use super::reading::{LogDamage, LogEnd};

/// Bytes read per device read while scanning a segment.
const READ_WINDOW: usize = 1 << 20;
/// No segment this WAL writes is longer: one header block plus one frame
/// of the largest payload a header can describe. A longer file is not ours
/// (and scanning it block by block could take forever).
const MAX_SEGMENT_LEN: u64 = FIRST_FRAME_OFFSET + frame_len_for_payload(MAX_FRAME_PAYLOAD) as u64;
/// Sequences at or above this are refused, so counting past them can never
/// overflow (a real log would need centuries to get here).
const MAX_SEQUENCE: u64 = 1 << 62;

/// What `Wal::open` starts from.
pub(super) struct Recovered<F> {
    pub(super) log_id: u64,
    pub(super) segments: Vec<Segment>,
    pub(super) active: Option<ActiveSegment<F>>,
    pub(super) records: Vec<Record>,
    pub(super) next_record_sequence: u64,
    pub(super) next_frame_sequence: u64,
    /// How the readable log ends. Only the node can tell a damaged last
    /// frame from a torn write (other shards' logs may prove it durable),
    /// so reading never decides it and never changes a file.
    pub(super) end: LogEnd,
    /// Segments after the end of the log that hold nothing valid (a torn
    /// segment creation); `WalReading::resume` removes them.
    pub(super) remove_on_resume: Vec<String>,
    /// Bytes at or after the active segment's write offset are a dropped
    /// torn tail: resuming erases their first block before the file can
    /// grow, so that no later recovery reads them back
    /// (`WalReading::resume`).
    pub(super) dropped_tail: bool,
}

/// A segment file found on the device.
struct SegmentFile<F> {
    name: String,
    /// From the file name.
    first_record_sequence: u64,
    file: F,
    len: u64,
}

/// What the next valid frame must look like.
#[derive(Debug, Clone, Copy)]
struct Expected {
    /// `None` only while recovering a WAL whose very first segment header
    /// is unreadable (any log id then counts as evidence of later data).
    log_id: Option<u64>,
    frame_sequence: u64,
    record_sequence: u64,
}

/// Why reading a segment stopped.
enum Stop {
    /// An all-zero block or the end of the file: nothing written there.
    Zero,
    /// Bytes that are not the valid next frame.
    Invalid(String),
    /// The segment's own header is unusable (only for the first segment;
    /// later ones are checked before they are entered).
    BadSegmentHeader(String),
}

enum HeaderCheck {
    /// Valid and continues the log exactly.
    Continues,
    /// Valid checksum, but it does not continue the log: written by us (or
    /// another log) at some point, so never a torn write.
    Mismatch(String),
    /// Unreadable: may be a torn segment creation.
    Invalid(String),
}

/// Reads a file through a window of [`READ_WINDOW`] bytes.
struct WindowReader<'file, F> {
    file: &'file F,
    len: u64,
    window_start: u64,
    window: Vec<u8>,
}

impl<'file, F: DeviceFile> WindowReader<'file, F> {
    fn new(file: &'file F, len: u64) -> Self {
        WindowReader {
            file,
            len,
            window_start: 0,
            window: Vec::new(),
        }
    }

    /// Up to `len` bytes at `offset`; fewer only at the end of the file.
    /// The caller bounds `len` by the file's length.
    async fn bytes(&mut self, offset: u64, len: usize) -> std::io::Result<&[u8]> {
        let window_end = self.window_start + self.window.len() as u64;
        let covered = offset >= self.window_start
            && (offset + len as u64 <= window_end
                || (window_end == self.len && offset <= window_end));
        if !covered {
            let available = self.len.saturating_sub(offset);
            let read_len = (len.max(READ_WINDOW) as u64).min(available) as usize;
            self.window = if read_len == 0 {
                Vec::new()
            } else {
                self.file.read_at(offset, read_len).await?
            };
            self.window_start = offset;
        }
        let start = (offset - self.window_start) as usize;
        let start = start.min(self.window.len());
        let end = start.saturating_add(len).min(self.window.len());
        Ok(&self.window[start..end])
    }
}

fn corrupt(file: &str, offset: u64, reason: String) -> WalError {
    WalError::Corrupt {
        file: file.to_owned(),
        offset,
        reason,
    }
}

fn describe(stop: &Stop) -> String {
    match stop {
        Stop::Zero => "the log ends here (zeros)".to_owned(),
        Stop::Invalid(reason) => format!("invalid frame ({reason})"),
        Stop::BadSegmentHeader(reason) => format!("invalid segment header ({reason})"),
    }
}

pub(super) async fn recover<D: StorageDevice>(device: &D) -> Result<Recovered<D::File>, WalError> {
    let listed = device
        .list_files()
        .await
        .map_err(WalError::io("listing segment files", "WAL directory"))?;
    let mut names: Vec<(u64, String)> = listed
        .into_iter()
        .filter_map(|name| parse_segment_file_name(&name).map(|sequence| (sequence, name)))
        .collect();
    names.sort();
    if names.is_empty() {
        return Ok(empty_log());
    }

    let mut segments = Vec::with_capacity(names.len());
    for (first_record_sequence, name) in names {
        let file = device
            .open_file(&name, false)
            .await
            .map_err(WalError::io("opening a segment", &name))?;
        let len = file
            .len()
            .await
            .map_err(WalError::io("reading a segment's length", &name))?;
        if len > MAX_SEGMENT_LEN {
            return Err(corrupt(
                &name,
                0,
                format!(
                    "the file is {len} bytes, longer than any segment this WAL writes ({MAX_SEGMENT_LEN} bytes)"
                ),
            ));
        }
        segments.push(SegmentFile {
            name,
            first_record_sequence,
            file,
            len,
        });
    }

    let mut records = Vec::new();
    let first = &segments[0];
    let mut index = 0;
    let (mut expected, mut stop) = match read_header(first).await? {
        Ok(header) if header.first_record_sequence != first.first_record_sequence => {
            return Err(corrupt(
                &first.name,
                0,
                format!(
                    "the segment header says its first record is {}, the file name says {}",
                    header.first_record_sequence, first.first_record_sequence
                ),
            ));
        }
        Ok(header)
            if header.first_frame_sequence >= MAX_SEQUENCE
                || header.first_record_sequence >= MAX_SEQUENCE =>
        {
            return Err(corrupt(
                &first.name,
                0,
                "implausibly large sequence numbers".to_owned(),
            ));
        }
        Ok(header) => {
            let mut expected = Expected {
                log_id: Some(header.log_id),
                frame_sequence: header.first_frame_sequence,
                record_sequence: header.first_record_sequence,
            };
            let stop = read_frames(first, &mut expected, &mut records).await?;
            (expected, stop)
        }
        // A new WAL's first segment whose creation was torn: the header and
        // first frame go out in one write, so the header may be missing
        // while the (never acknowledged) frame 1 is intact.
        Err(reason) if first.first_record_sequence == 1 => {
            let expected = Expected {
                log_id: None,
                frame_sequence: 1,
                record_sequence: 1,
            };
            (expected, (0, Stop::BadSegmentHeader(reason)))
        }
        // An older segment was released, so this header was durable once.
        Err(reason) => {
            return Err(corrupt(
                &first.name,
                0,
                format!("invalid segment header ({reason}) in the oldest retained segment"),
            ));
        }
    };

    // Invariant at the top of the loop: segments[..=index] were read, and
    // `stop` says where and why reading segment `index` ended.
    loop {
        let (offset, reason) = &stop;
        let offset = *offset;
        let segment = &segments[index];
        let scan = scan_for_later_frame(segment, offset.max(FIRST_FRAME_OFFSET), &expected).await?;
        if let Some((found_at, found_sequence)) = scan.later_frame {
            return Ok(stopped_by_corruption(
                records,
                &expected,
                &segment.name,
                offset,
                format!(
                    "{}, but a valid later frame (frame {found_sequence}) follows at byte offset {found_at} of the \
                     same file",
                    describe(reason)
                ),
            ));
        }
        let dropped_bytes = scan.saw_data || !matches!(reason, Stop::Zero);

        if let Some(next) = segments.get(index + 1) {
            match check_next_header(next, &expected).await? {
                HeaderCheck::Continues if !matches!(reason, Stop::BadSegmentHeader(_)) => {
                    if dropped_bytes {
                        tracing::warn!(
                            file = %segment.name,
                            offset,
                            "WAL recovery: skipping an unacknowledged torn write at the end of a segment \
                             (the log continues in {})",
                            next.name
                        );
                    }
                    index += 1;
                    let next = &segments[index];
                    stop = read_frames(next, &mut expected, &mut records).await?;
                    continue;
                }
                check @ (HeaderCheck::Continues | HeaderCheck::Mismatch(_)) => {
                    let detail = match check {
                        HeaderCheck::Mismatch(detail) => detail,
                        _ => "has a valid header".to_owned(),
                    };
                    return Ok(stopped_by_corruption(
                        records,
                        &expected,
                        &segment.name,
                        offset,
                        format!(
                            "{} at frame {}, record {}, but the next segment {} {detail}",
                            describe(reason),
                            expected.frame_sequence,
                            expected.record_sequence,
                            next.name
                        ),
                    ));
                }
                HeaderCheck::Invalid(next_reason) => {
                    // Only a torn creation of the next segment can explain
                    // it; then nothing valid may follow anywhere.
                    for later in &segments[index + 2..] {
                        if let Ok(Ok(Some(_))) = read_block0(later)
                            .await
                            .map(|block| decode_segment_header(&block))
                        {
                            return Ok(stopped_by_corruption(
                                records,
                                &expected,
                                &segment.name,
                                offset,
                                format!(
                                    "{}; segment {} after it is unreadable ({next_reason}), yet segment {} after \
                                     that has a valid header",
                                    describe(reason),
                                    next.name,
                                    later.name
                                ),
                            ));
                        }
                    }
                    for later in &segments[index + 1..] {
                        let scan =
                            scan_for_later_frame(later, FIRST_FRAME_OFFSET, &expected).await?;
                        if let Some((found_at, found_sequence)) = scan.later_frame {
                            return Ok(stopped_by_corruption(
                                records,
                                &expected,
                                &segment.name,
                                offset,
                                format!(
                                    "{}, but a valid later frame (frame {found_sequence}) exists in {} at byte \
                                     offset {found_at}",
                                    describe(reason),
                                    later.name
                                ),
                            ));
                        }
                    }
                }
            }
        }

        // Torn tail, damaged last frame, or clean end: what follows is
        // dropped when the log resumes, if the node decides it may.
        let keep = match reason {
            Stop::BadSegmentHeader(_) => index,
            _ => index + 1,
        };
        let end = if dropped_bytes || keep < segments.len() {
            let mut reason = describe(reason);
            if let Some(unreadable) = segments.get(index + 1).filter(|_| keep > index) {
                reason.push_str(&format!(
                    "; the next segment {} has an unreadable header",
                    unreadable.name
                ));
            }
            LogEnd::Damaged(LogDamage {
                file: segment.name.clone(),
                offset,
                reason,
            })
        } else {
            LogEnd::Clean
        };
        let remove_on_resume = segments.drain(keep..).map(|dropped| dropped.name).collect();
        let Some(last) = segments.pop() else {
            return Ok(Recovered {
                end,
                remove_on_resume,
                ..empty_log()
            });
        };
        let mut retained: Vec<Segment> = segments
            .into_iter()
            .map(|segment| Segment {
                name: segment.name,
                first_record_sequence: segment.first_record_sequence,
            })
            .collect();
        retained.push(Segment {
            name: last.name.clone(),
            first_record_sequence: last.first_record_sequence,
        });
        // Capacity: whole blocks the file has; `Wal::open` grows it to the
        // configured segment size if it is shorter.
        let capacity = last.len - last.len % BLOCK_SIZE as u64;
        return Ok(Recovered {
            log_id: expected.log_id.unwrap_or_else(new_log_id),
            segments: retained,
            active: Some(ActiveSegment {
                file: last.file,
                name: last.name,
                capacity: capacity.max(offset),
                write_offset: offset,
                zeroed_up_to: offset,
            }),
            records,
            next_record_sequence: expected.record_sequence,
            next_frame_sequence: expected.frame_sequence,
            end,
            remove_on_resume,
            dropped_tail: dropped_bytes && offset < last.len,
        });
    }
}

fn empty_log<F>() -> Recovered<F> {
    Recovered {
        log_id: new_log_id(),
        segments: Vec::new(),
        active: None,
        records: Vec::new(),
        next_record_sequence: 1,
        next_frame_sequence: 1,
        end: LogEnd::Clean,
        remove_on_resume: Vec::new(),
        dropped_tail: false,
    }
}

/// The readable prefix of a log that cannot resume: acknowledged data
/// after `offset` of `file` is unreadable.
fn stopped_by_corruption<F>(
    records: Vec<Record>,
    expected: &Expected,
    file: &str,
    offset: u64,
    reason: String,
) -> Recovered<F> {
    Recovered {
        log_id: expected.log_id.unwrap_or(0),
        segments: Vec::new(),
        active: None,
        records,
        next_record_sequence: expected.record_sequence,
        next_frame_sequence: expected.frame_sequence,
        end: LogEnd::Corrupt(LogDamage {
            file: file.to_owned(),
            offset,
            reason,
        }),
        remove_on_resume: Vec::new(),
        dropped_tail: false,
    }
}

/// Block 0 of a segment (shorter if the file is).
async fn read_block0<F: DeviceFile>(segment: &SegmentFile<F>) -> Result<Vec<u8>, WalError> {
    let len = segment.len.min(BLOCK_SIZE as u64) as usize;
    segment
        .file
        .read_at(0, len)
        .await
        .map_err(WalError::io("reading a segment header", &segment.name))
}

/// The segment's header, or why it is unusable.
async fn read_header<F: DeviceFile>(
    segment: &SegmentFile<F>,
) -> Result<Result<SegmentHeader, String>, WalError> {
    let block = read_block0(segment).await?;
    Ok(match decode_segment_header(&block) {
        Ok(Some(header)) => Ok(header),
        Ok(None) => Err(format!(
            "the file is only {} bytes, too short for a segment header",
            segment.len
        )),
        Err(_) if is_zeroed(&block) => Err("the segment header block is all zeros".to_owned()),
        Err(error) => Err(error.to_string()),
    })
}

/// Whether `segment` continues the log exactly where `expected` says.
async fn check_next_header<F: DeviceFile>(
    segment: &SegmentFile<F>,
    expected: &Expected,
) -> Result<HeaderCheck, WalError> {
    let header = match read_header(segment).await? {
        Ok(header) => header,
        Err(reason) => return Ok(HeaderCheck::Invalid(reason)),
    };
    let check = if expected
        .log_id
        .is_some_and(|log_id| log_id != header.log_id)
    {
        HeaderCheck::Mismatch(format!(
            "belongs to a different log (id {:#018x})",
            header.log_id
        ))
    } else if header.first_record_sequence != segment.first_record_sequence {
        HeaderCheck::Mismatch(format!(
            "says in its header that its first record is {}, not {} as its name says",
            header.first_record_sequence, segment.first_record_sequence
        ))
    } else if header.first_frame_sequence != expected.frame_sequence
        || header.first_record_sequence != expected.record_sequence
    {
        HeaderCheck::Mismatch(format!(
            "starts at frame {}, record {} (frames or segments are missing or out of place)",
            header.first_frame_sequence, header.first_record_sequence
        ))
    } else {
        HeaderCheck::Continues
    };
    Ok(check)
}

/// Reads consecutive valid frames of `segment` from its first frame
/// position, appending their records; returns where and why it stopped.
async fn read_frames<F: DeviceFile>(
    segment: &SegmentFile<F>,
    expected: &mut Expected,
    records: &mut Vec<Record>,
) -> Result<(u64, Stop), WalError> {
    let mut reader = WindowReader::new(&segment.file, segment.len);
    let mut offset = FIRST_FRAME_OFFSET;
    loop {
        let (header, payloads) = match read_frame(&mut reader, offset, expected).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(stop)) => return Ok((offset, stop)),
            Err(error) => return Err(WalError::io("reading a segment", &segment.name)(error)),
        };
        for payload in payloads {
            records.push(Record {
                sequence: expected.record_sequence,
                payload,
            });
            expected.record_sequence += 1;
        }
        expected.frame_sequence += 1;
        offset += header.frame_len();
    }
}

/// The frame at `offset` if it is the valid next frame, else why not.
async fn read_frame<F: DeviceFile>(
    reader: &mut WindowReader<'_, F>,
    offset: u64,
    expected: &Expected,
) -> std::io::Result<Result<(FrameHeader, Vec<Bytes>), Stop>> {
    let file_len = reader.len;
    let block = reader.bytes(offset, BLOCK_SIZE).await?;
    if is_zeroed(block) {
        return Ok(Err(Stop::Zero)); // includes the end of the file
    }
    // A partial last block is read as if the file went on with zeros (as
    // it does once `Wal::open` grows it): the verdict on a frame must not
    // change when the file is extended.
    let header = match decode_frame_header(block) {
        Ok(Some(header)) => header,
        Ok(None) => return Ok(Err(Stop::Invalid("short frame header".to_owned()))),
        Err(error) => return Ok(Err(Stop::Invalid(error.to_string()))),
    };
    if expected
        .log_id
        .is_some_and(|log_id| log_id != header.log_id)
    {
        return Ok(Err(Stop::Invalid(format!(
            "frame of a different log (id {:#018x})",
            header.log_id
        ))));
    }
    if header.frame_sequence != expected.frame_sequence {
        return Ok(Err(Stop::Invalid(format!(
            "frame sequence {} where {} was expected",
            header.frame_sequence, expected.frame_sequence
        ))));
    }
    if header.first_record_sequence != expected.record_sequence {
        return Ok(Err(Stop::Invalid(format!(
            "frame starts at record {} where {} was expected",
            header.first_record_sequence, expected.record_sequence
        ))));
    }
    // The length field is believed only once the header and payload fit
    // in the real file; then reading them allocates no more than the file
    // holds. The zero padding after the payload may be missing (a file cut
    // short): the frame is complete without it, and its checksums cover
    // everything it holds.
    let payload_end = FRAME_HEADER_LEN + header.payload_length as usize;
    if payload_end as u64 > file_len - offset {
        return Ok(Err(Stop::Invalid(format!(
            "frame of {payload_end} bytes (before padding) runs past the end of the file ({file_len} bytes)"
        ))));
    }
    let frame = reader.bytes(offset, payload_end).await?;
    let Some(payload) = frame.get(FRAME_HEADER_LEN..payload_end) else {
        return Ok(Err(Stop::Invalid(
            "the file ended inside the frame".to_owned(),
        )));
    };
    let payload = Bytes::copy_from_slice(payload);
    match decode_records(&header, &payload) {
        Ok(Some(records)) => Ok(Ok((header, records))),
        Ok(None) => Ok(Err(Stop::Invalid(
            "the file ended inside the frame".to_owned(),
        ))),
        Err(error) => Ok(Err(Stop::Invalid(error.to_string()))),
    }
}

struct Scan {
    /// Offset and frame sequence of the first later valid frame header.
    later_frame: Option<(u64, u64)>,
    /// Whether any non-zero byte was seen (for the log message only).
    saw_data: bool,
}

/// Scans `segment` block by block from `from` for a frame header with a
/// valid checksum, this log's id and a frame sequence greater than the one
/// expected: proof that acknowledged data lies beyond a bad spot.
async fn scan_for_later_frame<F: DeviceFile>(
    segment: &SegmentFile<F>,
    from: u64,
    expected: &Expected,
) -> Result<Scan, WalError> {
    let mut reader = WindowReader::new(&segment.file, segment.len);
    let mut scan = Scan {
        later_frame: None,
        saw_data: false,
    };
    let mut offset = from;
    while offset < segment.len {
        let block = reader
            .bytes(offset, BLOCK_SIZE)
            .await
            .map_err(WalError::io("scanning a segment", &segment.name))?;
        if !is_zeroed(block) {
            scan.saw_data = true;
            if let Ok(Some(header)) = decode_frame_header(block)
                && expected.log_id.is_none_or(|log_id| log_id == header.log_id)
                && header.frame_sequence > expected.frame_sequence
            {
                scan.later_frame = Some((offset, header.frame_sequence));
                return Ok(scan);
            }
        }
        offset += BLOCK_SIZE as u64;
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    //! Regressions found by the `wal_recovery` fuzz target (`fuzz/`), whose
    //! property is that recovery is idempotent: opening a log twice (with
    //! nothing written in between) recovers the same records.

    use super::super::{MemoryDevice, Wal, WalOptions};
    use super::*;

    const OPTIONS: WalOptions = WalOptions {
        segment_bytes: 1 << 20,
    };

    fn run<F: Future>(future: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("build a monoio runtime")
            .block_on(future)
    }

    /// A log of two frames, `first` then `second`, in one segment; returns
    /// the device, the segment's name and the second frame's offset.
    async fn two_frames(first: &[&[u8]], second: &[u8]) -> (MemoryDevice, String, usize) {
        let device = MemoryDevice::new();
        let (mut wal, _) = Wal::open(device.clone(), OPTIONS).await.expect("new log");
        for record in first {
            wal.append(record);
        }
        wal.sync().await.expect("sync");
        wal.append(second);
        wal.sync().await.expect("sync");
        let name = device.file_names().remove(0);
        let first_payload: usize = first.iter().map(|record| 4 + record.len()).sum();
        let second_offset = FIRST_FRAME_OFFSET as usize + frame_len_for_payload(first_payload);
        (device, name, second_offset)
    }

    async fn payloads(device: &MemoryDevice) -> Vec<Vec<u8>> {
        let (_, records) = Wal::open(device.clone(), OPTIONS).await.expect("open");
        records
            .iter()
            .map(|record| record.payload.to_vec())
            .collect()
    }

    /// A file cut inside the zero padding after its last frame's payload:
    /// the frame is whole (its checksums cover all it holds). It was
    /// dropped as "a partial block", and read back whole once `Wal::open`
    /// had grown the file: the second open recovered a record the first
    /// had dropped.
    #[test]
    fn a_frame_cut_inside_its_padding_is_kept_by_every_open() {
        run(async {
            let (device, name, second) = two_frames(&[b"a", b"b"], b"c").await;
            let cut = second + FRAME_HEADER_LEN + 4 + 1 + 100;
            device.truncate_file(&name, cut).expect("truncate");
            let all = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
            assert_eq!(payloads(&device).await, all, "first open");
            assert_eq!(payloads(&device).await, all, "second open");
        });
    }

    /// A file cut inside its last frame's payload, where the bytes cut off
    /// were zeros: the first open drops the frame (torn), and once the file
    /// was grown with zeros a second open found it whole and brought the
    /// dropped record back.
    #[test]
    fn a_dropped_torn_tail_stays_dropped_when_the_file_grows() {
        run(async {
            let record = [b'c', 0, 0, 0, 0, 0, 0, 0];
            let (device, name, second) = two_frames(&[b"a", b"b"], &record).await;
            // Keep the header, the record's prefix and its first byte.
            let cut = second + FRAME_HEADER_LEN + 4 + 1;
            device.truncate_file(&name, cut).expect("truncate");
            let kept = vec![b"a".to_vec(), b"b".to_vec()];
            assert_eq!(payloads(&device).await, kept, "first open");
            assert_eq!(payloads(&device).await, kept, "second open");
            // Also after a crash: the erasure was made durable.
            device.crash();
            assert_eq!(payloads(&device).await, kept, "after a crash");
        });
    }
}
