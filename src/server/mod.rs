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
use crate::escape::{escaped, escaped_path};
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
use crate::sink::{FolderSink, Sink, SinkError, SinkErrorKind, SinkFile, SinkSession, SyncMode};
use crate::sys;
use crate::wait::{spin_until, SPIN};
use crate::ExitStatus;

mod batch;
mod offer;
mod stream;
mod worker;

use offer::handout_loop;
use worker::spawn_workers;

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
    /// When published files are flushed (default: never, as `cp` does).
    pub sync: SyncMode,
    /// Share the segment and lock folder with this group (its members can send);
    /// `None`: the server's user alone.
    pub group: Option<u32>,
    /// Refuse files larger than this many bytes (`None`: any size).
    pub max_file_size: Option<u64>,
    /// Streams one client process may hold at once; more are refused (default 64).
    pub max_streams_per_client: usize,
}

/// What a server tells its owner: ready, each file published or failed, each client
/// done, and notices. `Display` gives the line `sharedserver` prints for it (names
/// escaped). More kinds may come: match with a `_` arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
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
    /// A file or stream failed; nothing was published under its name, but for one
    /// case: with `SyncMode::Batch`, a file published (`Published` came first) whose
    /// flush then failed is reported failed too, and stays published.
    Failed {
        /// The file's path beneath the output, or `stream <guid>` before one was named.
        name: String,
        /// Why, for people.
        reason: String,
    },
    /// A client process is done: its last stream ended and it exited, or opened no
    /// new stream for a second (a failed file's stream given up and the next taken
    /// are one client's work, one line). What all its streams did.
    ClientDone {
        /// The client's process id.
        pid: u32,
        /// Files it published (folders are not counted).
        files: u64,
        /// Bytes in those files.
        bytes: u64,
        /// Files skipped because they existed (the client's `--skip-existing`).
        skipped: u64,
        /// Failures: files, and streams that failed as a whole (a malformed batch,
        /// an idle timeout, a refusal over the quota).
        failed: u64,
        /// From its first stream to its last stream's end.
        seconds: f64,
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
            Self::ClientDone { pid, files, bytes, skipped, failed, seconds } => {
                let rate = *bytes as f64 / seconds.max(1e-9) / 1e6;
                write!(
                    f,
                    "client {pid}: {files} published, {skipped} skipped, {failed} failed, {bytes} bytes in {seconds:.3} s ({rate:.1} MB/s)"
                )
            }
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
            // The source says the rest (`{:#}` prints the chain).
            Self::Segment(_) => f.write_str("cannot create the segment"),
            Self::Io { what, .. } => f.write_str(what),
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

    /// Worker threads writing files: 1 to 16 (`start` refuses others; default: one
    /// per core, at most 16).
    pub fn workers(mut self, workers: usize) -> Self {
        self.options.workers = workers;
        self
    }

    /// Replace files that already exist (default: refuse them).
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.options.overwrite = overwrite;
        self
    }

    /// Share the segment with group `gid`: its members can send (default: only the
    /// server's user).
    pub fn group(mut self, gid: u32) -> Self {
        self.options.group = Some(gid);
        self
    }

    /// Streams one client process may hold at once (default 64).
    pub fn max_streams_per_client(mut self, streams: usize) -> Self {
        self.options.max_streams_per_client = streams;
        self
    }

    /// Refuse files larger than `bytes` (default: any size).
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.options.max_file_size = Some(bytes);
        self
    }

    /// Flush published files: never (default), each, or once per group.
    pub fn sync(mut self, sync: SyncMode) -> Self {
        self.options.sync = sync;
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
    /// the open-files limit towards its hard limit (at most 65,536).
    pub fn start(self) -> Result<Server, ServerError> {
        let ServerBuilder { options, sink, events } = self;
        lock::validate_segment_name(&options.name).map_err(ServerError::Start)?;
        // What `sharedserver` refuses as usage errors, refused here too (else every
        // stream would fail with a message about the client).
        if options.max_streams_per_client == 0 {
            let message = "max_streams_per_client is 0: no client could open a stream; give 1 or more";
            return Err(ServerError::Start(message.into()));
        }
        if options.idle_timeout.is_zero() {
            let message = "idle_timeout is 0: every stream would be dropped at once; give 1 s or more";
            return Err(ServerError::Start(message.into()));
        }
        if !(1..=MAX_WORKERS).contains(&options.workers) {
            let message = format!("workers is {}: give 1 to {MAX_WORKERS}", options.workers);
            return Err(ServerError::Start(message));
        }
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
/// SIGINT/SIGTERM/SIGHUP if the program routes them with `sys::install_stop_handlers`.
pub struct Server {
    name: String,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<(), ServerError>>>,
}

impl Server {
    /// A builder for a server on segment `name`, with the defaults of
    /// `sharedserver`.
    pub fn builder(name: impl Into<String>) -> ServerBuilder {
        let workers = thread::available_parallelism().map_or(2, |n| n.get()).min(MAX_WORKERS);
        ServerBuilder {
            options: ServerOptions {
                name: name.into(),
                size: 64 << 20,
                output_dir: PathBuf::from("."),
                overwrite: false,
                idle_timeout: Duration::from_secs(30),
                workers,
                sync: SyncMode::None,
                group: None,
                max_file_size: None,
                max_streams_per_client: 64,
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

    /// Waits until the server stops: on SIGINT/SIGTERM/SIGHUP once
    /// `sharedxfer::sys::install_stop_handlers` was called (as `sharedserver` does),
    /// or when it fails. `shutdown` takes the handle, so it cannot end a `wait`.
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
    mut options: ServerOptions,
    sink: Option<Arc<dyn Sink>>,
    events: Events,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<()>,
) -> Result<(), ServerError> {
    let folder = sink.is_none();
    if folder {
        // Every message names files by this path, seen from any folder a client runs in.
        options.output_dir = resolve_output_dir(&options.output_dir);
    }
    // Only a member (or root, or a holder of CAP_CHOWN) may give a file to a group:
    // say so before making anything, rather than "Operation not permitted" with the
    // lock folder left.
    let may_chown = sys::current_uid() == 0 || sys::has_cap_chown();
    if let Some(gid) = options.group.filter(|&gid| !may_chown && !sys::current_groups().contains(&gid)) {
        return Err(ServerError::Start(format!(
            "--group: the server's {} is not in {}: add it to that group (then log in again, or restart the service)",
            sys::user_label(sys::current_uid()),
            sys::group_label(gid)
        )));
    }
    let locks = LockDir::create_for(&options.name, options.group).map_err(|e| {
        ServerError::Start(format!(
            "cannot use lock folder {}: {e}",
            LockDir::path_for(&options.name).display()
        ))
    })?;
    let server_lock =
        locks.lock(lock::SERVER_LOCK).map_err(ServerError::io("cannot open the server lock"))?;
    let server_guard = claim_name(&server_lock, &locks, &options.name)?;
    locks.share().map_err(|e| {
        ServerError::Start(format!("cannot share lock folder {}: {e}", locks.path().display()))
    })?;
    // Where the files go, as a service's log should say it: absolute, escaped.
    let output = match folder {
        true => escaped_path(&options.output_dir),
        false => "the program's own sink".into(),
    };
    let sink: Arc<dyn Sink> = sink.unwrap_or_else(|| {
        let prefix = temp_prefix(&options.name);
        Arc::new(FolderSink::new(&options.output_dir, &prefix).with_sync(options.sync))
    });
    let started = start(options, locks.clone(), sink, events, stop, folder);
    let result = started.and_then(|shared| serve(shared, ready, output));
    drop(server_guard);
    locks.remove();
    result
}

/// One client process, while it holds streams.
/// A client process's staged folders by top folder name, until it commits them or
/// its last stream ends.
type ClientStages = Arc<StageMap>;

/// The staged folders of one client process, shared by its streams.
#[derive(Default)]
struct StageMap {
    map: Mutex<std::collections::HashMap<String, Arc<Stage>>>,
    /// Bumped (Release) after every change of `map`: a stream keeps the stage of
    /// its last top folder while this stays the same (no lock per file).
    generation: std::sync::atomic::AtomicU64,
}

impl StageMap {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<Stage>>> {
        self.map.lock().expect("stages lock")
    }

    /// Call after every change of the map, the lock still held.
    fn changed(&self) {
        // Release: pairs with the Acquire in `Stream::staged`.
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A top-level folder a client staged (see `crate::batch::KIND_STAGE`).
struct Stage {
    /// Its hidden name in OUTPUT_DIR.
    hidden: String,
    /// What the client's commit must carry: another process that claims the
    /// client's pid cannot commit (publish) it.
    token: u64,
    /// `true` until it is committed or given up. Read-held while a file is made
    /// beneath it under its own name, write-held to publish it: a staged folder
    /// never gets its name with a file half-written in it.
    live: std::sync::RwLock<bool>,
    /// Files (and their bytes) published beneath it so far, for the client's line.
    files: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

struct Client {
    /// When the process started (clock ticks after boot): a pid used again by
    /// another process is another client.
    started: Option<u64>,
    /// Its live streams.
    held: usize,
    /// The folders it staged (its streams share this).
    stages: ClientStages,
    /// When its first stream came.
    since: Instant,
    /// What its streams already gone did.
    tally: Tally,
}

/// A client whose streams have all ended, its line not printed yet.
struct Departed {
    started: Option<u64>,
    since: Instant,
    tally: Tally,
    /// When its last stream ended.
    left: Instant,
    /// Its staged folders are still being published (their counts may change).
    settling: bool,
}

/// How long a client with no stream may take to open its next one and still count
/// as the same run (it gives up a failed file's stream and takes a new one).
const DEPART_GRACE: Duration = Duration::from_secs(1);

/// Files published, skipped and failed (stream failures count as failures), and
/// bytes published.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    files: u64,
    bytes: u64,
    skipped: u64,
    failed: u64,
    /// Of `files` and `bytes`: made in a staged folder that was then dropped (its
    /// name was taken before its commit), so failed after all.
    dropped: u64,
    dropped_bytes: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.skipped += other.skipped;
        self.failed += other.failed;
        self.dropped += other.dropped;
        self.dropped_bytes += other.dropped_bytes;
    }

    /// The files of a staged folder that was dropped.
    fn drop_staged(&mut self, stage: &Stage) {
        // Relaxed: counters; the stage lock (write-held by the caller) orders them.
        self.dropped += stage.files.load(Ordering::Relaxed);
        self.dropped_bytes += stage.bytes.load(Ordering::Relaxed);
    }

    /// What the client's line says: dropped files as failed, not published.
    fn settled(self) -> Tally {
        Tally {
            files: self.files.saturating_sub(self.dropped),
            bytes: self.bytes.saturating_sub(self.dropped_bytes),
            failed: self.failed + self.dropped,
            dropped: 0,
            dropped_bytes: 0,
            ..self
        }
    }

    /// A file counted as published turned out to fail (its flush did).
    fn unpublish(&mut self, bytes: u64) {
        self.files = self.files.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
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
    /// Live streams and what they did, per client pid: for
    /// `--max-streams-per-client`, and the summary when its last stream ends.
    clients: Mutex<std::collections::HashMap<u32, Client>>,
    /// Clients whose streams all ended, by pid: a new stream takes its tally back;
    /// the line is printed once the process exits, or after `DEPART_GRACE`.
    departed: Mutex<std::collections::HashMap<u32, Departed>>,
    /// Live streams per worker, to place new ones on the least loaded.
    loads: Vec<AtomicUsize>,
    /// Where received files go.
    sink: Arc<dyn Sink>,
    /// Who hears about ready, published and failed files.
    events: Events,
    /// Permission bits of a file whose client sent none: 0666 less the umask.
    default_mode: u32,
}

/// `dir` as an absolute path without `.`, `..` or links: the nearest folder of it
/// that exists, resolved, joined with the rest (made at start). As given if even
/// that fails.
fn resolve_output_dir(dir: &Path) -> PathBuf {
    let Ok(absolute) = std::path::absolute(dir) else { return dir.to_owned() };
    let mut base = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(resolved) = fs::canonicalize(base) {
            return rest.iter().rev().fold(resolved, |path, part| path.join(part));
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(part)) => {
                rest.push(part.to_owned());
                base = parent;
            }
            _ => return absolute,
        }
    }
}

fn prepare_output_dir(dir: &Path) -> Result<(), ServerError> {
    if fs::metadata(dir).is_ok_and(|meta| !meta.is_dir()) {
        return Err(ServerError::Start(format!(
            "output folder {} is not a folder: name a folder (it is made if missing)",
            dir.display()
        )));
    }
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
    // A client looking for a starting server holds the lock shared for a moment
    // (`lock::server_lock_held`): busy for 100 ms is a server.
    let since = Instant::now();
    let mut tried = lock.try_lock();
    while matches!(tried, Err(named_lock::Error::WouldBlock)) && since.elapsed() < Duration::from_millis(100)
    {
        std::thread::sleep(Duration::from_millis(5));
        tried = lock.try_lock();
    }
    match tried {
        Ok(guard) => {
            let pid_file = locks.path().join(lock::SERVER_PID_FILE);
            locks
                .write_server_pid()
                .map_err(ServerError::io(format!("cannot write {}", pid_file.display())))?;
            Ok(guard)
        }
        Err(named_lock::Error::WouldBlock) => {
            let pid = locks.read_server_pid();
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
        let (files, folders) = remove_stale_temp_files(&options.output_dir, &options.name);
        if files + folders > 0 {
            events(&ServerEvent::Notice(format!(
                "removed {files} temporary file(s) and {folders} staged folder(s) left in {} by a server that was killed (a staged folder may hold a half-written file, so it is never published: send it again)",
                escaped(&options.output_dir.to_string_lossy())
            )));
        }
    }
    let segment = Segment::create(&options.name, options.size).map_err(ServerError::Segment)?;
    if let Some(gid) = options.group {
        // Members of the group may map it; nobody else (clients check nothing more:
        // every record they write is untrusted anyway).
        let path = segment::shm_path(&options.name);
        std::os::unix::fs::chown(&path, None, Some(gid))
            .and_then(|()| fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o660)))
            .map_err(ServerError::io(format!("cannot share {} with group {gid}", path.display())))?;
    }
    // Only now that the server is sure to run is OUTPUT_DIR made (a refused start
    // leaves nothing behind; the segment goes with `segment` on an error here).
    if folder {
        prepare_output_dir(&options.output_dir)?;
    }
    let layout = segment.layout();
    let workers = options.workers.clamp(1, MAX_WORKERS);
    // Relaxed: a hint for clients (how many batch streams are worth running).
    segment.header().workers.store(workers as u32, Ordering::Relaxed);
    let most = options.max_streams_per_client.min(u32::MAX as usize) as u32;
    segment.header().max_streams_per_client.store(most, Ordering::Relaxed);
    let shared = Shared {
        segment,
        alloc: Mutex::new(TwoEndedAllocator::new(layout.area_start, layout.area_end)),
        locks,
        loads: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
        sink,
        events,
        default_mode: 0o666 & !sys::umask(),
        options,
        stopping: AtomicBool::new(false),
        stop,
        clients: Mutex::new(std::collections::HashMap::new()),
        departed: Mutex::new(std::collections::HashMap::new()),
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
    let Some(guid) = rest.strip_suffix(".part").or_else(|| rest.strip_suffix(".stage")) else { return false };
    guid.len() == 32 && guid.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes this segment's temporary files and staged folders from OUTPUT_DIR;
/// returns how many of each.
fn remove_stale_temp_files(dir: &Path, name: &str) -> (usize, usize) {
    let prefix = temp_prefix(name);
    let (mut files, mut folders) = (0, 0);
    let Ok(entries) = fs::read_dir(dir) else { return (0, 0) };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if is_temp_name(&file_name, &prefix) {
            match file_name.ends_with(".stage") {
                // A staged folder whose client never committed it (`remove_dir_all`
                // never follows a link).
                true => folders += usize::from(fs::remove_dir_all(entry.path()).is_ok()),
                false => files += usize::from(fs::remove_file(entry.path()).is_ok()),
            }
        }
    }
    (files, folders)
}

fn serve(shared: Arc<Shared>, ready: mpsc::Sender<()>, output: String) -> Result<(), ServerError> {
    let handout_lock =
        shared.locks.lock(lock::HANDOUT_LOCK).map_err(ServerError::io("cannot open the handout lock"))?;
    let (senders, workers) =
        spawn_workers(&shared).map_err(ServerError::io("cannot start worker threads"))?;
    let header = shared.segment.header();
    // SYNC POINT (server state): pairs with the client's Acquire in its watchdog.
    header.server_state.store(SERVER_RUNNING, Ordering::Release);
    let size = shared.segment.layout().size;
    (shared.events)(&ServerEvent::Ready { name: shared.options.name.clone(), size, output });
    let _ = ready.send(());
    let result = handout_loop(&shared, &handout_lock, &senders);
    // SYNC POINT (server state): pairs with the client's Acquire in its watchdog.
    header.server_state.store(SERVER_STOPPING, Ordering::Release);
    shared.stopping.store(true, Ordering::SeqCst);
    drop(senders);
    shared.ring_all_workers();
    for worker in workers {
        let _ = worker.join();
    }
    shared.report_departed(true);
    result
}

impl Shared {
    /// The entry of a client whose first stream (or first since its last ended) is
    /// being handed out, with the tally of its run so far if it is back within the
    /// grace. Called with the clients lock held.
    fn arrive(&self, pid: u32) -> Client {
        let started = sys::process_start_ticks(pid);
        let back = self.departed.lock().expect("departed lock").remove(&pid);
        // The same process (another one that got its pid is another client).
        let (back, other) = match back {
            Some(back) if back.started == started => (Some(back), None),
            other => (None, other),
        };
        if let Some(other) = other {
            self.print_departed(pid, other);
        }
        Client {
            started,
            held: 0,
            stages: ClientStages::default(),
            since: back.as_ref().map_or_else(Instant::now, |d| d.since),
            tally: back.map(|d| d.tally).unwrap_or_default(),
        }
    }

    /// Whether another client process, one that is gone (killed; its streams not
    /// dropped yet), has `root` staged: its stage is published as far as it got once
    /// they are, and a new stage of the same name would then find it taken at its
    /// commit.
    fn staged_by_the_dead(&self, root: &str, me: u32) -> bool {
        let others: Vec<(u32, ClientStages)> = self
            .clients
            .lock()
            .expect("client count lock")
            .iter()
            .filter(|(&pid, _)| pid != me)
            .map(|(&pid, client)| (pid, Arc::clone(&client.stages)))
            .collect();
        // Each lock alone: never the clients lock and a stages lock at once.
        others.iter().any(|(pid, stages)| stages.lock().contains_key(root) && !sys::process_alive(*pid))
    }

    /// `client`'s last stream ended: its line waits until it exits or stays away
    /// (`report_departed`). Called with the clients lock held.
    fn depart(&self, pid: u32, client: Client) {
        let Client { started, since, tally, .. } = client;
        let mut departed = self.departed.lock().expect("departed lock");
        let entry = departed.entry(pid).or_insert(Departed {
            started,
            since,
            tally: Tally::default(),
            left: Instant::now(),
            settling: true,
        });
        entry.tally.add(tally);
        entry.left = Instant::now();
        entry.settling = true;
    }

    /// Changes the tally of client `pid`, live or departed.
    fn adjust_tally(&self, pid: u32, change: impl FnOnce(&mut Tally)) {
        let mut clients = self.clients.lock().expect("client count lock");
        if let Some(client) = clients.get_mut(&pid) {
            return change(&mut client.tally);
        }
        if let Some(client) = self.departed.lock().expect("departed lock").get_mut(&pid) {
            change(&mut client.tally);
        }
    }

    /// A departed client's counts are final: its line may be printed.
    fn settle(&self, pid: u32) {
        if let Some(client) = self.departed.lock().expect("departed lock").get_mut(&pid) {
            client.settling = false;
        }
    }

    /// Prints the line of each departed client that is done (exited, or gone for
    /// `DEPART_GRACE`), or of every one when `all` (the server stops).
    fn report_departed(&self, all: bool) {
        let done: Vec<(u32, Departed)> = {
            let mut departed = self.departed.lock().expect("departed lock");
            let pids: Vec<u32> = departed
                .iter()
                .filter(|(&pid, client)| {
                    all || !client.settling
                        && (client.left.elapsed() >= DEPART_GRACE
                            || sys::process_state(pid) == sys::ProcessState::Gone
                            || sys::process_start_ticks(pid) != client.started)
                })
                .map(|(&pid, _)| pid)
                .collect();
            pids.into_iter().filter_map(|pid| departed.remove(&pid).map(|client| (pid, client))).collect()
        };
        for (pid, client) in done {
            self.print_departed(pid, client);
        }
    }

    /// A departed client's line, if it did anything.
    fn print_departed(&self, pid: u32, Departed { since, tally, left, .. }: Departed) {
        if tally.files + tally.skipped + tally.failed == 0 {
            return;
        }
        let tally = tally.settled();
        (self.events)(&ServerEvent::ClientDone {
            pid,
            files: tally.files,
            bytes: tally.bytes,
            skipped: tally.skipped,
            failed: tally.failed,
            seconds: left.duration_since(since).as_secs_f64(),
        });
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
