//! The frame stream between `sharedclient --remote` and the relay on the other host
//! (`sharedclient --relay`): files as frames over any byte pipe (an SSH session's
//! stdin and stdout today; nothing here knows about SSH). Versioned, length-prefixed,
//! and read as strictly as the segment's records: a reader trusts nothing it reads.
//!
//! ```text
//! each side first writes the 8-byte hello "SXFRAME" + version, then frames:
//!   +------+---------+------------+-----------+--------------------+
//!   | kind | 0, 0, 0 | length u32 | file u32  | payload (length)   |   12-byte header
//!   +------+---------+------------+-----------+--------------------+
//! client -> relay:  BEGIN  file n: kind, size, metadata, name    (n = 1, 2, 3 ... in order)
//!                   DATA   file n: up to 256 KiB of its bytes
//!                   END    file n: size and xxh3-64 of all its bytes
//!                   ABORT  file n: the client could not read it; the relay drops it
//!                   BYE    no more files
//!                   ALIVE  the client waits on a silent source (every 0.5 s)
//! relay -> client:  READY  the relay reached the server
//!                   RESULT file n: done (bytes), skipped, or failed (code, message)
//!                   FATAL  the relay cannot go on (message); it exits
//! ```
//!
//! Little-endian throughout. One file is open at a time; results may lag behind
//! (the client keeps sending while the relay works).

use std::fmt;
use std::io::{self, Read, Write};

use crate::protocol::{self, FileMeta, MODE_BITS};

/// The hello each side writes first: the format's name and version.
pub const HELLO: [u8; 8] = *b"SXFRAME\x02";
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 12;
/// Most data bytes in one DATA frame.
pub const MAX_DATA: usize = 256 << 10;
/// Longest payload any frame may have (DATA, or a BEGIN with the longest name).
pub const MAX_PAYLOAD: usize = MAX_DATA;
/// Longest message a RESULT or FATAL carries.
pub const MAX_MESSAGE: usize = 4096;

const KIND_BEGIN: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_END: u8 = 3;
const KIND_ABORT: u8 = 4;
const KIND_BYE: u8 = 5;
const KIND_ALIVE: u8 = 6;
const KIND_READY: u8 = 16;
const KIND_RESULT: u8 = 17;
const KIND_FATAL: u8 = 18;

const BEGIN_FILE: u32 = 1;
const BEGIN_DIR: u32 = 2;
const BEGIN_SIZE_KNOWN: u32 = 1 << 8;

const RESULT_DONE: u32 = 0;
const RESULT_SKIPPED: u32 = 1;
const RESULT_FAILED: u32 = 2;

/// What a BEGIN announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// A file: its size when known (else read to END), and its metadata.
    File {
        /// The relative path it arrives under.
        name: String,
        /// Its length, when known in advance.
        size: Option<u64>,
        /// Mode, time and flags.
        meta: FileMeta,
    },
    /// A folder with permission bits `mode`.
    Dir {
        /// The relative path.
        name: String,
        /// Permission bits, within `MODE_BITS`.
        mode: u32,
    },
}

impl Begin {
    /// The relative path it arrives under.
    pub fn name(&self) -> &str {
        match self {
            Begin::File { name, .. } | Begin::Dir { name, .. } => name,
        }
    }
}

/// What became of one file, as the relay reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Published whole; its length.
    Done(u64),
    /// The name existed and skipping was asked for.
    Skipped,
    /// Not published, and why (`code` 2: the user must fix something, else 1).
    Failed {
        /// 2 for a usage problem, 1 for any other failure.
        code: u32,
        /// Why, for people.
        message: String,
    },
}

/// One frame, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// client -> relay: file `file` starts.
    Begin {
        /// The file's number.
        file: u32,
        /// What it is.
        what: Begin,
    },
    /// client -> relay: more bytes of file `file`.
    Data {
        /// The file's number.
        file: u32,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// client -> relay: file `file` is complete.
    End {
        /// The file's number.
        file: u32,
        /// Its length.
        size: u64,
        /// xxh3-64 of all its bytes.
        checksum: u64,
    },
    /// client -> relay: file `file` could not be read; drop it.
    Abort {
        /// The file's number.
        file: u32,
        /// Why.
        reason: String,
    },
    /// client -> relay: no more files.
    Bye,
    /// client -> relay: still here, waiting on a silent source (the relay keeps
    /// its streams alive only while the client shows it is).
    Alive,
    /// relay -> client: the relay reached the server.
    Ready,
    /// relay -> client: what became of file `file`.
    Result {
        /// The file's number.
        file: u32,
        /// What became of it.
        outcome: Outcome,
    },
    /// relay -> client: the relay cannot go on.
    Fatal {
        /// Why.
        message: String,
    },
}

/// Why a frame stream was refused.
#[derive(Debug)]
pub enum FrameError {
    /// Reading or writing the pipe failed (or it ended mid-frame).
    Io(io::Error),
    /// The peer wrote something this side does not accept.
    Bad(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::Bad(message) => write!(f, "bad frame: {message}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

fn bad(message: impl Into<String>) -> FrameError {
    FrameError::Bad(message.into())
}

/// Writes the hello.
pub fn write_hello(out: &mut impl Write) -> io::Result<()> {
    out.write_all(&HELLO)
}

/// Reads and checks the peer's hello. `Ok(false)`: the pipe ended before any byte.
pub fn read_hello(input: &mut impl Read) -> Result<bool, FrameError> {
    let mut hello = [0u8; 8];
    let mut got = 0;
    while got < hello.len() {
        match input.read(&mut hello[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(bad("the stream ended inside the hello")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    if hello[..7] != HELLO[..7] {
        let shown = String::from_utf8_lossy(&hello);
        return Err(bad(format!("the peer did not greet as a sharedxfer frame stream (got {shown:?})")));
    }
    if hello[7] != HELLO[7] {
        return Err(bad(format!(
            "the peer speaks frame version {}, this build {}: install the same sharedxfer on both hosts",
            hello[7], HELLO[7]
        )));
    }
    Ok(true)
}

fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Frame {
    /// Writes the frame (header and payload).
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mut payload = Vec::new();
        let (kind, file) = match self {
            Frame::Begin { file, what } => {
                let (flags, mode, size, [word, secs], name) = match what {
                    Begin::File { name, size, meta } => {
                        let known = if size.is_some() { BEGIN_SIZE_KNOWN } else { 0 };
                        let meta = FileMeta { size_is_hint: size.is_none(), ..*meta };
                        (BEGIN_FILE | known, 0, size.unwrap_or(0), meta.encode(), name)
                    }
                    Begin::Dir { name, mode } => {
                        (BEGIN_DIR, mode & MODE_BITS, 0, FileMeta::default().encode(), name)
                    }
                };
                payload.extend_from_slice(&flags.to_le_bytes());
                payload.extend_from_slice(&mode.to_le_bytes());
                payload.extend_from_slice(&size.to_le_bytes());
                payload.extend_from_slice(&word.to_le_bytes());
                payload.extend_from_slice(&secs.to_le_bytes());
                payload.extend_from_slice(name.as_bytes());
                (KIND_BEGIN, *file)
            }
            Frame::Data { file, bytes } => return write_data(out, *file, bytes),
            Frame::End { file, size, checksum } => {
                payload.extend_from_slice(&size.to_le_bytes());
                payload.extend_from_slice(&checksum.to_le_bytes());
                (KIND_END, *file)
            }
            Frame::Abort { file, reason } => {
                payload.extend_from_slice(cut(reason, MAX_MESSAGE).as_bytes());
                (KIND_ABORT, *file)
            }
            Frame::Bye => (KIND_BYE, 0),
            Frame::Alive => (KIND_ALIVE, 0),
            Frame::Ready => (KIND_READY, 0),
            Frame::Result { file, outcome } => {
                let (status, code, bytes, message) = match outcome {
                    Outcome::Done(bytes) => (RESULT_DONE, 0, *bytes, ""),
                    Outcome::Skipped => (RESULT_SKIPPED, 0, 0, ""),
                    Outcome::Failed { code, message } => (RESULT_FAILED, *code, 0, cut(message, MAX_MESSAGE)),
                };
                payload.extend_from_slice(&status.to_le_bytes());
                payload.extend_from_slice(&code.to_le_bytes());
                payload.extend_from_slice(&bytes.to_le_bytes());
                payload.extend_from_slice(message.as_bytes());
                (KIND_RESULT, *file)
            }
            Frame::Fatal { message } => {
                payload.extend_from_slice(cut(message, MAX_MESSAGE).as_bytes());
                (KIND_FATAL, 0)
            }
        };
        let mut header = [0u8; HEADER_LEN];
        header[0] = kind;
        header[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[8..12].copy_from_slice(&file.to_le_bytes());
        out.write_all(&header)?;
        out.write_all(&payload)
    }

    /// Reads the next frame. `Ok(None)`: the stream ended cleanly between frames.
    /// Every field is checked; anything unknown or out of bounds is an error.
    pub fn read(input: &mut impl Read) -> Result<Option<Frame>, FrameError> {
        match Header::read(input)? {
            None => Ok(None),
            Some(header) => header.finish(input).map(Some),
        }
    }
}

/// A frame header, checked, before its payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    kind: u8,
    /// The payload's length (at most `MAX_PAYLOAD`).
    pub len: usize,
    /// The file it is about (0: none).
    pub file: u32,
}

impl Header {
    /// Reads the next header. `Ok(None)`: the stream ended cleanly between frames.
    pub fn read(input: &mut impl Read) -> Result<Option<Header>, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match input.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(bad("the stream ended inside a frame header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if header[1..4] != [0, 0, 0] {
            return Err(bad("reserved header bytes are not zero"));
        }
        let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let file = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            return Err(bad(format!("a frame of {len} bytes (at most {MAX_PAYLOAD})")));
        }
        if header[0] == KIND_DATA && (len == 0 || file == 0) {
            return Err(bad(format!("an empty DATA frame, or one for file 0 (file {file})")));
        }
        Ok(Some(Header { kind: header[0], len, file }))
    }

    /// A DATA frame: its `len` bytes follow, for the caller to read where it likes.
    pub fn is_data(&self) -> bool {
        self.kind == KIND_DATA
    }

    /// Reads the payload and decodes the whole frame.
    pub fn finish(self, input: &mut impl Read) -> Result<Frame, FrameError> {
        let mut payload = vec![0u8; self.len];
        input.read_exact(&mut payload).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => bad("the stream ended inside a frame"),
            _ => FrameError::Io(e),
        })?;
        decode(self.kind, self.file, payload)
    }
}

/// Writes a DATA frame of `bytes` (at most `MAX_DATA`, at least 1) for `file`
/// without copying them.
pub fn write_data(out: &mut impl Write, file: u32, bytes: &[u8]) -> io::Result<()> {
    debug_assert!(!bytes.is_empty() && bytes.len() <= MAX_DATA);
    let mut header = [0u8; HEADER_LEN];
    header[0] = KIND_DATA;
    header[4..8].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    header[8..12].copy_from_slice(&file.to_le_bytes());
    out.write_all(&header)?;
    out.write_all(bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn text(bytes: Vec<u8>, what: &str) -> Result<String, FrameError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(bad(format!("{what} of {} bytes", bytes.len())));
    }
    // Printed by the other side as it is: no control character gets through.
    Ok(crate::escape::printable(&String::from_utf8_lossy(&bytes)).into_owned())
}

fn decode(kind: u8, file: u32, payload: Vec<u8>) -> Result<Frame, FrameError> {
    let fixed = |n: usize| -> Result<(), FrameError> {
        match payload.len() == n {
            true => Ok(()),
            false => Err(bad(format!("frame kind {kind} with {} payload bytes, not {n}", payload.len()))),
        }
    };
    let numbered = || match file {
        0 => Err(bad(format!("frame kind {kind} for file 0"))),
        _ => Ok(()),
    };
    match kind {
        KIND_BEGIN => {
            numbered()?;
            if payload.len() < 32 {
                return Err(bad("a BEGIN frame shorter than its fixed part"));
            }
            let (flags, mode, size) = (u32_at(&payload, 0), u32_at(&payload, 4), u64_at(&payload, 8));
            let meta = FileMeta::decode(u64_at(&payload, 16), u64_at(&payload, 24))
                .map_err(|e| bad(format!("file {file}: {e}")))?;
            let name = std::str::from_utf8(&payload[32..])
                .map_err(|_| bad(format!("file {file}: the name is not UTF-8")))?
                .to_owned();
            protocol::validate_path(&name).map_err(|e| bad(format!("file {file}: {e}")))?;
            let what = match flags & !BEGIN_SIZE_KNOWN {
                BEGIN_FILE => {
                    let known = flags & BEGIN_SIZE_KNOWN != 0;
                    if known == meta.size_is_hint || mode != 0 {
                        return Err(bad(format!("file {file}: inconsistent BEGIN fields")));
                    }
                    Begin::File { name, size: known.then_some(size), meta }
                }
                BEGIN_DIR
                    if flags == BEGIN_DIR
                        && size == 0
                        && mode & !MODE_BITS == 0
                        && meta == FileMeta::default() =>
                {
                    Begin::Dir { name, mode }
                }
                _ => return Err(bad(format!("file {file}: unknown BEGIN flags {flags:#x}"))),
            };
            Ok(Frame::Begin { file, what })
        }
        KIND_DATA => {
            numbered()?;
            if payload.is_empty() {
                return Err(bad(format!("file {file}: an empty DATA frame")));
            }
            Ok(Frame::Data { file, bytes: payload })
        }
        KIND_END => {
            numbered()?;
            fixed(16)?;
            Ok(Frame::End { file, size: u64_at(&payload, 0), checksum: u64_at(&payload, 8) })
        }
        KIND_ABORT => {
            numbered()?;
            Ok(Frame::Abort { file, reason: text(payload, "an ABORT reason")? })
        }
        KIND_BYE | KIND_READY | KIND_ALIVE => {
            fixed(0)?;
            if file != 0 {
                return Err(bad(format!("frame kind {kind} for file {file}")));
            }
            Ok(match kind {
                KIND_BYE => Frame::Bye,
                KIND_READY => Frame::Ready,
                _ => Frame::Alive,
            })
        }
        KIND_RESULT => {
            numbered()?;
            if payload.len() < 16 {
                return Err(bad("a RESULT frame shorter than its fixed part"));
            }
            let (status, code, bytes) = (u32_at(&payload, 0), u32_at(&payload, 4), u64_at(&payload, 8));
            let message = text(payload[16..].to_vec(), "a RESULT message")?;
            let outcome = match status {
                RESULT_DONE if code == 0 && message.is_empty() => Outcome::Done(bytes),
                RESULT_SKIPPED if code == 0 && bytes == 0 && message.is_empty() => Outcome::Skipped,
                RESULT_FAILED if (1..=2).contains(&code) && bytes == 0 => Outcome::Failed { code, message },
                _ => return Err(bad(format!("file {file}: RESULT status {status} code {code}"))),
            };
            Ok(Frame::Result { file, outcome })
        }
        KIND_FATAL => {
            if file != 0 {
                return Err(bad(format!("a FATAL frame for file {file}")));
            }
            Ok(Frame::Fatal { message: text(payload, "a FATAL message")? })
        }
        other => Err(bad(format!("unknown frame kind {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn round_trip(frame: Frame) -> Frame {
        let mut bytes = Vec::new();
        frame.write(&mut bytes).unwrap();
        let mut input = &bytes[..];
        let got = Frame::read(&mut input).unwrap().unwrap();
        assert!(input.is_empty(), "{frame:?} left bytes");
        got
    }

    #[test]
    fn every_frame_survives_the_stream() {
        let meta = FileMeta {
            mode: Some(0o640),
            mtime: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 7)),
            skip_existing: true,
            ..FileMeta::default()
        };
        for frame in [
            Frame::Begin { file: 1, what: Begin::File { name: "a/b.txt".into(), size: Some(5), meta } },
            Frame::Begin {
                file: 2,
                what: Begin::File { name: "Время".into(), size: None, meta: FileMeta::default() },
            },
            Frame::Begin { file: 3, what: Begin::Dir { name: "a".into(), mode: 0o750 } },
            Frame::Data { file: 1, bytes: b"hello".to_vec() },
            Frame::End { file: 1, size: 5, checksum: 99 },
            Frame::Abort { file: 2, reason: "cannot read".into() },
            Frame::Bye,
            Frame::Alive,
            Frame::Ready,
            Frame::Result { file: 1, outcome: Outcome::Done(5) },
            Frame::Result { file: 2, outcome: Outcome::Skipped },
            Frame::Result { file: 3, outcome: Outcome::Failed { code: 1, message: "exists".into() } },
            Frame::Fatal { message: "no server".into() },
        ] {
            let got = round_trip(frame.clone());
            let want = match frame {
                Frame::Begin { file, what: Begin::File { name, size: None, meta } } => Frame::Begin {
                    file,
                    what: Begin::File { name, size: None, meta: FileMeta { size_is_hint: true, ..meta } },
                },
                other => other,
            };
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_peers_text_arrives_without_control_characters() {
        let evil = "\u{1b}[2J\u{1b}]0;PWNED\u{7}evil";
        let want = "\\u{1b}[2J\\u{1b}]0;PWNED\\u{7}evil";
        let failed = Outcome::Failed { code: 1, message: evil.into() };
        assert_eq!(
            round_trip(Frame::Result { file: 1, outcome: failed }),
            Frame::Result { file: 1, outcome: Outcome::Failed { code: 1, message: want.into() } }
        );
        assert_eq!(round_trip(Frame::Fatal { message: evil.into() }), Frame::Fatal { message: want.into() });
        let abort = Frame::Abort { file: 2, reason: evil.into() };
        assert_eq!(round_trip(abort), Frame::Abort { file: 2, reason: want.into() });
    }

    #[test]
    fn damaged_frames_are_refused() {
        let mut good = Vec::new();
        Frame::End { file: 1, size: 5, checksum: 9 }.write(&mut good).unwrap();
        let refuse = |bytes: &[u8]| Frame::read(&mut &bytes[..]).is_err();
        assert!(refuse(&good[..good.len() - 1]), "cut payload");
        assert!(refuse(&good[..5]), "cut header");
        let mut kind = good.clone();
        kind[0] = 99;
        assert!(refuse(&kind), "unknown kind");
        let mut reserved = good.clone();
        reserved[2] = 1;
        assert!(refuse(&reserved));
        let mut zero = good.clone();
        zero[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(refuse(&zero), "file 0");
        let mut huge = good;
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(refuse(&huge), "length past the limit");
        let mut name = Vec::new();
        let what = Begin::File { name: "x".into(), size: Some(1), meta: FileMeta::default() };
        Frame::Begin { file: 1, what }.write(&mut name).unwrap();
        let at = name.len() - 1;
        name[at] = b'/';
        assert!(refuse(&name), "a name with a trailing /");
        assert_eq!(Frame::read(&mut &[][..]).unwrap(), None, "a clean end");
    }

    #[test]
    fn the_hello_names_the_version() {
        let mut out = Vec::new();
        write_hello(&mut out).unwrap();
        assert!(read_hello(&mut &out[..]).unwrap());
        assert!(!read_hello(&mut &[][..]).unwrap());
        let err = read_hello(&mut &b"SXFRAME\x07"[..]).unwrap_err().to_string();
        assert!(err.contains("version 7"), "{err}");
        assert!(read_hello(&mut &b"bash: sharedclient: command not found\n"[..]).is_err());
    }
}
