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
        let size: &[&str] = if extra.contains(&"--size") { &[] } else { &["--size", "8M"] };
        let mut child = Command::new(SERVER)
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

    pub fn wait_for_line(&self, what: &str, mut matches: impl FnMut(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.stdout().into_iter().find(|l| matches(l)) {
                return line;
            }
            assert!(
                start.elapsed() < DEADLINE && !has_exited(self.pid()),
                "server never printed {what}\nstdout: {:#?}\nstderr: {:#?}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
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

    /// Temporary files the server left in its output folder.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.out)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().ends_with(".part"))
                    .collect()
            })
            .unwrap_or_default()
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
