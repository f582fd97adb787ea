//! [`FileQueue`]: the audit queue as append-only segment files in one directory.
//!
//! Layout: `seg-<first seq, 20 digits>.q` files of records `len u32 LE | crc32 u32 LE | body`,
//! body = `seq u64 | queued_at_ms u64 | height u64 | index u32 | payload` (little endian), and a
//! `state` file (`acked u64 | has_cursor u8 | height u64 | index u32 | crc32 u32`) replaced
//! atomically (write, fsync, rename, fsync the directory). A push is one `write` and one
//! `fdatasync`; an acknowledgement rewrites `state` and deletes segments that hold only
//! acknowledged messages. On open, a torn record at the tail of the last segment (a crash during
//! a push, which was therefore never acknowledged to the caller) is cut off; damage anywhere else
//! is reported, never skipped.
//!
//! Boundary: one process owns the directory (the gateway keeps it under its state directory,
//! which its store already locks). Directory 0700, files 0600. Nothing here is encrypted: the
//! payloads are the audit messages, which carry pseudonyms, codes and ids only.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{NewMessage, Queue, QueueError, QueuedMessage};
use crate::event::Position;

/// Largest payload accepted: DICOM PS3.15 A.6 requires repositories to take 32768 octets.
pub const MAX_PAYLOAD: usize = 32_768;
/// A segment is closed for appends once it holds this many bytes.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;

const HEADER: usize = 8;
const BODY_FIXED: usize = 8 + 8 + 8 + 4;
const STATE_LEN: usize = 8 + 1 + 8 + 4 + 4;

#[derive(Debug)]
struct Slot {
    seq: u64,
    segment: u64,
    offset: u64,
    len: u32,
    queued_at_ms: u64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: File,
    len: u64,
    last_seq: Option<u64>,
}

/// The file-backed audit queue. See the module documentation for the format.
#[derive(Debug)]
pub struct FileQueue {
    dir: PathBuf,
    capacity: u64,
    segment_bytes: u64,
    slots: VecDeque<Slot>,
    segments: BTreeMap<u64, Segment>,
    acked: u64,
    next_seq: u64,
    cursor: Option<Position>,
}

impl FileQueue {
    /// Opens (or creates) the queue in `dir`, holding at most `capacity` messages.
    pub fn open(dir: &Path, capacity: u64) -> Result<FileQueue, QueueError> {
        FileQueue::open_with_segment_size(dir, capacity, DEFAULT_SEGMENT_BYTES)
    }

    /// As [`FileQueue::open`], with segments closed at `segment_bytes` (tests use small ones).
    pub fn open_with_segment_size(dir: &Path, capacity: u64, segment_bytes: u64) -> Result<FileQueue, QueueError> {
        if capacity == 0 {
            return Err(QueueError::Invalid("capacity must be at least 1".into()));
        }
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
        let state_path = dir.join("state");
        let (acked, state_cursor) = match fs::read(&state_path) {
            Ok(bytes) => decode_state(&bytes).ok_or_else(|| QueueError::Corrupt { path: state_path.display().to_string(), problem: "bad length or checksum".into() })?,
            Err(e) if e.kind() == ErrorKind::NotFound => (0, None),
            Err(e) => return Err(io(&state_path)(e)),
        };
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(first) = name.strip_prefix("seg-").and_then(|n| n.strip_suffix(".q")).and_then(|n| n.parse::<u64>().ok()) {
                names.push((first, entry.path()));
            }
        }
        names.sort();
        let mut q = FileQueue { dir: dir.to_owned(), capacity, segment_bytes, slots: VecDeque::new(), segments: BTreeMap::new(), acked, next_seq: acked + 1, cursor: state_cursor };
        let mut last: Option<u64> = None;
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let is_last = i + 1 == count;
            q.load_segment(first, &path, is_last, &mut last)?;
        }
        if let Some(front) = q.slots.front() {
            if front.seq != q.acked + 1 {
                return Err(QueueError::Corrupt { path: dir.display().to_string(), problem: format!("messages {} to {} are missing", q.acked + 1, front.seq - 1) });
            }
        }
        q.next_seq = last.map_or(q.acked, |l| l.max(q.acked)) + 1;
        q.drop_acked_segments()?;
        Ok(q)
    }

    fn load_segment(&mut self, first: u64, path: &Path, is_last: bool, last: &mut Option<u64>) -> Result<(), QueueError> {
        let mut file = OpenOptions::new().read(true).append(true).open(path).map_err(io(path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(path))?;
        let corrupt = |problem: String| QueueError::Corrupt { path: path.display().to_string(), problem };
        let mut off = 0usize;
        let mut seg_last = None;
        while off < bytes.len() {
            let rec = decode_record(&bytes[off..]);
            let Some((rec_len, seq, queued_at_ms, position)) = rec else {
                if is_last && torn_tail(&bytes[off..]) {
                    tracing::warn!(path = %path.display(), offset = off, "cutting a torn record off the end of the audit queue (a push that did not complete)");
                    file.set_len(off as u64).map_err(io(path))?;
                    file.sync_all().map_err(io(path))?;
                    break;
                }
                return Err(corrupt(format!("bad record at offset {off}")));
            };
            let expected = last.map_or(first, |l| l + 1);
            if seq != expected {
                return Err(corrupt(format!("record at offset {off} has sequence number {seq}, expected {expected}")));
            }
            if seq > self.acked {
                self.slots.push_back(Slot { seq, segment: first, offset: off as u64, len: rec_len as u32, queued_at_ms });
            }
            if self.cursor.is_none_or(|c| position > c) {
                self.cursor = Some(position);
            }
            *last = Some(seq);
            seg_last = Some(seq);
            off += rec_len;
        }
        self.segments.insert(first, Segment { path: path.to_owned(), file, len: off as u64, last_seq: seg_last });
        Ok(())
    }

    fn write_state(&self) -> Result<(), QueueError> {
        let path = self.dir.join("state");
        let tmp = self.dir.join("state.tmp");
        let mut buf = Vec::with_capacity(STATE_LEN);
        buf.extend_from_slice(&self.acked.to_le_bytes());
        match self.cursor {
            Some(p) => {
                buf.push(1);
                buf.extend_from_slice(&p.height.to_le_bytes());
                buf.extend_from_slice(&p.index.to_le_bytes());
            }
            None => buf.extend_from_slice(&[0; 13]),
        }
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
        f.write_all(&buf).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)
    }

    /// Deletes segments whose every message is acknowledged, keeping the newest (appends go there).
    fn drop_acked_segments(&mut self) -> Result<(), QueueError> {
        let newest = self.segments.keys().next_back().copied();
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(first, s)| Some(**first) != newest && s.last_seq.is_none_or(|l| l <= self.acked))
            .map(|(first, _)| *first)
            .collect();
        if done.is_empty() {
            return Ok(());
        }
        for first in done {
            if let Some(s) = self.segments.remove(&first) {
                fs::remove_file(&s.path).map_err(io(&s.path))?;
            }
        }
        sync_dir(&self.dir)
    }

    /// The segment to append to, creating one if there is none or the newest is full.
    fn active_segment(&mut self, first_seq: u64) -> Result<u64, QueueError> {
        if let Some((first, s)) = self.segments.iter().next_back() {
            if s.len < self.segment_bytes {
                return Ok(*first);
            }
        }
        let path = self.dir.join(format!("seg-{first_seq:020}.q"));
        let file = OpenOptions::new().read(true).append(true).create_new(true).mode(0o600).open(&path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        self.segments.insert(first_seq, Segment { path, file, len: 0, last_seq: None });
        Ok(first_seq)
    }
}

impl Queue for FileQueue {
    fn push(&mut self, batch: &[NewMessage]) -> Result<(), QueueError> {
        if batch.is_empty() {
            return Ok(());
        }
        if self.slots.len() as u64 + batch.len() as u64 > self.capacity {
            return Err(QueueError::Full { capacity: self.capacity });
        }
        for (i, m) in batch.iter().enumerate() {
            if m.seq != self.next_seq + i as u64 {
                return Err(QueueError::Invalid(format!("message sequence number {} where {} was due", m.seq, self.next_seq + i as u64)));
            }
            if m.payload.len() > MAX_PAYLOAD {
                return Err(QueueError::Invalid(format!("message {} is {} bytes, more than {MAX_PAYLOAD}", m.seq, m.payload.len())));
            }
        }
        let queued_at_ms = now_ms();
        let key = self.active_segment(batch[0].seq)?;
        let Some(seg) = self.segments.get_mut(&key) else {
            return Err(QueueError::Invalid("no active segment".into()));
        };
        let start = seg.len;
        let mut buf = Vec::with_capacity(batch.iter().map(|m| HEADER + BODY_FIXED + m.payload.len()).sum());
        let mut slots = Vec::with_capacity(batch.len());
        for m in batch {
            let offset = start + buf.len() as u64;
            let len = encode_record(&mut buf, m, queued_at_ms);
            slots.push(Slot { seq: m.seq, segment: key, offset, len: len as u32, queued_at_ms });
        }
        let written = seg.file.write_all(&buf).and_then(|()| seg.file.sync_data());
        if let Err(e) = written {
            // Leave no partial batch behind: the caller was told nothing was queued.
            let _ = seg.file.set_len(start);
            return Err(io(&seg.path)(e));
        }
        seg.len += buf.len() as u64;
        seg.last_seq = batch.last().map(|m| m.seq);
        self.slots.extend(slots);
        self.next_seq += batch.len() as u64;
        if let Some(p) = batch.iter().map(|m| m.position).max() {
            if self.cursor.is_none_or(|c| p > c) {
                self.cursor = Some(p);
            }
        }
        Ok(())
    }

    fn read(&mut self, from: u64, max: usize) -> Result<Vec<QueuedMessage>, QueueError> {
        let Some(front) = self.slots.front() else { return Ok(Vec::new()) };
        let start = from.saturating_sub(front.seq) as usize;
        let mut out = Vec::new();
        for slot in self.slots.iter().skip(start).take(max) {
            let Some(seg) = self.segments.get(&slot.segment) else {
                return Err(QueueError::Corrupt { path: self.dir.display().to_string(), problem: format!("segment of message {} is gone", slot.seq) });
            };
            let mut bytes = vec![0u8; slot.len as usize];
            seg.file.read_exact_at(&mut bytes, slot.offset).map_err(io(&seg.path))?;
            match decode_record(&bytes) {
                Some((_, seq, queued_at_ms, _)) if seq == slot.seq => {
                    let payload = bytes.split_off(HEADER + BODY_FIXED);
                    out.push(QueuedMessage { seq, queued_at_ms, payload });
                }
                _ => return Err(QueueError::Corrupt { path: seg.path.display().to_string(), problem: format!("message {} no longer reads back as written", slot.seq) }),
            }
        }
        Ok(out)
    }

    fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
        let Some(last) = self.slots.back().map(|s| s.seq) else { return Ok(()) };
        let seq = seq.min(last);
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq;
        self.write_state()?;
        while self.slots.front().is_some_and(|s| s.seq <= seq) {
            self.slots.pop_front();
        }
        self.drop_acked_segments()
    }

    fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn oldest(&self) -> Option<(u64, u64)> {
        self.slots.front().map(|s| (s.seq, s.queued_at_ms))
    }

    fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn cursor(&self) -> Option<Position> {
        self.cursor
    }

    fn set_cursor(&mut self, position: Position) -> Result<(), QueueError> {
        if self.cursor.is_some_and(|c| c >= position) {
            return Ok(());
        }
        self.cursor = Some(position);
        self.write_state()
    }
}

fn encode_record(buf: &mut Vec<u8>, m: &NewMessage, queued_at_ms: u64) -> usize {
    let start = buf.len();
    let body_len = BODY_FIXED + m.payload.len();
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    let body_start = buf.len();
    buf.extend_from_slice(&m.seq.to_le_bytes());
    buf.extend_from_slice(&queued_at_ms.to_le_bytes());
    buf.extend_from_slice(&m.position.height.to_le_bytes());
    buf.extend_from_slice(&m.position.index.to_le_bytes());
    buf.extend_from_slice(&m.payload);
    let crc = crc32fast::hash(&buf[body_start..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    buf.len() - start
}

/// (record length, seq, queued_at_ms, position), or None if the bytes are not a whole, intact record.
fn decode_record(bytes: &[u8]) -> Option<(usize, u64, u64, Position)> {
    let body_len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if !(BODY_FIXED..=BODY_FIXED + MAX_PAYLOAD).contains(&body_len) {
        return None;
    }
    let body = bytes.get(HEADER..HEADER + body_len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let u64_at = |i: usize| body.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let seq = u64_at(0)?;
    let queued = u64_at(8)?;
    let height = u64_at(16)?;
    let index = u32::from_le_bytes(body.get(24..28)?.try_into().ok()?);
    Some((HEADER + body_len, seq, queued, Position::new(height, index)))
}

/// Whether the bytes from a bad record to the end of the file look like an interrupted append:
/// the record runs up to or past the end, or only zeros follow (blocks allocated, never written).
/// A bad record with intact data after it is damage, not a torn write.
fn torn_tail(rest: &[u8]) -> bool {
    let claimed = rest.get(0..4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    match claimed {
        None => true,
        Some(len) => HEADER + len as usize >= rest.len() || rest.iter().all(|b| *b == 0),
    }
}

fn decode_state(bytes: &[u8]) -> Option<(u64, Option<Position>)> {
    if bytes.len() != STATE_LEN {
        return None;
    }
    let (data, crc) = bytes.split_at(STATE_LEN - 4);
    if crc32fast::hash(data) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let acked = u64::from_le_bytes(data[0..8].try_into().ok()?);
    let cursor = match data[8] {
        0 => None,
        1 => Some(Position::new(u64::from_le_bytes(data[9..17].try_into().ok()?), u32::from_le_bytes(data[17..21].try_into().ok()?))),
        _ => return None,
    };
    Some((acked, cursor))
}

fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> QueueError + '_ {
    move |source| QueueError::Io { path: path.display().to_string(), source }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, height: u64) -> NewMessage {
        NewMessage { seq, position: Position::new(height, 0), payload: format!("message {seq}").into_bytes() }
    }

    fn open(dir: &Path, cap: u64) -> FileQueue {
        FileQueue::open_with_segment_size(dir, cap, 200).unwrap_or_else(|e| panic!("{e}"))
    }

    fn payloads(q: &mut FileQueue) -> Vec<String> {
        q.read(0, 1000).unwrap_or_else(|e| panic!("{e}")).into_iter().map(|m| String::from_utf8(m.payload).unwrap_or_default()).collect()
    }

    #[test]
    fn messages_survive_a_reopen_in_order_and_acks_stick() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut q = open(dir.path(), 100);
        assert_eq!(q.next_seq(), 1);
        // Batches of 3 in 200-byte segments: several segments.
        for b in 0..10 {
            let batch: Vec<NewMessage> = (b * 3 + 1..=b * 3 + 3).map(|s| msg(s, s)).collect();
            q.push(&batch).unwrap_or_else(|e| panic!("{e}"));
        }
        q.ack(10).unwrap_or_else(|e| panic!("{e}"));
        drop(q);
        let mut q = open(dir.path(), 100);
        assert_eq!(q.len(), 20);
        assert_eq!(q.next_seq(), 31);
        assert_eq!(q.cursor(), Some(Position::new(30, 0)));
        let got = payloads(&mut q);
        assert_eq!(got.first().map(String::as_str), Some("message 11"));
        assert_eq!(got.last().map(String::as_str), Some("message 30"));
        assert_eq!(got.len(), 20);
        // Small segments: acknowledged ones are deleted, the newest is kept.
        let segs = fs::read_dir(dir.path()).unwrap_or_else(|e| panic!("{e}")).filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("seg-"))).count();
        assert!(segs >= 3, "{segs} segments");
        q.ack(30).unwrap_or_else(|e| panic!("{e}"));
        assert!(q.is_empty());
        drop(q);
        let q = open(dir.path(), 100);
        assert!(q.is_empty());
        assert_eq!(q.next_seq(), 31, "sequence numbers are never reused");
        let segs = fs::read_dir(dir.path()).unwrap_or_else(|e| panic!("{e}")).filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("seg-"))).count();
        assert_eq!(segs, 1, "only the newest segment remains once everything is acknowledged");
    }

    #[test]
    fn a_full_queue_refuses_the_whole_batch() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut q = open(dir.path(), 5);
        q.push(&(1..=4).map(|s| msg(s, s)).collect::<Vec<_>>()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(q.push(&[msg(5, 5), msg(6, 6)]), Err(QueueError::Full { capacity: 5 })));
        assert_eq!(q.len(), 4);
        q.push(&[msg(5, 5)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.len(), 5);
    }

    #[test]
    fn out_of_sequence_pushes_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut q = open(dir.path(), 5);
        assert!(matches!(q.push(&[msg(2, 1)]), Err(QueueError::Invalid(_))));
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut q = FileQueue::open(dir.path(), 100).unwrap_or_else(|e| panic!("{e}"));
        q.push(&[msg(1, 1), msg(2, 2)]).unwrap_or_else(|e| panic!("{e}"));
        drop(q);
        let seg = dir.path().join(format!("seg-{:020}.q", 1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap_or_else(|e| panic!("{e}"));
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap_or_else(|e| panic!("{e}"));
        drop(f);
        let mut q = FileQueue::open(dir.path(), 100).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(payloads(&mut q), vec!["message 1", "message 2"]);
        assert_eq!(q.next_seq(), 3);
        q.push(&[msg(3, 3)]).unwrap_or_else(|e| panic!("{e}"));
        drop(q);
        let mut q = FileQueue::open(dir.path(), 100).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(payloads(&mut q), vec!["message 1", "message 2", "message 3"]);
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut q = FileQueue::open(dir.path(), 100).unwrap_or_else(|e| panic!("{e}"));
        q.push(&[msg(1, 1)]).unwrap_or_else(|e| panic!("{e}"));
        drop(q);
        let seg = dir.path().join(format!("seg-{:020}.q", 1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap_or_else(|e| panic!("{e}"));
        f.write_all(&[0; 4096]).unwrap_or_else(|e| panic!("{e}"));
        drop(f);
        let mut q = FileQueue::open(dir.path(), 100).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(payloads(&mut q), vec!["message 1"]);
    }

    #[test]
    fn damage_before_the_tail_is_reported_not_skipped() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut q = open(dir.path(), 100);
        for s in 1..=30 {
            q.push(&[msg(s, s)]).unwrap_or_else(|e| panic!("{e}"));
        }
        drop(q);
        let first = dir.path().join(format!("seg-{:020}.q", 1));
        let mut bytes = fs::read(&first).unwrap_or_else(|e| panic!("{e}"));
        bytes[HEADER + 3] ^= 0xff;
        fs::write(&first, bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(FileQueue::open_with_segment_size(dir.path(), 100, 200), Err(QueueError::Corrupt { .. })));
        // The same damage in the segment that is appended to: still damage, not a torn tail.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut q = FileQueue::open(dir.path(), 100).unwrap_or_else(|e| panic!("{e}"));
        q.push(&(1..=30).map(|s| msg(s, s)).collect::<Vec<_>>()).unwrap_or_else(|e| panic!("{e}"));
        drop(q);
        let only = dir.path().join(format!("seg-{:020}.q", 1));
        let mut bytes = fs::read(&only).unwrap_or_else(|e| panic!("{e}"));
        bytes[HEADER + 3] ^= 0xff;
        fs::write(&only, bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(FileQueue::open(dir.path(), 100), Err(QueueError::Corrupt { .. })));
    }

    #[test]
    fn the_cursor_moves_forward_only_and_persists() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut q = open(dir.path(), 10);
        assert_eq!(q.cursor(), None);
        q.set_cursor(Position::new(5, 3)).unwrap_or_else(|e| panic!("{e}"));
        q.set_cursor(Position::new(5, 1)).unwrap_or_else(|e| panic!("{e}"));
        drop(q);
        let q = open(dir.path(), 10);
        assert_eq!(q.cursor(), Some(Position::new(5, 3)));
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let qdir = dir.path().join("q");
        let mut q = open(&qdir, 10);
        q.push(&[msg(1, 1)]).unwrap_or_else(|e| panic!("{e}"));
        q.ack(1).unwrap_or_else(|e| panic!("{e}"));
        let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode(&qdir), 0o700);
        assert_eq!(mode(&qdir.join("state")), 0o600);
        assert_eq!(mode(&qdir.join(format!("seg-{:020}.q", 1))), 0o600);
    }
}
