//! The client library: connect to a running server by segment name and send files,
//! folders, anything readable, or a planned list of items, with bounded parallelism.
//! A file counts as sent only when the server says it is published, whole; anything
//! else is a typed error for that file.
//!
//! ```no_run
//! use sharedxfer::client::Sender;
//! use std::time::Duration;
//!
//! let sender = Sender::connect("sharedxfer", Duration::from_secs(10))?;
//! for (item, result) in sender.send_path("report.pdf")? {
//!     println!("{}: {:?}", item.name, result);
//! }
//! sender.send_reader("notes/today.txt", &b"written from memory"[..])?;
//! # Ok::<(), sharedxfer::client::SendError>(())
//! ```
//!
//! The client trusts the segment no more than the server does: slot offsets and
//! counts are bounds-checked before use, and a dead, stopping or silent server ends
//! every wait within a few seconds.

mod batch;
pub mod remote;
mod send;
mod session;

use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::escape::escaped;
use crate::protocol::FileMeta;
use crate::segment::SegmentError;
use crate::sources::{self, Item, Kind, Request, Verdict};
use crate::{sys, ExitStatus};

pub use session::{percentiles, ping, Connection, Session};

/// Why an item (or a connection) failed.
#[derive(Debug, Clone)]
pub enum SendError {
    /// The user must fix something: an unknown id, a source that cannot be read or
    /// sent, a bad segment name.
    Usage(String),
    /// No server on that segment, or its segment cannot be used.
    Connect(Arc<SegmentError>),
    /// The server refused or failed the file, or went away.
    Failed(String),
    /// Reading the source failed.
    Io(Arc<io::Error>),
    /// SIGINT, SIGTERM or SIGHUP (routed with `sys::install_stop_handlers`).
    Interrupted,
}

impl SendError {
    /// The exit status a command-line front end gives for it: 2 for `Usage`, 130
    /// for `Interrupted`, else 1.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Usage(_) => ExitStatus::Usage,
            Self::Interrupted => ExitStatus::Interrupted,
            Self::Connect(_) | Self::Failed(_) | Self::Io(_) => ExitStatus::Failure,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Failed(m) => f.write_str(m),
            Self::Connect(e) => write!(f, "{e}"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// `Connect` and `Io` are transparent: they say their error's message, so their
/// source is that error's own (an error chain printed whole, as `anyhow`'s `{:#}`
/// does, never says the same thing twice). Match the variant for the error itself.
impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => e.source(),
            Self::Io(e) => e.source(),
            _ => None,
        }
    }
}

impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        SendError::Io(Arc::new(e))
    }
}

/// An output name the server would refuse, refused here as a usage error (as the
/// command line refuses it before connecting): invalid, or reserved for the
/// server's temporary files.
fn check_name(name: &str) -> Result<(), SendError> {
    crate::protocol::validate_output_path(name).map_err(|e| SendError::Usage(format!("{name:?}: {e}")))
}

fn failed(message: impl Into<String>) -> SendError {
    SendError::Failed(message.into())
}

/// What became of one item.
pub type ItemResult = Result<Delivered, SendError>;

/// What the server did with one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Published whole (a folder: made); `bytes` as the server confirmed them.
    Sent {
        /// The file's length as published.
        bytes: u64,
    },
    /// Not sent, and that is fine: the server already had a file under that name and
    /// skipping was asked for, or the item was skipped when planned (a symbolic
    /// link inside a folder, without `-L`: its `Item::verdict` says so).
    Skipped,
}

/// How items are sent.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions {
    /// A file the server already has under the same name is skipped, not a failure.
    pub skip_existing: bool,
    /// Streams sent at once, whatever the number of items (default 4).
    pub jobs: usize,
    /// Follow symbolic links found inside folders (default: report and skip them).
    pub follow_symlinks: bool,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions { skip_existing: false, jobs: 4, follow_symlinks: false }
    }
}

/// Hears how sending goes; every method has a default that does nothing, and `()`
/// is a `Progress` that hears nothing. Called from the sending threads.
pub trait Progress: Sync {
    /// `bytes` more bytes of some file went into the segment.
    fn bytes(&self, bytes: u64) {
        let _ = bytes;
    }

    /// Item `index` of the list ended: sent, skipped or failed, after `elapsed`. An
    /// item sent beneath a folder sent whole (staged: published at once when its
    /// last file is in) is reported when the server has it; if the folder then
    /// cannot be published (its name appeared meanwhile), the item is reported once
    /// more, failed, and that is its result. Not called for an item decided when it
    /// was planned (its `verdict` is not `Send`: skipped or refused then) nor for one
    /// refused before sending (beneath a folder another send of this process sends
    /// whole): their results are in what `send_items` returns.
    fn finished(&self, index: usize, item: &Item, result: &Result<Delivered, SendError>, elapsed: Duration) {
        let _ = (index, item, result, elapsed);
    }
}

impl Progress for () {}

/// A connection to one server, ready to send.
pub struct Sender {
    connection: Connection,
    options: SendOptions,
}

impl Sender {
    /// Connects to the server of segment `name`, waiting up to `timeout` for one
    /// still setting up (or one that stops answering later).
    pub fn connect(name: &str, timeout: Duration) -> Result<Sender, SendError> {
        Ok(Sender { connection: Connection::open(name, timeout)?, options: SendOptions::default() })
    }

    /// Sends with `options` from now on.
    pub fn with_options(mut self, options: SendOptions) -> Sender {
        self.options = options;
        self
    }

    /// The connection (for `ping` and the like).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Sends a file, FIFO or whole folder as `cp -r` would (a folder arrives under
    /// its own name, with everything beneath it). Returns each item with its result;
    /// `Err` only when nothing could be planned (a missing path is an item's error).
    pub fn send_path(&self, path: impl AsRef<Path>) -> Result<Vec<(Item, ItemResult)>, SendError> {
        let args = [sources::path_arg(path.as_ref())];
        let request = Request {
            args: &args,
            all: false,
            files_from: None,
            from0: false,
            as_name: None,
            follow_symlinks: self.options.follow_symlinks,
            config: Path::new(crate::config::DEFAULT_CONFIG),
            sizes: false,
        };
        let items = sources::plan(&request, |_| {}).map_err(SendError::Usage)?;
        let results = self.send_items(&items, &());
        Ok(items.into_iter().zip(results).collect())
    }

    /// Sends everything `reader` gives, to end of file, published as `name` (a
    /// relative path) with the server's default mode.
    pub fn send_reader(&self, name: &str, reader: impl Read) -> Result<Delivered, SendError> {
        check_name(name)?;
        let _claimed = self.claim_one(name)?;
        let mut session = None;
        let meta = FileMeta { skip_existing: self.options.skip_existing, ..FileMeta::default() };
        send::send_from(&self.connection, &mut session, name, meta, None, reader, &())
    }

    /// Claims `name`'s top folder, shared, for one send: refused while a
    /// `send_items` of this process sends that folder whole (the server would put
    /// `name` in its hidden copy, published or dropped only with that send's
    /// commit); and while it is held, no send of this process stages that folder.
    fn claim_one(&self, name: &str) -> Result<Claims, SendError> {
        let root = name.split('/').next().unwrap_or(name);
        session::with_claims(&self.connection.name, |table| {
            let claimed = table.entry(root.to_owned()).or_default();
            if claimed.whole > 0 {
                return Err(SendError::Usage(format!(
                    "{}: folder {} is being sent whole by another send of this process: send beneath it once that send has returned",
                    escaped(name),
                    escaped(root)
                )));
            }
            claimed.shared += 1;
            Ok(Claims { segment: self.connection.name.clone(), roots: vec![(root.to_owned(), false)] })
        })
    }

    /// One stream kept for many files in a row, sent one after another in order
    /// (a relay, or a program that makes files as it goes): no handout per file.
    pub fn stream(&self) -> StreamSender<'_> {
        StreamSender { sender: self, session: None }
    }

    /// Sends `items` (from `sources::plan`) with at most `jobs` streams: every
    /// folder first, in order of depth, then every file. Items that are not to be
    /// sent (refused or skipped when planned) get their verdict as result. Stops
    /// taking new items on SIGINT/SIGTERM/SIGHUP; those left get `Interrupted`.
    pub fn send_items(&self, items: &[Item], progress: &dyn Progress) -> Vec<Result<Delivered, SendError>> {
        let results: Vec<Mutex<Option<Result<Delivered, SendError>>>> =
            items.iter().map(|item| Mutex::new(verdict_result(item))).collect();
        // Streams go on from one phase to the next: a client never holds more than
        // `jobs` of them (plus the one held aside for a commit, within
        // `--max-streams-per-client`), not even for the moment the server takes to
        // free the last phase's. In the last phase a job that runs out
        // of items gives its stream back at once: an idle stream keeps its buffers,
        // which the jobs still sending (this client's or another's) may wait for.
        let streams = Mutex::new(Vec::new());
        // No more jobs than the server lets one client have streams: more would fail
        // their files, not wait. Relaxed: a setting the server wrote at start.
        let most = self.connection.segment.header().max_streams_per_client.load(Ordering::Relaxed) as usize;
        // Folders are staged only if a stream can be held aside for their commit,
        // beating, never used to send: the server publishes a client's staged
        // folders when its last stream ends, and a job's stream may end early (a
        // failed or interrupted transfer).
        let staging = Staging { enabled: most != 1, ..Staging::default() };
        // The top-level names this send writes beneath, claimed for this process
        // (see `CLAIMS`): whole for the folders it stages, shared for the rest;
        // released when `_claimed` goes (a panic too). A root another send of this
        // process stages, or writes beneath while this one would stage it, fails
        // here with everything beneath it.
        let _claimed = session::with_claims(&self.connection.name, |table| {
            fn root_of(item: &Item) -> &str {
                item.name.split('/').next().unwrap_or(&item.name)
            }
            let busy: std::collections::HashSet<&str> = items
                .iter()
                .filter(|item| item.verdict == Verdict::Send)
                .filter(|item| {
                    table.get(root_of(item)).is_some_and(|claimed| {
                        claimed.whole > 0 || (staging.wants(item) && claimed.shared > 0)
                    })
                })
                .map(root_of)
                .collect();
            let mut mine: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
            for (item, result) in items.iter().zip(&results) {
                if item.verdict != Verdict::Send {
                    continue;
                }
                let root = root_of(item);
                if busy.contains(root) {
                    let message = format!(
                        "folder {} is being sent by another send of this process, and one of the two sends it whole: send it once that send has returned",
                        escaped(root)
                    );
                    *result.lock().expect("result lock") = Some(Err(SendError::Usage(message)));
                    continue;
                }
                *mine.entry(root).or_default() |= staging.wants(item);
            }
            let roots: Vec<(String, bool)> =
                mine.into_iter().map(|(root, whole)| (root.to_owned(), whole)).collect();
            for (root, whole) in &roots {
                let claimed = table.entry(root.clone()).or_default();
                match whole {
                    true => claimed.whole += 1,
                    false => claimed.shared += 1,
                }
            }
            Claims { segment: self.connection.name.clone(), roots }
        });
        let anchor = Mutex::new(None);
        let mut phases = phases(items);
        for (phase, _) in &mut phases {
            phase.retain(|&i| results[i].lock().expect("result lock").is_none());
        }
        phases.retain(|(phase, _)| !phase.is_empty());
        let count = phases.len();
        for (number, (phase, jobs)) in phases.into_iter().enumerate() {
            let jobs = jobs.unwrap_or(self.options.jobs);
            let anchored = usize::from(anchor.lock().expect("anchor lock").is_some());
            let jobs = if most > 0 { jobs.min(most - anchored) } else { jobs };
            // After the last phase no stream is kept, but the folders' own for their
            // commit when they are the only phase (else it is held aside).
            let keep = match number + 1 < count {
                true => usize::MAX,
                false => usize::from(count == 1 && items.iter().any(|i| staging.wants(i))),
            };
            let lends = anchored == 1;
            let carry = Carry { streams: &streams, keep, anchor: &anchor, lends, staging: &staging };
            self.run_phase(items, &results, phase, jobs, progress, carry);
            if number == 0 && number + 1 < count && staging.any() {
                // The folders' stream (a fresh one would be placed on the least
                // loaded server worker, as if busy, and crowd the senders onto the
                // other). It beats on after Ctrl-C, for the commit, and gives its
                // ring back meanwhile: the files may need the space, and the commit
                // takes a new one. If it failed, the client may have had no stream
                // for a moment, and the server may have published the folders as
                // they were: no other stream can commit them (see `commit_staged`).
                let mut anchor = anchor.lock().expect("anchor lock");
                *anchor = streams.lock().expect("streams lock").pop();
                anchor.iter_mut().for_each(Session::outlast_stop);
                if anchor.as_mut().is_some_and(|open| open.release_ring().is_err()) {
                    *anchor = None;
                }
            }
        }
        let kept = match count {
            1 => streams.lock().expect("streams lock").pop(),
            _ => anchor.into_inner().expect("anchor lock"),
        };
        self.commit_staged(&staging, kept, items, &results, progress);
        streams.lock().expect("streams lock").clear();
        let mut results: Vec<_> = results
            .into_iter()
            .map(|slot| slot.into_inner().expect("result lock").unwrap_or(Err(SendError::Interrupted)))
            .collect();
        same_results(items, &mut results);
        results
    }

    fn run_phase<'c>(
        &'c self,
        items: &[Item],
        results: &[Mutex<Option<Result<Delivered, SendError>>>],
        phase: Vec<usize>,
        jobs: usize,
        progress: &dyn Progress,
        carry: Carry<'_, 'c>,
    ) {
        let Carry { streams, keep, anchor, staging, .. } = carry;
        let workers = jobs.clamp(1, phase.len().max(1));
        let (small, large): (VecDeque<usize>, VecDeque<usize>) =
            phase.into_iter().partition(|&i| batch::batchable(&items[i]));
        // Batches keep a server worker busy each: more batch streams than the server
        // has workers would only take turns (and CPU from the workers).
        // Relaxed: a hint the server wrote once at start.
        let server_workers = self.connection.segment.header().workers.load(Ordering::Relaxed) as usize;
        let batch_jobs = if server_workers == 0 { workers } else { workers.min(server_workers) };
        let small = Mutex::new(small);
        let large = Alone {
            queue: Mutex::new((large.into_iter().map(|i| (i, None)).collect(), batch_jobs.min(workers))),
            more: Condvar::new(),
        };
        let report = |index: usize, result: ItemResult, started: Instant| {
            // What is beneath a staged folder is published only by its commit.
            let result = staging.note(&items[index], result);
            progress.finished(index, &items[index], &result, started.elapsed());
            *results[index].lock().expect("result lock") = Some(result);
        };
        // Each job holds one end; the last to finish ends the wait below.
        let (running, all_done) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            for worker in 0..workers {
                let (small, large, report) = (&small, &large, &report);
                let running = running.clone();
                scope.spawn(move || {
                    let _running = running;
                    // A stream is taken from the last phase's only when there is
                    // something to send: one held idle meanwhile would be dropped for
                    // idleness (and keep its buffers).
                    let mut session = None;
                    // Whether `session` is the client's commit stream, borrowed.
                    let mut borrowed = false;
                    if worker < batch_jobs {
                        (session, borrowed) = self.send_batched(items, small, carry, large, progress, report);
                        large.batcher_done();
                    }
                    while sys::stop_signal().is_none() {
                        // While other jobs still batch, a job waits for what they may
                        // find without a stream: one held idle keeps its record and
                        // ring, which a batching job (this client's or another's) may
                        // be waiting for, on a small segment for good. The next item
                        // takes a new stream, once the server has freed this one (a
                        // client at its stream quota would be refused one before).
                        let mut beat = || match session.take() {
                            Some(held) if borrowed => {
                                give_back(anchor, held);
                                borrowed = false;
                            }
                            Some(mut idle) => {
                                idle.close();
                                idle.wait_released(self.connection.timeout);
                            }
                            None => {}
                        };
                        let Some((index, opened)) = large.next(&mut beat) else { break };
                        if session.is_none() {
                            session = streams.lock().expect("streams lock").pop();
                        }
                        if session.is_none() {
                            // An error here is the next item's to report (it opens a
                            // stream itself).
                            if let Ok((open, lent)) = self.stream_for_job(carry) {
                                (session, borrowed) = (Some(open), lent);
                            }
                        }
                        let started = Instant::now();
                        let result = send::send_item(
                            &self.connection,
                            &mut session,
                            &items[index],
                            opened,
                            &self.options,
                            progress,
                        );
                        let interrupted = matches!(result, Err(SendError::Interrupted));
                        // A failed item gives its stream up, a borrowed one too.
                        borrowed &= session.is_some();
                        report(index, result, started);
                        if interrupted {
                            break;
                        }
                    }
                    match session {
                        Some(held) if borrowed => give_back(anchor, held),
                        session => {
                            let mut kept = streams.lock().expect("streams lock");
                            if kept.len() < keep {
                                kept.extend(session);
                            }
                        }
                    }
                });
            }
            drop(running);
            // A stream kept for what comes next (the next phase, the commit) beats
            // while the other jobs finish (a FIFO's writer may keep one for long),
            // so the server does not drop it as idle.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                all_done.recv_timeout(Duration::from_millis(100))
            {
                streams.lock().expect("streams lock").retain_mut(|open| open.keep_alive().is_ok());
                let mut anchor = anchor.lock().expect("anchor lock");
                if anchor.as_mut().is_some_and(|open| open.keep_alive().is_err()) {
                    *anchor = None;
                }
            }
        });
    }

    /// Commits every staged folder on the stream kept for it; what was sent beneath
    /// a folder whose commit failed is reported again, failed with the commit's
    /// error.
    fn commit_staged<'c>(
        &'c self,
        staging: &Staging,
        kept: Option<Session<'c>>,
        items: &[Item],
        results: &[Mutex<Option<ItemResult>>],
        progress: &dyn Progress,
    ) {
        let mut staged: Vec<(String, u64)> = staging.staged.lock().expect("staging lock").drain().collect();
        if staged.is_empty() {
            return;
        }
        staged.sort();
        let started = Instant::now();
        // Sent after Ctrl-C too (one round trip), so that what is reported is what the
        // server published.
        let session = kept.map(|mut session| {
            session.outlast_stop();
            session
        });
        let names: Vec<(&str, u64)> = staged.iter().map(|(root, token)| (root.as_str(), *token)).collect();
        // `None`: every stream ended early (each failed), so no commit can be sent.
        let commits = batch::commit_all(&self.connection, session, &names, progress, "no stream was left");
        let roots: Vec<&str> = names.iter().map(|&(root, _)| root).collect();
        report_failed_commits(&roots, &commits, started, items, results, progress);
    }

    /// Sends the items of `queue` in batches on one stream (one carried from the last
    /// phase, else a new one; returned when done, still open); those that turn out
    /// not to fit a batch go to `alone`, for any job to send on its own.
    fn send_batched<'c>(
        &'c self,
        items: &[Item],
        queue: &Mutex<VecDeque<usize>>,
        carry: Carry<'_, 'c>,
        alone: &Alone,
        progress: &dyn Progress,
        report: batch::Report<'_>,
    ) -> (Option<Session<'c>>, bool) {
        let staging = carry.staging;
        let mut batcher: Option<batch::Batcher<'c>> = None;
        let mut borrowed = false;
        let mut run = VecDeque::new();
        while sys::stop_signal().is_none() {
            if run.is_empty() {
                take_run(items, &mut queue.lock().expect("queue lock"), &mut run);
            }
            let Some(index) = run.pop_front() else { break };
            // Opened first: a stream goes into batch mode only for an item that fits.
            let prepared = match batch::prepare(&items[index], &self.options) {
                Ok(batch::Prepare::Batch(prepared)) => match items[index].kind {
                    Kind::Dir { mode } if staging.wants(&items[index]) => {
                        batch::Prepared::stage(mode, Instant::now())
                    }
                    _ => prepared,
                },
                Ok(batch::Prepare::Alone(opened)) => {
                    alone.push(index, opened);
                    continue;
                }
                Err(e) => {
                    report(index, Err(e), Instant::now());
                    continue;
                }
            };
            let active = match batcher.as_mut() {
                Some(active) => active,
                None => {
                    let kept = carry.streams.lock().expect("streams lock").pop();
                    let opened = match kept {
                        Some(open) => Ok(open),
                        None => self.stream_for_job(carry).map(|(open, lent)| {
                            borrowed = lent;
                            open
                        }),
                    };
                    match opened.and_then(batch::Batcher::start) {
                        Ok(started) => batcher.insert(started),
                        Err(e) => {
                            report(index, Err(e), Instant::now());
                            continue;
                        }
                    }
                }
            };
            match active.add(index, &items[index].name, prepared, progress, report) {
                Ok(None) => {}
                Ok(Some(_)) => alone.push(index, None),
                Err(e) => {
                    report(index, Err(e.clone()), Instant::now());
                    if let Some(broken) = batcher.take() {
                        broken.fail_all(&e, report);
                    }
                }
            }
        }
        let session = batcher.and_then(|active| active.finish(report));
        let borrowed = borrowed && session.is_some();
        (session, borrowed)
    }

    /// A stream for a job: a new one, or, when none is handed out for a while, the
    /// client's commit stream (`true`: borrowed, for `give_back`). Every record of a
    /// small segment can be held by clients' commit streams, each client waiting
    /// for a record to send its files; any file can go on the commit stream. A
    /// phase without one waits for the handout as long as it takes.
    fn stream_for_job<'c>(&'c self, carry: Carry<'_, 'c>) -> Result<(Session<'c>, bool), SendError> {
        let Carry { anchor, lends, .. } = carry;
        if !lends {
            return Session::open(&self.connection).map(|open| (open, false));
        }
        loop {
            if let Some(open) = Session::open_until(&self.connection, Instant::now() + BORROW_AFTER)? {
                return Ok((open, false));
            }
            if let Some(lent) = anchor.lock().expect("anchor lock").take() {
                return Ok((lent, true));
            }
        }
    }
}

/// How long a job waits for a stream of its own before it borrows the commit stream.
const BORROW_AFTER: Duration = Duration::from_millis(200);

/// Puts a borrowed commit stream back, without its ring; one that fails to give its
/// ring back is given up, as a failed commit stream is.
fn give_back<'c>(anchor: &Mutex<Option<Session<'c>>>, mut session: Session<'c>) {
    if session.release_ring().is_ok() {
        let mut held = anchor.lock().expect("anchor lock");
        if held.is_none() {
            *held = Some(session);
        }
    }
}

/// Reports again, failed, each item sent beneath (or as) a staged folder whose
/// commit failed (`roots` and `commits` side by side).
fn report_failed_commits(
    roots: &[&str],
    commits: &[ItemResult],
    since: Instant,
    items: &[Item],
    results: &[Mutex<Option<ItemResult>>],
    progress: &dyn Progress,
) {
    let failed: std::collections::HashMap<&str, SendError> = roots
        .iter()
        .zip(commits)
        .filter_map(|(&root, commit)| commit.as_ref().err().map(|e| (root, e.clone())))
        .collect();
    if failed.is_empty() {
        return;
    }
    for (index, item) in items.iter().enumerate() {
        let root = item.name.split('/').next().unwrap_or_default();
        let Some(error) = failed.get(root) else { continue };
        let mut slot = results[index].lock().expect("result lock");
        if matches!(*slot, Some(Ok(Delivered::Sent { .. }))) {
            let result = Err(error.clone());
            progress.finished(index, item, &result, since.elapsed());
            *slot = Some(result);
        }
    }
}

/// Top-level folders sent whole are staged: the server makes each under a hidden
/// name, its files there under their own names (no temporary name and link each:
/// one directory operation a file instead of two), and gives it its name, whole,
/// when the client commits it after the last of its files was confirmed. So a tree
/// appears at once, complete (a client that dies gets what the server had
/// published, as far as it got). What lies beneath a staged folder (and the
/// folder) is reported when the server has it; if the commit fails (the name
/// appeared meanwhile), it is reported again, failed, and that is its result.
#[derive(Default)]
struct Staging {
    /// Whether folders are staged at all.
    enabled: bool,
    /// The top-level folders the server staged, and the token each commit carries.
    staged: Mutex<std::collections::HashMap<String, u64>>,
}

impl Staging {
    /// A folder sent whole at the top of the output (a walk's root), to be staged.
    /// Not a folder made alone (a `--files-from` entry, or a folder above one): its
    /// files come as entries of their own, and two lists may fill one new folder at
    /// once, which a stage would give to only one of them.
    fn wants(&self, item: &Item) -> bool {
        self.enabled
            && matches!(item.kind, Kind::Dir { .. })
            && matches!(item.source, sources::Source::Path { no_follow: true, .. })
            && item.verdict == Verdict::Send
            && !item.name.contains('/')
    }

    /// Whether any folder was staged.
    fn any(&self) -> bool {
        !self.staged.lock().expect("staging lock").is_empty()
    }

    /// Notes a staged folder (its result says `bytes: token`, not 0); gives the
    /// result to report now.
    fn note(&self, item: &Item, result: ItemResult) -> ItemResult {
        match result {
            Ok(Delivered::Sent { bytes: token }) if token != 0 && self.wants(item) => {
                self.staged.lock().expect("staging lock").insert(item.name.clone(), token);
                Ok(Delivered::Sent { bytes: 0 })
            }
            other => other,
        }
    }
}

/// Items a batch job takes from the shared queue at once, at most.
const RUN_MAX: usize = 64;

/// Moves the queue's next items into `run`: up to `RUN_MAX` of one folder. Jobs then
/// fill their batches from different folders, so the server's workers mostly
/// publish into different folders instead of queueing for one folder's lock; and
/// the queue's lock is taken once per run, not per file.
fn take_run(items: &[Item], queue: &mut VecDeque<usize>, run: &mut VecDeque<usize>) {
    let folder = |index: usize| items[index].name.rsplit_once('/').map_or("", |(folder, _)| folder);
    let Some(first) = queue.pop_front() else { return };
    run.push_back(first);
    while run.len() < RUN_MAX {
        match queue.front() {
            Some(&next) if folder(next) == folder(first) => {
                run.push_back(next);
                queue.pop_front();
            }
            _ => break,
        }
    }
}

/// Streams carried from one phase to the next, and whether this phase's go on.
#[derive(Clone, Copy)]
struct Carry<'p, 'c> {
    streams: &'p Mutex<Vec<Session<'c>>>,
    /// Streams kept at the phase's end, at most (the others are given back).
    keep: usize,
    /// The stream held for the commit of staged folders, beating meanwhile.
    anchor: &'p Mutex<Option<Session<'c>>>,
    /// Whether the phase has a commit stream to lend (see `Sender::stream_for_job`).
    lends: bool,
    /// The folders staged so far.
    staging: &'p Staging,
}

/// Files and folders sent one after another on one stream (see `Sender::stream`).
pub struct StreamSender<'s> {
    sender: &'s Sender,
    session: Option<Session<'s>>,
}

impl StreamSender<'_> {
    /// Sends what `reader` gives as `name` (a relative path) with `meta`: exactly
    /// `size` bytes when given (more or fewer fail the file), else to its end. A
    /// reader that fails (an I/O error) fails the file: nothing is published.
    pub fn send_reader(
        &mut self,
        name: &str,
        meta: FileMeta,
        size: Option<u64>,
        reader: impl Read,
        progress: &dyn Progress,
    ) -> Result<Delivered, SendError> {
        check_name(name)?;
        let _claimed = self.sender.claim_one(name)?;
        send::send_from(&self.sender.connection, &mut self.session, name, meta, size, reader, progress)
    }

    /// `send_reader` for a source that fills the segment itself (a relay).
    pub(crate) fn send_filled(
        &mut self,
        name: &str,
        meta: FileMeta,
        size: Option<u64>,
        filler: &mut dyn send::Fill,
    ) -> Result<Delivered, SendError> {
        check_name(name)?;
        let _claimed = self.sender.claim_one(name)?;
        send::send_filled(&self.sender.connection, &mut self.session, name, meta, size, filler, &())
    }

    /// Makes the folder `name` (and its parents) with permission bits `mode`.
    pub fn make_dir(&mut self, name: &str, mode: u32) -> Result<Delivered, SendError> {
        check_name(name)?;
        let _claimed = self.sender.claim_one(name)?;
        send::send_dir(&self.sender.connection, &mut self.session, name, mode & crate::protocol::MODE_BITS)
    }
}

/// Why the commit of staged folder `root` could not be sent (`why`): what the
/// server did instead depends on whether it is still there.
pub(super) fn commit_unsent(connection: &Connection, root: &str, why: &dyn std::fmt::Display) -> SendError {
    // Acquire: pairs with the server's Release when it starts to stop.
    let state = connection.segment.header().server_state.load(Ordering::Acquire);
    if state == crate::segment::SERVER_STOPPING {
        return SendError::Failed(format!(
            "the server stopped before the commit of folder {} ({why}): it published what it had of it, unless its name was taken meanwhile (check it, or send again with --skip-existing to a running server)",
            escaped(root)
        ));
    }
    SendError::Failed(match sys::process_alive(connection.server_pid) {
        true => format!(
            "the commit of folder {} could not be sent ({why}): the server publishes what it has of a folder when its client's streams end, unless its name was taken meanwhile (check it, or send again with --skip-existing)",
            escaped(root)
        ),
        false => format!(
            "folder {} was not published: the server exited before its commit ({why}); a new server on this segment removes what was staged",
            escaped(root)
        ),
    })
}

/// Claims in `session::CLAIMS` of one send (top-level name, whole), released on drop.
struct Claims {
    segment: String,
    roots: Vec<(String, bool)>,
}

impl Drop for Claims {
    fn drop(&mut self) {
        session::with_claims(&self.segment, |table| {
            for (root, whole) in &self.roots {
                let Some(claimed) = table.get_mut(root) else { continue };
                match whole {
                    true => claimed.whole -= 1,
                    false => claimed.shared -= 1,
                }
                if claimed.whole == 0 && claimed.shared == 0 {
                    table.remove(root);
                }
            }
        });
    }
}

/// An item for `Alone`, with its source when it is open already (a FIFO).
type AloneItem = (usize, Option<std::fs::File>);

/// Items sent each on a stream of its own: those planned so, and those the
/// batching jobs find too large. A job waits for more while any batching job runs.
struct Alone {
    /// The items (with the source if it is open already), and how many batching
    /// jobs are still running.
    queue: Mutex<(VecDeque<AloneItem>, usize)>,
    more: Condvar,
}

impl Alone {
    fn push(&self, index: usize, opened: Option<std::fs::File>) {
        self.queue.lock().expect("queue lock").0.push_back((index, opened));
        self.more.notify_one();
    }

    fn batcher_done(&self) {
        self.queue.lock().expect("queue lock").1 -= 1;
        self.more.notify_all();
    }

    /// The next item; `None` once there are none and no batching job can add one.
    /// `waiting` runs every 100 ms of waiting.
    fn next(&self, waiting: &mut dyn FnMut()) -> Option<AloneItem> {
        let mut queue = self.queue.lock().expect("queue lock");
        loop {
            if let Some(index) = queue.0.pop_front() {
                return Some(index);
            }
            if queue.1 == 0 || sys::stop_signal().is_some() {
                return None;
            }
            let (held, timeout) =
                self.more.wait_timeout(queue, Duration::from_millis(100)).expect("queue lock");
            queue = held;
            if timeout.timed_out() {
                drop(queue);
                waiting();
                queue = self.queue.lock().expect("queue lock");
            }
        }
    }
}

/// The result an item has before anything is sent: `None` if it is to be sent.
fn verdict_result(item: &Item) -> Option<Result<Delivered, SendError>> {
    match &item.verdict {
        Verdict::Send => None,
        Verdict::Skip(_) => Some(Ok(Delivered::Skipped)),
        Verdict::Refuse(why) => Some(Err(SendError::Usage(why.clone()))),
        // Its result is copied from the item sent in its place (`same_results`).
        Verdict::Same(_) => None,
    }
}

/// Gives each item that names the same file as another (`Verdict::Same`) that
/// item's result.
pub(super) fn same_results(items: &[Item], results: &mut [Result<Delivered, SendError>]) {
    for (index, item) in items.iter().enumerate() {
        if let Verdict::Same(first) = item.verdict {
            if let Some(result) = results.get(first).cloned() {
                results[index] = result;
            }
        }
    }
}

/// The items to send, in two phases run one after the other: every folder, by one
/// job in order of depth (a folder must exist with its own mode before anything is
/// made inside it, else it would get the default mode), then every file, by
/// `jobs` jobs. Each phase is `(items, jobs or None for the sender's)`.
pub(super) fn phases(items: &[Item]) -> Vec<(Vec<usize>, Option<usize>)> {
    let (mut dirs, files): (Vec<usize>, Vec<usize>) = (0..items.len())
        .filter(|&i| items[i].verdict == Verdict::Send)
        .partition(|&i| matches!(items[i].kind, Kind::Dir { .. }));
    dirs.sort_by_key(|&i| items[i].name.matches('/').count());
    [(dirs, Some(1)), (files, None)].into_iter().filter(|(phase, _)| !phase.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{Origin, Source};

    fn file(name: &str) -> Item {
        Item {
            origin: Origin::Path,
            source: Source::Stdin,
            shown: name.to_owned(),
            name: name.to_owned(),
            kind: Kind::File,
            size_hint: None,
            verdict: Verdict::Send,
        }
    }

    #[test]
    fn a_refusal_reads_as_one_and_a_failure_of_the_server_does_not() {
        use crate::protocol::{ErrorCode, ServerReply};
        let said =
            |code, message: &str| send::reply_error(ServerReply::Error { code, message: message.into() });
        let exists = said(ErrorCode::Exists, "a.txt already exists: ...").to_string();
        assert!(exists.starts_with("server refused: a.txt already exists"), "{exists}");
        let io = said(ErrorCode::Io, "cannot publish /o/a.txt: Operation not permitted").to_string();
        assert!(io.starts_with("server: cannot publish") && !io.contains("refused"), "{io}");
        let idle = said(ErrorCode::IdleTimeout, "no activity for 2 s: stream dropped").to_string();
        assert!(idle.starts_with("server: no activity"), "{idle}");
    }
    #[test]
    fn a_run_is_one_folders_files_and_at_most_run_max() {
        let mut items: Vec<Item> =
            ["t/a/1", "t/a/2", "t/b/1", "top", "other"].iter().map(|n| file(n)).collect();
        items.extend((0..RUN_MAX + 5).map(|i| file(&format!("t/c/{i}"))));
        let mut queue: VecDeque<usize> = (0..items.len()).collect();
        let mut runs = Vec::new();
        loop {
            let mut run = VecDeque::new();
            take_run(&items, &mut queue, &mut run);
            if run.is_empty() {
                break;
            }
            runs.push(run.into_iter().collect::<Vec<_>>());
        }
        let c: Vec<usize> = (5..items.len()).collect();
        let want = vec![vec![0, 1], vec![2], vec![3, 4], c[..RUN_MAX].to_vec(), c[RUN_MAX..].to_vec()];
        assert_eq!(runs, want);
    }
}
