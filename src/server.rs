//! The server: creates the segment, keeps a GUID on offer, and receives files.
//!
//! One main thread runs the handout and the heartbeat; a fixed pool of worker
//! threads (not one per stream) each serves a set of streams: it drains full ring
//! slots into the output files, answers commands, and checks its clients are alive.
//! Nothing read from the segment is trusted: the server keeps private copies of every
//! offset it handed out and reads only states, lengths and commands from a record.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use named_lock::{NamedLock, NamedLockGuard};
use uuid::Uuid;

use crate::alloc::TwoEndedAllocator;
use crate::checksum::Checksum;
use crate::escape::escaped;
use crate::handout::{self, Ticket};
use crate::lock::{self, LockDir};
use crate::protocol::{self, ClientCommand, ErrorCode, FileMeta, ServerReply};
use crate::ring::{self, Consumer, FullSlot};
use crate::segment::{
    self, human_bytes, Record, Segment, SegmentError, BUFFER_ALIGN, RECORD_ACTIVE, RECORD_ALIGN,
    RECORD_OFFERED, RECORD_SIZE,
};
use crate::segment::{MAX_WORKERS, SERVER_RUNNING, SERVER_STOPPING};
use crate::segment::{PHASE_IDLE, PHASE_RECEIVING, PHASE_WAITING_FOR_SPACE, RECORD_DROPPED};
use crate::sink::{FolderSink, Sink, SinkError, SinkErrorKind, SinkFile, SinkSession};
use crate::sys;
use crate::wait::{spin_until, SPIN};
use crate::ExitStatus;

/// How often a worker checks that its clients still exist.
const LIVENESS_PERIOD: Duration = Duration::from_millis(300);
/// How long the handout thread sleeps between heartbeats when nothing happens.
const HEARTBEAT_PERIOD: Duration = Duration::from_millis(250);
/// How long the handout thread waits before retrying an offer when records are full.
const RETRY_SLICE: Duration = Duration::from_millis(50);
/// How long a worker without streams sleeps (a new stream or shutdown rings it).
const EMPTY_WORKER_SLICE: Duration = Duration::from_secs(1);

/// Everything a server needs to run (see [`ServerBuilder`] for the defaults).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Segment name: `/dev/shm/<name>`, and the lock folder `/dev/shm/<name>.locks`.
    pub name: String,
    /// Segment size in bytes, fixed for the server's life.
    pub size: u64,
    /// The output folder of the default [`FolderSink`] (created if missing).
    pub output_dir: PathBuf,
    /// Replace files that already exist (default: refuse them).
    pub overwrite: bool,
    /// Drop a stream whose client shows no activity this long.
    pub idle_timeout: Duration,
    /// Worker threads writing files (at most 16).
    pub workers: usize,
}

/// What a server tells its owner: ready, each file published or failed, and notices.
/// `Display` gives the line `sharedserver` prints for it (names escaped).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// Clients can connect.
    Ready {
        /// The segment name.
        name: String,
        /// The segment size in bytes.
        size: u64,
        /// Where files go, for people.
        output: String,
    },
    /// A file was published whole under `name`.
    Published {
        /// Its path beneath the output.
        name: String,
        /// Its length.
        bytes: u64,
        /// From its first command to its publication.
        seconds: f64,
    },
    /// A file or stream failed; nothing was published under its name.
    Failed {
        /// The file's path beneath the output, or `stream <guid>` before one was named.
        name: String,
        /// Why, for people.
        reason: String,
    },
    /// Something worth knowing that is not about one file (stale files removed...).
    Notice(String),
}

impl std::fmt::Display for ServerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready { name, size, output } => {
                write!(
                    f,
                    "sharedserver: ready on segment '{name}' ({}), writing to {output}",
                    human_bytes(*size)
                )
            }
            Self::Published { name, bytes, seconds } => {
                let rate = *bytes as f64 / seconds.max(1e-9) / 1e6;
                write!(f, "done {} {bytes} bytes in {seconds:.3} s ({rate:.1} MB/s)", escaped(name))
            }
            Self::Failed { name, reason } => write!(f, "failed {}: {reason}", escaped(name)),
            Self::Notice(message) => write!(f, "sharedserver: {message}"),
        }
    }
}

/// What the server was doing when a handout lock call failed.
const HANDOUT: &str = "the handout lock";

/// A fault of the server itself (an offset from its own allocator out of bounds, a
/// worker thread gone).
fn internal(what: impl std::fmt::Display) -> ServerError {
    ServerError::Io { what: "internal error".into(), source: io::Error::other(what.to_string()) }
}

/// Who hears the server's events.
type Events = Arc<dyn Fn(&ServerEvent) + Send + Sync>;

/// Why a server could not start or stopped badly.
#[derive(Debug)]
pub enum ServerError {
    /// A start-up problem the user must fix: a bad or busy name, an output folder
    /// that cannot be used.
    Start(String),
    /// The segment could not be made (too big for /dev/shm, a foreign file there...).
    Segment(SegmentError),
    /// A file or thread the server needs failed.
    Io {
        /// What the server was doing.
        what: String,
        /// The system's error.
        source: io::Error,
    },
}

impl ServerError {
    /// The exit status a command-line front end should give for it.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Start(_) | Self::Segment(_) => ExitStatus::Usage,
            Self::Io { .. } => ExitStatus::Failure,
        }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServerError {
        let what = what.into();
        move |source| ServerError::Io { what, source }
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Start(message) => f.write_str(message),
            Self::Segment(e) => write!(f, "{e}"),
            Self::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Start(_) => None,
            Self::Segment(e) => Some(e),
            Self::Io { source, .. } => Some(source),
        }
    }
}

/// Builds a server: `Server::builder("name").output_dir("inbox").start()`.
pub struct ServerBuilder {
    options: ServerOptions,
    sink: Option<Arc<dyn Sink>>,
    events: Option<Events>,
}

impl ServerBuilder {
    /// Segment size in bytes (default 64 MiB).
    pub fn size(mut self, bytes: u64) -> Self {
        self.options.size = bytes;
        self
    }

    /// Where the default folder sink writes (default: the current folder).
    pub fn output_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.options.output_dir = dir.into();
        self
    }

    /// Worker threads writing files (default: one per core, at most 16).
    pub fn workers(mut self, workers: usize) -> Self {
        self.options.workers = workers;
        self
    }

    /// Replace files that already exist (default: refuse them).
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.options.overwrite = overwrite;
        self
    }

    /// Drop a stream whose client shows no activity this long (default 30 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.options.idle_timeout = timeout;
        self
    }

    /// Everything at once (the command line builds these).
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// Receive into `sink` instead of the output folder.
    pub fn sink(mut self, sink: impl Sink) -> Self {
        self.sink = Some(Arc::new(sink));
        self
    }

    /// Call `events` for every [`ServerEvent`] (from the server's threads).
    pub fn on_event(mut self, events: impl Fn(&ServerEvent) + Send + Sync + 'static) -> Self {
        self.events = Some(Arc::new(events));
        self
    }

    /// Creates the segment and starts serving on a thread of its own; returns once
    /// clients can connect. Ignores SIGXFSZ for the whole process (a write past
    /// RLIMIT_FSIZE then fails one file instead of killing the server) and raises
    /// the open-files limit to its hard limit.
    pub fn start(self) -> Result<Server, ServerError> {
        let ServerBuilder { options, sink, events } = self;
        lock::validate_segment_name(&options.name).map_err(ServerError::Start)?;
        sys::ignore_file_size_signal();
        sys::raise_nofile_limit();
        let events: Events = events.unwrap_or_else(|| Arc::new(|_: &ServerEvent| {}));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let name = options.name.clone();
        let thread = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("sharedserver".into())
                .spawn(move || run_server(options, sink, events, stop, ready_tx))
                .map_err(ServerError::io("cannot start the server thread"))?
        };
        match ready_rx.recv() {
            Ok(()) => Ok(Server { name, stop, thread: Some(thread) }),
            // The thread ended before it was ready: its result says why.
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(ServerError::Start("the server thread ended before it was ready".into())),
            },
        }
    }
}

/// A running server. It stops on [`Server::shutdown`], when dropped, or on
/// SIGINT/SIGTERM if the program routes them with `sys::install_stop_handlers`.
pub struct Server {
    name: String,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<(), ServerError>>>,
}

impl Server {
    /// A builder for a server on segment `name`, with the defaults of
    /// `sharedserver`.
    pub fn builder(name: impl Into<String>) -> ServerBuilder {
        let workers = thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        ServerBuilder {
            options: ServerOptions {
                name: name.into(),
                size: 64 << 20,
                output_dir: PathBuf::from("."),
                overwrite: false,
                idle_timeout: Duration::from_secs(30),
                workers,
            },
            sink: None,
            events: None,
        }
    }

    /// The segment name clients connect to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells every client with a stream in flight, drops unfinished files, removes
    /// the segment and the lock folder, and returns how the server ended.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    /// Waits until the server stops (SIGINT/SIGTERM, or `shutdown` from elsewhere).
    pub fn wait(mut self) -> Result<(), ServerError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), ServerError> {
        match self.thread.take().map(|thread| thread.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ServerError::Start("the server thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.join();
    }
}

/// The server thread: claims the name, makes the segment, serves, cleans up.
fn run_server(
    options: ServerOptions,
    sink: Option<Arc<dyn Sink>>,
    events: Events,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<()>,
) -> Result<(), ServerError> {
    let folder = sink.is_none();
    if folder {
        prepare_output_dir(&options.output_dir)?;
    }
    let locks = LockDir::create(&options.name).map_err(|e| {
        ServerError::Start(format!(
            "cannot use lock folder {}: {e}",
            LockDir::path_for(&options.name).display()
        ))
    })?;
    let server_lock =
        locks.lock(lock::SERVER_LOCK).map_err(ServerError::io("cannot open the server lock"))?;
    let server_guard = claim_name(&server_lock, &locks, &options.name)?;
    let output =
        if folder { options.output_dir.display().to_string() } else { "the program's own sink".into() };
    let sink: Arc<dyn Sink> =
        sink.unwrap_or_else(|| Arc::new(FolderSink::new(&options.output_dir, &temp_prefix(&options.name))));
    let started = start(options, locks.clone(), sink, events, stop, folder);
    let result = started.and_then(|shared| serve(shared, ready, output));
    drop(server_guard);
    locks.remove();
    result
}

/// State every thread of the server shares.
struct Shared {
    segment: Segment,
    alloc: Mutex<TwoEndedAllocator>,
    locks: LockDir,
    options: ServerOptions,
    stopping: AtomicBool,
    /// Set by `Server::shutdown` (or drop): the handout loop ends.
    stop: Arc<AtomicBool>,
    /// Live streams per worker, to place new ones on the least loaded.
    loads: Vec<AtomicUsize>,
    /// Where received files go.
    sink: Arc<dyn Sink>,
    /// Who hears about ready, published and failed files.
    events: Events,
    /// Permission bits of a file whose client sent none: 0666 less the umask.
    default_mode: u32,
}

fn prepare_output_dir(dir: &Path) -> Result<(), ServerError> {
    fs::create_dir_all(dir)
        .map_err(|e| ServerError::Start(format!("cannot create output folder {}: {e}", dir.display())))?;
    if !dir.is_dir() {
        return Err(ServerError::Start(format!("output folder {} is not a folder", dir.display())));
    }
    let probe = dir.join(format!(".sharedxfer-probe-{}", std::process::id()));
    File::create_new(&probe)
        .map_err(|e| ServerError::Start(format!("cannot write in output folder {}: {e}", dir.display())))?;
    let _ = fs::remove_file(probe);
    Ok(())
}

/// Takes the name's server lock, or explains who holds it.
fn claim_name(lock: &NamedLock, locks: &LockDir, name: &str) -> Result<NamedLockGuard, ServerError> {
    let pid_file = locks.path().join(lock::SERVER_PID_FILE);
    match lock.try_lock() {
        Ok(guard) => {
            fs::write(&pid_file, format!("{}\n", std::process::id()))
                .map_err(ServerError::io(format!("cannot write {}", pid_file.display())))?;
            Ok(guard)
        }
        Err(named_lock::Error::WouldBlock) => {
            let pid = fs::read_to_string(&pid_file).unwrap_or_default();
            let pid = pid.trim();
            let who = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
            Err(ServerError::Start(format!(
                "a server is already running on segment '{name}'{who}: stop it first or pick another --name"
            )))
        }
        Err(e) => Err(ServerError::Start(format!("cannot take the server lock for '{name}': {e}"))),
    }
}

fn start(
    options: ServerOptions,
    locks: LockDir,
    sink: Arc<dyn Sink>,
    events: Events,
    stop: Arc<AtomicBool>,
    folder: bool,
) -> Result<Arc<Shared>, ServerError> {
    // We hold the name's server lock: anything left under the name is from a dead server.
    let stale = segment::remove_stale(&options.name).map_err(|e| ServerError::Start(e.to_string()))?;
    if stale {
        events(&ServerEvent::Notice(format!(
            "removed a stale segment '{}' left by a dead server",
            options.name
        )));
    }
    let stale_locks = locks.remove_stale_stream_locks();
    if stale_locks > 0 {
        events(&ServerEvent::Notice(format!("removed {stale_locks} stale lock file(s)")));
    }
    if folder {
        remove_stale_temp_files(&options.output_dir, &options.name);
    }
    let segment = Segment::create(&options.name, options.size).map_err(ServerError::Segment)?;
    let layout = segment.layout();
    let shared = Shared {
        segment,
        alloc: Mutex::new(TwoEndedAllocator::new(layout.area_start, layout.area_end)),
        locks,
        loads: (0..options.workers.clamp(1, MAX_WORKERS)).map(|_| AtomicUsize::new(0)).collect(),
        sink,
        events,
        default_mode: 0o666 & !sys::umask(),
        options,
        stopping: AtomicBool::new(false),
        stop,
    };
    shared.publish_stats(&shared.alloc.lock().expect("allocator lock"));
    Ok(Arc::new(shared))
}

/// Every temporary file starts with this; clients may not use it for their names,
/// so cleaning up temporary files can never delete a published file.
const TEMP_MARK: &str = protocol::RESERVED_PREFIX;

/// The temporary-file prefix of one segment name: `.sharedxfer-<name>-<guid>.part`.
fn temp_prefix(name: &str) -> String {
    format!("{TEMP_MARK}{name}-")
}

/// Exactly `<prefix><32 hex digits>.part`: a server named `a` must not take the
/// temporary files of a server named `a-b` for its own.
fn is_temp_name(file_name: &str, prefix: &str) -> bool {
    let Some(rest) = file_name.strip_prefix(prefix) else { return false };
    let Some(guid) = rest.strip_suffix(".part") else { return false };
    guid.len() == 32 && guid.bytes().all(|b| b.is_ascii_hexdigit())
}

fn remove_stale_temp_files(dir: &Path, name: &str) {
    let prefix = temp_prefix(name);
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if is_temp_name(&file_name, &prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn serve(shared: Arc<Shared>, ready: mpsc::Sender<()>, output: String) -> Result<(), ServerError> {
    let handout_lock =
        shared.locks.lock(lock::HANDOUT_LOCK).map_err(ServerError::io("cannot open the handout lock"))?;
    let (senders, workers) =
        spawn_workers(&shared).map_err(ServerError::io("cannot start worker threads"))?;
    let header = shared.segment.header();
    header.server_state.store(SERVER_RUNNING, Ordering::Release);
    let size = shared.segment.layout().size;
    (shared.events)(&ServerEvent::Ready { name: shared.options.name.clone(), size, output });
    let _ = ready.send(());
    let result = handout_loop(&shared, &handout_lock, &senders);
    header.server_state.store(SERVER_STOPPING, Ordering::Release);
    shared.stopping.store(true, Ordering::SeqCst);
    drop(senders);
    shared.ring_all_workers();
    for worker in workers {
        let _ = worker.join();
    }
    result
}

type Workers = (Vec<Sender<Stream>>, Vec<thread::JoinHandle<()>>);

fn spawn_workers(shared: &Arc<Shared>) -> io::Result<Workers> {
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for index in 0..shared.loads.len() {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::clone(shared);
        let handle = thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || Worker { shared, index, incoming: rx, streams: Vec::new() }.run())?;
        senders.push(tx);
        handles.push(handle);
    }
    Ok((senders, handles))
}

/// The main thread: keep a GUID on offer, hand taken streams to workers, beat.
fn handout_loop(
    shared: &Shared,
    handout_lock: &NamedLock,
    workers: &[Sender<Stream>],
) -> Result<(), ServerError> {
    let header = shared.segment.header();
    let mut offered: Option<Offer> = None;
    let mut busy_backoff = Duration::from_micros(100);
    while !shared.stop.load(Ordering::SeqCst) && sys::stop_signal().is_none() {
        header.heartbeat.fetch_add(1, Ordering::Relaxed);
        shared.publish_stats(&shared.alloc.lock().expect("allocator lock"));
        if offered.is_some() {
            let pid = handout::collect(&shared.segment, handout_lock).map_err(ServerError::io(HANDOUT))?;
            if pid.is_none() && handout::is_taken(&shared.segment) {
                // Taken, but the taker still holds the lock (for a few stores, or
                // stopped inside): back off instead of spinning on "taken".
                std::thread::sleep(busy_backoff);
                busy_backoff = (busy_backoff * 2).min(RETRY_SLICE);
                continue;
            }
            busy_backoff = Duration::from_micros(100);
            if let Some(pid) = pid {
                let offer = offered.take().expect("checked above");
                let worker = offer.worker;
                let stream = Stream::activate(shared, offer, pid);
                shared.loads[worker].fetch_add(1, Ordering::Relaxed);
                workers[worker].send(stream).map_err(|_| internal("a worker thread died"))?;
                header.doorbells[worker].notify();
            }
        }
        if offered.as_ref().is_some_and(|offer| shared.offer_is_misplaced(offer))
            && handout::withdraw(&shared.segment, handout_lock).map_err(ServerError::io(HANDOUT))?
        {
            let offer = offered.take().expect("checked above");
            shared.free_block(offer.ticket.record_offset);
            shared.locks.remove_stream_lock(offer.ticket.guid);
        }
        if offered.is_none() {
            offered = shared.make_offer(handout_lock)?;
        }
        let wait_for = if offered.is_some() { HEARTBEAT_PERIOD } else { RETRY_SLICE };
        let mut taken = || handout::is_taken(&shared.segment) || sys::stop_signal().is_some();
        header.handout_event.sleep_unless(&mut taken, wait_for);
    }
    Ok(())
}

/// A record the server allocated and put on offer, with its private facts.
struct Offer {
    ticket: Ticket,
    lock: NamedLock,
    /// The worker that will serve the stream (its doorbell is in the record).
    worker: usize,
}

impl Shared {
    /// Allocates and offers a fresh record; `None` while the records area is full.
    fn make_offer(&self, handout_lock: &NamedLock) -> Result<Option<Offer>, ServerError> {
        let offset = {
            let mut alloc = self.alloc.lock().expect("allocator lock");
            let Some(offset) = alloc.alloc_low(RECORD_SIZE, RECORD_ALIGN) else { return Ok(None) };
            offset
        };
        let guid = Uuid::new_v4();
        // Offsets come from our own allocator: a failure here is a server bug.
        self.segment.clear_record(offset).map_err(internal)?;
        let record = self.segment.record(offset).map_err(internal)?;
        // Relaxed: a placement hint; the least loaded worker when the offer is made.
        let worker =
            (0..self.loads.len()).min_by_key(|&i| self.loads[i].load(Ordering::Relaxed)).unwrap_or(0);
        record.doorbell.store(worker as u32, Ordering::Relaxed);
        let (hi, lo) = guid.as_u64_pair();
        record.guid[0].store(hi, Ordering::Relaxed);
        record.guid[1].store(lo, Ordering::Relaxed);
        record.state.store(RECORD_OFFERED, Ordering::Release);
        let lock = match self.locks.stream_lock(guid) {
            Ok(lock) => lock,
            Err(e) => {
                // Out of descriptors, say: not a reason to stop serving everyone.
                errln!("sharedserver: cannot create a stream lock ({e}); retrying");
                self.free_block(offset);
                return Ok(None);
            }
        };
        let ticket = Ticket { guid, record_offset: offset };
        if !handout::offer(&self.segment, handout_lock, ticket).map_err(ServerError::io(HANDOUT))? {
            // A peer holds the handout lock (stopped inside it?): undo, retry later.
            self.free_block(offset);
            self.locks.remove_stream_lock(guid);
            return Ok(None);
        }
        Ok(Some(Offer { ticket, lock, worker }))
    }

    /// At rest (no stream, no buffer), an offer above the area's first record
    /// splits the free space in two: move it down so the segment is one hole again.
    fn offer_is_misplaced(&self, offer: &Offer) -> bool {
        let alloc = self.alloc.lock().expect("allocator lock");
        let stats = alloc.stats();
        stats.low_blocks == 1 && stats.high_blocks == 0 && offer.ticket.record_offset != stats.start
    }

    /// Wakes every worker: space was freed (streams anywhere may be waiting for
    /// it) or the server is stopping.
    fn ring_all_workers(&self) {
        for doorbell in &self.segment.header().doorbells[..self.loads.len()] {
            doorbell.notify();
        }
    }

    fn free_block(&self, offset: u64) {
        let mut alloc = self.alloc.lock().expect("allocator lock");
        // Offsets come from our own allocations; a failure here is a server bug.
        if let Err(e) = alloc.free(offset) {
            errln!("sharedserver: internal error freeing {offset}: {e}");
        }
    }

    /// Mirrors the allocator into the header for `--status` (advisory).
    fn publish_stats(&self, alloc: &TwoEndedAllocator) {
        let stats = alloc.stats();
        let header = self.segment.header();
        // Relaxed: status readers only display these numbers.
        header.low_mark.store(stats.low_mark, Ordering::Relaxed);
        header.high_mark.store(stats.high_mark, Ordering::Relaxed);
        header.free_bytes.store(stats.free_bytes, Ordering::Relaxed);
        header.hole_count.store(stats.holes.len() as u64, Ordering::Relaxed);
        header.live_streams.store(stats.low_blocks as u64, Ordering::Relaxed);
    }
}

/// One file being received beneath the output folder, not yet under its name.
struct Transfer {
    /// The relative path the client asked for (validated).
    name: String,
    file: Box<dyn SinkFile>,
    meta: FileMeta,
    /// The announced size: exact, or only a hint (`meta.size_is_hint`).
    size: u64,
    written: u64,
    hasher: Checksum,
    started: Instant,
}

enum Phase {
    /// Waiting for a command (open or ping).
    Idle,
    /// Receiving a file (or waiting for buffer space while the ring is empty).
    Receiving(Box<Transfer>),
}

/// Why a stream ended badly, and whether to tell the client.
struct Failure {
    code: ErrorCode,
    message: String,
}

fn failure(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure { code, message: message.into() }
}

/// A live stream, owned by one worker.
struct Stream {
    offset: u64,
    guid: Uuid,
    lock: NamedLock,
    client_pid: u32,
    c2s_seen: u32,
    s2c_seq: u32,
    phase: Phase,
    last_activity: Instant,
    last_liveness: Instant,
    /// What reports call this stream: the file name once one was asked for.
    label: String,
    /// Private copies of the ring's (offset, capacity). Kept from one file to the
    /// next on the same stream, so small files need no new buffers.
    ring: Consumer,
    /// This stream's way into the sink.
    sink: Box<dyn SinkSession>,
    /// The record's `client_beat` when last seen.
    client_beat: u32,
    /// Set when the record can be freed.
    finished: bool,
    /// Dropped for idleness while its client still lives: the buffers are freed, but
    /// the record is kept (and ignored) until the client exits, so a client that
    /// wakes up later reads its own error and can never touch a record the server
    /// has given to someone else.
    dropped: bool,
}

impl Stream {
    fn activate(shared: &Shared, offer: Offer, pid: u32) -> Stream {
        if let Ok(record) = shared.segment.record(offer.ticket.record_offset) {
            record.client_pid.store(pid, Ordering::Relaxed);
            record.state.store(RECORD_ACTIVE, Ordering::Release);
        }
        let now = Instant::now();
        Stream {
            offset: offer.ticket.record_offset,
            guid: offer.ticket.guid,
            lock: offer.lock,
            client_pid: pid,
            c2s_seen: 0,
            s2c_seq: 0,
            phase: Phase::Idle,
            last_activity: now,
            last_liveness: now,
            label: format!("stream {}", offer.ticket.guid.simple()),
            ring: Consumer::default(),
            sink: shared.sink.session(offer.ticket.guid),
            client_beat: 0,
            finished: false,
            dropped: false,
        }
    }

    fn record<'a>(&self, shared: &'a Shared) -> &'a Record {
        shared.segment.record(self.offset).expect("the server's own record offset is in bounds")
    }

    /// One pass over the stream; returns whether anything happened.
    fn poll(&mut self, shared: &Shared) -> bool {
        if self.dropped {
            let answered = self.handle_dropped_command(shared);
            self.check_health(shared);
            return answered;
        }
        let mut progressed = match self.drain(shared) {
            Ok(progressed) => progressed,
            Err(failure) => {
                self.fail(shared, failure);
                true
            }
        };
        progressed |= self.handle_command(shared);
        if self.waiting_for_space() {
            progressed |= self.try_start_ring(shared);
        }
        self.check_health(shared);
        progressed
    }

    /// Moves every full slot, in ring order, into the output file.
    fn drain(&mut self, shared: &Shared) -> Result<bool, Failure> {
        let Phase::Receiving(transfer) = &mut self.phase else { return Ok(false) };
        let record = shared.segment.record(self.offset).expect("own record");
        let mut moved = false;
        for _ in 0..self.ring.buffers().len() {
            let Some(FullSlot { offset, capacity, len, .. }) = self.ring.next_full(record) else { break };
            let past_size =
                !transfer.meta.size_is_hint && transfer.written.saturating_add(len) > transfer.size;
            if len == 0 || len > capacity || past_size {
                return Err(failure(
                    ErrorCode::BadRequest,
                    format!(
                        "bad chunk length {len} (slot capacity {capacity}, {} of {} bytes written)",
                        transfer.written, transfer.size
                    ),
                ));
            }
            let buffer = shared
                .segment
                .buffer(offset, len)
                .map_err(|e| failure(ErrorCode::BadRequest, e.to_string()))?;
            transfer.hasher.update(buffer.bytes(len as usize));
            transfer.file.write(buffer.bytes(len as usize)).map_err(sink_failure)?;
            transfer.written += len;
            // Relaxed: progress for status only.
            record.bytes_done.store(transfer.written, Ordering::Relaxed);
            self.ring.release(record);
            moved = true;
        }
        if moved {
            self.last_activity = Instant::now();
        }
        Ok(moved)
    }

    /// The next complete command the client posted, if any (copied out, decoded).
    fn next_command(&mut self, shared: &Shared) -> Option<Result<ClientCommand, protocol::ProtocolError>> {
        let record = self.record(shared);
        protocol::pending(&record.c2s, self.c2s_seen)?;
        // A write in progress (or left half-done by a dead client): next pass.
        let raw = protocol::take(&record.c2s)?;
        self.c2s_seen = raw.seq;
        Some(ClientCommand::decode(&raw))
    }

    /// Takes and answers one pending command, if any.
    fn handle_command(&mut self, shared: &Shared) -> bool {
        let Some(command) = self.next_command(shared) else { return false };
        self.last_activity = Instant::now();
        match command {
            Ok(command) => self.execute(shared, command),
            Err(e) => self.fail(shared, failure(ErrorCode::BadRequest, format!("malformed command: {e}"))),
        }
        true
    }

    /// A dropped stream listens only for its client giving the record back.
    fn handle_dropped_command(&mut self, shared: &Shared) -> bool {
        let Some(command) = self.next_command(shared) else { return false };
        if matches!(command, Ok(ClientCommand::Abort { .. } | ClientCommand::Close)) {
            self.drop_transfer(shared);
            self.finished = true;
        }
        true
    }

    fn execute(&mut self, shared: &Shared, command: ClientCommand) {
        match (command, &self.phase) {
            (ClientCommand::Open { name, size, meta }, Phase::Idle) => self.open(shared, name, size, meta),
            (ClientCommand::Put { name, size, checksum, meta }, Phase::Idle) => {
                self.put(shared, name, size, checksum, meta)
            }
            (ClientCommand::Mkdir { name, mode }, Phase::Idle) => self.mkdir(shared, name, mode),
            (ClientCommand::Finish { size, checksum }, Phase::Receiving(_)) => {
                self.finish(shared, size, checksum)
            }
            (ClientCommand::Ping { seq, sent_nanos }, Phase::Idle) => {
                self.reply(shared, ServerReply::Pong { seq, sent_nanos })
            }
            (ClientCommand::Abort { reason }, _) => {
                self.close(shared, Some(format!("client aborted: {reason}")))
            }
            (ClientCommand::Close, _) => self.close(shared, None),
            (command, _) => {
                let message = format!("command {command:?} is not valid in this state");
                self.fail(shared, failure(ErrorCode::BadRequest, message));
            }
        }
    }

    /// Checks the name and creates the file to receive into: the common start of
    /// Open and Put. `Ok(false)`: the file exists and the client asked to skip it.
    fn begin(
        &mut self,
        shared: &Shared,
        name: String,
        size: u64,
        meta: FileMeta,
        early_exists_check: bool,
    ) -> Result<bool, Failure> {
        self.label.clone_from(&name);
        let base = name.rsplit('/').next().unwrap_or(&name);
        if base.starts_with(TEMP_MARK) {
            let message =
                format!("names starting with {TEMP_MARK} are reserved for the server's temporary files");
            return Err(failure(ErrorCode::BadRequest, message));
        }
        // Fail a big transfer before it starts; a small one (`early == false`) is
        // refused just as surely by the no-clobber publish.
        let check_now = early_exists_check || meta.skip_existing;
        if check_now && !shared.options.overwrite && self.sink.exists(&name) {
            if meta.skip_existing {
                return Ok(false);
            }
            let message =
                format!("{} already exists: remove it or run the server with --overwrite", escaped(&name));
            return Err(failure(ErrorCode::Exists, message));
        }
        let file = self.sink.create(&name).map_err(sink_failure)?;
        let record = self.record(shared);
        record.file_size.store(size, Ordering::Relaxed);
        record.size_is_hint.store(u32::from(meta.size_is_hint), Ordering::Relaxed);
        record.bytes_done.store(0, Ordering::Relaxed);
        let name_len = segment::store_bytes(&record.name, name.as_bytes());
        record.name_len.store(name_len as u32, Ordering::Relaxed);
        record.phase.store(PHASE_RECEIVING, Ordering::Relaxed);
        // Every file starts at slot 0 on both sides.
        self.ring.restart();
        self.phase = Phase::Receiving(Box::new(Transfer {
            name,
            file,
            meta,
            size,
            written: 0,
            hasher: Checksum::new(),
            started: Instant::now(),
        }));
        Ok(true)
    }

    fn open(&mut self, shared: &Shared, name: String, size: u64, meta: FileMeta) {
        match self.begin(shared, name, size, meta, true) {
            Err(failure) => self.fail(shared, failure),
            Ok(false) => self.skip(shared),
            Ok(true) if size == 0 && !meta.size_is_hint => {
                self.reply(shared, ServerReply::Opened { slots: 0, chunk: 0 })
            }
            Ok(true) => {
                self.try_start_ring(shared);
            }
        }
    }

    /// A small file already in slot 0 of the ring the stream kept: one round trip.
    fn put(&mut self, shared: &Shared, name: String, size: u64, checksum: u64, meta: FileMeta) {
        let fits = size == 0 || (!self.ring.is_empty() && size <= self.ring.chunk());
        if !fits {
            let message = format!("put of {size} bytes does not fit the stream's ring");
            return self.fail(shared, failure(ErrorCode::BadRequest, message));
        }
        // A put's size is exact: its bytes are already in the slot.
        let meta = FileMeta { size_is_hint: false, ..meta };
        match self.begin(shared, name, size, meta, false) {
            Ok(true) => self.finish(shared, size, checksum),
            Ok(false) => {
                // Nothing will read slot 0: hand it back for the next file.
                let record = shared.segment.record(self.offset).expect("own record");
                self.ring.release_first(record);
                self.skip(shared)
            }
            Err(failure) => self.fail(shared, failure),
        }
    }

    /// Creates a folder (and its parents) beneath the output folder.
    fn mkdir(&mut self, shared: &Shared, name: String, mode: u32) {
        self.label.clone_from(&name);
        match self.sink.make_dir(&name, mode | 0o700) {
            Ok(()) => self.reply(shared, ServerReply::Done { bytes: 0 }),
            Err(e) => self.fail(shared, sink_failure(e)),
        }
    }

    /// The file exists and the client asked to skip it: the stream stays ready.
    fn skip(&mut self, shared: &Shared) {
        self.remove_transfer();
        self.phase = Phase::Idle;
        self.record(shared).phase.store(PHASE_IDLE, Ordering::Relaxed);
        self.last_activity = Instant::now();
        self.reply(shared, ServerReply::Skipped);
    }

    fn waiting_for_space(&self) -> bool {
        matches!(&self.phase, Phase::Receiving(t) if needs_ring(t) && self.ring.is_empty())
    }

    /// Allocates the stream's buffers if there is room; otherwise the stream waits
    /// (backpressure) and this is tried again on the next pass.
    fn try_start_ring(&mut self, shared: &Shared) -> bool {
        let Phase::Receiving(transfer) = &self.phase else { return false };
        let area = shared.segment.layout().area_end - shared.segment.layout().area_start;
        // A size that is only a hint (a pipe, /proc) still sizes the ring; the data
        // may run past it, so such a ring has at least one slot.
        let chunk = ring::chunk_size(transfer.size, area);
        let wanted = ring::wanted_slots(transfer.size, chunk);
        let reusable = self.ring.chunk() >= chunk && self.ring.buffers().len() >= wanted;
        let record = shared.segment.record(self.offset).expect("own record");
        if reusable {
            // Hand every kept slot back to the client (a failure may have revoked them).
            self.ring.rearm(record);
        } else {
            self.free_ring(shared);
            let buffers = allocate_ring(shared, chunk, wanted);
            if buffers.is_empty() {
                // Relaxed: status only.
                record.phase.store(PHASE_WAITING_FOR_SPACE, Ordering::Relaxed);
                return false;
            }
            self.ring.install(record, buffers);
        }
        // Relaxed: status only.
        record.phase.store(PHASE_RECEIVING, Ordering::Relaxed);
        let slots = self.ring.buffers().len() as u32;
        let reply = ServerReply::Opened { slots, chunk: self.ring.chunk() };
        self.last_activity = Instant::now();
        // The reply's Release publishes the slot fields above.
        self.reply(shared, reply);
        true
    }

    fn finish(&mut self, shared: &Shared, size: u64, checksum: u64) {
        // The client filled its last slots before posting Finish (Release on seq):
        // drain them all before judging the file.
        loop {
            match self.drain(shared) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(failure) => return self.fail(shared, failure),
            }
        }
        let Phase::Receiving(transfer) = std::mem::replace(&mut self.phase, Phase::Idle) else { return };
        match publish(shared, *transfer, size, checksum) {
            Ok(None) => self.skip(shared),
            Ok(Some(done)) => {
                // The ring stays with the stream for its next file.
                self.phase = Phase::Idle;
                self.record(shared).phase.store(PHASE_IDLE, Ordering::Relaxed);
                shared.segment.header().streams_done.fetch_add(1, Ordering::Relaxed);
                let bytes = match &done {
                    ServerEvent::Published { bytes, .. } => *bytes,
                    _ => size,
                };
                (shared.events)(&done);
                self.reply(shared, ServerReply::Done { bytes });
            }
            Err(failure) => self.fail(shared, failure),
        }
    }

    fn reply(&mut self, shared: &Shared, reply: ServerReply) {
        let record = self.record(shared);
        let (code, args, text) = reply.encode();
        self.s2c_seq = self.s2c_seq.wrapping_add(1);
        // A client stopped while holding the lock must not stall this worker: the
        // seq-last protocol keeps the post safe even without it.
        let _guard = self.lock.try_lock().ok();
        protocol::post(&record.s2c, self.s2c_seq, code, args, &text);
        drop(_guard);
        record.client_event.notify();
    }

    /// Fails the current transfer: tells the client, removes the temporary file,
    /// frees the buffers. The record stays, for another file or the client's Close.
    ///
    /// The ring is NOT freed here: a slot the client owns (EMPTY) may be in the middle
    /// of a `read(2)` into it, and handing that buffer to another stream could slip
    /// foreign bytes into that stream's file. The slots are revoked (the client sees
    /// them leave EMPTY and reads the error), and the buffers go when the client
    /// answers with Abort or Close, or exits.
    fn fail(&mut self, shared: &Shared, failure: Failure) {
        self.remove_transfer();
        self.revoke_ring(shared);
        shared.segment.header().streams_failed.fetch_add(1, Ordering::Relaxed);
        (shared.events)(&ServerEvent::Failed { name: self.label.clone(), reason: failure.message.clone() });
        self.reply(shared, ServerReply::Error { code: failure.code, message: failure.message });
        self.last_activity = Instant::now();
    }

    /// The client is done with the record (Close) or gave up (Abort): no reply, the
    /// record is freed; an unfinished transfer is dropped and reported.
    fn close(&mut self, shared: &Shared, reason: Option<String>) {
        if let Some(name) = self.transfer_name() {
            let reason = reason.unwrap_or_else(|| "client closed the stream before finishing".into());
            shared.segment.header().streams_failed.fetch_add(1, Ordering::Relaxed);
            (shared.events)(&ServerEvent::Failed { name, reason });
        }
        self.drop_transfer(shared);
        self.finished = true;
    }

    /// Removes the temporary file of an unfinished transfer and frees the ring (the
    /// client gave the record back, or is gone).
    fn drop_transfer(&mut self, shared: &Shared) {
        self.remove_transfer();
        self.free_ring(shared);
    }

    fn remove_transfer(&mut self) {
        if let Phase::Receiving(transfer) = std::mem::replace(&mut self.phase, Phase::Idle) {
            transfer.file.discard();
        }
    }

    /// Takes every slot away from the client without freeing the buffers.
    fn revoke_ring(&self, shared: &Shared) {
        let record = self.record(shared);
        // Relaxed: status only.
        record.phase.store(PHASE_IDLE, Ordering::Relaxed);
        self.ring.revoke_all(record);
    }

    fn free_ring(&mut self, shared: &Shared) {
        let record = shared.segment.record(self.offset).expect("own record");
        // Relaxed: status only.
        record.phase.store(PHASE_IDLE, Ordering::Relaxed);
        let ring = self.ring.clear(record);
        for &(offset, _) in &ring {
            shared.free_block(offset);
        }
        if !ring.is_empty() {
            // Streams waiting for space retry on the next wake.
            shared.ring_all_workers();
        }
    }

    /// Drops streams whose client died or went idle too long.
    fn check_health(&mut self, shared: &Shared) {
        let now = Instant::now();
        // Relaxed: a liveness hint from the client (a pipe with nothing to read yet);
        // nothing is published with it.
        let beat = self.record(shared).client_beat.load(Ordering::Relaxed);
        if beat != self.client_beat {
            self.client_beat = beat;
            self.last_activity = now;
        }
        if now.duration_since(self.last_liveness) >= LIVENESS_PERIOD {
            self.last_liveness = now;
            match sys::process_state(self.client_pid) {
                sys::ProcessState::Gone => {
                    let reason = format!("client (pid {}) died", self.client_pid);
                    self.close(shared, Some(reason));
                    return;
                }
                // A stopped process is not inside a read(2) into our buffers (it stops
                // on the way back to user space), so a dropped stream's ring can go.
                sys::ProcessState::Stopped if self.dropped => self.free_ring(shared),
                _ => {}
            }
        }
        if self.dropped {
            return;
        }
        if !self.waiting_for_space() && now.duration_since(self.last_activity) >= shared.options.idle_timeout
        {
            let message =
                format!("no activity for {} s: stream dropped", shared.options.idle_timeout.as_secs());
            self.fail(shared, failure(ErrorCode::IdleTimeout, message));
            self.dropped = true;
            self.record(shared).state.store(RECORD_DROPPED, Ordering::Release);
            // Reclaim at once if the client is stopped; else on its Abort, or exit.
            self.last_liveness = now.checked_sub(LIVENESS_PERIOD).unwrap_or(now);
        }
    }

    fn transfer_name(&self) -> Option<String> {
        match &self.phase {
            Phase::Receiving(transfer) => Some(transfer.name.clone()),
            _ => None,
        }
    }

    /// Frees the record and its lock file; the stream is gone.
    fn release(mut self, shared: &Shared) {
        self.drop_transfer(shared);
        if let Ok(record) = shared.segment.record(self.offset) {
            record.state.store(segment::RECORD_FREE, Ordering::Release);
        }
        shared.free_block(self.offset);
        shared.locks.remove_stream_lock(self.guid);
    }
}

/// Up to `wanted` buffers of `chunk` bytes from the high end; fewer if space is short.
/// Buffers never take the last record's worth of the middle gap: the server can
/// always put a GUID on offer, so a new client gets a stream and waits for buffer
/// space in plain view (`--status`) instead of waiting for a handout.
fn allocate_ring(shared: &Shared, chunk: u64, wanted: usize) -> Vec<(u64, u64)> {
    let mut alloc = shared.alloc.lock().expect("allocator lock");
    let mut ring = Vec::with_capacity(wanted);
    while ring.len() < wanted {
        let Some(offset) = alloc.alloc_high(chunk, BUFFER_ALIGN) else { break };
        let stats = alloc.stats();
        if stats.high_mark.saturating_sub(stats.low_mark) < RECORD_SIZE + RECORD_ALIGN {
            // Our own fresh allocation: freeing it cannot fail.
            let _ = alloc.free(offset);
            break;
        }
        ring.push((offset, chunk));
    }
    ring
}

fn needs_ring(transfer: &Transfer) -> bool {
    transfer.meta.size_is_hint || transfer.size > 0
}

/// A sink's refusal as the client will hear it.
fn sink_failure(e: SinkError) -> Failure {
    let code = match e.kind {
        SinkErrorKind::Exists => ErrorCode::Exists,
        SinkErrorKind::Refused => ErrorCode::BadRequest,
        SinkErrorKind::Io => ErrorCode::Io,
    };
    failure(code, e.message)
}

/// Verifies size and checksum, then has the sink give the file its mode, time and
/// final name (never over an existing file unless `--overwrite`). `Ok(None)`: the
/// name was taken and the client asked to skip such files.
fn publish(
    shared: &Shared,
    transfer: Transfer,
    size: u64,
    checksum: u64,
) -> Result<Option<ServerEvent>, Failure> {
    let shown = escaped(&transfer.name).into_owned();
    let size_ok = if transfer.meta.size_is_hint { true } else { size == transfer.size };
    if !size_ok || transfer.written != size {
        let message = format!(
            "{shown}: size mismatch: announced {}, finished with {}, received {}",
            transfer.size, size, transfer.written
        );
        transfer.file.discard();
        return Err(failure(ErrorCode::Checksum, message));
    }
    if transfer.hasher.digest() != checksum {
        transfer.file.discard();
        let message = format!("{shown}: checksum mismatch: the data was corrupted in transit");
        return Err(failure(ErrorCode::Checksum, message));
    }
    let mode = transfer.meta.mode.unwrap_or(shared.default_mode);
    match transfer.file.publish(mode, transfer.meta.mtime, shared.options.overwrite) {
        Err(e) if e.kind == SinkErrorKind::Exists && transfer.meta.skip_existing => Ok(None),
        Err(e) => Err(sink_failure(e)),
        Ok(()) => Ok(Some(ServerEvent::Published {
            name: transfer.name,
            bytes: transfer.written,
            seconds: transfer.started.elapsed().as_secs_f64(),
        })),
    }
}

struct Worker {
    shared: Arc<Shared>,
    index: usize,
    incoming: Receiver<Stream>,
    streams: Vec<Stream>,
}

impl Worker {
    fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let doorbell = &shared.segment.header().doorbells[self.index];
        loop {
            let seen = doorbell.seq();
            while let Ok(stream) = self.incoming.try_recv() {
                self.streams.push(stream);
            }
            if self.shared.stopping.load(Ordering::SeqCst) {
                self.shut_down();
                return;
            }
            let progressed = self.poll_all();
            if !progressed {
                // Spin only while we have streams whose next step may come any moment;
                // wake at least every liveness period to check their clients.
                let (spin, slice) = if self.streams.is_empty() {
                    (Duration::ZERO, EMPTY_WORKER_SLICE)
                } else {
                    (SPIN, LIVENESS_PERIOD)
                };
                if !spin_until(|| doorbell.seq() != seen, spin) {
                    doorbell.wait_past(seen, slice);
                }
            }
        }
    }

    fn poll_all(&mut self) -> bool {
        let mut progressed = false;
        for stream in &mut self.streams {
            progressed |= stream.poll(&self.shared);
        }
        let mut index = 0;
        while index < self.streams.len() {
            if self.streams[index].finished {
                self.streams.swap_remove(index).release(&self.shared);
                self.shared.loads[self.index].fetch_sub(1, Ordering::Relaxed);
                progressed = true;
            } else {
                index += 1;
            }
        }
        progressed
    }

    /// Tells every client the server is going away and cleans up their streams.
    fn shut_down(&mut self) {
        for mut stream in std::mem::take(&mut self.streams) {
            let message = "the server is shutting down".to_string();
            if matches!(stream.phase, Phase::Receiving(_)) {
                stream.fail(&self.shared, failure(ErrorCode::Shutdown, message));
            } else {
                stream.reply(&self.shared, ServerReply::Error { code: ErrorCode::Shutdown, message });
            }
            stream.release(&self.shared);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_temporary_names_of_this_segment_count_as_stale() {
        let guid = "0123456789abcdef0123456789abcdef";
        assert!(is_temp_name(&format!(".sharedxfer-a-{guid}.part"), &temp_prefix("a")));
        assert!(
            !is_temp_name(&format!(".sharedxfer-a-b-{guid}.part"), &temp_prefix("a")),
            "server a-b's file"
        );
        assert!(!is_temp_name(".sharedxfer-a-notes.part", &temp_prefix("a")));
        assert!(!is_temp_name(&format!(".sharedxfer-a-{guid}.partial"), &temp_prefix("a")));
    }
}
