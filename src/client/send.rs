//! Sending one item on a stream: open the source, then a `put` (a small file in
//! the slot the stream kept, one round trip) or a stream of ring slots (any size,
//! known or not), and wait for the server's confirmation.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::session::{Connection, Session, CHECK_SLICE};
use super::{failed, Delivered, Progress, SendError, SendOptions};
use crate::checksum::Checksum;
use crate::protocol::{self, ClientCommand, ErrorCode, FileMeta, ServerReply, MODE_BITS};
use crate::ring::{Producer, SlotError};
use crate::segment::{Buffer, MAX_SLOTS};
use crate::sources::{Item, Kind, Origin, Source};
use crate::sys;
use crate::wait::SPIN;

/// The ring a source of unknown length (a pipe) asks for: that of a large file.
const STREAM_SIZE_HINT: u64 = 1 << 30;

/// A source opened for reading, with what is known of its length.
pub(super) struct Opened<'r> {
    pub(super) input: Input<'r>,
    /// Metadata of a regular file, to notice it changing while it is sent.
    pub(super) regular: Option<std::fs::Metadata>,
    /// The exact length, when `stat` can be trusted for it; else read to EOF.
    pub(super) exact: Option<u64>,
    /// The length to plan the ring for (and show progress against).
    pub(super) hint: u64,
    pub(super) meta: FileMeta,
}

/// Where an item's bytes come from.
pub(super) enum Input<'r> {
    /// A regular file (or /proc file): read until the buffer is full or it ends.
    File(File),
    /// A pipe, FIFO or terminal: read as data comes, never waiting to fill a buffer.
    Pipe(File),
    /// Anything readable a program hands over (copied through a private buffer,
    /// kept from one fill to the next).
    Reader(std::cell::RefCell<(Box<dyn Read + 'r>, Vec<u8>)>),
    /// A source that writes into the segment itself (a relay's frames, read from
    /// the SSH pipe straight into the slot).
    Filler(std::cell::RefCell<&'r mut dyn Fill>),
}

/// A source that fills segment buffers itself, without a private copy.
pub(crate) trait Fill {
    /// Puts at most `len` bytes into `buffer` from byte `from` on; returns how many,
    /// 0 at the source's end.
    fn fill(&mut self, buffer: &Buffer<'_>, from: usize, len: usize) -> io::Result<usize>;

    /// Whether the source has ended (after the bytes it announced were taken).
    fn ended(&mut self) -> io::Result<bool>;
}

impl Opened<'_> {
    /// Fills up to `want` bytes of `buffer`; returns the bytes and whether the
    /// source ended.
    fn fill(
        &self,
        session: &mut Session<'_>,
        buffer: &Buffer<'_>,
        want: u64,
    ) -> Result<(usize, bool), SendError> {
        match &self.input {
            Input::File(file) => Ok(buffer.fill_from(file).map(|got| (got, (got as u64) < want))?),
            Input::Pipe(file) => fill_from_pipe(session, buffer, file),
            Input::Reader(reader) => {
                let (reader, chunk) = &mut *reader.borrow_mut();
                chunk.resize(buffer.len(), 0);
                let mut filled = 0;
                let mut beaten = Instant::now();
                while filled < chunk.len() {
                    match reader.read(&mut chunk[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                    // A reader that gives a little at a time (a log, a terminal) fills
                    // a slot slowly: the stream is alive while it gives.
                    if beaten.elapsed() >= READER_BEAT {
                        session.keep_alive()?;
                        beaten = Instant::now();
                    }
                }
                Ok((buffer.copy_from(&chunk[..filled]), filled < chunk.len()))
            }
            Input::Filler(filler) => {
                let filler = &mut **filler.borrow_mut();
                let mut filled = 0;
                while filled < buffer.len() {
                    match filler.fill(buffer, filled, buffer.len() - filled) {
                        Ok(0) => return Ok((filled, true)),
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok((filled, false))
            }
        }
    }
}

pub(super) fn open_source(item: &Item, options: &SendOptions) -> Result<Opened<'static>, SendError> {
    open_source_reading(item, options, Reads::Blocking)
}

/// How a regular file opened by `open_source_reading` is read.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Reads {
    /// `O_NONBLOCK` cleared: reads block as they do for any plain `open`.
    Blocking,
    /// `O_NONBLOCK` left on a regular file (one `fcntl` less per file, on the
    /// many-small-files path): the caller clears it on `EWOULDBLOCK` (a /proc file
    /// such as /proc/kmsg) and reads again. Other files are cleared as with `Blocking`.
    MayWouldBlock,
}

/// `open_source`, leaving a regular file's `O_NONBLOCK` on with `Reads::MayWouldBlock`.
pub(super) fn open_source_reading(
    item: &Item,
    options: &SendOptions,
    reads: Reads,
) -> Result<Opened<'static>, SendError> {
    // The source as people name it: only made for a message.
    let shown = || match &item.source {
        Source::Stdin => "standard input".to_owned(),
        Source::Path { path, .. } => crate::escape::escaped_path(path),
    };
    let file = match &item.source {
        Source::Stdin => File::from(std::io::stdin().as_fd().try_clone_to_owned()?),
        Source::Path { path, no_follow } => {
            // O_NONBLOCK: a FIFO opens at once, without waiting for a writer (a job
            // blocked in open(2) would hold its stream, and what it packed, idle
            // until the server dropped it); its reads then wait in `poll`, keeping
            // the stream alive. The flag is cleared once the file is open.
            let flags = if *no_follow { libc::O_NOFOLLOW } else { 0 };
            let open = |flags| std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path);
            match open(flags | libc::O_NONBLOCK) {
                // A file under a write lease (Samba, NFS delegations): wait for it as
                // a plain open does.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => open(flags),
                opened => opened,
            }
            .map_err(|e| SendError::Usage(format!("cannot open {}: {e}", shown())))?
        }
    };
    opened_source_reading(item, file, options, reads)
}

/// `open_source` for `file`, the item's source opened already.
pub(super) fn opened_source(
    item: &Item,
    file: File,
    options: &SendOptions,
) -> Result<Opened<'static>, SendError> {
    opened_source_reading(item, file, options, Reads::Blocking)
}

fn opened_source_reading(
    item: &Item,
    file: File,
    options: &SendOptions,
    reads: Reads,
) -> Result<Opened<'static>, SendError> {
    let shown = || match &item.source {
        Source::Stdin => "standard input".to_owned(),
        Source::Path { path, .. } => crate::escape::escaped_path(path),
    };
    let stat = file.metadata()?;
    let kind = stat.file_type();
    let from_stdin = item.source == Source::Stdin;
    if !from_stdin && (reads == Reads::Blocking || !kind.is_file()) {
        // Reads block again (a /proc file such as /proc/kmsg would say EAGAIN); a
        // FIFO's reads wait in `poll` for its first writer (Linux reports no
        // hang-up on a FIFO that has not had one), so its end is never seen early.
        sys::clear_nonblocking(file.as_fd())?;
    }
    if kind.is_dir() || !(kind.is_file() || kind.is_fifo() || from_stdin) {
        return Err(SendError::Usage(format!("{} is not a regular file or a FIFO", shown())));
    }
    let mut meta = FileMeta { skip_existing: options.skip_existing, ..FileMeta::default() };
    if !kind.is_file() || from_stdin {
        // A pipe, or standard input even when it is a file (read from where it
        // stands, as `cat` does): to end of file; the file gets the server's default
        // mode and the time of writing.
        meta.size_is_hint = true;
        let hint = match kind.is_file() {
            true => stat.len().saturating_sub((&file).stream_position().unwrap_or(0)),
            false => STREAM_SIZE_HINT,
        };
        let input = if kind.is_file() { Input::File(file) } else { Input::Pipe(file) };
        return Ok(Opened { input, regular: None, exact: None, hint, meta });
    }
    meta.mode = Some(stat.mode() & MODE_BITS);
    meta.mtime = stat.modified().ok();
    // Files of /proc and /sys (and empty files) occupy no blocks and report a size
    // that is not their content: read those to EOF.
    let exact = (stat.blocks() > 0).then_some(stat.len());
    meta.size_is_hint = exact.is_none();
    Ok(Opened { input: Input::File(file), hint: stat.len(), regular: Some(stat), exact, meta })
}

/// Sends one item on `session` (taking a record from the handout if there is
/// none) and returns only once the server confirmed it. After a success the record
/// stays open for the next item; after a failure it is given back. `opened`: the
/// file, when it was opened already (a FIFO must be read from the one open: a
/// writer that wrote and closed meanwhile would be lost to a second).
pub fn send_item<'a>(
    connection: &'a Connection,
    session: &mut Option<Session<'a>>,
    item: &Item,
    opened: Option<File>,
    options: &SendOptions,
    progress: &dyn Progress,
) -> Result<Delivered, SendError> {
    if sys::stop_signal().is_some() {
        return Err(SendError::Interrupted);
    }
    let opened = match (item.kind, opened) {
        (Kind::File, Some(file)) => Some(opened_source(item, file, options)?),
        (Kind::File, None) => Some(open_source(item, options)?),
        (Kind::Dir { .. }, _) => None,
    };
    on_stream(connection, session, |active| {
        let id = match item.origin {
            Origin::Id(id) => id,
            Origin::Path => 0,
        };
        // Relaxed: a display-only field, read by status.
        active.record.stream_id.store(id, Ordering::Relaxed);
        match (&opened, item.kind) {
            (None, Kind::Dir { mode }) => make_dir(active, &item.name, mode),
            (Some(opened), _) => send_opened(active, opened, &item.name, progress),
            (None, Kind::File) => unreachable!("files are opened above"),
        }
    })
}

/// Runs `send` on `session`, taking a record from the handout if there is none;
/// after a failure the record is given back (the next item takes a new one).
fn on_stream<'a>(
    connection: &'a Connection,
    session: &mut Option<Session<'a>>,
    send: impl FnOnce(&mut Session<'a>) -> Result<Delivered, SendError>,
) -> Result<Delivered, SendError> {
    let active = match session {
        Some(active) => active,
        None => session.insert(Session::open(connection)?),
    };
    let result = send(active);
    if let Err(e) = &result {
        active.abort(&e.to_string());
        // The next item opens a stream at once: the server must not count this one.
        active.wait_released(Duration::from_secs(1));
        *session = None;
    }
    result
}

/// One opened source on `session`: in one step if it fits the kept slot, else as a
/// stream of ring slots.
fn send_opened(
    session: &mut Session<'_>,
    opened: &Opened<'_>,
    name: &str,
    progress: &dyn Progress,
) -> Result<Delivered, SendError> {
    match session.kept_slot {
        // A file of known size that fits, or a source whose end must show within
        // the slot (read fewer bytes than it holds).
        Some(capacity) if opened.exact.map_or(opened.hint < capacity, |size| size <= capacity) => {
            put(session, opened, name, capacity, progress)
        }
        _ => stream(session, opened, name, None, progress),
    }
}

pub(super) fn make_dir(session: &mut Session<'_>, name: &str, mode: u32) -> Result<Delivered, SendError> {
    session.post(&ClientCommand::Mkdir { name: name.to_owned(), mode })?;
    match session.wait_reply()? {
        ServerReply::Done { .. } => Ok(Delivered::Sent { bytes: 0 }),
        other => Err(reply_error(other)),
    }
}

pub(super) fn reply_error(reply: ServerReply) -> SendError {
    match reply {
        // A refusal is the server's choice; anything else happened to it (a disk
        // error, a drop, a damaged transfer): its message says which.
        ServerReply::Error { code: ErrorCode::BadRequest | ErrorCode::Exists, message } => {
            failed(format!("server refused: {message}"))
        }
        ServerReply::Error { message, .. } => failed(format!("server: {message}")),
        other => failed(format!("unexpected reply from the server: {other:?}")),
    }
}

/// Open, fill the ring, Finish: any size, known or not. `prefix`: bytes already
/// read from the source (by a `put` that found more than it expected).
fn stream(
    session: &mut Session<'_>,
    source: &Opened,
    name: &str,
    prefix: Option<Vec<u8>>,
    progress: &dyn Progress,
) -> Result<Delivered, SendError> {
    let exact = if prefix.is_some() { None } else { source.exact };
    let meta = FileMeta { size_is_hint: exact.is_none(), ..source.meta };
    let hint = if prefix.is_some() { STREAM_SIZE_HINT } else { source.hint };
    session.post(&ClientCommand::Open { name: name.to_owned(), size: hint, meta })?;
    let slots = match session.wait_reply()? {
        ServerReply::Opened { slots, .. } => slots as usize,
        ServerReply::Skipped if meta.skip_existing => return Ok(Delivered::Skipped),
        other => return Err(reply_error(other)),
    };
    if slots > MAX_SLOTS || (slots == 0 && exact != Some(0)) {
        return Err(failed(format!("the server offered {slots} ring slots")));
    }
    if slots > 0 {
        session.kept_slot =
            Some(Producer::new(&session.connection.segment, session.record, slots).capacity());
    }
    let (size, checksum) = send_chunks(session, source, exact, prefix, slots, progress)?;
    ensure_unchanged(source)?;
    session.post(&ClientCommand::Finish { size, checksum })?;
    wait_done(session, size, meta.skip_existing)
}

/// A file that may fit slot 0 of the ring kept from the previous file: fill the
/// slot, then one command and one reply. A source longer than the slot (it grew,
/// or /proc said less than it holds) goes on as a stream, its first bytes kept.
fn put(
    session: &mut Session<'_>,
    source: &Opened,
    name: &str,
    capacity: u64,
    progress: &dyn Progress,
) -> Result<Delivered, SendError> {
    let mut ring = Producer::new(&session.connection.segment, session.record, 1);
    wait_for_slot(session, &ring)?;
    let buffer = ring.buffer(capacity).map_err(|e| slot_error(session, e))?;
    let (got, _) = source.fill(session, &buffer, capacity)?;
    if source.exact.is_some_and(|size| got as u64 > size) {
        return Err(failed(match source.input {
            Input::File(_) => "the source file grew while it was being sent",
            _ => "the source gave more bytes than it announced",
        }));
    }
    if got as u64 == capacity && source.exact.is_none() {
        let prefix = buffer.bytes(got).to_vec();
        ring.done_filling();
        return stream(session, source, name, Some(prefix), progress);
    }
    if let Some(size) = source.exact.filter(|&size| size != got as u64) {
        return Err(failed(match source.input {
            Input::File(_) => "the source file shrank while it was being sent".to_owned(),
            _ => format!("the source gave {got} bytes, fewer than the {size} it announced"),
        }));
    }
    let checksum = crate::checksum::of(buffer.bytes(got));
    if got > 0 {
        // The Put command that follows rings the server.
        ring.hand_over_quietly(got as u64);
        progress.bytes(got as u64);
    } else {
        ring.done_filling();
    }
    ensure_unchanged(source)?;
    let size = got as u64;
    session.post(&ClientCommand::Put { name: name.to_owned(), size, checksum, meta: source.meta })?;
    wait_done(session, size, source.meta.skip_existing)
}

/// The server's answer about a file of `size` bytes: published, or skipped (only
/// if the client asked to skip files that exist).
fn wait_done(session: &mut Session<'_>, size: u64, skip_existing: bool) -> Result<Delivered, SendError> {
    match session.wait_reply()? {
        ServerReply::Done { bytes } if bytes == size => Ok(Delivered::Sent { bytes }),
        ServerReply::Done { bytes } => Err(failed(format!("server stored {bytes} bytes, expected {size}"))),
        ServerReply::Skipped if skip_existing => Ok(Delivered::Skipped),
        other => Err(reply_error(other)),
    }
}

/// Fills ring slots in order straight from the file: exactly `exact` bytes, or
/// until end of file. Returns the length and the xxh3 of what was sent.
fn send_chunks(
    session: &mut Session<'_>,
    source: &Opened,
    exact: Option<u64>,
    prefix: Option<Vec<u8>>,
    slots: usize,
    progress: &dyn Progress,
) -> Result<(u64, u64), SendError> {
    let mut ring = Producer::new(&session.connection.segment, session.record, slots);
    let mut hasher = Checksum::new();
    let mut sent = 0u64;
    let mut prefix = prefix.filter(|p| !p.is_empty());
    loop {
        if exact.is_some_and(|size| sent >= size) {
            break;
        }
        if sys::stop_signal().is_some() {
            return Err(SendError::Interrupted);
        }
        wait_for_slot(session, &ring)?;
        let capacity = ring.capacity();
        let want = exact.map_or(capacity, |size| capacity.min(size - sent));
        let buffer = ring.buffer(want).map_err(|e| slot_error(session, e))?;
        let (got, end) = match prefix.take() {
            Some(bytes) if bytes.len() as u64 <= want => (buffer.copy_from(&bytes), false),
            Some(_) => return Err(failed("the server's ring is smaller than its previous one")),
            None => source.fill(session, &buffer, want)?,
        };
        if let Some(size) = exact.filter(|_| (got as u64) < want) {
            return Err(failed(match source.input {
                Input::File(_) => "the source file shrank while it was being sent".to_owned(),
                _ => {
                    format!("the source gave {} bytes, fewer than the {size} it announced", sent + got as u64)
                }
            }));
        }
        if got == 0 {
            ring.done_filling();
            break;
        }
        hasher.update(buffer.bytes(got));
        ring.hand_over(got as u64);
        sent += got as u64;
        progress.bytes(got as u64);
        if end && exact.is_none() {
            break;
        }
    }
    Ok((sent, hasher.digest()))
}

/// How long a wait for a pipe's next bytes lasts before the client tells the server
/// it is still there and checks for Ctrl-C.
const PIPE_SLICE: Duration = Duration::from_millis(500);

/// Fills `buffer` from a pipe as data comes: waits for the first bytes (keeping the
/// stream alive meanwhile, so a slow producer such as `make | sharedclient -` is
/// never dropped as idle), then takes what else is ready without waiting, so the
/// server sees data as it arrives. Returns the bytes read and whether the pipe ended.
/// How often, at most, a stream filled from a reader tells the server it is alive.
const READER_BEAT: Duration = Duration::from_millis(500);

fn fill_from_pipe(
    session: &mut Session<'_>,
    buffer: &Buffer<'_>,
    file: &File,
) -> Result<(usize, bool), SendError> {
    let mut filled = 0;
    loop {
        let wait = if filled == 0 { PIPE_SLICE } else { Duration::ZERO };
        if !sys::poll_readable(file.as_fd(), wait)? {
            if filled > 0 {
                return Ok((filled, false));
            }
            session.keep_alive()?;
            continue;
        }
        let got = buffer.read_once(file, filled)?;
        if got == 0 {
            return Ok((filled, true));
        }
        filled += got;
        if filled == buffer.len() {
            return Ok((filled, false));
        }
    }
}

/// Why the next slot cannot be filled: the server's own reply if it dropped the
/// stream (posted before it marked the record dropped), else what is wrong.
pub(super) fn slot_error(session: &mut Session<'_>, error: SlotError) -> SendError {
    if let SlotError::Dropped = error {
        if let Ok(Some(reply)) = session.poll_reply() {
            return reply_error(reply);
        }
    }
    failed(error.to_string())
}

/// Waits until slot `index` is ours again; a server error ends the wait.
pub(super) fn wait_for_slot(session: &mut Session<'_>, ring: &Producer<'_>) -> Result<(), SendError> {
    let record = session.record;
    let ours = || ring.ready();
    let mut spin = SPIN;
    while !ours() {
        if let Some(reply) = session.poll_reply()? {
            return Err(reply_error(reply));
        }
        let seen = session.s2c_seen;
        let deadline = Instant::now() + CHECK_SLICE;
        let ready = || ours() || protocol::pending(&record.s2c, seen).is_some();
        if !record.client_event.wait_until(ready, deadline, spin) {
            session.watchdog.check()?;
        }
        spin = Duration::ZERO;
    }
    Ok(())
}

/// Fails if the file changed while it was read (size or modification time), so the
/// server never publishes a file that is neither the old nor the new version.
fn ensure_unchanged(source: &Opened) -> Result<(), SendError> {
    if let Input::Reader(reader) = &source.input {
        // Read to its end already (no size was announced): not read again (a
        // terminal would want a second Ctrl-D).
        if source.exact.is_none() {
            return Ok(());
        }
        // A reader must end where it said (and may check its own data on the way).
        let mut probe = [0u8; 1];
        return match reader.borrow_mut().0.read(&mut probe)? {
            0 => Ok(()),
            _ => Err(failed("the source gave more bytes than it announced")),
        };
    }
    if let Input::Filler(filler) = &source.input {
        return match filler.borrow_mut().ended()? {
            true => Ok(()),
            false => Err(failed("the source gave more bytes than it announced")),
        };
    }
    let Some(before) = &source.regular else { return Ok(()) };
    let Input::File(file) = &source.input else { return Ok(()) };
    let after = file.metadata()?;
    if after.len() > before.len() {
        return Err(failed("the source file grew while it was being sent"));
    }
    if after.len() != before.len() || after.modified().ok() != before.modified().ok() {
        return Err(failed("the source file changed while it was being sent"));
    }
    Ok(())
}

/// Sends everything `reader` gives as `name` with `meta`: exactly `size` bytes when
/// known (more or fewer fail the file), else to its end. On a failure the stream is
/// given up (the next file takes a new one).
pub(super) fn send_from<'a>(
    connection: &'a Connection,
    session: &mut Option<Session<'a>>,
    name: &str,
    meta: FileMeta,
    size: Option<u64>,
    reader: impl Read,
    progress: &dyn Progress,
) -> Result<Delivered, SendError> {
    let reader: Box<dyn Read + '_> = Box::new(reader);
    send_input(connection, session, name, meta, size, Input::Reader((reader, Vec::new()).into()), progress)
}

/// `send_from` for a source that fills the segment itself.
pub(super) fn send_filled<'a>(
    connection: &'a Connection,
    session: &mut Option<Session<'a>>,
    name: &str,
    meta: FileMeta,
    size: Option<u64>,
    filler: &mut dyn Fill,
    progress: &dyn Progress,
) -> Result<Delivered, SendError> {
    send_input(connection, session, name, meta, size, Input::Filler(filler.into()), progress)
}

fn send_input<'a>(
    connection: &'a Connection,
    session: &mut Option<Session<'a>>,
    name: &str,
    meta: FileMeta,
    size: Option<u64>,
    input: Input<'_>,
    progress: &dyn Progress,
) -> Result<Delivered, SendError> {
    let meta = FileMeta { size_is_hint: size.is_none(), ..meta };
    let source = Opened { input, regular: None, exact: size, hint: size.unwrap_or(STREAM_SIZE_HINT), meta };
    on_stream(connection, session, |active| send_opened(active, &source, name, progress))
}

/// Makes folder `name` on `session` (taking a stream if there is none).
pub(super) fn send_dir<'a>(
    connection: &'a Connection,
    session: &mut Option<Session<'a>>,
    name: &str,
    mode: u32,
) -> Result<Delivered, SendError> {
    on_stream(connection, session, |active| make_dir(active, name, mode))
}
