//! `sharedclient --remote HOST` through a stand-in for ssh (`tests/lsh.sh`, which
//! runs the relay here), and the relay (`sharedclient --relay`) fed frames by hand:
//! folders, standard input, a relay killed mid-file, a dropped link, damaged frames,
//! a remote server that is missing or stops.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sharedxfer::frames::{self, Begin, Frame, Outcome};
use sharedxfer::protocol::FileMeta;

fn shim() -> String {
    format!("{}/tests/lsh.sh", env!("CARGO_MANIFEST_DIR"))
}

fn bin_dir() -> PathBuf {
    Path::new(CLIENT).parent().unwrap().to_path_buf()
}

/// `sharedclient --remote somehost --rsh tests/lsh.sh -n NAME`, run from `cwd`.
fn remote_client(name: &str, cwd: &Path) -> Command {
    let mut command = Command::new(CLIENT);
    command.current_dir(cwd).env("LSH_BIN", bin_dir()).args([
        "--remote",
        "somehost",
        "--rsh",
        &shim(),
        "-n",
        name,
    ]);
    command
}

/// A small tree: nested folders, odd modes, a set mtime, an empty file.
fn make_tree(root: &Path) -> PathBuf {
    let tree = root.join("tree");
    fs::create_dir_all(tree.join("a/b")).unwrap();
    fs::create_dir_all(tree.join("empty")).unwrap();
    for i in 0..40 {
        write_file(
            &tree.join(if i % 2 == 0 { "a" } else { "a/b" }),
            &format!("f{i}.bin"),
            97 * i + 1,
            i as u64,
        );
    }
    write_file(&tree, "big.bin", 3 << 20, 77);
    write_file(&tree, "zero.bin", 0, 0);
    let odd = write_file(&tree, "odd mode.txt", 10, 5);
    fs::set_permissions(&odd, fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(tree.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    let when = std::time::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    fs::File::options().write(true).open(&odd).unwrap().set_modified(when).unwrap();
    tree
}

/// Every entry below `dir`: relative path, type, mode, size, mtime, content hash.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            if meta.is_dir() {
                out.push(format!("d {rel} {:o}", meta.mode() & 0o777));
                stack.push(path);
            } else {
                let data = fs::read(&path).unwrap();
                out.push(format!(
                    "f {rel} {:o} {} {}.{} {:x}",
                    meta.mode() & 0o777,
                    meta.len(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    sharedxfer::checksum::of(&data)
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_folder_and_standard_input_arrive_through_the_relay_whole() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let tree = make_tree(src.path());
    let server = Server::start(&unique_name("rmtree"), out.path(), &[]);
    let output = run({
        let mut c = remote_client(&server.name, src.path());
        c.arg("tree");
        c
    });
    assert!(output.status.success(), "{}", show(&output));
    assert!(stdout_of(&output).contains("sharedclient: 43 files"), "{}", show(&output));
    assert_eq!(listing(&tree), listing(&out.path().join("tree")));

    let mut piped = remote_client(&server.name, src.path());
    piped
        .args(["-", "--as", "from-stdin.txt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = piped.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"typed on the other host\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", show(&output));
    assert_eq!(fs::read(out.path().join("from-stdin.txt")).unwrap(), b"typed on the other host\n");
    assert!(server.temp_files().is_empty());
}

#[test]
fn no_server_on_the_remote_host_is_a_clear_failure() {
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "x.bin", 100, 1);
    let output = run({
        let mut c = remote_client(&unique_name("rmtnone"), src.path());
        c.arg("x.bin");
        c
    });
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(err.contains("somehost") && err.contains("no server on segment"), "{}", show(&output));

    // A relay that cannot even start says why (here: no sharedclient on its PATH).
    let output = run({
        let mut c = remote_client("whatever", src.path());
        c.env("LSH_BIN", "/nonexistent").env("PATH", "/usr/bin:/bin").arg("x.bin");
        c
    });
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("the relay on somehost did not start"), "{}", show(&output));
    assert!(stderr_of(&output).contains("not found"), "{}", show(&output));
}

/// Starts a remote client fed by a pipe, writes `first` bytes and waits until the
/// server holds the file in progress.
fn half_sent(
    server: &Server,
    src: &Path,
    extra_env: &[(&str, &str)],
) -> (std::process::Child, std::process::ChildStdin) {
    let mut command = remote_client(&server.name, src);
    command
        .args(["-", "--as", "slow.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&pattern(2 << 20, 3)).unwrap();
    stdin.flush().unwrap();
    wait_until("the server to hold slow.bin in progress", || !server.temp_files().is_empty());
    (child, stdin)
}

/// Waits until `pid` exits or `most` has passed; returns how long it waited.
fn wait_for_exit(pid: u32, most: Duration) -> Duration {
    let start = Instant::now();
    while !has_exited(pid) && start.elapsed() < most {
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn finish(child: std::process::Child) -> std::process::Output {
    let deadline = Instant::now() + DEADLINE;
    let output = child.wait_with_output().unwrap();
    assert!(Instant::now() < deadline);
    output
}

/// Ctrl-C while the source has nothing to read (a pipe, a FIFO) interrupts the
/// client as it does without --remote: exit 130, the file interrupted, not failed.
#[test]
fn ctrl_c_while_the_source_is_silent_interrupts_the_remote_client() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("rmtint"), out.path(), &[]);
    let (child, stdin) = half_sent(&server, src.path(), &[]);
    signal(child.id(), "INT");
    let output = finish(child);
    drop(stdin);
    assert_eq!(output.status.code(), Some(130), "{}", show(&output));
    assert!(stdout_of(&output).contains("0 failed, 1 interrupted"), "{}", show(&output));
    wait_until("the server to drop the unfinished file", || server.temp_files().is_empty());
    assert!(!out.path().join("slow.bin").exists(), "an interrupted file was published");
}

#[test]
fn a_relay_killed_mid_file_fails_the_client_and_nothing_is_published() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("rmtkill"), out.path(), &[]);
    let pidfile = src.path().join("relay.pid");
    let (child, stdin) = half_sent(&server, src.path(), &[("LSH_PIDFILE", pidfile.to_str().unwrap())]);
    let relay: u32 = fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    signal(relay, "KILL");
    drop(stdin);
    let output = finish(child);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("relay on somehost"), "{}", show(&output));
    wait_until("the server to drop the unfinished file", || server.temp_files().is_empty());
    assert!(!out.path().join("slow.bin").exists(), "a half-sent file was published");
    // The server still serves.
    let again = run({
        let mut c = remote_client(&server.name, src.path());
        c.arg("relay.pid");
        c
    });
    assert!(again.status.success(), "{}", show(&again));
}

#[test]
fn a_dropped_link_mid_file_fails_the_client_and_nothing_is_published() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("rmtcut"), out.path(), &[]);
    write_file(src.path(), "first.bin", 1000, 1);
    write_file(src.path(), "second.bin", 4 << 20, 2);
    // The relay sees the first 1 MiB of the stream only: the second file is cut short.
    let output = run({
        let mut c = remote_client(&server.name, src.path());
        c.env("LSH_CUT", "1048576").args(["first.bin", "second.bin"]);
        c
    });
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("second.bin"), "{}", show(&output));
    assert!(out.path().join("first.bin").exists(), "the whole first file was confirmed");
    assert!(!out.path().join("second.bin").exists(), "a cut file was published");
    wait_until("no temporary files", || server.temp_files().is_empty());
}

#[test]
fn a_remote_server_that_stops_fails_the_client() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut server = Server::start(&unique_name("rmtstop"), out.path(), &[]);
    let (child, stdin) = half_sent(&server, src.path(), &[]);
    server.stop("TERM");
    drop(stdin);
    let output = finish(child);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(err.contains("shutting down") || err.contains("exited"), "{}", show(&output));
    assert!(!out.path().join("slow.bin").exists());
}

/// `sharedclient --relay -n NAME` as a child, fed frames by the test.
struct Relay {
    child: std::process::Child,
    to: std::process::ChildStdin,
    from: std::process::ChildStdout,
}

impl Relay {
    fn start(name: &str) -> Relay {
        let mut child = Command::new(CLIENT)
            .args(["--relay", "-n", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut to = child.stdin.take().unwrap();
        let mut from = child.stdout.take().unwrap();
        frames::write_hello(&mut to).unwrap();
        assert!(frames::read_hello(&mut from).unwrap(), "the relay greets back");
        assert_eq!(Frame::read(&mut from).unwrap(), Some(Frame::Ready));
        Relay { child, to, from }
    }

    fn send(&mut self, frame: Frame) {
        frame.write(&mut self.to).unwrap();
    }

    fn next(&mut self) -> Option<Frame> {
        Frame::read(&mut self.from).unwrap()
    }

    fn exit_code(mut self) -> (Option<i32>, String) {
        drop(self.to);
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (status.code(), err)
    }
}

fn file_frames(file: u32, name: &str, data: &[u8], checksum: u64) -> Vec<Frame> {
    let meta = FileMeta { mode: Some(0o600), ..FileMeta::default() };
    let what = Begin::File { name: name.into(), size: Some(data.len() as u64), meta };
    vec![
        Frame::Begin { file, what },
        Frame::Data { file, bytes: data.to_vec() },
        Frame::End { file, size: data.len() as u64, checksum },
    ]
}

/// Files whose frames do not match what their BEGIN announced are not published:
/// large ones read from the pipe straight into the segment (END's checksum wrong,
/// more or fewer bytes than announced, also where the stream still holds a slot
/// from a small file before, which once published a longer file whole) and small
/// ones gathered for a batch (more or fewer bytes). Whole files around them are.
#[test]
fn the_relay_publishes_no_file_that_differs_from_its_begin() {
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("rmtlarge"), out.path(), &[]);
    let mut relay = Relay::start(&server.name);
    let data = pattern(700_000, 4);
    let sum = sharedxfer::checksum::of(&data);
    let small = pattern(1000, 5);
    let small_sum = sharedxfer::checksum::of(&small);
    let meta = FileMeta { mode: Some(0o640), ..FileMeta::default() };
    let file = |file: u32, name: &str, size: u64, pieces: &[&[u8]], checksum: u64| {
        let mut frames =
            vec![Frame::Begin { file, what: Begin::File { name: name.into(), size: Some(size), meta } }];
        frames.extend(pieces.iter().map(|p| Frame::Data { file, bytes: p.to_vec() }));
        frames.push(Frame::End { file, size: pieces.iter().map(|p| p.len() as u64).sum(), checksum });
        frames
    };
    let pieces: Vec<&[u8]> = data.chunks(200_001).collect(); // DATA frames hold at most 256 KiB
    let cases = [
        file(1, "first.txt", 1000, &[&small], small_sum),
        file(2, "longer-held.bin", 100_000, &pieces, sum),
        file(3, "bad-sum.bin", 700_000, &pieces, sum ^ 1),
        file(4, "longer.bin", 699_999, &pieces, sum),
        file(5, "shorter.bin", 700_001, &pieces, sum),
        file(6, "small-longer.txt", 999, &[&small], small_sum),
        file(7, "small-shorter.txt", 1001, &[&small], small_sum),
        file(8, "good.bin", 700_000, &pieces, sum),
    ];
    for frame in cases.into_iter().flatten().chain([Frame::Bye]) {
        if frame.write(&mut relay.to).is_err() {
            let (code, err) = relay.exit_code();
            panic!("the relay exited ({code:?}) before it had every frame: {err}");
        }
    }
    let mut results = std::collections::BTreeMap::new();
    while let Some(frame) = relay.next() {
        match frame {
            Frame::Result { file, outcome } => {
                assert!(results.insert(file, outcome).is_none(), "file {file} twice")
            }
            other => panic!("expected results only, got {other:?}"),
        }
    }
    assert_eq!(relay.exit_code().0, Some(0));
    assert_eq!(results.len(), 8, "{results:?}");
    assert_eq!(results[&1], Outcome::Done(1000));
    assert_eq!(results[&8], Outcome::Done(700_000));
    for (file, name) in [
        (2, "longer-held.bin"),
        (3, "bad-sum.bin"),
        (4, "longer.bin"),
        (5, "shorter.bin"),
        (6, "small-longer.txt"),
        (7, "small-shorter.txt"),
    ] {
        assert!(matches!(results[&file], Outcome::Failed { .. }), "file {file}: {:?}", results[&file]);
        assert!(!out.path().join(name).exists(), "{name} was published");
    }
    assert_eq!(fs::read(out.path().join("first.txt")).unwrap(), small);
    assert!(fs::read(out.path().join("good.bin")).unwrap() == data);
    wait_until("no temporary files", || server.temp_files().is_empty());
}

#[test]
fn the_relay_trusts_no_frame() {
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("rmtframes"), out.path(), &[]);
    let mut relay = Relay::start(&server.name);
    // A file whose data does not match its END: failed, not published.
    let data = pattern(5000, 9);
    for frame in file_frames(1, "damaged.bin", &data, sharedxfer::checksum::of(&data) ^ 1) {
        relay.send(frame);
    }
    // A good one after it still goes through.
    for frame in file_frames(2, "good.bin", &data, sharedxfer::checksum::of(&data)) {
        relay.send(frame);
    }
    relay.send(Frame::Bye);
    match relay.next() {
        Some(Frame::Result { file: 1, outcome: Outcome::Failed { message, .. } }) => {
            assert!(message.contains("damaged in transit"), "{message}")
        }
        other => panic!("expected file 1 to fail, got {other:?}"),
    }
    assert_eq!(relay.next(), Some(Frame::Result { file: 2, outcome: Outcome::Done(5000) }));
    assert_eq!(relay.next(), None);
    assert_eq!(relay.exit_code().0, Some(0));
    assert!(!out.path().join("damaged.bin").exists());
    assert_eq!(fs::read(out.path().join("good.bin")).unwrap(), data);
    assert_eq!(fs::metadata(out.path().join("good.bin")).unwrap().mode() & 0o777, 0o600);

    // Garbage where a frame should be: the relay says why and exits 1, nothing published.
    let mut relay = Relay::start(&server.name);
    let frames = file_frames(1, "cut.bin", &data, sharedxfer::checksum::of(&data));
    relay.send(frames[0].clone());
    relay.to.write_all(&[2, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0]).unwrap();
    match relay.next() {
        Some(Frame::Fatal { message }) => assert!(message.contains("bad frame"), "{message}"),
        other => panic!("expected FATAL, got {other:?}"),
    }
    let (code, err) = relay.exit_code();
    assert_eq!(code, Some(1), "{err}");
    assert!(!out.path().join("cut.bin").exists());
    wait_until("no temporary files", || server.temp_files().is_empty());

    // Out of order, and a peer that is not a relay client at all.
    let mut relay = Relay::start(&server.name);
    for frame in file_frames(7, "skipped-ahead.bin", &data, 0) {
        // The relay may be gone before the last frames (a broken pipe then).
        let _ = frame.write(&mut relay.to);
    }
    assert!(matches!(relay.next(), Some(Frame::Fatal { .. })));
    assert_eq!(relay.exit_code().0, Some(1));
    let mut stranger = Command::new(CLIENT)
        .args(["--relay", "-n", &server.name])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    stranger.stdin.take().unwrap().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let output = stranger.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("did not greet"), "{output:?}");
}

/// The relay is a process like any other: SIGTERM (or the SIGHUP of a closed ssh
/// session) ends it mid-file, and the server drops what it was sending.
#[test]
fn a_relay_ends_on_sigterm_and_nothing_is_published() {
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("rmtterm"), out.path(), &[]);
    let mut relay = Relay::start(&server.name);
    let meta = FileMeta { mode: Some(0o600), ..FileMeta::default() };
    let what = Begin::File { name: "cut.bin".into(), size: Some(4 << 20), meta };
    relay.send(Frame::Begin { file: 1, what });
    // 1 MiB of 4: the file stays in progress, the relay waits for more.
    for chunk in pattern(1 << 20, 9).chunks(128 << 10) {
        relay.send(Frame::Data { file: 1, bytes: chunk.to_vec() });
    }
    relay.to.flush().unwrap();
    wait_until("the server to hold cut.bin in progress", || !server.temp_files().is_empty());
    signal(relay.child.id(), "TERM");
    let status = wait_with_deadline(&mut relay.child, "the relay after SIGTERM");
    assert!(!status.success(), "{status:?}");
    wait_until("the server to drop the unfinished file", || server.temp_files().is_empty());
    assert!(!out.path().join("cut.bin").exists(), "a half-sent file was published");
}

/// Writes an executable `rsh` stand-in in `dir` with `body` (sh).
fn rsh_script(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("rsh.sh");
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A relay that answers garbage and then reads nothing more: the client says so
/// and ends, though its file (larger than any pipe) is not written out yet.
#[test]
fn a_relay_that_gives_up_and_stops_reading_does_not_hang_the_client() {
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "big.bin", 20 << 20, 4);
    let mut answer = frames::HELLO.to_vec();
    Frame::Ready.write(&mut answer).unwrap();
    answer.extend_from_slice(&[99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    fs::write(src.path().join("answer.bin"), &answer).unwrap();
    let rsh = rsh_script(src.path(), "cat answer.bin; exec sleep 120");
    let mut child = Command::new(CLIENT)
        .current_dir(src.path())
        .args(["--remote", "somehost", "--rsh", rsh.to_str().unwrap(), "-n", "nosuchseg", "big.bin"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_deadline(&mut child, "a client whose relay gave up");
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("big.bin") && err.contains("kind 99"), "{err}");
}

/// Something the remote shell started keeps its stderr open after the relay is
/// done (ssh's ControlPersist master does): the client still ends when its
/// files are confirmed, not when that process exits.
#[test]
fn a_process_holding_the_relays_stderr_does_not_keep_the_client() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("rmterr"), out.path(), &[]);
    write_file(src.path(), "a.bin", 1000, 5);
    let rsh = rsh_script(
        src.path(),
        &format!("sleep 30 </dev/null >/dev/null &\necho $! >sleeper.pid\nexec {} \"$@\"", shim()),
    );
    let started = Instant::now();
    let output = run({
        let mut c = Command::new(CLIENT);
        c.current_dir(src.path()).env("LSH_BIN", bin_dir());
        c.args(["--remote", "somehost", "--rsh", rsh.to_str().unwrap(), "-n", &server.name, "a.bin"]);
        c
    });
    assert!(output.status.success(), "{}", show(&output));
    let sleeper = fs::read_to_string(src.path().join("sleeper.pid")).unwrap();
    signal(sleeper.trim().parse().unwrap(), "KILL");
    assert!(started.elapsed() < Duration::from_secs(20), "the client waited {:?}", started.elapsed());
    assert!(fs::read(out.path().join("a.bin")).unwrap() == pattern(1000, 5));
}

/// A source that falls silent for longer than the server's --idle-timeout (a slow
/// pipe) is not dropped over --remote either: the relay, waiting on its client,
/// keeps its streams alive, as a local client waiting on the pipe does.
#[test]
fn a_silent_source_over_the_relay_is_not_dropped_for_idleness() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("rmtidle"), out.path(), &["--idle-timeout", "2"]);
    let mut command = remote_client(&server.name, src.path());
    command
        .args(["-", "--as", "slow.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = pattern(600_000, 7);
    stdin.write_all(&data[..300_000]).unwrap();
    stdin.flush().unwrap();
    wait_until("the server to hold slow.bin in progress", || !server.temp_files().is_empty());
    // Three idle timeouts of silence.
    std::thread::sleep(Duration::from_secs(6));
    stdin.write_all(&data[300_000..]).unwrap();
    drop(stdin);
    let output = finish(child);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(fs::read(out.path().join("slow.bin")).unwrap() == data);
}

/// A client that is stopped (Ctrl-Z stops ssh with it; or its link hangs) sends
/// nothing, not even ALIVE: its relay's streams are dropped by the server's
/// --idle-timeout, as a stopped client's are on the server's own host.
#[test]
fn a_stopped_remote_client_is_dropped_for_idleness() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("rmtstopc"), out.path(), &["--idle-timeout", "2"]);
    let (child, stdin) = half_sent(&server, src.path(), &[]);
    freeze(child.id());
    wait_until("the server to drop the stopped client's file", || server.temp_files().is_empty());
    thaw(child.id());
    // Resumed, with its source still open and silent: the relay tells it at the
    // first ALIVE that the stream was dropped (not only when the source ends).
    let waited = wait_for_exit(child.id(), Duration::from_secs(20));
    drop(stdin);
    let output = finish(child);
    assert!(waited < Duration::from_secs(20), "the client waited for its source after the drop");
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("dropped"), "{}", show(&output));
    assert!(!out.path().join("slow.bin").exists(), "a dropped file was published");
}

/// A client stopped past --idle-timeout in the middle of a FIFO, then resumed: the
/// FIFO's file fails at once (the relay tells it at the first ALIVE), while the FIFO
/// stays open and silent, and the relay goes on: the next file is sent.
#[test]
fn a_dropped_file_over_the_relay_fails_alone_and_the_next_is_sent() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("rmtdropone"), out.path(), &["--idle-timeout", "2"]);
    let fifo = src.path().join("f.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    fs::write(src.path().join("b.txt"), b"after the drop").unwrap();
    let mut command = remote_client(&server.name, src.path());
    command.args(["f.fifo", "b.txt"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().unwrap();
    let mut writer = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    writer.write_all(&pattern(300_000, 9)).unwrap();
    writer.flush().unwrap();
    wait_until("the server to hold f.fifo in progress", || !server.temp_files().is_empty());
    freeze(child.id());
    wait_until("the server to drop the stopped client's file", || server.temp_files().is_empty());
    thaw(child.id());
    let waited = wait_for_exit(child.id(), Duration::from_secs(20));
    drop(writer);
    let output = finish(child);
    assert!(
        waited < Duration::from_secs(20),
        "the client waited for the FIFO after the drop: {}",
        show(&output)
    );
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("f.fifo"), "{}", show(&output));
    assert_eq!(fs::read(out.path().join("b.txt")).unwrap(), b"after the drop", "{}", show(&output));
    assert!(!out.path().join("f.fifo").exists(), "a dropped file was published");
}

/// `-n NAME` is checked before anything runs on the other host (the remote shell
/// reads the relay's command line again: a name is never a shell command), and
/// `--timeout` goes to the relay: a stopped server is given up on after it.
#[test]
fn the_segment_name_is_checked_here_and_the_timeout_goes_to_the_relay() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a.txt"), b"a").unwrap();
    let planted = src.path().join("planted");
    let name = format!("$(touch {})", planted.display());
    let output = run({
        let mut c = Command::new(CLIENT);
        c.current_dir(src.path()).env("LSH_BIN", bin_dir());
        c.args(["--remote", "somehost", "--rsh", "sh -c 'shift; eval \"$*\"' lsh", "-n", &name, "a.txt"]);
        c
    });
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("is not allowed"), "{}", show(&output));
    assert!(!planted.exists(), "the name ran as a command on the other host");

    let server = Server::start(&unique_name("rmttimeout"), out.path(), &[]);
    freeze(server.pid());
    let started = Instant::now();
    let output = run({
        let mut c = remote_client(&server.name, src.path());
        c.args(["--timeout", "2", "a.txt"]);
        c
    });
    let took = started.elapsed();
    thaw(server.pid());
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("has not answered for 2 s"), "{}", show(&output));
    assert!(took < Duration::from_secs(9), "gave up after {took:?}, not after --timeout 2");
}

/// A source that trickles (1,000 bytes every 0.1 s: never silent, yet too slow to
/// fill the client's 64 KiB buffer, or a slot, within --idle-timeout) is not
/// dropped over --remote either.
#[test]
fn a_trickling_source_over_the_relay_is_not_dropped_for_idleness() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // 64 MiB: slots of 1 MiB, which the trickle takes longer than 2 s to fill.
    let server =
        Server::start(&unique_name("rmttrickle"), out.path(), &["--idle-timeout", "2", "--size", "64M"]);
    let mut command = remote_client(&server.name, src.path());
    command
        .args(["-", "--as", "trickle.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = pattern(100 * 1_000, 8);
    let fed = data.clone();
    let feeder = std::thread::spawn(move || {
        for chunk in fed.chunks(1_000) {
            if stdin.write_all(chunk).and_then(|()| stdin.flush()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let output = finish(child);
    feeder.join().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(fs::read(out.path().join("trickle.bin")).unwrap() == data);
}

/// A file the server gives up on while it is sent (here: past --max-file-size) is
/// told to the client at once, which stops reading its source: a producer that
/// never ends does not keep it sending a lost file for good.
#[test]
fn a_file_failed_mid_way_stops_the_remote_client_reading_it() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("rmtcut2"), out.path(), &["--max-file-size", "1M"]);
    let mut command = remote_client(&server.name, src.path());
    command
        .args(["-", "--as", "endless.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = std::sync::Arc::clone(&stop);
    let producer = std::thread::spawn(move || {
        let chunk = pattern(64 << 10, 11);
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let status = wait_with_deadline(&mut child, "a remote client whose file failed mid-way");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.join().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("endless.bin") || err.contains("-:"), "{err}");
    assert!(!out.path().join("endless.bin").exists(), "a failed file was published");
}

/// A folder sent through the relay is staged as a local client's is: while it is
/// sent, it exists only under a hidden name; its files are confirmed with its
/// commit. If its name appears meanwhile, nothing of it is published over or into
/// it, and every item of it fails saying so (exit 1).
#[test]
fn a_folder_through_the_relay_appears_whole_or_not_at_all() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("rmtstage"), out.path(), &[]);
    let staged = || {
        fs::read_dir(out.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".stage"))
    };
    for (folder, planted) in [("whole", false), ("taken", true)] {
        let root = src.path().join(folder);
        fs::create_dir_all(root.join("sub")).unwrap();
        write_file(&root, "a.bin", 5000, 1);
        write_file(&root.join("sub"), "b.bin", 70_000, 2);
        let fifo = root.join("zz.fifo");
        assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let mut command = remote_client(&server.name, src.path());
        command.arg(folder);
        let child = Running::spawn(command); // killed if the test fails first
                                             // The client waits on the FIFO: everything before it is in the hidden folder.
        wait_until("the folder staged", staged);
        wait_until("the files before the FIFO in the hidden folder", || {
            fs::read_dir(out.path()).unwrap().flatten().any(|e| {
                e.file_name().to_string_lossy().ends_with(".stage") && e.path().join("sub/b.bin").exists()
            })
        });
        assert!(!out.path().join(folder).exists(), "visible under its name before its commit");
        if planted {
            fs::create_dir(out.path().join(folder)).unwrap();
        }
        fs::write(&fifo, b"late").unwrap();
        let output = child.finish();
        if planted {
            assert_eq!(output.status.code(), Some(1), "{}", show(&output));
            let err = stderr_of(&output);
            assert!(err.contains("appeared while the folder was being sent"), "{}", show(&output));
            assert!(is_empty(&out.path().join(folder)), "published into the folder that appeared");
        } else {
            assert!(output.status.success(), "{}", show(&output));
            assert!(stdout_of(&output).contains("sharedclient: 3 files"), "{}", show(&output));
            assert_eq!(fs::read(out.path().join("whole/zz.fifo")).unwrap(), b"late");
            fs::remove_file(&fifo).unwrap();
            fs::remove_file(out.path().join("whole/zz.fifo")).unwrap();
            assert_eq!(listing(&root), listing(&out.path().join(folder)));
        }
        wait_until("no hidden folder left", || !staged());
    }
    assert!(server.temp_files().is_empty());
}

fn is_empty(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().next().is_none()
}

/// The stream the relay holds aside for a folder's commit beats while the relay
/// waits for the server (here, for buffer space other clients hold longer than
/// `--idle-timeout`): it is not dropped as idle, and the folder's files are
/// confirmed (before, every item failed though the folder was published).
#[test]
fn the_relays_commit_stream_is_not_dropped_while_it_waits_for_the_server() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server =
        Server::start(&unique_name("rmtanchor"), out.path(), &["--size", "1M", "--idle-timeout", "2"]);
    // Slow clients hold the segment's buffers: each sends a FIFO whose writer is
    // silent (and beats the client's stream, as a silent pipe's client does).
    let mut writers = Vec::new();
    let mut hogs = Vec::new();
    for i in 0..8 {
        let fifo = src.path().join(format!("hog{i}"));
        assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Read and write: opening it does not wait for the client.
        writers.push(fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap());
        let mut hog = Command::new(CLIENT);
        hog.args(["--name", &server.name]).arg(&fifo);
        hogs.push(Running::spawn(hog));
    }
    let root = src.path().join("rf");
    fs::create_dir_all(root.join("sub")).unwrap();
    write_file(&root, "a", 100, 1);
    write_file(&root.join("sub"), "b", 100, 2);
    let mut command = remote_client(&server.name, src.path());
    command.args(["rf", "--timeout", "30"]);
    let child = Running::spawn(command);
    std::thread::sleep(Duration::from_secs(5));
    for mut writer in writers.drain(..) {
        writer.write_all(b"x").unwrap();
    }
    let output = child.finish();
    assert!(output.status.success(), "{}", show(&output));
    assert_eq!(listing(&root), listing(&out.path().join("rf")));
    for hog in hogs {
        assert!(hog.finish().status.success(), "a slow client failed");
    }
}
