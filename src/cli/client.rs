//! `sharedclient`'s front end: plans what the command line names, sends it with
//! the library's `Sender`, and shows it: one progress bar, per-file lines with `-v`,
//! the final summary (or JSON), and the exit code. Ctrl-C exits 130 within a second
//! whatever the sending is blocked on.

use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::ClientCli;
use crate::client::remote::{self, RemoteOptions};
use crate::client::{percentiles, ping, Connection, Delivered, Progress, SendError, SendOptions, Sender};
use crate::config::StreamId;
use crate::escape::escaped;
use crate::lock::{self, LockDir};
use crate::segment::Segment;
use crate::sources::{self, Item, Kind, Origin, Request, Source, Verdict};
use crate::{sys, ExitStatus};

/// How long `--status` waits for a server still setting its segment up.
const OPEN_WAIT: Duration = Duration::from_secs(2);

/// The outcome of one item.
#[derive(Debug)]
enum Outcome {
    /// What the server confirmed, and how long the item took.
    Done(Delivered, Duration),
    /// Skipped before sending (a link inside a folder without -L).
    Skipped,
    Failed(SendError),
}

/// The items and what became of each, shared by the job threads and the main
/// thread (which answers Ctrl-C even while a job is blocked, say on a FIFO).
struct Board {
    items: Vec<Item>,
    outcomes: Mutex<Vec<Option<Outcome>>>,
}

impl Board {
    /// Records item `index`'s outcome; whether it had none yet (an item under a
    /// staged folder whose commit failed is reported a second time).
    fn record(&self, index: usize, outcome: Outcome) -> bool {
        self.outcomes.lock().expect("outcome lock")[index].replace(outcome).is_none()
    }
}

/// What the front end decided from the command line.
struct Front {
    /// Failures already explained in one line (no server to connect to).
    quiet_failures: std::sync::atomic::AtomicBool,
    /// `-q`: no progress bar, and one summary instead of a line per sent stream id.
    quiet: bool,
    verbose: bool,
    json: bool,
    bar: ProgressBar,
    files_total: usize,
    files_done: AtomicUsize,
    board: Board,
}

impl Progress for Front {
    fn bytes(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finished(&self, index: usize, item: &Item, result: &Result<Delivered, SendError>, elapsed: Duration) {
        // An id gets its own line at the end (`stream N: sent ...`), unless --json or -q.
        let own_line = matches!(item.origin, Origin::Id(_)) && !self.json && !self.quiet;
        if let (true, false, Ok(delivered)) = (self.verbose, own_line, result) {
            let line = match (delivered, item.kind) {
                (Delivered::Sent { .. }, Kind::Dir { .. }) => format!("made {}/", escaped(&item.name)),
                (Delivered::Sent { bytes }, Kind::File) => {
                    format!("sent {} ({bytes} bytes)", escaped(&item.name))
                }
                (Delivered::Skipped, _) => format!("skipped {} (exists)", escaped(&item.name)),
            };
            if self.json {
                errln!("{line}");
            } else {
                self.bar.suspend(|| outln!("{line}"));
            }
        }
        let outcome = match result {
            Ok(delivered) => Outcome::Done(*delivered, elapsed),
            Err(e) => Outcome::Failed(e.clone()),
        };
        let first = self.board.record(index, outcome);
        if first && item.kind == Kind::File && !self.bar.is_hidden() {
            // Relaxed: a counter for the bar, nothing is published with it.
            let done = self.files_done.fetch_add(1, Ordering::Relaxed) + 1;
            self.bar.set_message(format!("{done}/{} files", self.files_total));
        }
    }
}

/// Runs `sharedclient`; returns its exit status: a failure if what it printed on
/// stdout (the report, `--json`, `--status`) could not all be written.
pub fn main(cli: ClientCli) -> ExitStatus {
    let relay = cli.relay;
    let status = run(cli);
    match crate::stdout_error() {
        Some(e) if !relay => {
            errln!("sharedclient: cannot write to standard output: {e}");
            status.max(ExitStatus::Failure)
        }
        _ => status,
    }
}

fn run(cli: ClientCli) -> ExitStatus {
    // Not for the relay: SIGTERM, SIGINT or SIGHUP (ssh's session closing) end it
    // where it is, as they end any process; the server drops what it was sending.
    if !cli.relay {
        sys::install_stop_handlers();
    }
    sys::raise_nofile_limit();
    let timeout = Duration::from_secs(cli.timeout);
    if let Some(count) = cli.ping {
        return run_ping(&cli.common.name, timeout, count, cli.json);
    }
    if cli.status {
        return run_status(&cli.common.name, cli.json);
    }
    if cli.relay {
        sys::grow_pipe(std::os::fd::AsFd::as_fd(&std::io::stdin()), remote::PIPE_SIZE);
        let input = match std::os::fd::AsFd::as_fd(&std::io::stdin()).try_clone_to_owned() {
            Ok(fd) => std::fs::File::from(fd),
            Err(e) => {
                errln!("sharedclient --relay: cannot use standard input: {e}");
                return ExitStatus::Failure;
            }
        };
        return remote::relay(&cli.common.name, timeout, input, std::io::stdout().lock());
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
        config: cli.common.config_path(),
        // Sizes for the bar's total; without a bar, files are sized when opened.
        sizes: show_bars,
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
            if cli.json {
                print_json_error(&message);
            }
            return ExitStatus::Usage;
        }
    };
    let bar = if show_bars { aggregate_bar(&items) } else { ProgressBar::hidden() };
    let files_total = items.iter().filter(|i| i.kind == Kind::File && i.verdict == Verdict::Send).count();
    let front = Front {
        quiet_failures: false.into(),
        quiet: cli.common.quiet,
        verbose: cli.verbose,
        json: cli.json,
        bar,
        files_total,
        files_done: AtomicUsize::new(0),
        board: Board { outcomes: Mutex::new(items.iter().map(preset).collect()), items },
    };
    let started = Instant::now();
    if front.board.items.iter().any(|i| i.verdict == Verdict::Send) {
        let options = SendOptions {
            skip_existing: cli.skip_existing,
            jobs: cli.jobs as usize,
            follow_symlinks: cli.follow_symlinks,
        };
        let sent = match &cli.remote {
            Some(host) => {
                let remote = RemoteOptions {
                    host: host.clone(),
                    rsh: cli.rsh.clone(),
                    name: cli.common.name.clone(),
                    timeout,
                };
                let items = &front.board.items;
                send_watching_for_stop(
                    || remote::send_items(items, &remote, &options, &front),
                    &front,
                    started,
                )
                .map(drop)
            }
            None => Sender::connect(&cli.common.name, timeout).map(|sender| {
                let sender = sender.with_options(options);
                send_watching_for_stop(|| sender.send_items(&front.board.items, &front), &front, started);
            }),
        };
        if let Err(e) = sent {
            // One reason for every item: say it once, not once per file.
            errln!("sharedclient: {e}");
            let mut outcomes = front.board.outcomes.lock().expect("outcome lock");
            for (index, item) in front.board.items.iter().enumerate() {
                if item.verdict == Verdict::Send && outcomes[index].is_none() {
                    outcomes[index] = Some(Outcome::Failed(e.clone()));
                }
            }
            front.quiet_failures.store(true, Ordering::Relaxed);
        }
    }
    front.bar.finish_and_clear();
    report(&front.board, &front, started.elapsed())
}

/// Sends every item on a thread of its own while this one watches for Ctrl-C: if
/// the sending does not stop within a second (blocked on a FIFO without a writer,
/// say), reports what it has and exits 130 itself.
fn send_watching_for_stop<T: Send>(send: impl FnOnce() -> T + Send, front: &Front, started: Instant) -> T {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let sending = scope.spawn(move || {
            let sent = send();
            drop(done);
            sent
        });
        let mut stop_seen: Option<Instant> = None;
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            finished.recv_timeout(Duration::from_millis(20))
        {
            if sys::stop_signal().is_some() {
                let since = *stop_seen.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(800) {
                    front.bar.finish_and_clear();
                    let status = report(&front.board, front, started.elapsed());
                    std::process::exit(i32::from(status.max(ExitStatus::Interrupted).code()));
                }
            }
        }
        sending.join().expect("sending thread")
    })
}

/// Runs `work` (walking folders, reading a `--files-from` list from a terminal),
/// exiting 130 at once on SIGINT/SIGTERM/SIGHUP: nothing has been sent yet, and the
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

/// The outcome an item has before anything is sent.
fn preset(item: &Item) -> Option<Outcome> {
    match &item.verdict {
        Verdict::Send => None,
        Verdict::Skip(why) => {
            errln!("skipped: {why}");
            Some(Outcome::Skipped)
        }
        Verdict::Refuse(why) => Some(Outcome::Failed(SendError::Usage(why.clone()))),
        // The outcome of the item sent in its place, read when reporting.
        Verdict::Same(_) => None,
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

/// Prints the summary (lines, or JSON) and picks the exit status (130 > 2 > 1 > 0).
fn report(board: &Board, front: &Front, elapsed: Duration) -> ExitStatus {
    let outcomes = board.outcomes.lock().expect("outcome lock");
    let stopped = sys::stop_signal().is_some();
    let mut status = ExitStatus::Success;
    let mut tally = Tally::default();
    let mut files = Vec::new();
    let mut failures = FailureLines { every: front.verbose, ..FailureLines::default() };
    for (index, item) in board.items.iter().enumerate() {
        if let Verdict::Same(first) = item.verdict {
            // Another id naming a file already listed: its line, counted once.
            let (state, error, _) = match outcomes[first].as_ref() {
                Some(outcome) => outcome_view(outcome),
                None => ("interrupted", None, ExitStatus::Interrupted),
            };
            let first_id = match board.items[first].origin {
                Origin::Id(id) => format!("stream {id}"),
                Origin::Path => board.items[first].human(),
            };
            if front.json {
                files.push(serde_json::json!({
                    "source": item.shown, "name": item.name, "bytes": 0, "status": state, "error": error,
                    "same_as": first_id,
                }));
            } else if let (Origin::Id(id), false) = (item.origin, front.quiet && error.is_none()) {
                let line =
                    format!("stream {id}: {state}, as {first_id}: the same file ({})", escaped(&item.name));
                match error {
                    None => outln!("{line}"),
                    Some(_) => errln!("{line}"),
                }
            }
            continue;
        }
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
            let names_source = matches!(outcome, Some(Outcome::Failed(SendError::Usage(_))));
            failures.push((!names_source).then(|| item.human()), error);
        }
        if front.json {
            // A source skipped when planned (a link inside a folder) says why too.
            let reason = match (&error, &item.verdict) {
                (None, Verdict::Skip(why)) => Some(why),
                (error, _) => error.as_ref(),
            };
            let mut entry = serde_json::json!({
                "source": item.shown, "name": item.name, "bytes": sent_bytes, "status": state, "error": reason,
            });
            // JSON strings are Unicode: a source path that is not UTF-8 (lossy in
            // `source`) is given exactly too.
            if let Source::Path { path, .. } = &item.source {
                if path.to_str().is_none() {
                    entry["source_bytes"] = crate::escape::base64(path.as_os_str().as_bytes()).into();
                }
            }
            files.push(entry);
            // Stdout holds only the document: a failed stream says so on stderr,
            // as a failed path does (above).
            if let (Origin::Id(id), Some(error), false) = (item.origin, &error, explained) {
                errln!("stream {id}: failed: {error}");
            }
        } else if let Origin::Id(id) = item.origin {
            let done = matches!(outcome, Some(Outcome::Done(..) | Outcome::Skipped));
            if !(front.quiet && done) {
                print_stream_line(id, item, outcome, state, error.as_deref());
            }
        }
    }
    // Nothing to send at all (an empty --files-from) still gets its final line.
    let only_ids = !board.items.is_empty() && board.items.iter().all(|i| matches!(i.origin, Origin::Id(_)));
    let secs = elapsed.as_secs_f64();
    if front.json {
        let Tally { sent, skipped, failed, bytes, .. } = tally;
        let summary = serde_json::json!({
            "files": files, "sent": sent, "skipped": skipped, "failed": failed, "bytes": bytes, "seconds": secs,
        });
        outln!("{summary}");
    } else if !only_ids || front.quiet {
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
    /// Files and folders; `failed_dirs` of them folders.
    failed: u64,
    failed_dirs: u64,
    /// Interrupted or never started (Ctrl-C), files and folders; `interrupted_dirs`
    /// of them folders.
    interrupted: u64,
    interrupted_dirs: u64,
    bytes: u64,
}

impl Tally {
    /// Counts one item; returns the bytes the server confirmed for it.
    fn add(&mut self, item: &Item, outcome: Option<&Outcome>, state: &str) -> u64 {
        let bytes = match outcome {
            Some(Outcome::Done(Delivered::Sent { bytes }, _)) => *bytes,
            _ => 0,
        };
        let dir = u64::from(item.kind != Kind::File);
        match state {
            "sent" if item.kind == Kind::File => self.sent += 1,
            "sent" => {}
            "skipped" => self.skipped += 1,
            "failed" => {
                self.failed += 1;
                self.failed_dirs += dir;
            }
            _ => {
                self.interrupted += 1;
                self.interrupted_dirs += dir;
            }
        }
        self.bytes += bytes;
        bytes
    }

    fn line(&self, secs: f64) -> String {
        let Tally { sent, skipped, failed, failed_dirs, interrupted, interrupted_dirs, bytes } = self;
        let rate = *bytes as f64 / secs.max(1e-9) / 1e6;
        let mut line = format!(
            "{}, {bytes} bytes in {secs:.3} s ({rate:.1} MB/s), {skipped} skipped, {failed} failed{}",
            count(*sent, "file"),
            split(*failed, *failed_dirs)
        );
        if *interrupted > 0 {
            line.push_str(&format!(", {interrupted} interrupted{}", split(*interrupted, *interrupted_dirs)));
        }
        line
    }
}

/// "1 file", "2 files".
fn count(n: u64, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        _ => format!("{n} {what}s"),
    }
}

/// How many of `all` are files and how many folders, when some are folders: the
/// line's first count is of files, and "7 failed" of 3 files would read as 7 files.
fn split(all: u64, dirs: u64) -> String {
    match dirs {
        0 => String::new(),
        _ => format!(" ({}, {})", count(all - dirs, "file"), count(dirs, "folder")),
    }
}

/// One line per failed file, naming it and why; a reason shared by many files (the
/// server went away, files that are there already) is shown a few times, then
/// counted, unless every line is asked for (`-v`).
#[derive(Default)]
struct FailureLines {
    lines: Vec<String>,
    repeats: Vec<(String, usize)>,
    every: bool,
}

impl FailureLines {
    const SHOWN_PER_REASON: usize = 3;

    /// Reasons that name the file on the server's side first: counted together by
    /// what follows the name.
    const NAMED_REASONS: [&str; 4] =
        [" already exists: ", " is a folder: ", " is a symbolic link: ", " is not a folder: "];

    fn push(&mut self, source: Option<String>, error: &str) {
        let reason = Self::NAMED_REASONS
            .iter()
            // The last one: a name may hold the same words. Shown after "…", where
            // each file's own name stood ("failed: 5 more: … already exists: ...").
            .find_map(|marker| error.rfind(marker).map(|at| format!("…{}", &error[at..])))
            // An error of the system (a full disk, a read-only folder) after a path:
            // counted together by the error.
            .or_else(|| {
                let os = error.ends_with(')') && error.contains("(os error ");
                let tail = os.then(|| error.rfind(": ").map(|at| &error[at + 2..])).flatten()?;
                // Not the inside of a longer reason in brackets ("failed (writing
                // ...: Broken pipe (os error 32))"): the whole line stays.
                (tail.matches('(').count() == tail.matches(')').count()).then(|| tail.to_owned())
            })
            .unwrap_or_else(|| error.to_owned());
        let seen = match self.repeats.iter_mut().find(|(seen, _)| *seen == reason) {
            Some((_, count)) => {
                *count += 1;
                *count
            }
            None => {
                self.repeats.push((reason, 1));
                1
            }
        };
        if seen <= Self::SHOWN_PER_REASON || self.every {
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
            if *count > Self::SHOWN_PER_REASON && !self.every {
                errln!("failed: {} more: {reason}", count - Self::SHOWN_PER_REASON);
            }
        }
    }
}

/// (JSON status, error text, exit status) of a recorded outcome.
fn outcome_view(outcome: &Outcome) -> (&'static str, Option<String>, ExitStatus) {
    match outcome {
        Outcome::Done(Delivered::Sent { .. }, _) => ("sent", None, ExitStatus::Success),
        Outcome::Done(Delivered::Skipped, _) | Outcome::Skipped => ("skipped", None, ExitStatus::Success),
        Outcome::Failed(SendError::Interrupted) => ("interrupted", None, ExitStatus::Interrupted),
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

fn run_ping(name: &str, timeout: Duration, count: u64, json: bool) -> ExitStatus {
    let result = Connection::open(name, timeout).and_then(|c| ping(&c, count));
    match result {
        Ok(mut times) => {
            let (min, median, p99) = percentiles(&mut times).expect("count >= 1");
            let us = |d: Duration| (d.as_secs_f64() * 1e8).round() / 100.0;
            match json {
                true => outln!(
                    "{}",
                    serde_json::json!({ "segment": name, "round_trips": count,
                        "min_us": us(min), "median_us": us(median), "p99_us": us(p99) })
                ),
                false => outln!(
                    "ping: {count} round trips: min {:.2} us, median {:.2} us, p99 {:.2} us",
                    us(min),
                    us(median),
                    us(p99)
                ),
            }
            ExitStatus::Success
        }
        Err(e) => {
            errln!("sharedclient: ping failed: {e}");
            if json {
                outln!("{}", serde_json::json!({ "segment": name, "error": e.to_string() }));
            }
            exit_status_of(&e)
        }
    }
}

/// The README's exit-code table for a stream error.
fn exit_status_of(error: &SendError) -> ExitStatus {
    error.exit_status()
}

/// `{"error": MESSAGE, "exit": 2}` on stdout: what `--json` prints when the command
/// line or the sources it names are wrong, so a script reading stdout is never
/// left with nothing. Only the message's first line (clap adds tips and usage).
pub fn print_json_error(message: &str) {
    // The first paragraph, on one line: clap's error and its detail (the missing
    // argument), without the tips and usage after the blank line.
    let first: Vec<&str> = message.lines().map(str::trim).take_while(|line| !line.is_empty()).collect();
    let first = first.join(" ");
    let message = first.strip_prefix("error: ").unwrap_or(&first);
    outln!("{}", serde_json::json!({ "error": message, "exit": 2 }));
}

fn run_status(name: &str, json: bool) -> ExitStatus {
    let segment = match lock::validate_segment_name(name)
        .map_err(SendError::Usage)
        .and_then(|()| Segment::open(name, OPEN_WAIT).map_err(|e| SendError::Connect(std::sync::Arc::new(e))))
    {
        Ok(segment) => segment,
        Err(e) => {
            errln!("sharedclient: {e}");
            if json {
                // A script reading stdout gets a document, not nothing.
                outln!("{}", serde_json::json!({ "segment": name, "error": e.to_string() }));
            }
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
            if let Err(e) = write!(std::io::stdout().lock(), "{}", crate::status::render_text(&snapshot)) {
                crate::note_stdout_error(e);
            }
        }
    }
    // A health check: the map is printed either way, but a server that is gone or
    // stopped (SIGSTOP) serves no one.
    match snapshot.server_state {
        "running" | "starting" | "stopping" => ExitStatus::Success,
        _ => ExitStatus::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::FailureLines;

    #[test]
    fn failures_are_grouped_by_their_os_error_but_never_by_half_a_reason() {
        let mut lines = FailureLines::default();
        for i in 0..5 {
            lines.push(
                Some(format!("d/f{i}")),
                &format!("cannot write d/f{i}: Read-only file system (os error 30)"),
            );
        }
        assert_eq!(lines.repeats, vec![("Read-only file system (os error 30)".to_string(), 5)]);
        let mut lines = FailureLines::default();
        let relay = "the relay on h failed (writing to the relay failed: Broken pipe (os error 32))";
        for _ in 0..5 {
            lines.push(None, relay);
        }
        assert_eq!(lines.repeats, vec![(relay.to_string(), 5)]);
    }
}
