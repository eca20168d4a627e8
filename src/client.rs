//! The client: sends files through the server's segment, one stream per file, at
//! most `--jobs` streams at once. A stream counts as sent only when the server says
//! the file is published (`Done`); everything else is a failure with a reason.
//!
//! The client trusts the segment no more than the server does: slot offsets and
//! counts are bounds-checked before use, and a dead, stopping or silent server ends
//! every wait within a few seconds.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{IsTerminal, Seek};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use named_lock::NamedLock;

use crate::checksum::Checksum;
use crate::cli::ClientCli;
use crate::config::StreamId;
use crate::escape::escaped;
use crate::handout::{self, load_guid, Ticket};
use crate::lock::{self, LockDir};
use crate::protocol::{self, ClientCommand, ErrorCode, FileMeta, ServerReply, MODE_BITS};
use crate::ring::Producer;
use crate::segment::{Buffer, Record, Segment, MAX_SLOTS, SERVER_STOPPING};
use crate::sources::{self, Item, Kind, Origin, Request, Source, Verdict};
use crate::sys;
use crate::wait::SPIN;
use crate::ExitStatus;

/// How long one sleep lasts between liveness checks.
const CHECK_SLICE: Duration = Duration::from_millis(250);
/// How long to wait for a server that is still setting its segment up.
const OPEN_WAIT: Duration = Duration::from_secs(2);

/// Why a stream failed.
#[derive(Debug, Clone)]
pub enum StreamError {
    /// The user must fix something (unknown id, unreadable file): exit 2 or 1.
    Usage(String),
    /// The server refused or failed the stream, or went away.
    Failed(String),
    /// SIGINT/SIGTERM.
    Interrupted,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Failed(m) => f.write_str(m),
            Self::Interrupted => f.write_str("interrupted"),
        }
    }
}

impl From<std::io::Error> for StreamError {
    fn from(e: std::io::Error) -> Self {
        StreamError::Failed(e.to_string())
    }
}

fn failed(message: impl Into<String>) -> StreamError {
    StreamError::Failed(message.into())
}

/// A connection to one server: the mapped segment and the lock folder.
pub struct Connection {
    segment: Segment,
    locks: LockDir,
    handout_lock: NamedLock,
    server_pid: u32,
    timeout: Duration,
}

impl Connection {
    /// Maps the segment of server `name` and checks the server is alive.
    pub fn open(name: &str, timeout: Duration) -> Result<Connection, StreamError> {
        lock::validate_segment_name(name).map_err(StreamError::Usage)?;
        let segment = Segment::open(name, timeout).map_err(|e| failed(e.to_string()))?;
        let server_pid = segment.header().server_pid.load(Ordering::Relaxed);
        if !sys::process_alive(server_pid) {
            return Err(failed(format!(
                "the server of segment '{name}' (pid {server_pid}) is gone: start `sharedserver --name {name}`"
            )));
        }
        let locks =
            LockDir::open(name).map_err(|e| failed(format!("lock folder of segment '{name}': {e}")))?;
        let handout_lock = locks.lock(lock::HANDOUT_LOCK)?;
        Ok(Connection { segment, locks, handout_lock, server_pid, timeout })
    }

    pub fn segment(&self) -> &Segment {
        &self.segment
    }
}

/// Tracks the server between sleeps: gone, stopping, silent, or us interrupted.
struct Watchdog<'a> {
    connection: &'a Connection,
    last_beat: u64,
    beat_seen: Instant,
}

impl<'a> Watchdog<'a> {
    fn new(connection: &'a Connection) -> Self {
        let last_beat = connection.segment.header().heartbeat.load(Ordering::Relaxed);
        Watchdog { connection, last_beat, beat_seen: Instant::now() }
    }

    fn check(&mut self) -> Result<(), StreamError> {
        if sys::stop_signal().is_some() {
            return Err(StreamError::Interrupted);
        }
        let header = self.connection.segment.header();
        if header.server_state.load(Ordering::Acquire) == SERVER_STOPPING {
            return Err(failed("the server is shutting down"));
        }
        let pid = self.connection.server_pid;
        if !sys::process_alive(pid) {
            return Err(failed(format!("the server (pid {pid}) exited")));
        }
        // Relaxed: the heartbeat is a liveness hint, nothing is published with it.
        let beat = header.heartbeat.load(Ordering::Relaxed);
        if beat != self.last_beat {
            self.last_beat = beat;
            self.beat_seen = Instant::now();
        } else if self.beat_seen.elapsed() >= self.connection.timeout {
            return Err(failed(format!(
                "the server (pid {pid}) has not answered for {} s (see --timeout)",
                self.connection.timeout.as_secs()
            )));
        }
        Ok(())
    }
}

/// One stream: a record taken from the handout, used for commands and the ring.
pub struct Session<'a> {
    connection: &'a Connection,
    record: &'a Record,
    lock: NamedLock,
    c2s_seq: u32,
    s2c_seen: u32,
    watchdog: Watchdog<'a>,
    closed: bool,
    /// Capacity of ring slot 0 once the server gave this stream a ring; the ring is
    /// kept between files, so a file that fits goes in one step (`Put`).
    kept_slot: Option<u64>,
}

impl<'a> Session<'a> {
    /// Takes a GUID from the handout and opens the record and lock it names.
    pub fn open(connection: &'a Connection) -> Result<Session<'a>, StreamError> {
        let mut watchdog = Watchdog::new(connection);
        // No deadline of its own: the watchdog ends the wait if the server is gone.
        let deadline = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let (segment, lock, busy_limit) = (&connection.segment, &connection.handout_lock, connection.timeout);
        let ticket: Ticket = handout::take_within(segment, lock, deadline, busy_limit, || watchdog.check())?
            .ok_or_else(|| failed("no stream was handed out"))?;
        let record = connection
            .segment
            .record(ticket.record_offset)
            .map_err(|e| failed(format!("the handout named a bad record: {e}")))?;
        if load_guid(&record.guid) != ticket.guid {
            return Err(failed("the handout and the record disagree on the stream's GUID"));
        }
        let lock = connection.locks.stream_lock(ticket.guid)?;
        let s2c_seen = record.s2c.seq.load(Ordering::Acquire);
        Ok(Session {
            connection,
            record,
            lock,
            c2s_seq: 0,
            s2c_seen,
            watchdog,
            closed: false,
            kept_slot: None,
        })
    }

    /// Posts a command under the record's lock and rings the server.
    pub fn post(&mut self, command: &ClientCommand) -> Result<(), StreamError> {
        let (code, args, text) = command.encode();
        self.c2s_seq = self.c2s_seq.wrapping_add(1);
        {
            let _guard = self.lock_record()?;
            protocol::post(&self.record.c2s, self.c2s_seq, code, args, &text);
        }
        self.connection.segment.doorbell(self.record).notify();
        Ok(())
    }

    /// The record's named lock, without ever blocking for good: the holder is the
    /// server for a few stores, unless it was stopped right there, which the
    /// watchdog (heartbeat, pid, SIGINT) turns into an error.
    fn lock_record(&mut self) -> Result<named_lock::NamedLockGuard, StreamError> {
        loop {
            match self.lock.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(named_lock::Error::WouldBlock) => {
                    self.watchdog.check()?;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => return Err(failed(format!("cannot lock the stream's record: {e}"))),
            }
        }
    }

    /// A reply the server posted since we last looked, if any.
    fn poll_reply(&mut self) -> Result<Option<ServerReply>, StreamError> {
        if protocol::pending(&self.record.s2c, self.s2c_seen).is_none() {
            return Ok(None);
        }
        let Some(raw) = protocol::take(&self.record.s2c) else { return Ok(None) };
        self.s2c_seen = raw.seq;
        ServerReply::decode(&raw).map(Some).map_err(|e| failed(format!("bad reply from the server: {e}")))
    }

    /// Waits for the next reply, checking the server between sleeps.
    pub fn wait_reply(&mut self) -> Result<ServerReply, StreamError> {
        let event = &self.record.client_event;
        let mut spin = SPIN;
        loop {
            if let Some(reply) = self.poll_reply()? {
                return Ok(reply);
            }
            let (record, seen) = (self.record, self.s2c_seen);
            let deadline = Instant::now() + CHECK_SLICE;
            if !event.wait_until(|| protocol::pending(&record.s2c, seen).is_some(), deadline, spin) {
                self.watchdog.check()?;
            }
            spin = Duration::ZERO;
        }
    }

    /// Tells the server the stream is alive while no data moves (a pipe with nothing
    /// to read yet), and ends the wait if the server is gone or Ctrl-C came.
    fn keep_alive(&mut self) -> Result<(), StreamError> {
        // Relaxed: a liveness hint the server compares, like its own heartbeat.
        self.record.client_beat.fetch_add(1, Ordering::Relaxed);
        self.watchdog.check()
    }

    /// Tells the server we are done with the record (best effort).
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            let _ = self.post(&ClientCommand::Close);
        }
    }

    /// Gives up the stream, telling the server why.
    pub fn abort(&mut self, reason: &str) {
        if !self.closed {
            self.closed = true;
            let _ = self.post(&ClientCommand::Abort { reason: reason.to_owned() });
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

/// What the server did with one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Published whole (a folder: made); `bytes` as the server confirmed them.
    Sent { bytes: u64 },
    /// The server already had a file under that name, and skipping was asked for.
    Skipped,
}

/// How items are sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct SendOptions {
    /// A file the server already has under the same name is skipped, not a failure.
    pub skip_existing: bool,
}

/// The ring a source of unknown length (a pipe) asks for: that of a large file.
const STREAM_SIZE_HINT: u64 = 1 << 30;

/// A source opened for reading, with what is known of its length.
struct Opened {
    file: File,
    /// Metadata of a regular file, to notice it changing while it is sent.
    regular: Option<std::fs::Metadata>,
    /// The exact length, when `stat` can be trusted for it; else read to EOF.
    exact: Option<u64>,
    /// The length to plan the ring for (and show progress against).
    hint: u64,
    meta: FileMeta,
    /// A pipe, FIFO or terminal: read as data comes, never waiting to fill a buffer.
    pipe: bool,
}

fn open_source(item: &Item, options: &SendOptions) -> Result<Opened, StreamError> {
    let (file, shown) = match &item.source {
        Source::Stdin => {
            let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
            (File::from(fd), "standard input".to_owned())
        }
        Source::Path { path, no_follow } => {
            let flags = if *no_follow { libc::O_NOFOLLOW } else { 0 };
            let shown = crate::escape::escaped_path(path);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(path)
                .map_err(|e| StreamError::Usage(format!("cannot open {shown}: {e}")))?;
            (file, shown)
        }
    };
    let stat = file.metadata()?;
    let kind = stat.file_type();
    let from_stdin = item.source == Source::Stdin;
    if kind.is_dir() || !(kind.is_file() || kind.is_fifo() || from_stdin) {
        return Err(StreamError::Usage(format!("{shown} is not a regular file or a FIFO")));
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
        let pipe = !kind.is_file();
        return Ok(Opened { file, regular: None, exact: None, hint, meta, pipe });
    }
    meta.mode = Some(stat.mode() & MODE_BITS);
    meta.mtime = stat.modified().ok();
    // Files of /proc and /sys (and empty files) occupy no blocks and report a size
    // that is not their content: read those to EOF.
    let exact = (stat.blocks() > 0).then_some(stat.len());
    meta.size_is_hint = exact.is_none();
    Ok(Opened { file, hint: stat.len(), regular: Some(stat), exact, meta, pipe: false })
}

/// Sends one item on `session` (taking a record from the handout if there is
/// none) and returns only once the server confirmed it. After a success the record
/// stays open for the next item; after a failure it is given back.
pub fn send_item<'a>(
    connection: &'a Connection,
    session: &mut Option<Session<'a>>,
    item: &Item,
    options: &SendOptions,
    bar: &ProgressBar,
) -> Result<Delivered, StreamError> {
    if sys::stop_signal().is_some() {
        return Err(StreamError::Interrupted);
    }
    let opened = match item.kind {
        Kind::File => Some(open_source(item, options)?),
        Kind::Dir { .. } => None,
    };
    let active = match session {
        Some(active) => active,
        None => session.insert(Session::open(connection)?),
    };
    let id = match item.origin {
        Origin::Id(id) => id,
        Origin::Path => 0,
    };
    // Relaxed: a display-only field, read by status.
    active.record.stream_id.store(id, Ordering::Relaxed);
    let result = match (&opened, item.kind) {
        (None, Kind::Dir { mode }) => make_dir(active, &item.name, mode),
        (Some(opened), _) => match active.kept_slot {
            // A file of known size that fits, or a source whose end must show within
            // the slot (read fewer bytes than it holds).
            Some(capacity) if opened.exact.map_or(opened.hint < capacity, |size| size <= capacity) => {
                put(active, opened, &item.name, capacity, bar)
            }
            _ => stream(active, opened, &item.name, None, bar),
        },
        (None, Kind::File) => unreachable!("files are opened above"),
    };
    if let Err(e) = &result {
        active.abort(&e.to_string());
        *session = None;
    }
    result
}

fn make_dir(session: &mut Session<'_>, name: &str, mode: u32) -> Result<Delivered, StreamError> {
    session.post(&ClientCommand::Mkdir { name: name.to_owned(), mode })?;
    match session.wait_reply()? {
        ServerReply::Done { .. } => Ok(Delivered::Sent { bytes: 0 }),
        other => Err(reply_error(other)),
    }
}

fn reply_error(reply: ServerReply) -> StreamError {
    match reply {
        ServerReply::Error { code: ErrorCode::Shutdown, message } => failed(format!("server: {message}")),
        ServerReply::Error { message, .. } => failed(format!("server refused: {message}")),
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
    bar: &ProgressBar,
) -> Result<Delivered, StreamError> {
    let exact = if prefix.is_some() { None } else { source.exact };
    let meta = FileMeta { size_is_hint: exact.is_none(), ..source.meta };
    let hint = if prefix.is_some() { STREAM_SIZE_HINT } else { source.hint };
    session.post(&ClientCommand::Open { name: name.to_owned(), size: hint, meta })?;
    let slots = match session.wait_reply()? {
        ServerReply::Opened { slots, .. } => slots as usize,
        ServerReply::Skipped => return Ok(Delivered::Skipped),
        other => return Err(reply_error(other)),
    };
    if slots > MAX_SLOTS || (slots == 0 && exact != Some(0)) {
        return Err(failed(format!("the server offered {slots} ring slots")));
    }
    if slots > 0 {
        session.kept_slot =
            Some(Producer::new(&session.connection.segment, session.record, slots).capacity());
    }
    let (size, checksum) = send_chunks(session, source, exact, prefix, slots, bar)?;
    ensure_unchanged(source)?;
    session.post(&ClientCommand::Finish { size, checksum })?;
    wait_done(session, size)
}

/// A file that may fit slot 0 of the ring kept from the previous file: fill the
/// slot, then one command and one reply. A source longer than the slot (it grew,
/// or /proc said less than it holds) goes on as a stream, its first bytes kept.
fn put(
    session: &mut Session<'_>,
    source: &Opened,
    name: &str,
    capacity: u64,
    bar: &ProgressBar,
) -> Result<Delivered, StreamError> {
    let mut ring = Producer::new(&session.connection.segment, session.record, 1);
    wait_for_slot(session, &ring)?;
    let buffer = ring.buffer(capacity).map_err(|e| failed(format!("the server gave a bad buffer: {e}")))?;
    let got = buffer.fill_from(&source.file)?;
    if got as u64 == capacity && source.exact != Some(capacity) {
        let prefix = buffer.bytes(got).to_vec();
        return stream(session, source, name, Some(prefix), bar);
    }
    if source.exact.is_some_and(|size| size != got as u64) {
        return Err(failed("the source file changed while it was being sent"));
    }
    let checksum = crate::checksum::of(buffer.bytes(got));
    if got > 0 {
        // The Put command that follows rings the server.
        ring.hand_over_quietly(got as u64);
        bar.inc(got as u64);
    }
    ensure_unchanged(source)?;
    let size = got as u64;
    session.post(&ClientCommand::Put { name: name.to_owned(), size, checksum, meta: source.meta })?;
    wait_done(session, size)
}

fn wait_done(session: &mut Session<'_>, size: u64) -> Result<Delivered, StreamError> {
    match session.wait_reply()? {
        ServerReply::Done { bytes } if bytes == size => Ok(Delivered::Sent { bytes }),
        ServerReply::Done { bytes } => Err(failed(format!("server stored {bytes} bytes, expected {size}"))),
        ServerReply::Skipped => Ok(Delivered::Skipped),
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
    bar: &ProgressBar,
) -> Result<(u64, u64), StreamError> {
    let mut ring = Producer::new(&session.connection.segment, session.record, slots);
    let mut hasher = Checksum::new();
    let mut sent = 0u64;
    let mut prefix = prefix.filter(|p| !p.is_empty());
    loop {
        if exact.is_some_and(|size| sent >= size) {
            break;
        }
        if sys::stop_signal().is_some() {
            return Err(StreamError::Interrupted);
        }
        wait_for_slot(session, &ring)?;
        let capacity = ring.capacity();
        let want = exact.map_or(capacity, |size| capacity.min(size - sent));
        let buffer = ring.buffer(want).map_err(|e| failed(format!("the server gave a bad buffer: {e}")))?;
        let (got, end) = match prefix.take() {
            Some(bytes) if bytes.len() as u64 <= want => (buffer.copy_from(&bytes), false),
            Some(_) => return Err(failed("the server's ring is smaller than its previous one")),
            None if source.pipe => fill_from_pipe(session, &buffer, &source.file)?,
            // Reads until the buffer is full or the file ends.
            None => buffer.fill_from(&source.file).map(|got| (got, (got as u64) < want))?,
        };
        if exact.is_some() && (got as u64) < want {
            return Err(failed("the source file shrank while it was being sent"));
        }
        if got == 0 {
            break;
        }
        hasher.update(buffer.bytes(got));
        ring.hand_over(got as u64);
        sent += got as u64;
        bar.inc(got as u64);
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
fn fill_from_pipe(
    session: &mut Session<'_>,
    buffer: &Buffer<'_>,
    file: &File,
) -> Result<(usize, bool), StreamError> {
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

/// Waits until slot `index` is ours again; a server error ends the wait.
fn wait_for_slot(session: &mut Session<'_>, ring: &Producer<'_>) -> Result<(), StreamError> {
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
fn ensure_unchanged(source: &Opened) -> Result<(), StreamError> {
    let Some(before) = &source.regular else { return Ok(()) };
    let after = source.file.metadata()?;
    if after.len() > before.len() {
        return Err(failed("the source file grew while it was being sent"));
    }
    if after.len() != before.len() || after.modified().ok() != before.modified().ok() {
        return Err(failed("the source file changed while it was being sent"));
    }
    Ok(())
}

/// Runs COUNT ping-pong round trips on one stream; returns the round-trip times.
pub fn ping(connection: &Connection, count: u64) -> Result<Vec<Duration>, StreamError> {
    let mut session = Session::open(connection)?;
    let origin = Instant::now();
    let mut times = Vec::with_capacity(count.min(1 << 24) as usize);
    for seq in 0..count {
        let start = Instant::now();
        let sent_nanos = start.duration_since(origin).as_nanos() as u64;
        session.post(&ClientCommand::Ping { seq, sent_nanos })?;
        match session.wait_reply()? {
            ServerReply::Pong { seq: echoed, .. } if echoed == seq => times.push(start.elapsed()),
            other => return Err(reply_error(other)),
        }
    }
    session.close();
    Ok(times)
}

/// min, median and p99 of a set of durations.
pub fn percentiles(times: &mut [Duration]) -> Option<(Duration, Duration, Duration)> {
    if times.is_empty() {
        return None;
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Some((times[0], at(0.5), at(0.99)))
}

/// The outcome of one item.
#[derive(Debug)]
enum Outcome {
    /// What the server confirmed, and how long the item took.
    Done(Delivered, Duration),
    /// Skipped before sending (a link inside a folder without -L).
    Skipped,
    Failed(StreamError),
}

/// The items and what became of each, shared by the job threads and the main
/// thread (which answers Ctrl-C even while a job is blocked, say on a FIFO).
struct Board {
    items: Vec<Item>,
    outcomes: Mutex<Vec<Option<Outcome>>>,
    queue: Mutex<VecDeque<usize>>,
}

impl Board {
    fn record(&self, index: usize, outcome: Outcome) {
        self.outcomes.lock().expect("outcome lock")[index] = Some(outcome);
    }
}

/// What the front end decided from the command line.
struct Front {
    /// Failures already explained in one line (no server to connect to).
    quiet_failures: std::sync::atomic::AtomicBool,
    verbose: bool,
    json: bool,
    options: SendOptions,
    bar: ProgressBar,
}

/// Entry point of `sharedclient`.
pub fn run(cli: ClientCli) -> ExitStatus {
    sys::install_stop_handlers();
    let timeout = Duration::from_secs(cli.timeout);
    if let Some(count) = cli.ping {
        return run_ping(&cli.common.name, timeout, count);
    }
    if cli.status {
        return run_status(&cli.common.name, cli.json);
    }
    let show_bars = !cli.common.quiet && !cli.json && std::io::stderr().is_terminal();
    let counting = if show_bars { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    let request = Request {
        args: &cli.args,
        all: cli.all,
        files_from: cli.files_from.as_deref(),
        from0: cli.from0,
        as_name: cli.as_name.as_deref(),
        follow_symlinks: cli.follow_symlinks,
        config: &cli.common.config,
    };
    let planned = exit_on_stop_during(|| {
        sources::plan(&request, |n| {
            if n % 256 == 0 {
                counting.set_message(format!("{n} files found"));
                counting.tick();
            }
        })
    });
    counting.finish_and_clear();
    let items = match planned {
        Ok(items) => items,
        Err(message) => {
            errln!("sharedclient: {message}");
            return ExitStatus::Usage;
        }
    };
    let bar = if show_bars { aggregate_bar(&items) } else { ProgressBar::hidden() };
    let front = Front {
        quiet_failures: false.into(),
        verbose: cli.verbose,
        json: cli.json,
        options: SendOptions { skip_existing: cli.skip_existing },
        bar,
    };
    let started = Instant::now();
    let board = Board {
        outcomes: Mutex::new(items.iter().map(preset).collect()),
        items,
        queue: Mutex::new(VecDeque::new()),
    };
    let phases = phases(&board.items);
    if !phases.is_empty() {
        match Connection::open(&cli.common.name, timeout) {
            Ok(connection) => {
                for (phase, jobs) in phases {
                    let jobs = jobs.unwrap_or(cli.jobs as usize);
                    run_phase(&connection, &board, &front, phase, jobs, started);
                }
            }
            Err(e) => {
                // One reason for every item: say it once, not once per file.
                errln!("sharedclient: {e}");
                for index in phases.into_iter().flat_map(|(phase, _)| phase) {
                    board.record(index, Outcome::Failed(e.clone()));
                }
                front.quiet_failures.store(true, Ordering::Relaxed);
            }
        }
    }
    front.bar.finish_and_clear();
    report(&board, &front, started.elapsed())
}

/// Runs `work` (walking folders, reading a `--files-from` list from a terminal),
/// exiting 130 at once on SIGINT/SIGTERM: nothing has been sent yet, and the
/// standard library retries reads the signal interrupts.
fn exit_on_stop_during<T>(work: impl FnOnce() -> T) -> T {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // Ends the moment `done` is dropped (the work is over), not a tick later.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                finished.recv_timeout(Duration::from_millis(20))
            {
                if sys::stop_signal().is_some() {
                    errln!("sharedclient: interrupted before anything was sent");
                    std::process::exit(i32::from(ExitStatus::Interrupted.code()));
                }
            }
        });
        let result = work();
        drop(done);
        result
    })
}

/// The items to send, in two phases run one after the other: every folder, by one
/// job in order of depth (a folder must exist with its own mode before anything is
/// made inside it, else it would get the default mode), then every file, by
/// `--jobs` jobs. Each phase is `(items, jobs or None for --jobs)`.
fn phases(items: &[Item]) -> Vec<(Vec<usize>, Option<usize>)> {
    let (mut dirs, files): (Vec<usize>, Vec<usize>) = (0..items.len())
        .filter(|&i| items[i].verdict == Verdict::Send)
        .partition(|&i| matches!(items[i].kind, Kind::Dir { .. }));
    dirs.sort_by_key(|&i| items[i].name.matches('/').count());
    [(dirs, Some(1)), (files, None)].into_iter().filter(|(phase, _)| !phase.is_empty()).collect()
}

/// The outcome an item has before anything is sent.
fn preset(item: &Item) -> Option<Outcome> {
    match &item.verdict {
        Verdict::Send => None,
        Verdict::Skip(why) => {
            errln!("skipped: {why}");
            Some(Outcome::Skipped)
        }
        Verdict::Refuse(why) => Some(Outcome::Failed(StreamError::Usage(why.clone()))),
    }
}

fn aggregate_bar(items: &[Item]) -> ProgressBar {
    let files = items.iter().filter(|i| i.kind == Kind::File && i.verdict == Verdict::Send).count();
    let bytes: u64 = items.iter().filter_map(|i| i.size_hint).sum();
    let style =
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template")
            .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr()).with_style(style);
    bar.set_message(format!("0/{files} files"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Sends `indices` with at most `jobs` streams; the calling thread watches for
/// Ctrl-C and, if a job does not stop within a second (blocked on a FIFO without
/// a writer, say), reports and exits 130 itself.
fn run_phase(
    connection: &Connection,
    board: &Board,
    front: &Front,
    indices: Vec<usize>,
    jobs: usize,
    started: Instant,
) {
    if indices.is_empty() {
        return;
    }
    *board.queue.lock().expect("queue lock") = indices.into_iter().collect();
    let workers = jobs.clamp(1, board.queue.lock().expect("queue lock").len());
    let files_total =
        board.items.iter().filter(|i| i.kind == Kind::File && i.verdict == Verdict::Send).count();
    let files_done = AtomicUsize::new(0);
    let (finished, jobs_done) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (finished, files_done) = (finished.clone(), &files_done);
            scope.spawn(move || {
                job(connection, board, front, files_done, files_total);
                let _ = finished.send(());
            });
        }
        // Every job holds a sender: when all are gone (finished, or a job thread
        // died), the phase is over.
        drop(finished);
        let mut stop_seen: Option<Instant> = None;
        loop {
            match jobs_done.recv_timeout(Duration::from_millis(20)) {
                Ok(()) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if sys::stop_signal().is_some() {
                let since = *stop_seen.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(800) {
                    front.bar.finish_and_clear();
                    let status = report(board, front, started.elapsed());
                    std::process::exit(i32::from(status.max(ExitStatus::Interrupted).code()));
                }
            }
        }
    });
}

fn job(connection: &Connection, board: &Board, front: &Front, files_done: &AtomicUsize, files_total: usize) {
    let mut session = None;
    loop {
        if sys::stop_signal().is_some() {
            break;
        }
        let Some(index) = board.queue.lock().expect("queue lock").pop_front() else { break };
        let item = &board.items[index];
        let item_started = Instant::now();
        let result = send_item(connection, &mut session, item, &front.options, &front.bar);
        if item.kind == Kind::File {
            let done = files_done.fetch_add(1, Ordering::Relaxed) + 1;
            front.bar.set_message(format!("{done}/{files_total} files"));
        }
        if front.verbose {
            if let Ok(delivered) = &result {
                let line = match (delivered, item.kind) {
                    (Delivered::Sent { .. }, Kind::Dir { .. }) => format!("made {}/", escaped(&item.name)),
                    (Delivered::Sent { bytes }, Kind::File) => {
                        format!("sent {} ({bytes} bytes)", escaped(&item.name))
                    }
                    (Delivered::Skipped, _) => format!("skipped {} (exists)", escaped(&item.name)),
                };
                if front.json {
                    errln!("{line}");
                } else {
                    front.bar.suspend(|| outln!("{line}"));
                }
            }
        }
        let interrupted = matches!(result, Err(StreamError::Interrupted));
        let outcome = match result {
            Ok(delivered) => Outcome::Done(delivered, item_started.elapsed()),
            Err(e) => Outcome::Failed(e),
        };
        board.record(index, outcome);
        if interrupted {
            break;
        }
    }
}

/// Prints the summary (lines, or JSON) and picks the exit status (130 > 2 > 1 > 0).
fn report(board: &Board, front: &Front, elapsed: Duration) -> ExitStatus {
    let outcomes = board.outcomes.lock().expect("outcome lock");
    let stopped = sys::stop_signal().is_some();
    let mut status = ExitStatus::Success;
    let mut tally = Tally::default();
    let mut files = Vec::new();
    let mut failures = FailureLines::default();
    for (index, item) in board.items.iter().enumerate() {
        let outcome = outcomes[index].as_ref();
        let (state, error, this) = match outcome {
            Some(outcome) => outcome_view(outcome),
            None if stopped => ("interrupted", None, ExitStatus::Interrupted),
            None => ("not started", None, ExitStatus::Interrupted),
        };
        status = status.max(this);
        let sent_bytes = tally.add(item, outcome, state);
        let explained = front.quiet_failures.load(Ordering::Relaxed) && item.verdict == Verdict::Send;
        if let (Some(error), Origin::Path, false) = (&error, item.origin, explained) {
            // A source problem (usage) names the file already; a refusal does not.
            let names_source = matches!(outcome, Some(Outcome::Failed(StreamError::Usage(_))));
            failures.push((!names_source).then(|| item.human()), error);
        }
        if front.json {
            files.push(serde_json::json!({
                "source": item.shown, "name": item.name, "bytes": sent_bytes, "status": state, "error": error,
            }));
        } else if let Origin::Id(id) = item.origin {
            print_stream_line(id, item, outcome, state, error.as_deref());
        }
    }
    let only_ids = board.items.iter().all(|i| matches!(i.origin, Origin::Id(_)));
    let secs = elapsed.as_secs_f64();
    if front.json {
        let Tally { sent, skipped, failed, bytes, .. } = tally;
        let summary = serde_json::json!({
            "files": files, "sent": sent, "skipped": skipped, "failed": failed, "bytes": bytes, "seconds": secs,
        });
        outln!("{summary}");
    } else if !only_ids {
        outln!("sharedclient: {}", tally.line(secs));
    }
    failures.print();
    status
}

/// What the final line counts.
#[derive(Default)]
struct Tally {
    /// Files (not folders) the server confirmed.
    sent: u64,
    skipped: u64,
    failed: u64,
    /// Interrupted or never started (Ctrl-C).
    interrupted: u64,
    bytes: u64,
}

impl Tally {
    /// Counts one item; returns the bytes the server confirmed for it.
    fn add(&mut self, item: &Item, outcome: Option<&Outcome>, state: &str) -> u64 {
        let bytes = match outcome {
            Some(Outcome::Done(Delivered::Sent { bytes }, _)) => *bytes,
            _ => 0,
        };
        match state {
            "sent" if item.kind == Kind::File => self.sent += 1,
            "sent" => {}
            "skipped" => self.skipped += 1,
            "failed" => self.failed += 1,
            _ => self.interrupted += 1,
        }
        self.bytes += bytes;
        bytes
    }

    fn line(&self, secs: f64) -> String {
        let Tally { sent, skipped, failed, interrupted, bytes } = self;
        let files = if *sent == 1 { "file" } else { "files" };
        let rate = *bytes as f64 / secs.max(1e-9) / 1e6;
        let mut line = format!(
            "{sent} {files}, {bytes} bytes in {secs:.3} s ({rate:.1} MB/s), {skipped} skipped, {failed} failed"
        );
        if *interrupted > 0 {
            line.push_str(&format!(", {interrupted} interrupted"));
        }
        line
    }
}

/// One line per failed file, naming it and why; a reason shared by many files (the
/// server went away) is shown a few times, then counted.
#[derive(Default)]
struct FailureLines {
    lines: Vec<String>,
    repeats: Vec<(String, usize)>,
}

impl FailureLines {
    const SHOWN_PER_REASON: usize = 3;

    fn push(&mut self, source: Option<String>, error: &str) {
        let seen = match self.repeats.iter_mut().find(|(reason, _)| reason == error) {
            Some((_, count)) => {
                *count += 1;
                *count
            }
            None => {
                self.repeats.push((error.to_owned(), 1));
                1
            }
        };
        if seen <= Self::SHOWN_PER_REASON {
            match source {
                Some(source) => self.lines.push(format!("failed: {source}: {error}")),
                None => self.lines.push(format!("failed: {error}")),
            }
        }
    }

    fn print(&self) {
        for line in &self.lines {
            errln!("{line}");
        }
        for (reason, count) in &self.repeats {
            if *count > Self::SHOWN_PER_REASON {
                errln!("failed: {} more files: {reason}", count - Self::SHOWN_PER_REASON);
            }
        }
    }
}

/// (JSON status, error text, exit status) of a recorded outcome.
fn outcome_view(outcome: &Outcome) -> (&'static str, Option<String>, ExitStatus) {
    match outcome {
        Outcome::Done(Delivered::Sent { .. }, _) => ("sent", None, ExitStatus::Success),
        Outcome::Done(Delivered::Skipped, _) | Outcome::Skipped => ("skipped", None, ExitStatus::Success),
        Outcome::Failed(StreamError::Interrupted) => ("interrupted", None, ExitStatus::Interrupted),
        Outcome::Failed(e) => ("failed", Some(e.to_string()), exit_status_of(e)),
    }
}

/// The per-stream line of an options.xml id (as before paths existed).
fn print_stream_line(id: StreamId, item: &Item, outcome: Option<&Outcome>, state: &str, error: Option<&str>) {
    match (outcome, error) {
        (Some(Outcome::Done(Delivered::Sent { bytes }, elapsed)), _) => {
            let secs = elapsed.as_secs_f64();
            let rate = *bytes as f64 / secs.max(1e-9) / 1e6;
            outln!(
                "stream {id}: sent {} ({bytes} bytes) in {secs:.3} s, {rate:.1} MB/s",
                escaped(&item.name)
            );
        }
        (Some(Outcome::Done(Delivered::Skipped, _)), _) => {
            outln!("stream {id}: skipped {} (exists)", escaped(&item.name))
        }
        (_, Some(error)) => errln!("stream {id}: failed: {error}"),
        _ => errln!("stream {id}: {state}"),
    }
}

fn run_ping(name: &str, timeout: Duration, count: u64) -> ExitStatus {
    let result = Connection::open(name, timeout).and_then(|c| ping(&c, count));
    match result {
        Ok(mut times) => {
            let (min, median, p99) = percentiles(&mut times).expect("count >= 1");
            outln!(
                "ping: {count} round trips: min {:.2} us, median {:.2} us, p99 {:.2} us",
                min.as_secs_f64() * 1e6,
                median.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6
            );
            ExitStatus::Success
        }
        Err(e) => {
            errln!("sharedclient: ping failed: {e}");
            exit_status_of(&e)
        }
    }
}

/// The README's exit-code table for a stream error.
fn exit_status_of(error: &StreamError) -> ExitStatus {
    match error {
        StreamError::Usage(_) => ExitStatus::Usage,
        StreamError::Failed(_) => ExitStatus::Failure,
        StreamError::Interrupted => ExitStatus::Interrupted,
    }
}

fn run_status(name: &str, json: bool) -> ExitStatus {
    let segment = match lock::validate_segment_name(name)
        .map_err(StreamError::Usage)
        .and_then(|()| Segment::open(name, OPEN_WAIT).map_err(|e| failed(e.to_string())))
    {
        Ok(segment) => segment,
        Err(e) => {
            errln!("sharedclient: {e}");
            return exit_status_of(&e);
        }
    };
    let locks = LockDir::open(name).ok();
    let snapshot = crate::status::snapshot(&segment, locks.as_ref());
    if json {
        outln!("{}", crate::status::render_json(&snapshot));
    } else {
        {
            use std::io::Write as _;
            let _ = write!(std::io::stdout().lock(), "{}", crate::status::render_text(&snapshot));
        }
    }
    ExitStatus::Success
}
