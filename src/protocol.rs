//! The command protocol carried in a record's two mailboxes, and the check-then-parse
//! decoder for it. Client commands use codes 0x1xx, server replies 0x2xx: each side
//! decodes only the other side's range, so it can never act on its own message.
//!
//! Each mailbox is a sequence lock. The writer holds the record's named lock, makes
//! `seq` odd, writes the fields, and makes `seq` even again (Release): a command a
//! dead peer left half-written keeps an odd `seq` and is never taken. The reader
//! takes no lock: it copies every field out and keeps the copy only if `seq` was the
//! same even value before and after. Every field is copied out of the segment before
//! it is validated.

use std::fmt;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::segment::{load_bytes, store_bytes, Mailbox, TEXT_CAPACITY};

/// `ClientCommand::Open`: args size, metadata word, mtime seconds; text the path.
pub const C2S_OPEN: u32 = 0x101;
/// `ClientCommand::Finish`: args size, checksum.
pub const C2S_FINISH: u32 = 0x102;
/// `ClientCommand::Abort`: text the reason.
pub const C2S_ABORT: u32 = 0x103;
/// `ClientCommand::Ping`: args seq, sent_nanos.
pub const C2S_PING: u32 = 0x104;
/// `ClientCommand::Close`: no arguments.
pub const C2S_CLOSE: u32 = 0x105;
/// `ClientCommand::Put`: args size, checksum, metadata word, mtime seconds; text the path.
pub const C2S_PUT: u32 = 0x106;
/// `ClientCommand::Mkdir`: args mode; text the path.
pub const C2S_MKDIR: u32 = 0x107;
/// `ClientCommand::Batch`: no arguments.
pub const C2S_BATCH: u32 = 0x108;
/// `ClientCommand::Release`: no arguments.
pub const C2S_RELEASE: u32 = 0x109;

/// `ServerReply::Opened`: args slots, chunk.
pub const S2C_OPENED: u32 = 0x201;
/// `ServerReply::Done`: args bytes.
pub const S2C_DONE: u32 = 0x202;
/// `ServerReply::Error`: args the `ErrorCode`; text the message.
pub const S2C_ERROR: u32 = 0x203;
/// `ServerReply::Pong`: args seq, sent_nanos, echoed from the ping.
pub const S2C_PONG: u32 = 0x204;
/// `ServerReply::Skipped`: no arguments.
pub const S2C_SKIPPED: u32 = 0x205;

/// Longest path component the server accepts, in bytes (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest relative path the server accepts, in bytes (Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
const _: () = assert!(MAX_PATH_LEN <= TEXT_CAPACITY);

/// Base names the server keeps for its temporary files (`.sharedxfer-<name>-<guid>.part`);
/// no client may publish one, so cleaning up stale ones never removes a user's file.
pub const RESERVED_PREFIX: &str = ".sharedxfer-";

/// Permission bits a client may ask for: never set-user-id, set-group-id or sticky.
pub const MODE_BITS: u32 = 0o777;
// The metadata word: mode in bits 0-8, flags in bits 16-19, the modification time's
// nanoseconds in bits 32-61; its seconds (i64) travel in a word of their own.
const META_HAS_MODE: u64 = 1 << 16;
const META_HAS_MTIME: u64 = 1 << 17;
const META_SIZE_HINT: u64 = 1 << 18;
const META_SKIP_EXISTING: u64 = 1 << 19;
const META_NANOS_SHIFT: u32 = 32;
const META_NANOS_MASK: u64 = 0x3fff_ffff << META_NANOS_SHIFT;
const META_KNOWN: u64 =
    META_HAS_MODE | META_HAS_MTIME | META_SIZE_HINT | META_SKIP_EXISTING | META_NANOS_MASK | MODE_BITS as u64;

/// What a client says about a file besides its name and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileMeta {
    /// Permission bits for the published file (within `MODE_BITS`); `None`: the
    /// server's default (0666 less its umask).
    pub mode: Option<u32>,
    /// Modification time (any second an `i64` holds, to the nanosecond); `None`:
    /// when it is written.
    pub mtime: Option<SystemTime>,
    /// The announced size is only a hint (standard input, FIFOs, /proc): the file
    /// is as long as `Finish` says.
    pub size_is_hint: bool,
    /// A file that already exists under the name is skipped, not a failure.
    pub skip_existing: bool,
}

impl FileMeta {
    /// Two words: mode, flags and nanoseconds; and the seconds of the mtime.
    pub(crate) fn encode(&self) -> [u64; 2] {
        let mut word = 0;
        if let Some(mode) = self.mode {
            word |= META_HAS_MODE | u64::from(mode & MODE_BITS);
        }
        let mut secs = 0;
        if let Some(time) = self.mtime {
            let (s, nanos) = split_time(time);
            word |= META_HAS_MTIME | (u64::from(nanos) << META_NANOS_SHIFT);
            secs = s;
        }
        if self.size_is_hint {
            word |= META_SIZE_HINT;
        }
        if self.skip_existing {
            word |= META_SKIP_EXISTING;
        }
        [word, secs as u64]
    }

    /// Check, then parse: unknown flags or mode bits are refused, not ignored.
    pub(crate) fn decode(word: u64, mtime: u64) -> Result<FileMeta, ProtocolError> {
        if word & !META_KNOWN != 0 {
            return Err(bad(format!("unknown metadata bits {:#x}", word & !META_KNOWN)));
        }
        let has_mode = word & META_HAS_MODE != 0;
        if !has_mode && word & u64::from(MODE_BITS) != 0 {
            return Err(bad("mode bits without the mode flag"));
        }
        let nanos = ((word & META_NANOS_MASK) >> META_NANOS_SHIFT) as u32;
        let mtime = if word & META_HAS_MTIME != 0 {
            let secs = mtime as i64;
            Some(join_time(secs, nanos).ok_or_else(|| bad(format!("mtime {secs}.{nanos:09} out of range")))?)
        } else if nanos != 0 {
            return Err(bad("mtime nanoseconds without the mtime flag"));
        } else {
            None
        };
        Ok(FileMeta {
            mode: has_mode.then_some((word & u64::from(MODE_BITS)) as u32),
            mtime,
            size_is_hint: word & META_SIZE_HINT != 0,
            skip_existing: word & META_SKIP_EXISTING != 0,
        })
    }
}

/// `time` as whole seconds since the epoch (negative before it) and nanoseconds
/// after that second; saturating at what an `i64` of seconds holds.
fn split_time(time: SystemTime) -> (i64, u32) {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (i64::try_from(after.as_secs()).unwrap_or(i64::MAX), after.subsec_nanos()),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            match before.subsec_nanos() {
                0 => (-secs, 0),
                nanos => (-secs - 1, 1_000_000_000 - nanos),
            }
        }
    }
}

/// The inverse of `split_time`; `None` for nanoseconds past a second or a time
/// the platform cannot hold.
fn join_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    if nanos >= 1_000_000_000 {
        return None;
    }
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    base.checked_add(Duration::from_nanos(u64::from(nanos)))
}

/// What a client asks of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    /// Start sending a file of `size` bytes to be published as `name` (a relative
    /// path, checked by `validate_path`).
    Open {
        /// The relative path to publish under.
        name: String,
        /// The announced length in bytes (only a hint if `meta.size_is_hint`).
        size: u64,
        /// Mode, time and flags for the file.
        meta: FileMeta,
    },
    /// All `size` bytes are in the ring; `checksum` is xxh3-64 of the whole file.
    Finish {
        /// Bytes sent in all: the file's real length.
        size: u64,
        /// xxh3-64 of those bytes.
        checksum: u64,
    },
    /// Give up the current transfer.
    Abort {
        /// Why, for the server's report.
        reason: String,
    },
    /// A round trip that does nothing (`--ping`); valid only between files.
    Ping {
        /// Echoed in the `Pong`.
        seq: u64,
        /// When the client sent it, in nanoseconds on a clock of its own; echoed.
        sent_nanos: u64,
    },
    /// The client is done with the record; the server may free it.
    Close,
    /// A whole small file in one step: its `size` bytes already lie in ring slot 0
    /// (kept from the stream's previous file), `checksum` is their xxh3-64.
    Put {
        /// The relative path to publish under.
        name: String,
        /// The file's exact length in bytes, at most the slot's capacity.
        size: u64,
        /// xxh3-64 of the bytes.
        checksum: u64,
        /// Mode, time and flags for the file (`size_is_hint` is ignored).
        meta: FileMeta,
    },
    /// Create the folder `name` (and its parents) with permission bits `mode`
    /// (plus the owner's rwx, so the server can fill it); an existing folder is kept.
    Mkdir {
        /// The folder's relative path.
        name: String,
        /// Permission bits, within `MODE_BITS`.
        mode: u32,
    },
    /// Enter batch mode (see `crate::batch`): the server answers `Opened` with a
    /// ring, and every slot handed over from then on holds a batch of small files.
    Batch,
    /// Between files: the client will not touch the stream's ring again, so the
    /// server frees it (answering `Done`); the next file gets a new one. A stream
    /// held while its job waits gives its buffers back to streams waiting for space.
    Release,
}

/// Why the server failed a stream, carried in `Error` replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// A malformed command, one not valid in the stream's state, or a name or
    /// length the server refuses.
    BadRequest = 1,
    /// The file already exists and the server does not overwrite.
    Exists = 2,
    /// Storing the file failed (disk full, read-only, removed folder...).
    Io = 3,
    /// The bytes that arrived do not match the size or checksum the client announced.
    Checksum = 4,
    /// The server is shutting down.
    Shutdown = 5,
    /// No activity for the server's idle timeout: the stream was dropped.
    IdleTimeout = 6,
    /// The transfer was aborted (this server never sends it).
    Aborted = 7,
    /// Any value this build does not know.
    Unknown = 99,
}

impl ErrorCode {
    pub(crate) fn from_wire(code: u64) -> ErrorCode {
        match code {
            1 => Self::BadRequest,
            2 => Self::Exists,
            3 => Self::Io,
            4 => Self::Checksum,
            5 => Self::Shutdown,
            6 => Self::IdleTimeout,
            7 => Self::Aborted,
            _ => Self::Unknown,
        }
    }
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerReply {
    /// Buffers are ready: `slots` ring slots of up to `chunk` bytes each.
    Opened {
        /// Ring slots installed; 0 for an empty file, which needs none.
        slots: u32,
        /// Capacity of each slot in bytes.
        chunk: u64,
    },
    /// The file was published whole under its final name (or the folder was made).
    Done {
        /// Bytes published; 0 for a folder.
        bytes: u64,
    },
    /// The command or the current transfer failed; nothing was published.
    Error {
        /// The kind of failure.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
    /// The answer to a `Ping`.
    Pong {
        /// The ping's `seq`.
        seq: u64,
        /// The ping's `sent_nanos`.
        sent_nanos: u64,
    },
    /// The file already existed and the client asked to skip it: nothing was
    /// written, the stream is ready for the next file.
    Skipped,
}

/// A command exactly as it lay in the mailbox, before any meaning is given to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCommand {
    /// The mailbox's `seq` the copy was taken at (even).
    pub seq: u32,
    /// The message code, unchecked.
    pub code: u32,
    /// The argument words, unchecked.
    pub args: [u64; 4],
    /// The text length the writer stored, unchecked: it may exceed `TEXT_CAPACITY`.
    pub text_len: u32,
    /// The text field; bytes past `text_len` are zero.
    pub text: Box<[u8; TEXT_CAPACITY]>,
}

/// Why a message was refused, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn bad(message: impl Into<String>) -> ProtocolError {
    ProtocolError(message.into())
}

/// Writes message number `number` (1, 2, ... from the writer's private counter,
/// never from the segment, so a peer cannot make us reuse one) and publishes it. The
/// caller holds the record's lock.
pub fn post(mailbox: &Mailbox, number: u32, code: u32, args: [u64; 4], text: &[u8]) {
    let seq = number.wrapping_mul(2);
    // Odd: a write is in progress; readers keep away.
    mailbox.seq.store(seq.wrapping_sub(1), Ordering::Relaxed);
    // SYNC POINT (mailbox write in progress): orders the odd `seq` before the field
    // writes, pairing with the reader's Acquire fence before its second `seq` load.
    fence(Ordering::Release);
    let text = &text[..text.len().min(TEXT_CAPACITY)];
    mailbox.code.store(code, Ordering::Relaxed);
    for (slot, value) in mailbox.args.iter().zip(args) {
        slot.store(value, Ordering::Relaxed);
    }
    store_bytes(&mailbox.text, text);
    mailbox.text_len.store(text.len() as u32, Ordering::Relaxed);
    // SYNC POINT (mailbox published): every field above is visible to a reader
    // that Acquire-loads this `seq` (`pending`, `take`).
    mailbox.seq.store(seq, Ordering::Release);
}

/// The mailbox's sequence value if a complete message newer than `last_seen` is there.
pub fn pending(mailbox: &Mailbox, last_seen: u32) -> Option<u32> {
    // SYNC POINT (mailbox published): pairs with the Release in `post`.
    let seq = mailbox.seq.load(Ordering::Acquire);
    (seq.is_multiple_of(2) && seq != last_seen).then_some(seq)
}

/// How often `take` retries a copy torn by a concurrent write before giving up
/// for now (the caller tries again on its next pass).
const TAKE_ATTEMPTS: usize = 64;

/// Copies the whole message out of the segment without a lock, and acknowledges
/// it. `None` while a write is in progress (or a dead writer left one half-done).
/// Nothing is interpreted here.
pub fn take(mailbox: &Mailbox) -> Option<RawCommand> {
    for _ in 0..TAKE_ATTEMPTS {
        // SYNC POINT (mailbox published): pairs with the Release in `post`.
        let before = mailbox.seq.load(Ordering::Acquire);
        if !before.is_multiple_of(2) {
            std::hint::spin_loop();
            continue;
        }
        let text_len = mailbox.text_len.load(Ordering::Relaxed);
        let mut text = Box::new([0u8; TEXT_CAPACITY]);
        let copied = load_bytes(&mailbox.text, text_len as usize);
        text[..copied.len()].copy_from_slice(&copied);
        let raw = RawCommand {
            seq: before,
            code: mailbox.code.load(Ordering::Relaxed),
            args: std::array::from_fn(|i| mailbox.args[i].load(Ordering::Relaxed)),
            text_len,
            text,
        };
        // SYNC POINT (mailbox write in progress): orders the field loads before the
        // second `seq` load, pairing with the writer's Release fence after its odd store.
        fence(Ordering::Acquire);
        if mailbox.seq.load(Ordering::Relaxed) == before {
            // Relaxed: `ack` is advisory (shown by status), nothing synchronises on it.
            mailbox.ack.store(before, Ordering::Relaxed);
            return Some(raw);
        }
    }
    None
}

impl RawCommand {
    /// The text field, checked for length and UTF-8.
    pub fn text(&self) -> Result<&str, ProtocolError> {
        let len = self.text_len as usize;
        if len > TEXT_CAPACITY {
            return Err(bad(format!("text length {len} exceeds the {TEXT_CAPACITY}-byte field")));
        }
        std::str::from_utf8(&self.text[..len]).map_err(|_| bad("text is not valid UTF-8"))
    }
}

impl ClientCommand {
    /// The code, argument words and text that carry the command (for `post`).
    pub fn encode(&self) -> (u32, [u64; 4], Vec<u8>) {
        match self {
            Self::Open { name, size, meta } => {
                let [word, mtime] = meta.encode();
                (C2S_OPEN, [*size, word, mtime, 0], name.as_bytes().to_vec())
            }
            Self::Finish { size, checksum } => (C2S_FINISH, [*size, *checksum, 0, 0], Vec::new()),
            Self::Abort { reason } => (C2S_ABORT, [0; 4], truncate_utf8(reason).to_vec()),
            Self::Ping { seq, sent_nanos } => (C2S_PING, [*seq, *sent_nanos, 0, 0], Vec::new()),
            Self::Close => (C2S_CLOSE, [0; 4], Vec::new()),
            Self::Put { name, size, checksum, meta } => {
                let [word, mtime] = meta.encode();
                (C2S_PUT, [*size, *checksum, word, mtime], name.as_bytes().to_vec())
            }
            Self::Mkdir { name, mode } => (C2S_MKDIR, [u64::from(*mode), 0, 0, 0], name.as_bytes().to_vec()),
            Self::Batch => (C2S_BATCH, [0; 4], Vec::new()),
            Self::Release => (C2S_RELEASE, [0; 4], Vec::new()),
        }
    }

    /// Check, then parse: only client codes, every field validated.
    pub fn decode(raw: &RawCommand) -> Result<ClientCommand, ProtocolError> {
        let [a, b, c, d] = raw.args;
        match raw.code {
            C2S_OPEN => {
                let name = raw.text()?;
                validate_path(name)?;
                Ok(Self::Open { name: name.to_owned(), size: a, meta: FileMeta::decode(b, c)? })
            }
            C2S_FINISH => Ok(Self::Finish { size: a, checksum: b }),
            C2S_ABORT => Ok(Self::Abort { reason: raw.text()?.to_owned() }),
            C2S_PING => Ok(Self::Ping { seq: a, sent_nanos: b }),
            C2S_CLOSE => Ok(Self::Close),
            C2S_PUT => {
                let name = raw.text()?;
                validate_path(name)?;
                Ok(Self::Put { name: name.to_owned(), size: a, checksum: b, meta: FileMeta::decode(c, d)? })
            }
            C2S_MKDIR => {
                let name = raw.text()?;
                validate_path(name)?;
                let mode = u32::try_from(a)
                    .ok()
                    .filter(|m| m & !MODE_BITS == 0)
                    .ok_or_else(|| bad(format!("folder mode {a:#o} has bits beyond {MODE_BITS:#o}")))?;
                Ok(Self::Mkdir { name: name.to_owned(), mode })
            }
            C2S_BATCH => Ok(Self::Batch),
            C2S_RELEASE => Ok(Self::Release),
            code => Err(bad(format!("unknown client command code {code:#x}"))),
        }
    }
}

impl ServerReply {
    /// The code, argument words and text that carry the reply (for `post`).
    pub fn encode(&self) -> (u32, [u64; 4], Vec<u8>) {
        match self {
            Self::Opened { slots, chunk } => (S2C_OPENED, [*slots as u64, *chunk, 0, 0], Vec::new()),
            Self::Done { bytes } => (S2C_DONE, [*bytes, 0, 0, 0], Vec::new()),
            Self::Error { code, message } => {
                (S2C_ERROR, [*code as u64, 0, 0, 0], truncate_utf8(message).to_vec())
            }
            Self::Pong { seq, sent_nanos } => (S2C_PONG, [*seq, *sent_nanos, 0, 0], Vec::new()),
            Self::Skipped => (S2C_SKIPPED, [0; 4], Vec::new()),
        }
    }

    /// Check, then parse: only server codes; a server error text that is not UTF-8
    /// is shown lossily rather than hiding the failure.
    pub fn decode(raw: &RawCommand) -> Result<ServerReply, ProtocolError> {
        let [a, b, ..] = raw.args;
        match raw.code {
            S2C_OPENED => {
                let slots = u32::try_from(a).map_err(|_| bad(format!("slot count {a} out of range")))?;
                Ok(Self::Opened { slots, chunk: b })
            }
            S2C_DONE => Ok(Self::Done { bytes: a }),
            S2C_ERROR => {
                let len = (raw.text_len as usize).min(TEXT_CAPACITY);
                let message = String::from_utf8_lossy(&raw.text[..len]).into_owned();
                Ok(Self::Error { code: ErrorCode::from_wire(a), message })
            }
            S2C_PONG => Ok(Self::Pong { seq: a, sent_nanos: b }),
            S2C_SKIPPED => Ok(Self::Skipped),
            code => Err(bad(format!("unknown server reply code {code:#x}"))),
        }
    }
}

/// The longest prefix of `text` that fits a mailbox and ends on a char boundary.
fn truncate_utf8(text: &str) -> &[u8] {
    let mut end = text.len().min(TEXT_CAPACITY);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

/// A relative path the server may create beneath its output folder: at most 4,096
/// bytes, components separated by single `/`, each one valid for `validate_file_name`
/// (so no leading or trailing `/`, no `.` or `..`, no NUL).
pub fn validate_path(path: &str) -> Result<(), ProtocolError> {
    if path.len() > MAX_PATH_LEN {
        return Err(bad(format!("path is {} bytes long, the limit is {MAX_PATH_LEN}", path.len())));
    }
    if path.is_empty() {
        return Err(bad("file name is empty"));
    }
    if path.starts_with('/') {
        return Err(bad(format!(
            "path {path:?} is absolute: only paths relative to the output folder are allowed"
        )));
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(bad(format!("path {path:?} has an empty component (a doubled or trailing '/')")));
        }
        validate_file_name(component).map_err(|e| bad(format!("path {path:?}: {e}")))?;
    }
    Ok(())
}

/// A path a client may ask the server to publish under: `validate_path`, and no
/// component reserved for the server's temporary files (`RESERVED_PREFIX`).
pub fn validate_output_path(path: &str) -> Result<(), ProtocolError> {
    validate_path(path)?;
    if path.split('/').any(|part| part.starts_with(RESERVED_PREFIX)) {
        return Err(bad(format!(
            "names starting with {RESERVED_PREFIX} are reserved for the server's temporary files"
        )));
    }
    Ok(())
}

/// One path component: not empty, not `.` or `..`, no `/` or NUL, at most 255 bytes.
pub fn validate_file_name(name: &str) -> Result<(), ProtocolError> {
    if name.is_empty() {
        return Err(bad("file name is empty"));
    }
    if name == "." || name == ".." {
        return Err(bad(format!("file name '{name}' is not a file")));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(bad(format!("file name {name:?} contains '/' or NUL")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(format!("file name is {} bytes long, the limit is {MAX_NAME_LEN}", name.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::Mailbox;

    fn empty_mailbox() -> Box<Mailbox> {
        Box::default()
    }

    fn roundtrip_client(cmd: ClientCommand) -> ClientCommand {
        let mailbox = empty_mailbox();
        let (code, args, text) = cmd.encode();
        post(&mailbox, 1, code, args, &text);
        assert_eq!(pending(&mailbox, 0), Some(2));
        ClientCommand::decode(&take(&mailbox).unwrap()).unwrap()
    }

    #[test]
    fn every_client_command_survives_the_mailbox() {
        for cmd in [
            ClientCommand::Open {
                name: "Время 01.mp3".into(), size: 1 << 40, meta: FileMeta::default()
            },
            ClientCommand::Open {
                name: "a/b c/d.txt".into(),
                size: 3,
                meta: FileMeta {
                    mode: Some(0o600),
                    mtime: UNIX_EPOCH.checked_sub(Duration::new(5, 300)),
                    size_is_hint: true,
                    skip_existing: true,
                },
            },
            ClientCommand::Mkdir { name: "photos/2001".into(), mode: 0o750 },
            ClientCommand::Finish { size: 7, checksum: u64::MAX },
            ClientCommand::Abort { reason: "source shrank".into() },
            ClientCommand::Ping { seq: 3, sent_nanos: 99 },
            ClientCommand::Close,
            ClientCommand::Batch,
            ClientCommand::Release,
            ClientCommand::Put {
                name: "small.txt".into(),
                size: 4096,
                checksum: 7,
                meta: FileMeta {
                    mode: Some(0o755),
                    // 2300-01-01, past what i64 nanoseconds hold.
                    mtime: Some(UNIX_EPOCH + Duration::new(10_413_792_000, 123_456_789)),
                    ..Default::default()
                },
            },
        ] {
            assert_eq!(roundtrip_client(cmd.clone()), cmd);
        }
    }

    #[test]
    fn every_server_reply_survives_the_mailbox() {
        for reply in [
            ServerReply::Opened { slots: 4, chunk: 1 << 20 },
            ServerReply::Done { bytes: 12 },
            ServerReply::Error { code: ErrorCode::Exists, message: "a.bin exists".into() },
            ServerReply::Pong { seq: 5, sent_nanos: 6 },
            ServerReply::Skipped,
        ] {
            let mailbox = empty_mailbox();
            let (code, args, text) = reply.encode();
            post(&mailbox, 9, code, args, &text);
            assert_eq!(ServerReply::decode(&take(&mailbox).unwrap()).unwrap(), reply);
            assert_eq!(mailbox.ack.load(Ordering::Relaxed), 18);
        }
    }

    #[test]
    fn a_side_never_accepts_its_own_codes() {
        let mailbox = empty_mailbox();
        let (code, args, text) = ServerReply::Done { bytes: 1 }.encode();
        post(&mailbox, 1, code, args, &text);
        let err = ClientCommand::decode(&take(&mailbox).unwrap()).unwrap_err();
        assert!(err.0.contains("unknown client command code 0x202"), "{err}");
        let (code, args, text) = ClientCommand::Close.encode();
        post(&mailbox, 2, code, args, &text);
        assert!(ServerReply::decode(&take(&mailbox).unwrap()).is_err());
    }

    #[test]
    fn an_unpublished_command_is_not_pending() {
        let mailbox = empty_mailbox();
        // A peer that died after writing fields but before bumping seq.
        mailbox.code.store(C2S_OPEN, Ordering::Relaxed);
        mailbox.text_len.store(3, Ordering::Relaxed);
        assert_eq!(pending(&mailbox, 0), None);
    }

    #[test]
    fn a_write_left_half_done_is_never_taken() {
        let mailbox = empty_mailbox();
        post(&mailbox, 1, C2S_PING, [1, 2, 0, 0], b"");
        // A writer that died after marking message 2 in progress (odd seq).
        mailbox.seq.store(3, Ordering::Relaxed);
        mailbox.code.store(C2S_OPEN, Ordering::Relaxed);
        assert_eq!(pending(&mailbox, 2), None);
        assert_eq!(take(&mailbox), None);
    }

    #[test]
    fn concurrent_rewrites_never_yield_a_torn_copy() {
        let mailbox = std::sync::Arc::new(*empty_mailbox());
        let writer = {
            let mailbox = std::sync::Arc::clone(&mailbox);
            std::thread::spawn(move || {
                for n in 1..20_000u32 {
                    let value = u64::from(n);
                    post(&mailbox, n, C2S_PING, [value; 4], &value.to_le_bytes().repeat(8));
                }
            })
        };
        let check = |raw: RawCommand| {
            let value = raw.args[0];
            assert!(raw.args.iter().all(|&a| a == value), "torn args {:?}", raw.args);
            assert_eq!(&raw.text[..8], &value.to_le_bytes(), "torn text");
            value
        };
        while !writer.is_finished() {
            if let Some(raw) = take(&mailbox) {
                check(raw);
            }
        }
        writer.join().unwrap();
        // Whatever the race saw, the last message is there whole once the writer is done.
        assert_eq!(take(&mailbox).map(check), Some(19_999));
    }

    #[test]
    fn hostile_open_names_are_refused() {
        for name in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "/abs",
            "a//b",
            "a/",
            "a/./b",
            "a/../b",
            "nul\0byte",
            &"x".repeat(256),
        ] {
            let mailbox = empty_mailbox();
            let meta = FileMeta::default();
            let (code, args, text) = ClientCommand::Open { name: name.into(), size: 1, meta }.encode();
            post(&mailbox, 1, code, args, &text);
            assert!(ClientCommand::decode(&take(&mailbox).unwrap()).is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn oversized_or_invalid_text_is_refused() {
        let mailbox = empty_mailbox();
        post(&mailbox, 1, C2S_OPEN, [1, 0, 0, 0], b"ok");
        mailbox.text_len.store(TEXT_CAPACITY as u32 + 1, Ordering::Relaxed);
        assert!(ClientCommand::decode(&take(&mailbox).unwrap()).unwrap_err().0.contains("exceeds"));
        post(&mailbox, 2, C2S_OPEN, [1, 0, 0, 0], &[0xff, 0xfe, b'a']);
        assert!(ClientCommand::decode(&take(&mailbox).unwrap()).unwrap_err().0.contains("UTF-8"));
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let message = "й".repeat(TEXT_CAPACITY);
        let cut = truncate_utf8(&message);
        assert!(cut.len() <= TEXT_CAPACITY);
        assert!(std::str::from_utf8(cut).is_ok());
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;

    #[test]
    fn nested_relative_paths_are_accepted() {
        for path in [
            "a",
            "a/b",
            "Тяжелое - наше/01. Время.txt",
            "line\nbreak/x",
            &vec!["z".repeat(255); 16].join("/"),
        ] {
            assert!(validate_path(path).is_ok(), "{path:?} refused");
        }
    }

    #[test]
    fn paths_past_path_max_are_refused() {
        let long_path = vec!["y".repeat(200); 21].join("/");
        assert!(validate_path(&long_path).unwrap_err().0.contains("limit is 4096"));
    }

    #[test]
    fn unknown_metadata_bits_are_refused() {
        assert!(FileMeta::decode(1 << 62, 0).is_err());
        assert!(FileMeta::decode(1 << 20, 0).is_err());
        assert!(FileMeta::decode(0o4755 | META_HAS_MODE, 0).is_err(), "set-user-id");
        assert!(FileMeta::decode(0o644, 0).is_err(), "mode without its flag");
        assert!(FileMeta::decode(META_HAS_MTIME | (1_000_000_000 << META_NANOS_SHIFT), 0).is_err(), "nanos");
        assert!(FileMeta::decode(5 << META_NANOS_SHIFT, 0).is_err(), "nanos without the mtime flag");
        assert_eq!(FileMeta::decode(0o644 | META_HAS_MODE, 9).unwrap().mode, Some(0o644));
    }

    #[test]
    fn times_before_and_long_after_the_epoch_survive_to_the_nanosecond() {
        for (secs, nanos) in [(0, 0), (-1, 999_999_999), (-5, 1), (10_413_792_000, 7), (1_700_000_000, 5)] {
            let time = join_time(secs, nanos).unwrap();
            assert_eq!(split_time(time), (secs, nanos));
        }
    }
}
