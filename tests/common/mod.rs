//! Test harness: spawns the real binaries on unique segment names and temp folders,
//! waits for lines instead of sleeping, and turns every hang into a failure.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SERVER: &str = env!("CARGO_BIN_EXE_sharedserver");
pub const CLIENT: &str = env!("CARGO_BIN_EXE_sharedclient");
/// Generous: the machine is small and shared; a deadline only turns a hang into a failure.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A segment name no other test (or test process) uses.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!("sxt-{tag}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

pub fn shm_path(name: &str) -> PathBuf {
    Path::new("/dev/shm").join(name)
}

pub fn lock_dir(name: &str) -> PathBuf {
    Path::new("/dev/shm").join(format!("{name}.locks"))
}

/// Writes an options.xml naming `files` as streams 1, 2, ... and returns its path.
pub fn write_config(dir: &Path, files: &[&Path]) -> PathBuf {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\" standalone=\"yes\" ?>\n<streams>\n");
    for (i, file) in files.iter().enumerate() {
        let escaped = file.display().to_string().replace('&', "&amp;").replace('"', "&quot;");
        xml.push_str(&format!("  <stream id=\"{}\" file=\"{}\" />\n", i + 1, escaped));
    }
    xml.push_str("</streams>\n");
    let path = dir.join("options.xml");
    std::fs::write(&path, xml).unwrap();
    path
}

/// Deterministic pseudo-random bytes (xorshift), so content mix-ups are caught.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` into the FIFO at `path` once a reader has it open, and closes it;
/// gives up (false) after 60 s without a reader, so a test never hangs on a client
/// that did not open the FIFO.
pub fn write_fifo(path: &Path, data: &[u8]) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // O_NONBLOCK: fails (ENXIO) while no reader has the FIFO open, instead of waiting.
        match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path) {
            Ok(mut fifo) => return fifo.write_all(data).is_ok(),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return false,
        }
    }
}

/// Everything beneath `root` (not `root` itself), by path relative to it, each
/// entry as `describe` sees it; folders (`is_dir`) are walked into.
pub fn walk_tree<T>(
    root: &Path,
    describe: impl Fn(&Path) -> T,
    is_dir: impl Fn(&T) -> bool,
) -> std::collections::BTreeMap<PathBuf, T> {
    let mut found = std::collections::BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for item in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
            let path = item.unwrap().path();
            let entry = describe(&path);
            if is_dir(&entry) {
                pending.push(path.clone());
            }
            found.insert(path.strip_prefix(root).unwrap().to_path_buf(), entry);
        }
    }
    found
}

pub fn write_file(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pattern(len, seed)).unwrap();
    path
}

/// Sends a signal by name ("INT", "KILL", "STOP", "CONT") to a pid.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Waits for `child` with a deadline; kills it and panics on a hang.
pub fn wait_with_deadline(child: &mut Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` is gone or a zombie (exited, not yet reaped).
pub fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().map(|rest| rest.trim_start().starts_with('Z')).unwrap_or(true),
        Err(_) => true,
    }
}

/// A running sharedserver, killed and reaped on drop.
pub struct Server {
    pub child: Child,
    pub name: String,
    pub out: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

fn collect_lines(reader: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Server {
    /// Starts a server writing to `out` and waits for its ready line.
    pub fn start(name: &str, out: &Path, extra: &[&str]) -> Server {
        let server = Self::spawn(name, out, extra);
        server.wait_for_line("ready", |l| l.contains("ready on segment"));
        server
    }

    /// Starts a server without waiting (for tests of refused starts).
    pub fn spawn(name: &str, out: &Path, extra: &[&str]) -> Server {
        Self::launch(Command::new(SERVER), name, out, extra)
    }

    /// Runs `command` (the server binary, or a wrapper that execs it with the
    /// arguments that follow) with the usual server arguments.
    fn launch(mut command: Command, name: &str, out: &Path, extra: &[&str]) -> Server {
        let size: &[&str] = if extra.contains(&"--size") { &[] } else { &["--size", "8M"] };
        let mut child = command
            .arg(out)
            .args(["--name", name])
            .args(size)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = collect_lines(child.stdout.take().unwrap());
        let errors = collect_lines(child.stderr.take().unwrap());
        Server { child, name: name.to_owned(), out: out.to_owned(), lines, errors }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    pub fn wait_for_line(&self, what: &str, matches: impl FnMut(&str) -> bool) -> String {
        self.wait_for_line_within(what, DEADLINE, matches)
    }

    /// What `sharedclient --status` (with `--json`: `json`) prints for this server;
    /// it must exit 0 (the server is running).
    pub fn status(&self, json: bool) -> String {
        self.status_exiting(json, 0)
    }

    /// `status`, which must exit `code` (1: the server is stopped or gone).
    pub fn status_exiting(&self, json: bool, code: i32) -> String {
        let output = self.status_output(json);
        assert_eq!(output.status.code(), Some(code), "{}", show(&output));
        stdout_of(&output)
    }

    /// `status` once it exits `code`: a signal just sent may not show yet.
    pub fn status_once_exiting(&self, json: bool, code: i32) -> String {
        let mut text = String::new();
        wait_until("the status to change", || {
            let output = self.status_output(json);
            text = stdout_of(&output);
            output.status.code() == Some(code)
        });
        text
    }

    fn status_output(&self, json: bool) -> Output {
        let mut command = Command::new(CLIENT);
        command.args(["--name", &self.name, "--status"]);
        if json {
            command.arg("--json");
        }
        run(command)
    }

    /// Sends `signal_name` and waits for the exit.
    pub fn stop(&mut self, signal_name: &str) -> ExitStatus {
        signal(self.pid(), signal_name);
        wait_with_deadline(&mut self.child, "sharedserver")
    }

    /// A client bound to this server.
    pub fn client(&self, config: &Path) -> Command {
        let mut command = Command::new(CLIENT);
        command.args(["--name", &self.name, "--config"]).arg(config);
        command
    }

    /// Files in progress or left behind under the output folder: temporary names
    /// (`.part`) anywhere beneath it, and unnamed (`O_TMPFILE`) files the server
    /// holds open there (`/proc/<pid>/fd` shows them as `<dir>/#<inode> (deleted)`).
    pub fn temp_files(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut folders = vec![self.out.clone()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
                let path = entry.path();
                match entry.file_type() {
                    // A staged folder (`.sharedxfer-<name>-<guid>.stage`) not committed.
                    Ok(kind) if kind.is_dir() && path.to_string_lossy().ends_with(".stage") => {
                        found.push(path)
                    }
                    Ok(kind) if kind.is_dir() => folders.push(path),
                    _ if path.to_string_lossy().ends_with(".part") => found.push(path),
                    _ => {}
                }
            }
        }
        let out = self.out.canonicalize().unwrap_or_else(|_| self.out.clone());
        for fd in std::fs::read_dir(format!("/proc/{}/fd", self.pid())).into_iter().flatten().flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if target.starts_with(&out) && target.to_string_lossy().ends_with(" (deleted)") {
                    found.push(target);
                }
            }
        }
        found
    }

    /// Stream lock files currently in the lock folder.
    pub fn stream_locks(&self) -> Vec<PathBuf> {
        std::fs::read_dir(lock_dir(&self.name))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        let n = p.file_name().unwrap().to_string_lossy().into_owned();
                        n.ends_with(".lock") && n != "server.lock" && n != "handout.lock"
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(shm_path(&self.name));
        let _ = std::fs::remove_dir_all(lock_dir(&self.name));
    }
}

/// Runs a command to completion under the deadline and returns its output.
pub fn run(mut command: Command) -> Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || read_all(stdout));
    let err = std::thread::spawn(move || read_all(stderr));
    let status = wait_with_deadline(&mut child, &format!("{command:?}"));
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

fn read_all(mut reader: impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = reader.read_to_end(&mut buf);
    buf
}

/// Formats an output for assertion messages.
pub fn show(output: &Output) -> String {
    format!(
        "status: {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// ---------------------------------------------------------------------------------
// Helpers for the hardening suites (hostile.rs, faults.rs): wrapped servers, clients
// that are signalled while they run, frozen processes, and a read-only look at the
// segment so tests wait for protocol events instead of sleeping.
// ---------------------------------------------------------------------------------

use std::sync::atomic::Ordering as AtomicOrdering;

use sharedxfer::ring::SlotState;
use sharedxfer::segment::{Record, Segment, HANDOUT_OFFERED, HANDOUT_TAKEN};

impl Server {
    /// Starts a server through `bash -c '<prelude>; exec sharedserver ...'` (for
    /// example `ulimit -f 2048`) and waits for its ready line. `exec` keeps the pid.
    pub fn start_wrapped(name: &str, out: &Path, prelude: &str, extra: &[&str]) -> Server {
        let mut wrapper = Command::new("bash");
        wrapper.arg("-c").arg(format!("{prelude}; exec \"$0\" \"$@\"")).arg(SERVER);
        let server = Self::launch(wrapper, name, out, extra);
        server.wait_for_line("ready", |l| l.contains("ready on segment"));
        server
    }

    /// Like `wait_for_line`, with its own bound: "notices within `limit`".
    pub fn wait_for_line_within(
        &self,
        what: &str,
        limit: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.stdout().into_iter().find(|l| matches(l)) {
                return line;
            }
            assert!(
                start.elapsed() < limit && !has_exited(self.pid()),
                "server never printed {what} within {limit:?}\nstdout: {:#?}\nstderr: {:#?}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stdout lines that mention `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.stdout().into_iter().filter(|l| l.contains(needle)).collect()
    }

    /// The temporary file the server uses for stream `guid`.
    pub fn temp_path(&self, guid: uuid::Uuid) -> PathBuf {
        self.out.join(format!(".sharedxfer-{}-{}.part", self.name, guid.simple()))
    }

    /// A client bound to this server, with a long `--timeout` so that a server the
    /// test froze on purpose is not given up on.
    pub fn patient_client(&self, config: &Path) -> Command {
        let mut command = self.client(config);
        command.args(["--timeout", "60"]);
        command
    }
}

/// A child process whose stdout and stderr are collected in the background, so the
/// test can signal it while it runs. Killed and reaped on drop.
pub struct Running {
    child: Child,
    what: String,
    out: Option<std::thread::JoinHandle<Vec<u8>>>,
    err: Option<std::thread::JoinHandle<Vec<u8>>>,
    reaped: bool,
}

impl Running {
    pub fn spawn(mut command: Command) -> Running {
        let what = format!("{command:?}");
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out = Some(std::thread::spawn(move || read_all(stdout)));
        let err = Some(std::thread::spawn(move || read_all(stderr)));
        Running { child, what, out, err, reaped: false }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn has_exited(&self) -> bool {
        has_exited(self.pid())
    }

    /// Waits for the exit (under the deadline) and returns everything it printed.
    pub fn finish(mut self) -> Output {
        let status = wait_with_deadline(&mut self.child, &self.what);
        self.reaped = true;
        let stdout = self.out.take().unwrap().join().unwrap();
        let stderr = self.err.take().unwrap().join().unwrap();
        Output { status, stdout, stderr }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One-letter scheduler state of every thread of `pid` ('R', 'S', 'T', 'Z', ...).
pub fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| stat.rsplit(')').next().and_then(|rest| rest.trim_start().chars().next()))
        .collect()
}

/// SIGSTOPs `pid` and waits until every one of its threads is stopped.
pub fn freeze(pid: u32) {
    signal(pid, "STOP");
    wait_until(&format!("pid {pid} to stop"), || {
        assert!(!has_exited(pid), "pid {pid} exited instead of stopping");
        let states = thread_states(pid);
        !states.is_empty() && states.iter().all(|s| matches!(s, 'T' | 't'))
    });
}

/// SIGCONTs `pid`.
pub fn thaw(pid: u32) {
    signal(pid, "CONT");
}

/// All regular files under `dir`, recursively (symlinks are listed, not followed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// A read-only look at a server's segment through the library, for waiting on
/// protocol events (an offer made, a command posted, a ring filled).
pub struct Probe {
    pub segment: Segment,
    locks: sharedxfer::lock::LockDir,
}

impl Probe {
    pub fn open(name: &str) -> Probe {
        let segment = Segment::open(name, DEADLINE).unwrap();
        let locks = sharedxfer::lock::LockDir::open(name).unwrap();
        Probe { segment, locks }
    }

    pub fn record(&self, offset: u64) -> &Record {
        self.segment.record(offset).unwrap()
    }

    /// Waits until a GUID is on offer; returns the offered record's offset.
    pub fn wait_offer(&self) -> u64 {
        let handout = self.segment.handout();
        wait_until("a GUID on offer", || handout.state.load(AtomicOrdering::Acquire) == HANDOUT_OFFERED);
        handout.record_offset.load(AtomicOrdering::Relaxed)
    }

    pub fn handout_state(&self) -> u32 {
        self.segment.handout().state.load(AtomicOrdering::Acquire)
    }

    /// Whether nobody holds the handout lock nor (if given) `record`'s stream lock.
    pub fn locks_free(&self, record: Option<u64>) -> bool {
        let handout_lock = self.locks.lock(sharedxfer::lock::HANDOUT_LOCK).unwrap();
        let stream_lock = record.map(|r| self.locks.stream_lock(self.guid(r)).unwrap());
        // Each successful try_lock is released at once (the guard is dropped).
        handout_lock.try_lock().is_ok() && stream_lock.is_none_or(|l| l.try_lock().is_ok())
    }

    /// SIGSTOPs `pid` at a moment it holds neither the handout lock nor `record`'s
    /// stream lock, and `also` holds (checked while it is stopped, so no race):
    /// otherwise it is continued and the attempt repeated.
    pub fn freeze_at_rest(&self, pid: u32, record: Option<u64>, mut also: impl FnMut() -> bool) {
        loop {
            wait_until("the locks to be free", || self.locks_free(record) && also());
            freeze(pid);
            if self.locks_free(record) && also() {
                return;
            }
            thaw(pid);
        }
    }

    pub fn guid(&self, record: u64) -> uuid::Uuid {
        sharedxfer::handout::load_guid(&self.record(record).guid)
    }
}

/// Waits for `ready`, failing early (with its output) if `client` exits first.
fn wait_with_client(what: &str, client: &Running, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(!client.has_exited(), "the client exited while the test waited for {what}");
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A real client caught mid-transfer, by stepping it and the server with
/// SIGSTOP/SIGCONT and watching the segment: nothing depends on timing.
///
/// After `start`: the server is stopped; the client's Open was answered; the client
/// filled every ring slot and now waits for the server (so it has read exactly
/// `slots * chunk` bytes of a file larger than that); a fresh GUID is on offer and
/// no lock is held.
pub struct Frozen {
    pub probe: Probe,
    pub client: Running,
    pub server_pid: u32,
    /// The client's record and stream GUID.
    pub record: u64,
    pub guid: uuid::Uuid,
    pub slots: usize,
    pub chunk: u64,
    pub size: u64,
}

impl Frozen {
    /// `client` must send one file larger than the ring (e.g. 4 MiB with `--size 1M`)
    /// and should come from `Server::patient_client`.
    pub fn start(server: &Server, client: Command) -> Frozen {
        let probe = Probe::open(&server.name);
        let handout = probe.segment.handout();
        let offered = || handout.state.load(AtomicOrdering::Acquire) == HANDOUT_OFFERED;
        probe.freeze_at_rest(server.pid(), None, offered);
        let record = handout.record_offset.load(AtomicOrdering::Relaxed);
        let client = Running::spawn(client);
        let rec = probe.record(record);
        wait_with_client("the client to take the GUID and post Open", &client, || {
            probe.handout_state() == HANDOUT_TAKEN && sharedxfer::protocol::pending(&rec.c2s, 0).is_some()
        });
        probe.freeze_at_rest(client.pid(), Some(record), || true);
        thaw(server.pid());
        let replied_and_offered = || {
            sharedxfer::protocol::pending(&rec.s2c, 0).is_some()
                && handout.state.load(AtomicOrdering::Acquire) == HANDOUT_OFFERED
                && handout.record_offset.load(AtomicOrdering::Relaxed) != record
        };
        probe.freeze_at_rest(server.pid(), Some(record), replied_and_offered);
        let reply = rec.s2c.code.load(AtomicOrdering::Relaxed);
        assert_eq!(reply, sharedxfer::protocol::S2C_OPENED, "the server did not open the stream");
        let slots = rec.nslots.load(AtomicOrdering::Relaxed) as usize;
        let chunk = rec.slots[0].capacity.load(AtomicOrdering::Relaxed);
        let size = rec.file_size.load(AtomicOrdering::Relaxed);
        assert!(
            slots > 0 && size > slots as u64 * chunk,
            "the file fits the ring: {size} <= {slots} x {chunk}"
        );
        thaw(client.pid());
        wait_with_client("the client to fill the ring", &client, || {
            rec.slots[..slots].iter().all(|s| s.state.load(AtomicOrdering::Acquire) == SlotState::Full as u32)
        });
        let guid = probe.guid(record);
        Frozen { probe, client, server_pid: server.pid(), record, guid, slots, chunk, size }
    }

    pub fn rec(&self) -> &Record {
        self.probe.record(self.record)
    }

    /// From `start`'s state to: the client stopped, the server running, the ring
    /// drained (the server wrote `slots * chunk` bytes and waits for more).
    pub fn drain_with_client_stopped(&self) {
        self.probe.freeze_at_rest(self.client.pid(), Some(self.record), || true);
        thaw(self.server_pid);
        let rec = self.rec();
        let expected = self.slots as u64 * self.chunk;
        wait_until("the server to drain the ring", || {
            rec.slots[..self.slots]
                .iter()
                .all(|s| s.state.load(AtomicOrdering::Acquire) == SlotState::Empty as u32)
                && rec.bytes_done.load(AtomicOrdering::Relaxed) == expected
        });
    }
}
