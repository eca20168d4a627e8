//! Batches: many small files (and folders) packed into one ring slot, one hand-over
//! for all of them, and their results written back into the same slot.
//!
//! A stream enters batch mode with `ClientCommand::Batch`; the server answers
//! `Opened` with a ring. From then on every slot the client hands over (FULL, with
//! its length) holds one batch, and the server hands it back (EMPTY) with the
//! results written over it. The client fills the next slot while the server
//! publishes the previous one: that is the pipelining, with no mailbox traffic.
//!
//! ```text
//! a batch, as the client hands it over (little-endian, every entry 8-aligned):
//!   +--------------------------------------------------------------+
//!   | "SXB1" | count u32 | seq u64 | 0 u64 | 0 u64                 |  32 bytes
//!   +--------------------------------------------------------------+
//!   | kind u32 | name_len u32 | size u64 | checksum u64            |
//!   | meta u64 | mtime_secs u64 | 0 u64                            |  48 bytes
//!   | name (name_len bytes) | data (size bytes, files only) | pad  |
//!   +--------------------------------------------------------------+
//!   | ... count entries in all ...                                 |
//!
//! the results, as the server hands the slot back:
//!   | "SXR1" | count u32 | seq u64 | 0 u64 | 0 u64                 |  32 bytes
//!   | status u32 | code u32 | bytes u64 | msg_len u32 | 0 u32      |  24 bytes each
//!   | the messages of failed entries, one after another            |
//! ```
//!
//! Both sides check everything they read: the server refuses a batch whose framing
//! is wrong as a whole (nothing of it is published), and fails an entry whose name,
//! size, metadata or checksum is wrong alone; the client refuses results that do not
//! answer the batch it sent. Every field of the table is read once (from the slot, or a
//! private copy), so a peer changing it meanwhile cannot make a check and a use differ.

use std::fmt;

use crate::protocol::{self, ErrorCode, FileMeta, ProtocolError, MODE_BITS};

/// Magic of a batch as the client hands it over.
pub const BATCH_MAGIC: [u8; 4] = *b"SXB1";
/// Magic of the results the server writes back.
pub const RESULTS_MAGIC: [u8; 4] = *b"SXR1";
/// Bytes of the batch (and results) header.
pub const HEADER_LEN: usize = 32;
/// Bytes of an entry's fixed part.
pub const ENTRY_LEN: usize = 48;
/// Bytes of one entry's result.
pub const RESULT_LEN: usize = 24;
/// Most entries one batch may hold.
pub const MAX_ENTRIES: usize = 1024;
/// The slot size a stream asks for in batch mode (less if the segment is small).
pub const BATCH_CHUNK: u64 = 256 << 10;
/// Largest file the client packs into a batch; larger ones are streamed.
pub const BATCH_FILE_MAX: u64 = 64 << 10;

/// `kind` of an entry that is a file.
pub const KIND_FILE: u32 = 1;
/// `kind` of an entry that is a folder.
pub const KIND_DIR: u32 = 2;
/// `kind` of an entry that asks for a new top-level folder to be made under a
/// hidden name (its files then made there directly, with no temporary name each)
/// and published whole by a later `KIND_COMMIT`; result `Done(token)`: staged, the
/// commit to carry that token (never 0); `Done(0)`: not (the name exists, or the
/// sink cannot): made or kept as a folder.
pub const KIND_STAGE: u32 = 3;
/// `kind` of an entry that publishes a staged folder under its name; its
/// checksum field carries the token the stage answered.
pub const KIND_COMMIT: u32 = 4;

const STATUS_DONE: u32 = 0;
const STATUS_SKIPPED: u32 = 1;
const STATUS_FAILED: u32 = 2;

/// Rounds `n` up to the entries' alignment.
pub fn align(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Room the results need per entry, with part of a failure's message: a batch holds
/// at most `(capacity - HEADER_LEN) / RESULT_RESERVE` entries, so that the results,
/// written over it, fit the slot.
pub const RESULT_RESERVE: usize = RESULT_LEN + 200;

/// Bytes an entry takes in a batch: header, name, data, padding.
pub fn entry_space(name_len: usize, size: usize) -> usize {
    align(ENTRY_LEN + name_len + size)
}

/// Most entries a batch in a slot of `capacity` bytes may hold.
pub fn max_entries(capacity: usize) -> usize {
    (capacity.saturating_sub(HEADER_LEN) / RESULT_RESERVE).clamp(1, MAX_ENTRIES)
}

/// The message for a failure whose text did not fit the results.
pub fn standard_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => "refused by the server (bad name, size or metadata)",
        ErrorCode::Exists => {
            "already exists on the server: remove it, use --skip-existing, or run the server with --overwrite"
        }
        ErrorCode::Io => "the server could not store it (disk full, read-only, removed folder?)",
        ErrorCode::Checksum => "the data was corrupted in transit",
        ErrorCode::Shutdown => "the server is shutting down",
        ErrorCode::IdleTimeout => "the server dropped the stream for idleness",
        ErrorCode::Aborted | ErrorCode::Unknown => "failed on the server",
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn header_bytes(magic: [u8; 4], count: u32, seq: u64) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..4].copy_from_slice(&magic);
    out[4..8].copy_from_slice(&count.to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out
}

/// The batch header for `count` entries, batch number `seq`.
pub fn batch_header(count: u32, seq: u64) -> [u8; HEADER_LEN] {
    header_bytes(BATCH_MAGIC, count, seq)
}

/// What one entry says, as the client packs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A file of `size` bytes whose xxh3-64 is `checksum`, with `meta` (exact size).
    File {
        /// Length of the data that follows the name.
        size: u64,
        /// xxh3-64 of the data.
        checksum: u64,
        /// Mode, time and flags.
        meta: FileMeta,
    },
    /// A folder with permission bits `mode`.
    Dir {
        /// Permission bits, within `MODE_BITS`.
        mode: u32,
    },
    /// A new top-level folder, staged under a hidden name (see `KIND_STAGE`).
    Stage {
        /// Permission bits, within `MODE_BITS`.
        mode: u32,
    },
    /// Publish the staged folder of this name (see `KIND_COMMIT`).
    Commit {
        /// What its stage answered.
        token: u64,
    },
}

/// The fixed part of an entry, for the client to write before its name and data.
pub fn entry_header(kind: &EntryKind, name_len: usize) -> [u8; ENTRY_LEN] {
    let mut out = [0u8; ENTRY_LEN];
    let (code, size, checksum, [word, secs]) = match kind {
        EntryKind::File { size, checksum, meta } => {
            (KIND_FILE, *size, *checksum, FileMeta { size_is_hint: false, ..*meta }.encode())
        }
        EntryKind::Dir { mode } => {
            (KIND_DIR, 0, 0, FileMeta { mode: Some(mode & MODE_BITS), ..FileMeta::default() }.encode())
        }
        EntryKind::Stage { mode } => {
            (KIND_STAGE, 0, 0, FileMeta { mode: Some(mode & MODE_BITS), ..FileMeta::default() }.encode())
        }
        EntryKind::Commit { token } => (KIND_COMMIT, 0, *token, FileMeta::default().encode()),
    };
    out[..4].copy_from_slice(&code.to_le_bytes());
    out[4..8].copy_from_slice(&(name_len as u32).to_le_bytes());
    out[8..16].copy_from_slice(&size.to_le_bytes());
    out[16..24].copy_from_slice(&checksum.to_le_bytes());
    out[24..32].copy_from_slice(&word.to_le_bytes());
    out[32..40].copy_from_slice(&secs.to_le_bytes());
    out
}

/// One entry of a batch as the server decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as sent; checked with `protocol::validate_path` in `check`.
    pub name: Result<String, ProtocolError>,
    /// File or folder, and its fields (unchecked metadata is an error here).
    pub kind: Result<EntryKind, ProtocolError>,
    /// Where the file's data lies in the batch (empty for a folder).
    pub data: std::ops::Range<usize>,
}

impl Entry {
    /// The name and kind, or why this entry (alone) is refused.
    pub fn check(&self) -> Result<(&str, EntryKind), ProtocolError> {
        let name = self.name.as_deref().map_err(Clone::clone)?;
        protocol::validate_path(name)?;
        Ok((name, self.kind.clone()?))
    }
}

/// Why a batch was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingError(pub String);

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed batch: {}", self.0)
    }
}

fn framing(message: impl Into<String>) -> FramingError {
    FramingError(message.into())
}

/// Decodes a batch from `bytes` (the slot itself: each entry's fixed fields and
/// name are copied out before they are read or checked; its data is left in place). The framing must be whole: magic,
/// count, every entry inside `bytes`, nothing after the last. An entry whose name or
/// metadata is bad is returned with its error, to be failed alone.
pub fn decode_batch(bytes: &[u8]) -> Result<(u64, Vec<Entry>), FramingError> {
    if bytes.len() < HEADER_LEN {
        return Err(framing(format!("{} bytes is shorter than the header", bytes.len())));
    }
    if bytes[..4] != BATCH_MAGIC {
        return Err(framing("bad magic"));
    }
    let count = u32_at(bytes, 4) as usize;
    let seq = u64_at(bytes, 8);
    if count == 0 || count > MAX_ENTRIES {
        return Err(framing(format!("{count} entries (1 to {MAX_ENTRIES} allowed)")));
    }
    if bytes[16..HEADER_LEN].iter().any(|&b| b != 0) {
        return Err(framing("reserved header bytes are not zero"));
    }
    let mut entries = Vec::with_capacity(count);
    let mut at = HEADER_LEN;
    for index in 0..count {
        let rest = bytes.len() - at;
        if rest < ENTRY_LEN {
            return Err(framing(format!("entry {index} starts past the end")));
        }
        // Copied out, then read: each field is read from private memory once.
        let fixed: [u8; ENTRY_LEN] = bytes[at..at + ENTRY_LEN].try_into().expect("ENTRY_LEN bytes");
        let fixed = &fixed[..];
        let kind_code = u32_at(fixed, 0);
        let name_len = u32_at(fixed, 4) as usize;
        let size = u64_at(fixed, 8);
        let checksum = u64_at(fixed, 16);
        let (word, secs) = (u64_at(fixed, 24), u64_at(fixed, 32));
        if u64_at(fixed, 40) != 0 {
            return Err(framing(format!("entry {index}: reserved bytes are not zero")));
        }
        if name_len > protocol::MAX_PATH_LEN {
            return Err(framing(format!("entry {index}: name of {name_len} bytes")));
        }
        let data_len = match kind_code {
            KIND_FILE => size,
            KIND_DIR | KIND_STAGE | KIND_COMMIT if size == 0 => 0,
            KIND_DIR | KIND_STAGE | KIND_COMMIT => {
                return Err(framing(format!("entry {index}: a folder with {size} bytes of data")))
            }
            other => return Err(framing(format!("entry {index}: unknown kind {other}"))),
        };
        let name_at = at + ENTRY_LEN;
        let data_at = name_at + name_len;
        let end = usize::try_from(data_len)
            .ok()
            .and_then(|len| data_at.checked_add(len))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| framing(format!("entry {index}: {data_len} bytes of data run past the batch")))?;
        // Copied, then checked: a peer rewriting the slot meanwhile cannot make a
        // `String` of bytes that were UTF-8 only when checked.
        let name = String::from_utf8(bytes[name_at..data_at].to_vec())
            .map_err(|_| ProtocolError("name is not valid UTF-8".into()));
        let kind = FileMeta::decode(word, secs).and_then(|meta| match kind_code {
            KIND_FILE if meta.size_is_hint => {
                Err(ProtocolError("a batched file's size must be exact".into()))
            }
            KIND_FILE => Ok(EntryKind::File { size, checksum, meta }),
            KIND_COMMIT if meta == FileMeta::default() => Ok(EntryKind::Commit { token: checksum }),
            KIND_COMMIT => Err(ProtocolError("a commit entry carries nothing but a name and a token".into())),
            KIND_STAGE | KIND_DIR if checksum != 0 => {
                Err(ProtocolError("a folder entry carries only a mode".into()))
            }
            _ => match meta {
                FileMeta { mode: Some(mode), mtime: None, size_is_hint: false, skip_existing: false } => {
                    match kind_code {
                        KIND_STAGE => Ok(EntryKind::Stage { mode }),
                        _ => Ok(EntryKind::Dir { mode }),
                    }
                }
                _ => Err(ProtocolError("a folder entry carries only a mode".into())),
            },
        });
        entries.push(Entry { name, kind, data: data_at..end });
        at = align(end).min(bytes.len());
    }
    if at != bytes.len() {
        return Err(framing(format!("{} bytes after the last entry", bytes.len() - at)));
    }
    Ok((seq, entries))
}

/// What became of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Published (a folder: made); the file's length.
    Done(u64),
    /// The name existed and the client asked to skip such files.
    Skipped,
    /// Refused or failed; nothing was published under the name.
    Failed(ErrorCode, String),
}

/// The results of batch `seq`, at most `capacity` bytes: every entry's status, and
/// each failure's message if it fits a fair share of the room left (else none: the
/// client then says what the error code means, rather than half a sentence).
pub fn encode_results(seq: u64, outcomes: &[Outcome], capacity: usize) -> Vec<u8> {
    let mut out = header_bytes(RESULTS_MAGIC, outcomes.len() as u32, seq).to_vec();
    let fixed_end = HEADER_LEN + outcomes.len() * RESULT_LEN;
    let mut room = capacity.saturating_sub(fixed_end);
    let failures = outcomes.iter().filter(|o| matches!(o, Outcome::Failed(..))).count();
    let share = room / failures.max(1);
    let mut messages = Vec::new();
    for outcome in outcomes {
        let (status, code, bytes, message) = match outcome {
            Outcome::Done(bytes) => (STATUS_DONE, 0, *bytes, ""),
            Outcome::Skipped => (STATUS_SKIPPED, 0, 0, ""),
            Outcome::Failed(code, message) => (STATUS_FAILED, *code as u32, 0, message.as_str()),
        };
        let len = if message.len() <= room.min(share) { message.len() } else { 0 };
        room -= len;
        messages.extend_from_slice(&message.as_bytes()[..len]);
        out.extend_from_slice(&status.to_le_bytes());
        out.extend_from_slice(&code.to_le_bytes());
        out.extend_from_slice(&bytes.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
    }
    out.extend_from_slice(&messages);
    out
}

/// Decodes the results the server wrote over batch `seq` of `count` entries.
pub fn decode_results(bytes: &[u8], seq: u64, count: usize) -> Result<Vec<Outcome>, FramingError> {
    let fixed_end = HEADER_LEN + count * RESULT_LEN;
    if bytes.len() < fixed_end || bytes[..4] != RESULTS_MAGIC {
        return Err(framing("the server's results are missing"));
    }
    let (got_count, got_seq) = (u32_at(bytes, 4) as usize, u64_at(bytes, 8));
    if got_count != count || got_seq != seq {
        return Err(framing(format!(
            "the server answered batch {got_seq} of {got_count} entries, not batch {seq} of {count}"
        )));
    }
    let mut outcomes = Vec::with_capacity(count);
    let mut message_at = fixed_end;
    for index in 0..count {
        let at = HEADER_LEN + index * RESULT_LEN;
        let (status, code, done) = (u32_at(bytes, at), u32_at(bytes, at + 4), u64_at(bytes, at + 8));
        let len = u32_at(bytes, at + 16) as usize;
        let text = message_at
            .checked_add(len)
            .and_then(|end| bytes.get(message_at..end))
            .ok_or_else(|| framing("a result's message runs past the slot"))?;
        message_at += len;
        outcomes.push(match status {
            STATUS_DONE => Outcome::Done(done),
            STATUS_SKIPPED => Outcome::Skipped,
            STATUS_FAILED => {
                let code = ErrorCode::from_wire(u64::from(code));
                let message = match String::from_utf8_lossy(text).into_owned() {
                    message if message.is_empty() => standard_message(code).to_owned(),
                    message => message,
                };
                Outcome::Failed(code, message)
            }
            other => return Err(framing(format!("unknown result status {other}"))),
        });
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// A batch as the client packs it, in private memory.
    fn pack(seq: u64, entries: &[(&str, EntryKind, &[u8])]) -> Vec<u8> {
        let mut out = batch_header(entries.len() as u32, seq).to_vec();
        for (name, kind, data) in entries {
            out.extend_from_slice(&entry_header(kind, name.len()));
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            out.resize(align(out.len()), 0);
        }
        out
    }

    fn file(data: &[u8]) -> EntryKind {
        let meta = FileMeta {
            mode: Some(0o640),
            mtime: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
            ..FileMeta::default()
        };
        EntryKind::File { size: data.len() as u64, checksum: crate::checksum::of(data), meta }
    }

    #[test]
    fn a_packed_batch_decodes_to_its_entries() {
        let dir = EntryKind::Dir { mode: 0o750 };
        let bytes = pack(7, &[("a", file(b"hello"), b"hello"), ("d", dir, b""), ("d/e", file(b""), b"")]);
        let (seq, entries) = decode_batch(&bytes).unwrap();
        assert_eq!(seq, 7);
        assert_eq!(entries.len(), 3);
        let (name, kind) = entries[0].check().unwrap();
        assert_eq!((name, kind), ("a", file(b"hello")));
        assert_eq!(&bytes[entries[0].data.clone()], b"hello");
        assert_eq!(entries[1].check().unwrap(), ("d", EntryKind::Dir { mode: 0o750 }));
        assert!(entries[2].data.is_empty());
    }

    #[test]
    fn a_bad_entry_fails_alone_but_bad_framing_fails_the_batch() {
        let bytes = pack(1, &[("../etc/passwd", file(b"x"), b"x"), ("ok", file(b"y"), b"y")]);
        let (_, entries) = decode_batch(&bytes).unwrap();
        assert!(entries[0].check().is_err());
        assert!(entries[1].check().is_ok());

        let good = pack(1, &[("ok", file(b"yy"), b"yy")]);
        let mut cut = good.clone();
        cut.truncate(good.len() - 8);
        assert!(decode_batch(&cut).is_err(), "data past the end");
        let mut extra = good.clone();
        extra.extend_from_slice(&[0; 8]);
        assert!(decode_batch(&extra).is_err(), "trailing bytes");
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(decode_batch(&magic).is_err());
        let mut count = good.clone();
        count[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert!(decode_batch(&count).is_err(), "count past the entries");
        let mut huge = good.clone();
        huge[HEADER_LEN + 8..HEADER_LEN + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_batch(&huge).is_err(), "size overflow");
        let mut kind = good;
        kind[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&9u32.to_le_bytes());
        assert!(decode_batch(&kind).is_err(), "unknown kind");
        assert!(decode_batch(&[]).is_err());
    }

    #[test]
    fn a_folder_entry_with_a_checksum_word_fails_alone() {
        let dir = EntryKind::Dir { mode: 0o750 };
        let mut bytes = pack(1, &[("d", dir, b""), ("ok", file(b"y"), b"y")]);
        // The checksum word of the first entry (after kind, name length and size).
        bytes[HEADER_LEN + 16..HEADER_LEN + 24].copy_from_slice(&1u64.to_le_bytes());
        let (_, entries) = decode_batch(&bytes).unwrap();
        assert!(entries[0].check().is_err_and(|e| e.to_string().contains("only a mode")));
        assert!(entries[1].check().is_ok());
    }

    #[test]
    fn results_round_trip_and_are_checked_against_the_batch() {
        let outcomes = vec![
            Outcome::Done(5),
            Outcome::Skipped,
            Outcome::Failed(ErrorCode::Exists, "a exists: remove it".into()),
        ];
        let bytes = encode_results(9, &outcomes, 4096);
        assert_eq!(decode_results(&bytes, 9, 3).unwrap(), outcomes);
        assert!(decode_results(&bytes, 8, 3).is_err(), "another batch's results");
        assert!(decode_results(&bytes, 9, 2).is_err());
        assert!(decode_results(&bytes[..40], 9, 3).is_err());
        // A message that does not fit the slot is left out, never cut: the client
        // says what the code means instead.
        let tight = encode_results(9, &outcomes, HEADER_LEN + 3 * RESULT_LEN + 4);
        assert_eq!(tight.len(), HEADER_LEN + 3 * RESULT_LEN);
        let standard = standard_message(ErrorCode::Exists);
        assert!(matches!(&decode_results(&tight, 9, 3).unwrap()[2], Outcome::Failed(_, m) if m == standard));
    }
}
