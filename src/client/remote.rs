//! To a server on another host: the client runs `RSH HOST sharedclient --relay -n
//! NAME` (RSH is `ssh` unless `--rsh` says otherwise, split into words as rsync's
//! `-e` is) and speaks the frame stream (`crate::frames`) over its stdin and stdout.
//! The relay is a client of the server on its host, through that host's segment: the
//! same checks, checksum and atomic publish. Nothing here listens, authenticates or
//! encrypts: SSH does.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::batch::{Batcher, Prepared, Report};
use super::send::{open_source, Fill, Input};
use super::session::Session;
use super::{failed, Delivered, ItemResult, Progress, SendError, SendOptions, Sender, StreamSender};
use crate::batch::BATCH_FILE_MAX;
use crate::checksum::Checksum;
use crate::frames::{self, Begin, Frame, Outcome, MAX_DATA};
use crate::protocol::FileMeta;
use crate::segment::Buffer;
use crate::sources::{Item, Kind, Verdict};
use crate::{sys, ExitStatus};

/// The pipe buffer asked for between the client, the remote shell and the relay.
pub const PIPE_SIZE: usize = 1 << 20;

/// Where and how to reach the remote server.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// `[USER@]HOST`, passed to the remote shell as its first argument.
    pub host: String,
    /// The remote shell command line (default `ssh`), split into words.
    pub rsh: String,
    /// The segment name of the server on that host.
    pub name: String,
    /// The relay's `--timeout`: how long it waits for a server that does not answer.
    pub timeout: Duration,
}

/// Splits a command line into words as a POSIX shell would for simple cases:
/// blanks separate words, `'...'` and `"..."` quote, a backslash escapes the next
/// character (inside double quotes only before `"`, `\`, `$` or a backtick).
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(done) = word.take() {
                    words.push(done);
                }
            }
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => current.push(c),
                        None => return Err(format!("unterminated ' in {line:?}")),
                    }
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => current.push(c),
                            Some(c) => {
                                current.push('\\');
                                current.push(c);
                            }
                            None => return Err(format!("unterminated \" in {line:?}")),
                        },
                        Some(c) => current.push(c),
                        None => return Err(format!("unterminated \" in {line:?}")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("a trailing \\ in {line:?}")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        return Err("the remote shell command is empty".into());
    }
    Ok(words)
}

/// The last lines the relay side wrote on stderr (ssh's own errors among them).
#[derive(Clone, Default)]
struct StderrTail(Arc<Mutex<Vec<u8>>>);

impl StderrTail {
    const KEEP: usize = 4096;

    fn collect(&self, mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<()> {
        let tail = self.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 1024];
            while let Ok(n) = from.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let mut kept = tail.0.lock().expect("stderr lock");
                kept.extend_from_slice(&chunk[..n]);
                let excess = kept.len().saturating_sub(Self::KEEP);
                kept.drain(..excess);
            }
        })
    }

    /// `: <what it said>` in one line, or nothing.
    fn said(&self) -> String {
        let kept = self.0.lock().expect("stderr lock");
        let text = String::from_utf8_lossy(&kept);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        match lines.len() {
            0 => String::new(),
            // What ssh or the far side printed: it cannot drive this terminal.
            n => format!(": {}", crate::escape::printable(&lines[n.saturating_sub(3)..].join(" / "))),
        }
    }
}

/// Sends `items` to the server on another host through a relay; returns each
/// item's result (in the order of `items`). `Err` when the relay cannot be started
/// or reached at all.
pub fn send_items(
    items: &[Item],
    remote: &RemoteOptions,
    options: &SendOptions,
    progress: &dyn Progress,
) -> Result<Vec<ItemResult>, SendError> {
    let words = split_words(&remote.rsh).map_err(|e| SendError::Usage(format!("--rsh: {e}")))?;
    // The remote shell reads these words again: only a name checked here (letters,
    // digits, '_', '-') goes into them, as `--name=NAME` (never read as an option).
    crate::lock::validate_segment_name(&remote.name).map_err(SendError::Usage)?;
    let relay_args = [
        "sharedclient".to_owned(),
        "--relay".to_owned(),
        format!("--name={}", remote.name),
        format!("--timeout={}", remote.timeout.as_secs().max(1)),
    ];
    let mut command = Command::new(&words[0]);
    command
        .args(&words[1..])
        .arg(&remote.host)
        .args(&relay_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{} {} {}", remote.rsh, remote.host, relay_args.join(" "));
    let mut child = command.spawn().map_err(|e| SendError::Usage(format!("cannot run {shown}: {e}")))?;
    let tail = StderrTail::default();
    let stderr = tail.collect(child.stderr.take().expect("piped stderr"));
    let (to_relay, from_relay) =
        (child.stdin.take().expect("piped stdin"), child.stdout.take().expect("piped stdout"));
    let relay =
        Relay { child: Mutex::new(child), stderr: Mutex::new(Some(stderr)), tail, host: &remote.host };
    let result = run(&relay, to_relay, from_relay, items, options, progress);
    relay.settle(result.is_err());
    result
}

/// How long a pipe's bytes wait, at most, before they go on to the relay, and how
/// often a silent pipe's client says it is alive.
const PIPE_FLUSH: Duration = Duration::from_millis(500);

/// How long the relay's stderr is read after it exited.
const STDERR_GRACE: Duration = Duration::from_secs(2);

/// The relay process, as seen from here.
struct Relay<'h> {
    child: Mutex<Child>,
    stderr: Mutex<Option<std::thread::JoinHandle<()>>>,
    tail: StderrTail,
    host: &'h str,
}

impl Relay<'_> {
    /// Waits for the relay to exit (up to 2 s, unless `kill`), and for what it said
    /// on stderr.
    fn settle(&self, kill: bool) {
        let mut child = self.child.lock().expect("child lock");
        let deadline = Instant::now() + Duration::from_secs(2);
        while !kill && Instant::now() < deadline {
            match child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                _ => break,
            }
        }
        if !matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
        }
        let _ = child.wait();
        if let Some(stderr) = self.stderr.lock().expect("stderr lock").take() {
            // A process that outlives the relay may hold its stderr open (ssh's
            // ControlPersist master): what came by now is what is said.
            let deadline = Instant::now() + STDERR_GRACE;
            while !stderr.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if stderr.is_finished() {
                let _ = stderr.join();
            }
        }
    }

    /// Ends the relay now: it stopped answering while this side still writes, and
    /// may never read again (the writer would wait on a full pipe for good).
    fn stop(&self) {
        let _ = self.child.lock().expect("child lock").kill();
    }

    /// The relay failed: `what` happened, and what it (or ssh) said.
    fn gone(&self, what: &str) -> SendError {
        self.settle(false);
        failed(format!("the relay on {} {what}{}", self.host, self.tail.said()))
    }
}

fn run(
    relay: &Relay<'_>,
    to_relay: std::process::ChildStdin,
    from_relay: std::process::ChildStdout,
    items: &[Item],
    options: &SendOptions,
    progress: &dyn Progress,
) -> Result<Vec<ItemResult>, SendError> {
    let host = relay.host;
    sys::grow_pipe(to_relay.as_fd(), PIPE_SIZE);
    // DATA payloads (256 KiB) are larger than the buffer: they go to the pipe without
    // a copy, while headers and small frames are gathered.
    let mut to_relay = BufWriter::with_capacity(64 << 10, to_relay);
    let mut from_relay = BufReader::new(from_relay);
    let gone = |what: &str| relay.gone(what);
    frames::write_hello(&mut to_relay).and_then(|()| to_relay.flush()).map_err(|_| gone("did not start"))?;
    match frames::read_hello(&mut from_relay) {
        Ok(true) => {}
        Ok(false) => return Err(gone("did not start")),
        Err(e) => return Err(gone(&format!("did not answer as a relay ({e})"))),
    }
    match Frame::read(&mut from_relay) {
        Ok(Some(Frame::Ready)) => {}
        Ok(Some(Frame::Fatal { message })) => return Err(failed(format!("{host}: {message}"))),
        Ok(other) => return Err(gone(&format!("answered {other:?} instead of READY"))),
        Err(e) => return Err(gone(&format!("failed ({e})"))),
    }
    let results: Vec<Mutex<Option<ItemResult>>> = items.iter().map(|_| Mutex::new(None)).collect();
    let numbers: Mutex<HashMap<u32, InFlight>> = Mutex::new(HashMap::new());
    let report = |index: usize, result: ItemResult, started: Instant| {
        progress.finished(index, &items[index], &result, started.elapsed());
        *results[index].lock().expect("result lock") = Some(result);
    };
    // Whether this side still writes: a relay that ends before is stopped.
    let writing = AtomicBool::new(true);
    let relay_end = std::thread::scope(|scope| {
        let listener = scope.spawn(|| {
            let heard = listen(&mut from_relay, &numbers, options.skip_existing, &report);
            // Acquire: pairs with the Release store below. (An end without an
            // error while this side writes is the relay gone: the writer fails too.)
            if heard.is_err() && writing.load(Ordering::Acquire) {
                relay.stop();
            }
            heard
        });
        let written = write_all(&mut to_relay, items, options, progress, &numbers, &report);
        // Release: pairs with the listener's Acquire load above.
        writing.store(false, Ordering::Release);
        // However the writing went, the relay learns the stream is over.
        drop(to_relay);
        let heard = listener.join().expect("listener thread");
        (written, heard)
    });
    let (written, heard) = relay_end;
    let broken = match (written, heard) {
        (_, Err(e)) => Some(e),
        (Err(e), Ok(())) => Some(e),
        (Ok(()), Ok(())) => None,
    };
    let broken = broken.map(|e| match e {
        SendError::Interrupted => e,
        other => gone(&format!("failed ({other})")),
    });
    // Files the relay never answered for failed with the stream.
    for (index, item) in items.iter().enumerate() {
        let unanswered = results[index].lock().expect("result lock").is_none();
        if unanswered && item.verdict == Verdict::Send {
            let error = match (&broken, sys::stop_signal()) {
                (_, Some(_)) => SendError::Interrupted,
                (Some(e), None) => e.clone(),
                (None, None) => gone("ended before confirming this file"),
            };
            report(index, Err(error), Instant::now());
        }
    }
    let mut results: Vec<_> = results
        .into_iter()
        .zip(items)
        .map(|(slot, item)| {
            slot.into_inner().expect("result lock").unwrap_or_else(|| match &item.verdict {
                Verdict::Skip(_) => Ok(Delivered::Skipped),
                Verdict::Refuse(why) => Err(SendError::Usage(why.clone())),
                Verdict::Send | Verdict::Same(_) => Err(SendError::Interrupted),
            })
        })
        .collect();
    super::same_results(items, &mut results);
    Ok(results)
}

/// Reads RESULT frames until the relay closes its output.
fn listen(
    from_relay: &mut impl Read,
    numbers: &Mutex<HashMap<u32, InFlight>>,
    skip_existing: bool,
    report: &(dyn Fn(usize, ItemResult, Instant) + Sync),
) -> Result<(), SendError> {
    loop {
        let frame = Frame::read(from_relay).map_err(|e| failed(format!("relay stream: {e}")))?;
        match frame {
            None => return Ok(()),
            Some(Frame::Result { file, outcome }) => {
                let Some(InFlight { index, started, size, interrupted }) =
                    numbers.lock().expect("numbers lock").remove(&file)
                else {
                    return Err(failed(format!(
                        "the relay answered for file {file}, which is not in flight"
                    )));
                };
                let result = match outcome {
                    // Cut short by Ctrl-C here: whatever the relay made of the abort.
                    _ if interrupted => Err(SendError::Interrupted),
                    Outcome::Done(bytes) if Some(bytes) == size => Ok(Delivered::Sent { bytes }),
                    Outcome::Done(bytes) => Err(failed(match size {
                        Some(size) => format!("server stored {bytes} bytes, expected {size}"),
                        None => {
                            format!("the relay said {bytes} bytes were stored before the file was sent whole")
                        }
                    })),
                    Outcome::Skipped if skip_existing => Ok(Delivered::Skipped),
                    Outcome::Skipped => Err(failed("the server skipped a file it was not asked to skip")),
                    Outcome::Failed { code: 2, message } => Err(SendError::Usage(message)),
                    Outcome::Failed { message, .. } => Err(SendError::Failed(message)),
                };
                report(index, result, started);
            }
            Some(Frame::Fatal { message }) => return Err(failed(format!("the relay gave up: {message}"))),
            Some(other) => return Err(failed(format!("relay stream: unexpected {other:?}"))),
        }
    }
}

/// Writes every item to send as frames, folders first (in order of depth), then
/// BYE. An item that cannot be read here fails here (or is ABORTed mid-file).
fn write_all(
    out: &mut impl Write,
    items: &[Item],
    options: &SendOptions,
    progress: &dyn Progress,
    numbers: &Mutex<HashMap<u32, InFlight>>,
    report: &(dyn Fn(usize, ItemResult, Instant) + Sync),
) -> Result<(), SendError> {
    let io_failed = |e: io::Error| failed(format!("writing to the relay failed: {e}"));
    let mut next = 0u32;
    let mut buffer = vec![0u8; MAX_DATA];
    let order = super::phases(items).into_iter().flat_map(|(phase, _)| phase);
    for index in order {
        if sys::stop_signal().is_some() {
            return Err(SendError::Interrupted);
        }
        let item = &items[index];
        let started = Instant::now();
        // Numbered in order of BEGIN: an item that fails here takes no number.
        let file = next + 1;
        match item.kind {
            Kind::Dir { mode } => {
                next = file;
                numbers
                    .lock()
                    .expect("numbers lock")
                    .insert(file, InFlight { index, started, size: Some(0), interrupted: false });
                let what = Begin::Dir { name: item.name.clone(), mode };
                Frame::Begin { file, what }.write(out).map_err(io_failed)?;
            }
            Kind::File => {
                let opened = match open_source(item, options) {
                    Ok(opened) => opened,
                    Err(e) => {
                        report(index, Err(e), started);
                        continue;
                    }
                };
                next = file;
                numbers
                    .lock()
                    .expect("numbers lock")
                    .insert(file, InFlight { index, started, size: None, interrupted: false });
                let what = Begin::File { name: item.name.clone(), size: opened.exact, meta: opened.meta };
                Frame::Begin { file, what }.write(out).map_err(io_failed)?;
                // The relay may fail the file before it is whole (the server dropped
                // it): then it is cut short.
                let answered = || !numbers.lock().expect("numbers lock").contains_key(&file);
                let sent =
                    copy_file(out, file, &opened.input, opened.exact, &mut buffer, progress, &answered);
                let frame = match sent {
                    Ok((size, checksum)) => match changed(&opened) {
                        None => {
                            // Before the END: the relay answers only after it.
                            if let Some(sent) = numbers.lock().expect("numbers lock").get_mut(&file) {
                                sent.size = Some(size);
                            }
                            Frame::End { file, size, checksum }
                        }
                        Some(reason) => Frame::Abort { file, reason },
                    },
                    Err(Copy::Read(e)) => {
                        if sys::stop_signal().is_some() {
                            // A read ended by Ctrl-C: the file is interrupted, not failed.
                            if let Some(sent) = numbers.lock().expect("numbers lock").get_mut(&file) {
                                sent.interrupted = true;
                            }
                        }
                        Frame::Abort { file, reason: format!("reading the source failed: {e}") }
                    }
                    Err(Copy::Write(e)) => return Err(io_failed(e)),
                };
                frame.write(out).map_err(io_failed)?;
            }
        }
    }
    Frame::Bye.write(out).and_then(|()| out.flush()).map_err(io_failed)
}

/// A file or folder the relay has not answered for yet.
struct InFlight {
    index: usize,
    started: Instant,
    /// The bytes sent, once the END is written (a folder's: 0).
    size: Option<u64>,
    /// Its reading was cut short by SIGINT/SIGTERM/SIGHUP (sent as an ABORT).
    interrupted: bool,
}

enum Copy {
    Read(io::Error),
    Write(io::Error),
}

/// DATA frames of everything the source holds (exactly `exact` bytes when known);
/// returns the length and xxh3-64.
fn copy_file(
    out: &mut impl Write,
    file: u32,
    input: &Input<'_>,
    exact: Option<u64>,
    buffer: &mut [u8],
    progress: &dyn Progress,
    answered: &dyn Fn() -> bool,
) -> Result<(u64, u64), Copy> {
    let (Input::File(source) | Input::Pipe(source)) = input else {
        return Err(Copy::Read(io::Error::other("not a file")));
    };
    let mut source: &std::fs::File = source;
    let mut hasher = Checksum::new();
    let mut sent = 0u64;
    // When what a pipe gave last went on to the relay (see below).
    let mut flushed = Instant::now();
    let cut_short = || Copy::Read(io::Error::other("the relay failed it before it was whole"));
    loop {
        if answered() {
            return Err(cut_short());
        }
        let want = match exact {
            Some(size) => buffer.len().min((size - sent.min(size)) as usize + 1),
            None => buffer.len(),
        };
        if let Input::Pipe(pipe) = input {
            // A pipe's bytes go on to the relay within PIPE_FLUSH, as they would go
            // to the server, however slowly they come: the relay keeps its streams
            // alive only while bytes come.
            if flushed.elapsed() >= PIPE_FLUSH {
                out.flush().map_err(Copy::Write)?;
                flushed = Instant::now();
            }
            // A FIFO opened without waiting for its writer: wait for data or its end.
            while !sys::poll_readable(pipe.as_fd(), PIPE_FLUSH).map_err(Copy::Read)? {
                // Silent: the relay hears the client is alive (its streams stay open).
                Frame::Alive.write(out).and_then(|()| out.flush()).map_err(Copy::Write)?;
                flushed = Instant::now();
                if answered() {
                    return Err(cut_short());
                }
                if sys::stop_signal().is_some() {
                    return Err(Copy::Read(io::Error::from(io::ErrorKind::Interrupted)));
                }
            }
        }
        let n = match source.read(&mut buffer[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e)),
        };
        if exact.is_some_and(|size| sent + n as u64 > size) {
            return Err(Copy::Read(io::Error::other("the source file grew while it was being sent")));
        }
        hasher.update(&buffer[..n]);
        frames::write_data(out, file, &buffer[..n]).map_err(Copy::Write)?;
        sent += n as u64;
        progress.bytes(n as u64);
    }
    if exact.is_some_and(|size| sent < size) {
        return Err(Copy::Read(io::Error::other("the source file shrank while it was being sent")));
    }
    Ok((sent, hasher.digest()))
}

/// Why a regular file must not be published after all (it changed while read).
fn changed(opened: &super::send::Opened<'_>) -> Option<String> {
    let (Some(before), Input::File(file)) = (&opened.regular, &opened.input) else { return None };
    let after = file.metadata().ok()?;
    (after.len() != before.len() || after.modified().ok() != before.modified().ok())
        .then(|| "the source file changed while it was being sent".to_owned())
}

/// `sharedclient --relay`: reads the frame stream on `input`, sends every file to
/// the server of segment `name` on this host, and answers on `output`. Returns the
/// exit status: 0 when the client said BYE, 1 when it went away or broke the stream.
pub fn relay<W: Write>(name: &str, timeout: Duration, input: std::fs::File, output: W) -> ExitStatus {
    let mut input = FrameInput::new(input);
    let mut output = BufWriter::new(output);
    match frames::read_hello(&mut input) {
        Ok(true) => {}
        Ok(false) => return ExitStatus::Failure,
        Err(e) => {
            errln!("sharedclient --relay: {e}");
            return ExitStatus::Failure;
        }
    }
    if frames::write_hello(&mut output).is_err() {
        return ExitStatus::Failure;
    }
    let sender = match Sender::connect(name, timeout) {
        Ok(sender) => sender,
        Err(e) => {
            let _ = say(&mut output, Frame::Fatal { message: e.to_string() });
            return ExitStatus::Failure;
        }
    };
    if say(&mut output, Frame::Ready).is_err() {
        return ExitStatus::Failure;
    }
    let mut input = FrameInput { connection: Some(sender.connection()), ..input };
    let output = std::cell::RefCell::new(output);
    let staging = std::cell::RefCell::new(RelayStaging::default());
    let report = |file: usize, result: ItemResult, _: Instant| {
        let Some(result) = staging.borrow_mut().hold(file, result) else { return };
        // A write that fails shows again at the next flush, which ends the relay.
        let _ = (Frame::Result { file: file as u32, outcome: outcome_of(result) })
            .write(&mut *output.borrow_mut());
    };
    // Folders at the top are staged, as a local client's are, if a stream can be
    // held aside for their commit (the server publishes a client's staged folders
    // as they are when its last stream ends). Relaxed: a setting the server wrote
    // at start.
    let most = sender.connection().segment.header().max_streams_per_client.load(Ordering::Relaxed);
    let anchor: Mutex<Option<Session<'_>>> = Mutex::new(None);
    // Set while the relay waits for the client's bytes: the anchor is then beaten
    // only as the other streams are, by what comes from the client (`alive`).
    let reading = AtomicBool::new(false);
    input.reading = Some(&reading);
    let fatal = |message: String| {
        errln!("sharedclient --relay: {message}");
        let _ = say(&mut output.borrow_mut(), Frame::Fatal { message });
        ExitStatus::Failure
    };
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // The stream held aside for the commit beats while the relay works with the
        // server (waiting for space, for results, for a stream): nothing else uses
        // it, and the server would drop it as idle. Not while the relay waits for
        // the client: a client stopped or gone is dropped as it would be locally.
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if reading.load(Ordering::Relaxed) {
                    continue;
                }
                let mut held_aside = anchor.lock().expect("anchor lock");
                if held_aside.as_mut().is_some_and(|open| open.keep_alive().is_err()) {
                    *held_aside = None;
                }
            }
        });
        let status = (|| {
            let mut stream = sender.stream();
            let mut batches = Batches::default();
            let mut expected = 1u32;
            loop {
                // Answers wait in the buffer while more frames are already here; they go
                // out whenever the relay is about to wait for the client.
                if input.buffer().is_empty() {
                    batches.hand_over();
                    if output.borrow_mut().flush().is_err() {
                        return ExitStatus::Failure;
                    }
                }
                let frame = match Frame::read(&mut input) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return fatal("the client went away before saying BYE".into()),
                    Err(e) => return fatal(e.to_string()),
                };
                let (file, what) = match frame {
                    Frame::Bye => break,
                    // Read, so beaten for already (`FrameInput::alive`).
                    Frame::Alive => continue,
                    Frame::Begin { file, what } => (file, what),
                    other => return fatal(format!("expected BEGIN or BYE, got {other:?}")),
                };
                // A drop seen between files is the held streams' own business (a stream
                // used again reads the server's reply); it fails no file of its own.
                input.dropped = false;
                if file != expected {
                    return fatal(format!("file {file} began where file {expected} was due"));
                }
                expected = expected.wrapping_add(1);
                let index = file as usize;
                let started = Instant::now();
                let top = !what.name().contains('/');
                let mut held_aside = anchor.lock().expect("anchor lock");
                if top && matches!(what, Begin::Dir { .. }) && most != 1 && held_aside.is_none() {
                    *held_aside = Session::open(&sender.connection).ok();
                }
                let anchored = held_aside.is_some();
                drop(held_aside);
                staging.borrow_mut().begin(
                    index,
                    what.name(),
                    top && anchored && matches!(what, Begin::Dir { .. }),
                );
                match what {
                    // Folders and small files go in batches: no round trip to the server each.
                    Begin::Dir { name, mode } => {
                        let prepared = match staging.borrow().is_root(index) {
                            true => Prepared::stage(mode, started),
                            false => Prepared::dir(mode, started),
                        };
                        if let Some(prepared) = batches.add(&mut stream, index, &name, prepared, &report) {
                            drop(prepared);
                            report(index, stream.make_dir(&name, mode), started);
                        }
                    }
                    Begin::File { name, size: Some(size), meta } if size <= BATCH_FILE_MAX => {
                        let mut reader = FileFrames::new(&mut input, file);
                        let mut data = Vec::with_capacity(size as usize);
                        let read = (&mut reader).take(size + 1).read_to_end(&mut data);
                        if let Err(message) = reader.finish() {
                            return fatal(message);
                        }
                        if let Err(e) = read {
                            report(index, Err(failed(e.to_string())), started);
                            continue;
                        }
                        if data.len() as u64 != size {
                            let why = format!("the client announced {size} bytes and sent {}", data.len());
                            report(index, Err(failed(why)), started);
                            continue;
                        }
                        let meta = FileMeta { size_is_hint: false, ..meta };
                        let prepared = Prepared::memory(data, meta, started);
                        if let Some(alone) = batches.add(&mut stream, index, &name, prepared, &report) {
                            batches.finish(&mut stream, &report);
                            let data = alone.into_memory().unwrap_or_default();
                            report(
                                index,
                                stream.send_reader(&name, meta, Some(size), &data[..], &()),
                                started,
                            );
                        }
                    }
                    Begin::File { name, size, meta } => {
                        batches.finish(&mut stream, &report);
                        let mut reader = FileFrames::new(&mut input, file);
                        let meta = FileMeta { size_is_hint: size.is_none(), ..meta };
                        let sent = match stream.send_filled(&name, meta, size, &mut reader) {
                            // A failure is told at once: the client stops sending a file that
                            // is lost (a source that never ends would keep it going for good).
                            Err(e) => {
                                report(index, Err(e), started);
                                let _ = output.borrow_mut().flush();
                                None
                            }
                            sent => Some(sent),
                        };
                        // Whatever happened, the rest of this file's frames are read past.
                        if let Err(message) = reader.finish() {
                            return fatal(message);
                        }
                        if let Some(sent) = sent {
                            report(index, sent, started);
                        }
                    }
                }
            }
            batches.finish(&mut stream, &report);
            drop(stream);
            let held = staging.take().commit(anchor.lock().expect("anchor lock").take(), sender.connection());
            let mut output = output.borrow_mut();
            for (file, result) in held {
                let _ =
                    (Frame::Result { file: file as u32, outcome: outcome_of(result) }).write(&mut *output);
            }
            match output.flush() {
                Ok(()) => ExitStatus::Success,
                Err(_) => ExitStatus::Failure,
            }
        })();
        done.store(true, Ordering::Relaxed);
        status
    })
}

/// The relay's folders sent whole: each top folder is staged (built under a hidden
/// name) and committed once every file is in, as a local client's are. The files
/// beneath one are confirmed to the client only with its commit (a file the server
/// holds in the hidden folder is not published yet, and is gone if the commit
/// fails); a failure is told at once.
#[derive(Default)]
struct RelayStaging {
    roots: Vec<RelayRoot>,
    /// File number (as an index) -> its top folder in `roots`.
    beneath: HashMap<usize, usize>,
}

struct RelayRoot {
    name: String,
    /// The folder's own file number.
    index: usize,
    /// The stage's token once the server answered; 0: not staged (the folder was
    /// there already, and is filled in place).
    token: Option<u64>,
    /// Successes held until the commit.
    held: Vec<(usize, ItemResult)>,
}

impl RelayStaging {
    /// File `index` named `name` begins; `stage`: it is a top folder to stage.
    fn begin(&mut self, index: usize, name: &str, stage: bool) {
        let top = name.split('/').next().unwrap_or(name);
        if stage {
            self.roots.push(RelayRoot { name: name.to_owned(), index, token: None, held: Vec::new() });
            self.beneath.insert(index, self.roots.len() - 1);
        } else if let Some(at) = self.roots.iter().rposition(|root| root.name == top) {
            self.beneath.insert(index, at);
        }
    }

    /// Whether file `index` is a top folder being staged.
    fn is_root(&self, index: usize) -> bool {
        self.beneath.get(&index).is_some_and(|&at| self.roots[at].index == index)
    }

    /// The result of file `index` to tell now, or `None`: held for its folder's commit.
    fn hold(&mut self, index: usize, result: ItemResult) -> Option<ItemResult> {
        let Some(&at) = self.beneath.get(&index) else { return Some(result) };
        let root = &mut self.roots[at];
        let result = match result {
            // The stage's answer carries its token.
            Ok(Delivered::Sent { bytes: token }) if index == root.index => {
                root.token = Some(token);
                Ok(Delivered::Sent { bytes: 0 })
            }
            other => other,
        };
        if index == root.index && result.is_err() {
            root.token = Some(0);
        }
        match result {
            Ok(_) => {
                root.held.push((index, result));
                None
            }
            failed => Some(failed),
        }
    }

    /// Commits every staged folder on `anchor` (the stream held aside); returns the
    /// held results, each failed if its folder's commit failed.
    fn commit(self, anchor: Option<Session<'_>>, connection: &super::Connection) -> Vec<(usize, ItemResult)> {
        let staged: Vec<(usize, u64)> = self
            .roots
            .iter()
            .enumerate()
            .filter_map(|(at, root)| root.token.filter(|&token| token != 0).map(|token| (at, token)))
            .collect();
        let names: Vec<(&str, u64)> =
            staged.iter().map(|&(at, token)| (self.roots[at].name.as_str(), token)).collect();
        let answers =
            super::batch::commit_all(connection, anchor, &names, &(), "the stream held for it was dropped");
        let mut commits: Vec<Option<ItemResult>> = self.roots.iter().map(|_| None).collect();
        for (&(at, _), answer) in staged.iter().zip(answers) {
            commits[at] = Some(answer);
        }
        let mut told = Vec::new();
        for (at, root) in self.roots.into_iter().enumerate() {
            let commit = match root.token {
                Some(token) if token != 0 => {
                    commits[at].take().unwrap_or_else(|| Err(failed("the folder's commit was not answered")))
                }
                _ => Ok(Delivered::Sent { bytes: 0 }),
            };
            for (index, result) in root.held {
                told.push((index, commit.clone().and(result)));
            }
        }
        told
    }
}

/// A relay's batch mode on its stream, started at the first folder or small file.
#[derive(Default)]
struct Batches<'a> {
    active: Option<Batcher<'a>>,
}

impl<'a> Batches<'a> {
    /// Packs an entry; gives it back (`Some`) when it must go on its own.
    fn add(
        &mut self,
        stream: &mut StreamSender<'a>,
        index: usize,
        name: &str,
        prepared: Prepared,
        report: Report<'_>,
    ) -> Option<Prepared> {
        if self.active.is_none() {
            let session = match stream.session.take() {
                Some(session) => Ok(session),
                None => Session::open(&stream.sender.connection),
            };
            match session.and_then(Batcher::start) {
                Ok(started) => self.active = Some(started),
                Err(e) => {
                    report(index, Err(e), Instant::now());
                    return None;
                }
            }
        }
        let active = self.active.as_mut().expect("started above");
        match active.add(index, name, prepared, &(), report) {
            Ok(None) => None,
            Ok(Some(alone)) => Some(alone),
            Err(e) => {
                report(index, Err(e.clone()), Instant::now());
                if let Some(broken) = self.active.take() {
                    broken.fail_all(&e, report);
                }
                None
            }
        }
    }

    /// Hands over what is packed (the relay is about to wait for the client).
    fn hand_over(&mut self) {
        if let Some(active) = self.active.as_mut() {
            let _ = active.hand_over();
        }
    }

    /// Waits for every result and gives the stream back for files sent alone.
    fn finish(&mut self, stream: &mut StreamSender<'a>, report: Report<'_>) {
        if let Some(active) = self.active.take() {
            stream.session = active.finish(report);
        }
    }
}

/// A result as the frame stream carries it.
fn outcome_of(result: ItemResult) -> Outcome {
    match result {
        Ok(Delivered::Sent { bytes }) => Outcome::Done(bytes),
        Ok(Delivered::Skipped) => Outcome::Skipped,
        Err(e) => Outcome::Failed {
            code: u32::from(e.exit_status() == ExitStatus::Usage) + 1,
            message: e.to_string(),
        },
    }
}

/// Writes one frame and sends it on at once.
fn say<W: Write>(output: &mut BufWriter<W>, frame: Frame) -> io::Result<()> {
    frame.write(output).and_then(|()| output.flush())
}

/// The relay's input: the frame stream on its standard input, buffered for the
/// headers, while DATA payloads of large files go from the pipe straight into the
/// segment (`read_into`): no copy through the buffer or a private chunk.
struct FrameInput<'c> {
    file: std::fs::File,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Beaten for every stream held while bytes come from the client (see `alive`).
    connection: Option<&'c super::Connection>,
    last_beat: Instant,
    /// Streams seen dropped by the server (each reported once).
    dropped_seen: Vec<uuid::Uuid>,
    /// A stream was dropped and the file being received has not been failed for it.
    dropped: bool,
    /// Raised while a read waits for the client (see `relay`).
    reading: Option<&'c AtomicBool>,
}

/// How often, at most, the relay tells the server its streams are alive while the
/// client sends (data, or ALIVE while its source is silent).
const INPUT_BEAT: Duration = Duration::from_millis(500);

impl<'c> FrameInput<'c> {
    fn new(file: std::fs::File) -> FrameInput<'c> {
        let buf = vec![0u8; 1 << 20].into_boxed_slice();
        FrameInput {
            file,
            buf,
            pos: 0,
            end: 0,
            connection: None,
            last_beat: Instant::now(),
            dropped_seen: Vec::new(),
            dropped: false,
            reading: None,
        }
    }

    /// Bytes came from the client: it is alive, so are the streams this relay holds
    /// for it (a slot filling slowly hands nothing to the server for a while). A
    /// client that sends nothing, not even ALIVE (stopped, or its link hung), is
    /// dropped by the server's `--idle-timeout` as it would be on its own host.
    /// Notes streams the server dropped meanwhile (each once). When every stream
    /// held is dropped (the client was silent past `--idle-timeout`: one stream
    /// waiting for buffer space is never dropped, and the file on it goes on), the
    /// file being received fails at once (`FileFrames::payload_ready`) rather than
    /// when the client's source ends.
    fn alive(&mut self) {
        if let Some(connection) = self.connection.filter(|_| self.last_beat.elapsed() >= INPUT_BEAT) {
            self.last_beat = Instant::now();
            let (dropped, held) = connection.beat_held();
            let new = dropped.iter().any(|guid| !self.dropped_seen.contains(guid));
            if new && dropped.len() == held {
                self.dropped = true;
            }
            for guid in dropped {
                if !self.dropped_seen.contains(&guid) {
                    self.dropped_seen.push(guid);
                }
            }
        }
    }

    /// The bytes read ahead and not taken yet.
    fn buffer(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// At most `len` bytes into `segment` at `at`: what is buffered first, else one
    /// `read(2)` from the pipe into the segment itself. 0 at the end of the stream.
    fn read_into(&mut self, segment: &Buffer<'_>, at: usize, len: usize) -> io::Result<usize> {
        if self.pos < self.end {
            let n = len.min(self.end - self.pos);
            let n = segment.write_at(at, &self.buf[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        let n = self.waiting(|file| segment.read_at(file, at, len))?;
        self.alive();
        Ok(n)
    }

    /// `read` from the client, with `reading` raised meanwhile.
    fn waiting<T>(&self, read: impl FnOnce(&std::fs::File) -> T) -> T {
        // Relaxed: a hint for the anchor's beater, which may beat once too often.
        self.reading.inspect(|flag| flag.store(true, Ordering::Relaxed));
        let result = read(&self.file);
        self.reading.inspect(|flag| flag.store(false, Ordering::Relaxed));
        result
    }
}

impl Read for FrameInput<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.end {
            if out.len() >= self.buf.len() {
                let n = self.waiting(|mut file| file.read(out))?;
                self.alive();
                return Ok(n);
            }
            let mut buf = std::mem::take(&mut self.buf);
            let read = self.waiting(|mut file| file.read(&mut buf));
            self.buf = buf;
            self.end = read?;
            self.pos = 0;
            self.alive();
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// One file's DATA frames as a reader (their payload read straight into the
/// caller's buffer, or the segment's): ends (0) at its END if size and checksum
/// match, fails otherwise (the send is then given up and nothing is published).
struct FileFrames<'r, R: Read> {
    input: &'r mut R,
    file: u32,
    /// Bytes of the current DATA frame not read yet.
    data_left: usize,
    read: u64,
    hasher: Checksum,
    state: FrameState,
}

enum FrameState {
    Open,
    Ended,
    /// The client gave up on the file (ABORT), or its data was damaged: why.
    Failed(String),
    /// The stream broke: the relay cannot go on.
    Broken(String),
}

impl<'r, R: Read> FileFrames<'r, R> {
    fn new(input: &'r mut R, file: u32) -> Self {
        FileFrames { input, file, data_left: 0, read: 0, hasher: Checksum::new(), state: FrameState::Open }
    }

    /// Reads past what is left of the file; `Err` if the stream itself broke.
    fn finish(mut self) -> Result<(), String> {
        let mut sink = vec![0u8; 64 << 10];
        while matches!(self.state, FrameState::Open) {
            let _ = self.read(&mut sink);
        }
        match self.state {
            FrameState::Broken(message) => Err(message),
            _ => Ok(()),
        }
    }

    fn broken(&mut self, message: String) -> io::Error {
        self.state = FrameState::Broken(message.clone());
        io::Error::other(message)
    }

    /// Reads the next frame of the file: DATA (its payload is then read by `read`),
    /// END or ABORT.
    fn next_frame(&mut self) -> io::Result<()> {
        let header = match frames::Header::read(&mut *self.input) {
            Ok(Some(header)) => header,
            Ok(None) => return Err(self.broken("the client went away in the middle of a file".into())),
            Err(e) => return Err(self.broken(e.to_string())),
        };
        if header.is_data() && header.file == self.file {
            self.data_left = header.len;
            return Ok(());
        }
        let frame = match header.finish(&mut *self.input) {
            Ok(frame) => frame,
            Err(e) => return Err(self.broken(e.to_string())),
        };
        match frame {
            Frame::End { file, size, checksum } if file == self.file => {
                if size != self.read || checksum != self.hasher.digest() {
                    let why = format!(
                        "the data was damaged in transit ({} bytes arrived of {size}, or the checksum differs)",
                        self.read
                    );
                    self.state = FrameState::Failed(why.clone());
                    return Err(io::Error::other(why));
                }
                self.state = FrameState::Ended;
                Ok(())
            }
            // The client waits on its source; the bytes of this frame were a beat.
            Frame::Alive => Ok(()),
            Frame::Abort { file, reason } if file == self.file => {
                let why = format!("the client could not send it: {reason}");
                self.state = FrameState::Failed(why.clone());
                Err(io::Error::other(why))
            }
            other => {
                Err(self.broken(format!("expected DATA, END or ABORT of file {}, got {other:?}", self.file)))
            }
        }
    }
}

impl FileFrames<'_, FrameInput<'_>> {
    /// Moves to the next DATA payload; false once the file ended (or failed).
    fn payload_ready(&mut self) -> io::Result<bool> {
        loop {
            if self.data_left > 0 {
                return Ok(true);
            }
            if std::mem::take(&mut self.input.dropped) {
                // The file fails; its frames are read past as for any failed file
                // (the state stays open), and the relay goes on with the next.
                return Err(io::Error::other(
                    "the server dropped the stream: the client sent nothing for its --idle-timeout (was it stopped?)",
                ));
            }
            match &self.state {
                FrameState::Open => self.next_frame()?,
                FrameState::Ended => return Ok(false),
                FrameState::Failed(why) | FrameState::Broken(why) => {
                    return Err(io::Error::other(why.clone()))
                }
            }
        }
    }
}

impl Fill for FileFrames<'_, FrameInput<'_>> {
    fn fill(&mut self, buffer: &Buffer<'_>, from: usize, len: usize) -> io::Result<usize> {
        if len == 0 || !self.payload_ready()? {
            return Ok(0);
        }
        let want = len.min(self.data_left);
        let n = match self.input.read_into(buffer, from, want) {
            Ok(0) => return Err(self.broken("the stream ended inside a frame".into())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(self.broken(e.to_string())),
        };
        // The slot is this relay's until handed over: the bytes hashed are the
        // bytes the server gets (and checks against its own hash).
        self.hasher.update(buffer.bytes_at(from, n));
        self.read += n as u64;
        self.data_left -= n;
        Ok(n)
    }

    fn ended(&mut self) -> io::Result<bool> {
        Ok(!self.payload_ready()?)
    }
}

impl<R: Read> Read for FileFrames<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.data_left > 0 {
                let want = buf.len().min(self.data_left);
                let n = match self.input.read(&mut buf[..want]) {
                    Ok(0) => return Err(self.broken("the stream ended inside a frame".into())),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.broken(e.to_string())),
                };
                self.hasher.update(&buf[..n]);
                self.read += n as u64;
                self.data_left -= n;
                return Ok(n);
            }
            match &self.state {
                FrameState::Open => self.next_frame()?,
                FrameState::Ended => return Ok(0),
                FrameState::Failed(why) | FrameState::Broken(why) => {
                    return Err(io::Error::other(why.clone()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_shell_lines_split_like_a_shell() {
        assert_eq!(split_words("ssh").unwrap(), ["ssh"]);
        assert_eq!(split_words("ssh -p 2222  -i '/k ey'").unwrap(), ["ssh", "-p", "2222", "-i", "/k ey"]);
        assert_eq!(split_words(r#"sh -c "a \"b\" c" x\ y"#).unwrap(), ["sh", "-c", r#"a "b" c"#, "x y"]);
        assert_eq!(split_words("a''b").unwrap(), ["ab"]);
        assert!(split_words("ssh 'open").is_err());
        assert!(split_words("   ").is_err());
    }

    /// What the relay says of each file is checked against what was sent: a size it
    /// did not send, or a skip it did not ask for, fails the file.
    #[test]
    fn relay_results_are_checked_against_what_was_sent() {
        let answers = [
            Frame::Result { file: 1, outcome: Outcome::Done(5) },
            Frame::Result { file: 2, outcome: Outcome::Done(4) },
            Frame::Result { file: 3, outcome: Outcome::Skipped },
            Frame::Result { file: 4, outcome: Outcome::Done(0) },
        ];
        for skip_existing in [false, true] {
            let mut wire = Vec::new();
            answers.iter().for_each(|frame| frame.write(&mut wire).unwrap());
            let started = Instant::now();
            let sent = [Some(5), Some(5), Some(7), None];
            let numbers = Mutex::new(
                (0..4)
                    .map(|i| {
                        (i as u32 + 1, InFlight { index: i, started, size: sent[i], interrupted: false })
                    })
                    .collect(),
            );
            let heard: Mutex<Vec<(usize, ItemResult)>> = Mutex::new(Vec::new());
            let report =
                |index: usize, result: ItemResult, _: Instant| heard.lock().unwrap().push((index, result));
            listen(&mut wire.as_slice(), &numbers, skip_existing, &report).unwrap();
            let heard = heard.into_inner().unwrap();
            assert!(matches!(heard[0], (0, Ok(Delivered::Sent { bytes: 5 }))), "{heard:?}");
            assert!(matches!(&heard[1], (1, Err(e)) if e.to_string().contains("stored 4 bytes, expected 5")));
            match skip_existing {
                true => assert!(matches!(heard[2], (2, Ok(Delivered::Skipped))), "{heard:?}"),
                false => {
                    assert!(matches!(&heard[2], (2, Err(e)) if e.to_string().contains("not asked to skip")))
                }
            }
            // An answer before the file's END was written claims bytes never sent.
            assert!(
                matches!(&heard[3], (3, Err(e)) if e.to_string().contains("before the file was sent whole"))
            );
        }
    }
}
