//! The client: sends files through the server's segment, one stream per file, at
//! most `--jobs` streams at once. A stream counts as sent only when the server says
//! the file is published (`Done`); everything else is a failure with a reason.
//!
//! The client trusts the segment no more than the server does: slot offsets and
//! counts are bounds-checked before use, and a dead, stopping or silent server ends
//! every wait within a few seconds.

use std::collections::VecDeque;
use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use named_lock::NamedLock;

use crate::checksum::Checksum;
use crate::cli::ClientCli;
use crate::config::{Config, StreamId};
use crate::handout::{self, load_guid, Ticket};
use crate::lock::{self, LockDir};
use crate::protocol::{self, ClientCommand, ErrorCode, ServerReply};
use crate::segment::{Record, Segment, MAX_SLOTS, SERVER_STOPPING, SLOT_EMPTY, SLOT_FULL};
use crate::sys;
use crate::wait::SPIN;
use crate::ExitStatus;

/// How long one sleep lasts between liveness checks.
const CHECK_SLICE: Duration = Duration::from_millis(250);
/// How long to wait for a server that is still setting its segment up.
const OPEN_WAIT: Duration = Duration::from_secs(2);

/// Why a stream failed.
#[derive(Debug)]
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
        let segment = Segment::open(name, OPEN_WAIT).map_err(|e| failed(e.to_string()))?;
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

/// What a finished stream reports.
#[derive(Debug, Clone)]
pub struct Sent {
    pub name: String,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Sends one file and returns only once the server confirmed it is published.
pub fn send_file(connection: &Connection, path: &Path, bar: &ProgressBar) -> Result<Sent, StreamError> {
    send_stream(connection, &mut None, 0, path, bar)
}

/// Sends options.xml stream `id` on `session`, taking a new record from the handout
/// if there is none. After a success the record stays open for the next file (one
/// handout per job, not per file); after a failure it is given back.
pub fn send_stream<'a>(
    connection: &'a Connection,
    session: &mut Option<Session<'a>>,
    id: StreamId,
    path: &Path,
    bar: &ProgressBar,
) -> Result<Sent, StreamError> {
    if sys::stop_signal().is_some() {
        return Err(StreamError::Interrupted);
    }
    let started = Instant::now();
    let file =
        File::open(path).map_err(|e| StreamError::Usage(format!("cannot open {}: {e}", path.display())))?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(StreamError::Usage(format!("{} is not a regular file", path.display())));
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| StreamError::Usage(format!("{}: the file name is not valid UTF-8", path.display())))?
        .to_owned();
    protocol::validate_file_name(&name).map_err(|e| StreamError::Usage(e.to_string()))?;
    let size = meta.len();
    bar.set_length(size);
    let active = match session {
        Some(active) => active,
        None => session.insert(Session::open(connection)?),
    };
    // Relaxed: a display-only field, read by status.
    active.record.stream_id.store(id, Ordering::Relaxed);
    let fits_kept_ring = active.kept_slot.is_some_and(|capacity| size <= capacity);
    let result = if fits_kept_ring {
        put(active, &file, &meta, &name, size, bar)
    } else {
        active
            .post(&ClientCommand::Open { name: name.clone(), size })
            .and_then(|()| transfer(active, &file, &meta, size, bar))
    };
    if let Err(e) = &result {
        active.abort(&e.to_string());
        *session = None;
    }
    result?;
    Ok(Sent { name, bytes: size, elapsed: started.elapsed() })
}

fn reply_error(reply: ServerReply) -> StreamError {
    match reply {
        ServerReply::Error { code: ErrorCode::Shutdown, message } => failed(format!("server: {message}")),
        ServerReply::Error { message, .. } => failed(format!("server refused: {message}")),
        other => failed(format!("unexpected reply from the server: {other:?}")),
    }
}

fn transfer(
    session: &mut Session<'_>,
    file: &File,
    meta: &std::fs::Metadata,
    size: u64,
    bar: &ProgressBar,
) -> Result<(), StreamError> {
    let slots = match session.wait_reply()? {
        ServerReply::Opened { slots, .. } => slots as usize,
        other => return Err(reply_error(other)),
    };
    if slots > MAX_SLOTS || (slots == 0 && size > 0) {
        return Err(failed(format!("the server offered {slots} ring slots")));
    }
    if slots > 0 {
        session.kept_slot = Some(session.record.slots[0].capacity.load(Ordering::Relaxed));
    }
    let checksum = send_chunks(session, file, size, slots, bar)?;
    ensure_unchanged(file, meta)?;
    session.post(&ClientCommand::Finish { size, checksum })?;
    wait_done(session, size)
}

/// A file that fits slot 0 of the ring kept from the previous file: fill the slot,
/// then one command and one reply.
fn put(
    session: &mut Session<'_>,
    file: &File,
    meta: &std::fs::Metadata,
    name: &str,
    size: u64,
    bar: &ProgressBar,
) -> Result<(), StreamError> {
    let checksum = send_chunks(session, file, size, 1, bar)?;
    ensure_unchanged(file, meta)?;
    session.post(&ClientCommand::Put { name: name.to_owned(), size, checksum })?;
    wait_done(session, size)
}

fn wait_done(session: &mut Session<'_>, size: u64) -> Result<(), StreamError> {
    match session.wait_reply()? {
        ServerReply::Done { bytes } if bytes == size => Ok(()),
        ServerReply::Done { bytes } => Err(failed(format!("server stored {bytes} bytes, expected {size}"))),
        other => Err(reply_error(other)),
    }
}

/// Fills ring slots in order straight from the file; returns the xxh3 of the file.
fn send_chunks(
    session: &mut Session<'_>,
    file: &File,
    size: u64,
    slots: usize,
    bar: &ProgressBar,
) -> Result<u64, StreamError> {
    let segment = &session.connection.segment;
    let mut hasher = Checksum::new();
    let (mut sent, mut index) = (0u64, 0usize);
    while sent < size {
        if sys::stop_signal().is_some() {
            return Err(StreamError::Interrupted);
        }
        let slot = &session.record.slots[index];
        wait_for_slot(session, index)?;
        let offset = slot.offset.load(Ordering::Relaxed);
        let capacity = slot.capacity.load(Ordering::Relaxed);
        let want = capacity.min(size - sent);
        let buffer =
            segment.buffer(offset, want).map_err(|e| failed(format!("the server gave a bad buffer: {e}")))?;
        let got = buffer.fill_from(file)?;
        if (got as u64) < want {
            return Err(failed("the source file shrank while it was being sent"));
        }
        hasher.update(buffer.bytes(got));
        slot.len.store(got as u64, Ordering::Relaxed);
        // SYNC POINT: hands the filled buffer to the server; pairs with its Acquire.
        slot.state.store(SLOT_FULL, Ordering::Release);
        segment.doorbell(session.record).notify();
        sent += got as u64;
        bar.set_position(sent);
        index = (index + 1) % slots;
    }
    Ok(hasher.digest())
}

/// Waits until slot `index` is ours again; a server error ends the wait.
fn wait_for_slot(session: &mut Session<'_>, index: usize) -> Result<(), StreamError> {
    let record = session.record;
    let slot = &record.slots[index];
    // SYNC POINT: pairs with the server's Release store of EMPTY.
    let ours = || slot.state.load(Ordering::Acquire) == SLOT_EMPTY;
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
fn ensure_unchanged(file: &File, before: &std::fs::Metadata) -> Result<(), StreamError> {
    let after = file.metadata()?;
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

/// The outcome of one id on the command line.
struct Outcome {
    id: StreamId,
    result: Result<Sent, StreamError>,
}

/// Entry point of `sharedclient`.
pub fn run(cli: ClientCli) -> ExitStatus {
    sys::install_stop_handlers();
    if cli.json && !cli.status {
        eprintln!("sharedclient: --json only goes with --status");
        return ExitStatus::Usage;
    }
    let timeout = Duration::from_secs(cli.timeout);
    if let Some(count) = cli.ping {
        return run_ping(&cli.common.name, timeout, count);
    }
    if cli.status {
        return run_status(&cli.common.name, cli.json);
    }
    let config = match Config::load(&cli.common.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sharedclient: {e}");
            return ExitStatus::Usage;
        }
    };
    let (jobs, mut outcomes) = plan(&config, &cli.ids);
    if !jobs.is_empty() {
        match Connection::open(&cli.common.name, timeout) {
            Ok(connection) => {
                outcomes.extend(run_jobs(&connection, jobs, cli.jobs as usize, cli.common.quiet))
            }
            Err(e) => {
                // Every stream fails the same way; keep the kind (usage or failure).
                let again = |e: &StreamError| match e {
                    StreamError::Usage(m) => StreamError::Usage(m.clone()),
                    StreamError::Failed(m) => StreamError::Failed(m.clone()),
                    StreamError::Interrupted => StreamError::Interrupted,
                };
                outcomes.extend(jobs.into_iter().map(|(id, _)| Outcome { id, result: Err(again(&e)) }));
            }
        }
    }
    outcomes.sort_by_key(|o| o.id);
    summarize(&outcomes)
}

/// Splits the ids into runnable jobs and immediate failures (unknown ids).
fn plan(config: &Config, ids: &[StreamId]) -> (Vec<(StreamId, PathBuf)>, Vec<Outcome>) {
    let mut jobs = Vec::new();
    let mut outcomes = Vec::new();
    for &id in ids {
        match config.stream_file(id) {
            Some(path) => jobs.push((id, path.to_path_buf())),
            None => {
                let known: Vec<String> = config.streams.keys().map(|k| k.to_string()).collect();
                let message = format!(
                    "{}: unknown stream id {id} (known ids: {})",
                    config.source.display(),
                    known.join(", ")
                );
                outcomes.push(Outcome { id, result: Err(StreamError::Usage(message)) });
            }
        }
    }
    (jobs, outcomes)
}

fn run_jobs(
    connection: &Connection,
    jobs: Vec<(StreamId, PathBuf)>,
    parallel: usize,
    quiet: bool,
) -> Vec<Outcome> {
    let show_bars = !quiet && std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if show_bars {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<_>>());
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..parallel.max(1) {
            scope.spawn(|| {
                let mut session = None;
                loop {
                    let Some((id, path)) = queue.lock().expect("queue lock").pop_front() else { break };
                    let bar =
                        if show_bars { multi.add(progress_bar(id, &path)) } else { ProgressBar::hidden() };
                    let result = send_stream(connection, &mut session, id, &path, &bar);
                    bar.finish_and_clear();
                    let interrupted = matches!(result, Err(StreamError::Interrupted));
                    outcomes.lock().expect("outcome lock").push(Outcome { id, result });
                    if interrupted {
                        break;
                    }
                }
            });
        }
    });
    let mut outcomes = outcomes.lock().expect("outcome lock");
    std::mem::take(&mut *outcomes)
}

fn progress_bar(id: StreamId, path: &Path) -> ProgressBar {
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
        .expect("valid template")
        .progress_chars("=> ");
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    ProgressBar::new(0).with_style(style).with_prefix(format!("{id}:{name}"))
}

/// Prints one line per stream and picks the exit status (130 > 2 > 1 > 0).
fn summarize(outcomes: &[Outcome]) -> ExitStatus {
    let mut status = ExitStatus::Success;
    for outcome in outcomes {
        let id = outcome.id;
        let this = match &outcome.result {
            Ok(sent) => {
                let secs = sent.elapsed.as_secs_f64();
                let rate = sent.bytes as f64 / secs.max(1e-9) / 1e6;
                println!(
                    "stream {id}: sent {} ({} bytes) in {secs:.3} s, {rate:.1} MB/s",
                    sent.name, sent.bytes
                );
                ExitStatus::Success
            }
            Err(StreamError::Interrupted) => {
                eprintln!("stream {id}: interrupted");
                ExitStatus::Interrupted
            }
            Err(StreamError::Usage(message)) => {
                eprintln!("stream {id}: failed: {message}");
                ExitStatus::Usage
            }
            Err(StreamError::Failed(message)) => {
                eprintln!("stream {id}: failed: {message}");
                ExitStatus::Failure
            }
        };
        status = status.max(this);
    }
    status
}

fn run_ping(name: &str, timeout: Duration, count: u64) -> ExitStatus {
    let result = Connection::open(name, timeout).and_then(|c| ping(&c, count));
    match result {
        Ok(mut times) => {
            let (min, median, p99) = percentiles(&mut times).expect("count >= 1");
            println!(
                "ping: {count} round trips: min {:.2} us, median {:.2} us, p99 {:.2} us",
                min.as_secs_f64() * 1e6,
                median.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6
            );
            ExitStatus::Success
        }
        Err(e) => {
            eprintln!("sharedclient: ping failed: {e}");
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
            eprintln!("sharedclient: {e}");
            return exit_status_of(&e);
        }
    };
    let locks = LockDir::open(name).ok();
    let snapshot = crate::status::snapshot(&segment, locks.as_ref());
    if json {
        println!("{}", crate::status::render_json(&snapshot));
    } else {
        print!("{}", crate::status::render_text(&snapshot));
    }
    ExitStatus::Success
}
