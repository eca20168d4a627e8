//! The segment's wire layout: every `#[repr(C)]` struct both processes share, their
//! constants, and the codecs for text fields. No `unsafe` here: the structs are made
//! only of atomics, so any bit pattern a peer writes is a valid value, and meaning is
//! checked later (`protocol`, `ring`). Offsets, never pointers. The mapping that
//! turns offsets into these views is `segment`.
//!
//! ```text
//! offset 0        +-----------------------------+
//!                 | Header (magic written last) |  512 B
//! 512             | Handout: the GUID on offer  |  512 B
//! 4096 area_start +-----------------------------+
//!                 | Record | Record | hole | ...|  records grow upward (10 KiB each)
//!                 |             v               |  <- low_mark
//!                 |        free middle gap      |
//!                 |             ^               |  <- high_mark
//!                 | ... | Buffer | hole | Buffer|  buffers grow downward (page aligned)
//! size  area_end  +-----------------------------+
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::wait::Event;

/// "SHXFER" + layout version in the last two bytes, little endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHXFER\x05\x00");
/// The header's `version`: a segment with any other is refused at open. It counts
/// the protocol too (4: the `release` command; 5: `Record::filling`), so a client
/// never sends a command its server does not know.
pub const LAYOUT_VERSION: u32 = 5;
/// Where the `Header` lies: the segment's first bytes.
pub const HEADER_OFFSET: u64 = 0;
/// Where the `Handout` lies; the `Header` must fit below it (checked at compile time).
pub const HANDOUT_OFFSET: u64 = 512;
/// First byte of the allocator's area: records start on the second page.
pub const AREA_START: u64 = 4096;
/// Bytes each command record takes in the area (a `Record` fits, checked at compile time).
pub const RECORD_SIZE: u64 = 10240;
/// Alignment of every record offset; `Segment::record` refuses any other.
pub const RECORD_ALIGN: u64 = 64;
/// Alignment of ring buffers (one page); segment sizes are rounded up to it too.
pub const BUFFER_ALIGN: u64 = 4096;
/// Server worker threads, at most (each has a doorbell in the header).
pub const MAX_WORKERS: usize = 16;
/// Ring slots per stream, at most (the server may give fewer).
pub const MAX_SLOTS: usize = 16;
/// Bytes of text one mailbox carries (paths, error messages): room for a whole
/// relative path (Linux PATH_MAX).
pub const TEXT_CAPACITY: usize = 4096;
/// Smallest segment size `Segment::create` accepts, in bytes.
pub const MIN_SEGMENT_SIZE: u64 = 256 * 1024;
/// Largest segment size `Segment::create` accepts, in bytes (1 TiB).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 40;
pub use crate::sys::SHM_DIR;

/// `Header::server_state`: the header is published, the workers not started yet.
pub const SERVER_STARTING: u32 = 0;
/// `Header::server_state`: the server takes streams.
pub const SERVER_RUNNING: u32 = 1;
/// `Header::server_state`: the server is shutting down; clients give up at their next check.
pub const SERVER_STOPPING: u32 = 2;

/// The segment header. The server fills it and stores `magic` last (Release); an
/// opener loads `magic` (Acquire) before trusting anything else.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// `MAGIC` once the header is complete; 0 before. Stored last, with Release.
    pub magic: AtomicU64,
    /// `LAYOUT_VERSION` of the server that made the segment.
    pub version: AtomicU32,
    /// `RECORD_SIZE` as the server knows it; an opener refuses any other.
    pub record_size: AtomicU32,
    /// Size of the segment in bytes; an opener checks it against its mapping.
    pub segment_size: AtomicU64,
    /// First byte of the allocator's area (`AREA_START`).
    pub area_start: AtomicU64,
    /// End of the allocator's area, exclusive (the segment size).
    pub area_end: AtomicU64,
    /// The server's pid: clients check it is alive before and while they wait.
    pub server_pid: AtomicU32,
    /// `SERVER_STARTING`, `SERVER_RUNNING` or `SERVER_STOPPING`; written by the server.
    pub server_state: AtomicU32,
    /// Bumped by the server's main loop at least every 250 ms or so: a stalled server
    /// is visible.
    pub heartbeat: AtomicU64,
    /// One per server worker: a client rings the one its record names
    /// (`Record::doorbell`) after posting anything; that worker sleeps on it.
    pub doorbells: [Event; MAX_WORKERS],
    /// The server rings it after putting a fresh GUID on offer.
    pub handout_event: Event,
    /// Allocator picture published by the server for `--status` (advisory only).
    pub low_mark: AtomicU64,
    /// First byte of the buffer region (see `low_mark`).
    pub high_mark: AtomicU64,
    /// Bytes of the area in no live block, holes included (see `low_mark`).
    pub free_bytes: AtomicU64,
    /// Free ranges in the area, the middle gap included (see `low_mark`).
    pub hole_count: AtomicU64,
    /// Records allocated, the one on offer included (see `low_mark`).
    pub live_streams: AtomicU64,
    /// Files published since the server started (status only).
    pub streams_done: AtomicU64,
    /// Transfers failed or given up since the server started (status only).
    pub streams_failed: AtomicU64,
    /// When the server process started, in clock ticks after boot (`/proc/<pid>/stat`
    /// field 22): with `server_pid`, tells the server from a later process that
    /// reused its pid.
    pub server_started: AtomicU64,
    /// Wall-clock milliseconds since the epoch of the last heartbeat (status only).
    pub heartbeat_at_ms: AtomicU64,
    /// The server's worker threads (0 until the server wrote it): a client runs no
    /// more batch streams than this, as more would only take turns.
    pub workers: AtomicU32,
    /// The server's `--max-streams-per-client` (0 until the server wrote it): a
    /// client runs no more jobs than this, as more would be refused.
    pub max_streams_per_client: AtomicU32,
}

/// `Handout::state`: nothing on offer (or the last take was collected).
pub const HANDOUT_EMPTY: u32 = 0;
/// `Handout::state`: a GUID is on offer; a client may take it.
pub const HANDOUT_OFFERED: u32 = 1;
/// `Handout::state`: a client took the offer; the server has yet to collect it.
pub const HANDOUT_TAKEN: u32 = 2;

/// The GUID-handout area, guarded by the well-known handout lock.
#[repr(C)]
#[derive(Debug)]
pub struct Handout {
    /// `HANDOUT_EMPTY`, `HANDOUT_OFFERED` or `HANDOUT_TAKEN`; storing either of the last
    /// two (Release) publishes the fields written before it.
    pub state: AtomicU32,
    /// Pid of the client that took the offer, written by that client (advisory).
    pub taker_pid: AtomicU32,
    /// Offset of the record the offered GUID names.
    pub record_offset: AtomicU64,
    /// The GUID on offer, as its (high, low) halves.
    pub guid: [AtomicU64; 2],
    /// Bumped by the server with every offer.
    pub generation: AtomicU64,
}

/// One direction of a record's command channel, a sequence lock (see `protocol`). The
/// writer, under the record's named lock, makes `seq` odd, fills the fields and makes
/// `seq` even again (Release); the reader copies everything out without a lock, keeps
/// the copy only if `seq` did not move, and stores `ack = seq`. A writer that died
/// half-way left `seq` odd, so its half-written command is never read.
#[repr(C)]
#[derive(Debug)]
pub struct Mailbox {
    /// Twice the number of the last complete message; odd while one is being written.
    pub seq: AtomicU32,
    /// The `seq` the reader last took (advisory: nothing waits on it).
    pub ack: AtomicU32,
    /// The message's code: a `C2S_*` or `S2C_*` value of `protocol`.
    pub code: AtomicU32,
    /// Bytes of `text` in use (a peer may write more than `TEXT_CAPACITY`).
    pub text_len: AtomicU32,
    /// The code's numeric arguments (see `protocol` for each code's meaning).
    pub args: [AtomicU64; 4],
    /// The message's text (a path, an abort reason, an error message): little-endian
    /// bytes packed into words.
    pub text: [AtomicU64; TEXT_CAPACITY / 8],
}

impl Default for Mailbox {
    /// An empty mailbox outside the segment (tests, scratch space).
    fn default() -> Self {
        Mailbox {
            seq: 0.into(),
            ack: 0.into(),
            code: 0.into(),
            text_len: 0.into(),
            args: Default::default(),
            text: std::array::from_fn(|_| 0.into()),
        }
    }
}

/// One buffer of a stream's single-producer/single-consumer ring; `state` holds a
/// `ring::SlotState`, and only `ring` reads or writes these words.
#[repr(C)]
#[derive(Debug)]
pub struct Slot {
    /// A `ring::SlotState` value: who owns the buffer now.
    pub state: AtomicU32,
    /// Unused; keeps `offset` on an 8-byte boundary.
    pub reserved: AtomicU32,
    /// Offset of the slot's buffer in the segment; written by the server.
    pub offset: AtomicU64,
    /// Size of the slot's buffer in bytes; written by the server.
    pub capacity: AtomicU64,
    /// Bytes the client put in the buffer, written before it hands the slot over.
    pub len: AtomicU64,
}

/// `Record::phase`: between files, waiting for a command.
pub const PHASE_IDLE: u32 = 0;
/// `Record::phase`: a file is open but no buffer space is free for its ring yet.
pub const PHASE_WAITING_FOR_SPACE: u32 = 1;
/// `Record::phase`: receiving a file's data.
pub const PHASE_RECEIVING: u32 = 2;
/// Words of the record's name field: 256 bytes, enough for NAME_MAX.
pub const NAME_WORDS: usize = 32;

/// `Record::state`: not in use (never offered, or freed).
pub const RECORD_FREE: u32 = 0;
/// `Record::state`: its GUID is on offer in the handout.
pub const RECORD_OFFERED: u32 = 1;
/// `Record::state`: a client took it; the stream is live.
pub const RECORD_ACTIVE: u32 = 2;
/// Dropped for idleness; kept until its client exits (see `server`).
pub const RECORD_DROPPED: u32 = 3;

/// A stream's command record. `state`, `guid`, `nslots`, the slots' offsets and the
/// progress fields are written by the server; the client writes `c2s`, slot states
/// and lengths.
#[repr(C)]
#[derive(Debug)]
pub struct Record {
    /// `RECORD_FREE`, `RECORD_OFFERED`, `RECORD_ACTIVE` or `RECORD_DROPPED`.
    pub state: AtomicU32,
    /// The pid the client gave when it took the record (advisory, for status).
    pub client_pid: AtomicU32,
    /// The stream's GUID, as its (high, low) halves; it also names the stream's lock file.
    pub guid: [AtomicU64; 2],
    /// The server rings it after replying or handing a buffer back; the client sleeps on it.
    pub client_event: Event,
    /// Ring slots installed (the first `nslots` of `slots`); 0 without a ring.
    pub nslots: AtomicU32,
    /// Which header doorbell serves this record (its worker); written before the offer.
    pub doorbell: AtomicU32,
    /// The current file's announced size in bytes, for status.
    pub file_size: AtomicU64,
    /// Bytes of the current file the server has drained so far, for status.
    pub bytes_done: AtomicU64,
    /// The options.xml id of the stream; written by the client, shown by status only.
    pub stream_id: AtomicU64,
    /// What the server is doing with the stream (`PHASE_*`), for status.
    pub phase: AtomicU32,
    /// Bytes of `name` in use.
    pub name_len: AtomicU32,
    /// Bumped by a client waiting on a slow source (a pipe with nothing to read
    /// yet): the stream is alive although no data moves. Advisory, like a heartbeat.
    pub client_beat: AtomicU32,
    /// 1 when `file_size` is only a hint (a pipe), for status.
    pub size_is_hint: AtomicU32,
    /// 1 while the client has a slot of the ring open to write into (from
    /// `Producer::buffer` to the slot's hand-over): the server frees a dropped
    /// stream's ring early only when it reads 0 here (see `ring`).
    pub filling: AtomicU32,
    /// The validated file name being received, for status.
    pub name: [AtomicU64; NAME_WORDS],
    /// Commands, client to server.
    pub c2s: Mailbox,
    /// Replies, server to client.
    pub s2c: Mailbox,
    /// The stream's buffer ring; only `ring` reads or writes it.
    pub slots: [Slot; MAX_SLOTS],
}

const _: () = assert!(std::mem::size_of::<Header>() <= (HANDOUT_OFFSET - HEADER_OFFSET) as usize);
const _: () = assert!(std::mem::size_of::<Handout>() <= (AREA_START - HANDOUT_OFFSET) as usize);
const _: () = assert!(std::mem::size_of::<Mailbox>() == 48 + TEXT_CAPACITY);
const _: () = assert!(std::mem::size_of::<Slot>() == 32);
const _: () = assert!(std::mem::size_of::<Record>() <= RECORD_SIZE as usize);
const _: () = assert!(std::mem::align_of::<Record>() <= RECORD_ALIGN as usize);
const _: () = assert!(std::mem::align_of::<Header>() <= 8 && std::mem::align_of::<Handout>() <= 8);

/// Stores `bytes` (cut to the field) into a text field made of words, the last word
/// zero padded;
/// returns the length stored.
pub fn store_bytes(words: &[AtomicU64], bytes: &[u8]) -> usize {
    let len = bytes.len().min(words.len() * 8);
    // Readers copy only the words that hold `len` bytes; the rest is left as it was.
    for (i, word) in words[..len.div_ceil(8)].iter().enumerate() {
        let mut chunk = [0u8; 8];
        let start = (i * 8).min(len);
        let end = (start + 8).min(len);
        chunk[..end - start].copy_from_slice(&bytes[start..end]);
        // Relaxed: published by the caller's later Release store.
        word.store(u64::from_le_bytes(chunk), Ordering::Relaxed);
    }
    len
}

/// Copies the first `len` bytes (at most the field) out of a text field; only the
/// words that hold them are read.
pub fn load_bytes(words: &[AtomicU64], len: usize) -> Vec<u8> {
    let len = len.min(words.len() * 8);
    let mut out: Vec<u8> =
        words[..len.div_ceil(8)].iter().flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes()).collect();
    out.truncate(len);
    out
}
