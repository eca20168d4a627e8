//! Operating the server: what a refused start leaves (nothing), what it says, and
//! how a stop on request ends. Each case failed before its fix.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

/// Runs a server that is expected to refuse to start; returns its stderr.
fn refused_start(name: &str, out: &std::path::Path) -> String {
    let mut server = Server::spawn(name, out, &[]);
    let status = wait_with_deadline(&mut server.child, "a refused server");
    assert_eq!(status.code(), Some(2), "stderr: {:#?}", server.stderr());
    wait_until("its message", || !server.stderr().is_empty());
    let message = server.stderr().join("\n");
    // Its Drop would remove whatever sits at the segment's path.
    std::mem::forget(server);
    message
}

#[test]
fn a_file_at_the_segment_path_that_is_not_a_segment_is_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("not-made");
    let name = unique_name("foreign");
    let path = shm_path(&name);
    fs::write(&path, b"someone's notes, not a segment").unwrap();
    let message = refused_start(&name, &out);
    let kept = fs::read(&path);
    let _ = fs::remove_file(&path);
    assert!(
        message.contains(&path.display().to_string()) && message.contains("not a sharedxfer segment"),
        "{message}"
    );
    assert_eq!(kept.unwrap(), b"someone's notes, not a segment", "the file was changed or removed");
    assert!(!out.exists(), "a refused start made OUTPUT_DIR");
    assert!(!lock_dir(&name).exists(), "a refused start left its lock folder");
}

#[test]
fn a_server_that_cannot_start_makes_no_output_folder() {
    let root = tempfile::tempdir().unwrap();
    let name = unique_name("busyname");
    let first = Server::start(&name, &root.path().join("first"), &[]);
    let out = root.path().join("second");
    let message = refused_start(&name, &out);
    assert!(message.contains("already running"), "{message}");
    assert!(!out.exists(), "a refused start made OUTPUT_DIR");
    drop(first);
}

#[test]
fn an_output_dir_that_is_a_file_is_named_as_not_a_folder() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("a-file");
    fs::write(&out, b"x").unwrap();
    let name = unique_name("outfile");
    let message = refused_start(&name, &out);
    assert!(message.contains(&format!("{} is not a folder", out.display())), "{message}");
    assert!(!message.contains("File exists"), "{message}");
    assert_eq!(fs::read(&out).unwrap(), b"x");
    assert!(!shm_path(&name).exists() && !lock_dir(&name).exists(), "a refused start left files");
}

#[test]
fn every_sync_mode_publishes_whole_files_and_a_bad_mode_is_refused() {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    fs::create_dir(&tree).unwrap();
    for i in 0..20 {
        write_file(&tree, &format!("f{i}.bin"), 1000 * i + 1, i as u64);
    }
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &[]);
    for mode in ["none", "file", "batch"] {
        let out = tempfile::tempdir().unwrap();
        let server = Server::start(&unique_name(&format!("sync{mode}")), out.path(), &["--sync", mode]);
        let output = run({
            let mut c = server.client(&config);
            c.arg(&tree);
            c
        });
        assert!(output.status.success(), "--sync {mode}: {}", show(&output));
        for i in 0..20 {
            let name = format!("f{i}.bin");
            assert!(
                fs::read(out.path().join("tree").join(&name)).unwrap() == fs::read(tree.join(&name)).unwrap()
            );
        }
    }
    let out = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(&unique_name("syncbad"), out.path(), &["--sync", "always"]);
    let status = wait_with_deadline(&mut server.child, "a server with a bad --sync");
    assert_eq!(status.code(), Some(2));
    wait_until("its message", || !server.stderr().is_empty());
    assert!(server.stderr().join("\n").contains("use none, file or batch"), "{:?}", server.stderr());
}

#[test]
fn max_file_size_refuses_big_files_whatever_their_source_and_others_pass() {
    let src = tempfile::tempdir().unwrap();
    let small = write_file(src.path(), "small.bin", 10_000, 1);
    let big = write_file(src.path(), "big.bin", 100_000, 2);
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("maxsize"), out.path(), &["--max-file-size", "64K"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &[]);
    let output = run({
        let mut c = server.client(&config);
        c.arg(&small).arg(&big);
        c
    });
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(
        stderr_of(&output).contains("big.bin is larger than this server takes (--max-file-size 64 KiB)"),
        "{}",
        show(&output)
    );
    assert!(out.path().join("small.bin").exists() && !out.path().join("big.bin").exists());
    // A pipe announces no size: it is stopped as it passes the limit.
    let mut piped = server.client(&config);
    piped.args(["-", "--as", "piped.bin"]).stdin(std::process::Stdio::from(fs::File::open(&big).unwrap()));
    let output = run(piped);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("--max-file-size"), "{}", show(&output));
    assert!(!out.path().join("piped.bin").exists());
}

/// The server refuses a client's streams beyond `--max-streams-per-client`; the
/// real client asks no more than that (`-j 6` against a quota of 2 runs 2 jobs and
/// sends everything, where it used to fail the files of its extra jobs).
#[test]
fn one_client_cannot_hold_more_streams_than_its_quota_and_the_client_keeps_within_it() {
    use sharedxfer::client::{Connection, Session};
    use sharedxfer::protocol::{ClientCommand, ServerReply};
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    fs::create_dir(&tree).unwrap();
    for i in 0..8 {
        write_file(&tree, &format!("f{i}.bin"), 200_000 + i, i as u64);
    }
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("quota"), out.path(), &["--max-streams-per-client", "2"]);
    // A process that takes a third stream: its first command is refused.
    let connection = Connection::open(&server.name, Duration::from_secs(30)).unwrap();
    let mut held: Vec<Session> = (0..3).map(|_| Session::open(&connection).unwrap()).collect();
    let third = &mut held[2];
    third.post(&ClientCommand::Mkdir { name: "over".into(), mode: 0o755 }).unwrap();
    match third.wait_reply() {
        Ok(ServerReply::Error { message, .. }) => {
            assert!(message.contains("--max-streams-per-client"), "{message}")
        }
        other => panic!("a third stream over a quota of 2 was not refused: {other:?}"),
    }
    assert!(!out.path().join("over").exists());
    drop(held);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &[]);
    let greedy = run({
        let mut c = server.client(&config);
        c.args(["-j", "6"]).arg(&tree);
        c
    });
    assert!(greedy.status.success(), "{}", show(&greedy));
    for i in 0..8 {
        let name = format!("f{i}.bin");
        assert!(
            fs::read(out.path().join("tree").join(&name)).unwrap() == fs::read(tree.join(&name)).unwrap()
        );
    }
}

#[test]
fn quiet_hides_published_files_but_never_failures() {
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "twice.bin", 1000, 1);
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("quiet"), out.path(), &["--quiet"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &[]);
    for _ in 0..2 {
        let _ = run({
            let mut c = server.client(&config);
            c.arg(&file);
            c
        });
    }
    let line = server.wait_for_line("the refused resend", |l| l.starts_with("failed twice.bin"));
    assert!(line.contains("already exists"), "{line}");
    // Give a client line, were one coming, the time to arrive.
    std::thread::sleep(Duration::from_millis(300));
    let lines = server.stdout();
    assert!(lines.iter().all(|l| !l.starts_with("done ") && !l.starts_with("client ")), "{lines:?}");
}

/// Sends a folder of 40 small files, one of which the server already has, from a
/// server started with `extra`; returns its stdout once the client's line came.
fn folder_with_one_refused(extra: &[&str], client_args: &[&str]) -> Vec<String> {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    fs::create_dir(&tree).unwrap();
    for i in 0..40 {
        write_file(&tree, &format!("f{i:02}"), 100 + i, i as u64);
    }
    let out = tempfile::tempdir().unwrap();
    fs::create_dir(out.path().join("tree")).unwrap();
    fs::write(out.path().join("tree/f07"), b"already here").unwrap();
    let server = Server::start(&unique_name("lines"), out.path(), extra);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &[]);
    let output = run({
        let mut c = server.client(&config);
        c.args(["-j", "2"]).args(client_args).arg(&tree);
        c
    });
    let want = if client_args.contains(&"--skip-existing") { 0 } else { 1 };
    assert_eq!(output.status.code(), Some(want), "{}", show(&output));
    server.wait_for_line("the client's line", |l| l.starts_with("client "));
    std::thread::sleep(Duration::from_millis(300));
    server.stdout()
}

#[test]
fn the_server_prints_a_line_per_client_and_a_line_per_file_only_when_verbose() {
    let lines = folder_with_one_refused(&[], &[]);
    let clients: Vec<&String> = lines.iter().filter(|l| l.starts_with("client ")).collect();
    assert_eq!(clients.len(), 1, "{lines:?}");
    // 39 files of 100..=139 bytes but f07 (107 bytes).
    let bytes: usize = (0..40).filter(|&i| i != 7).map(|i| 100 + i).sum();
    let wanted = format!(": 39 published, 0 skipped, 1 failed, {bytes} bytes in ");
    assert!(clients[0].contains(&wanted), "{:?} lacks {wanted:?}", clients[0]);
    assert!(lines.iter().all(|l| !l.starts_with("done ")), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("failed tree/f07")).count(), 1, "{lines:?}");

    let lines = folder_with_one_refused(&["-v"], &[]);
    let done: Vec<&String> = lines.iter().filter(|l| l.starts_with("done tree/f")).collect();
    assert_eq!(done.len(), 39, "{lines:?}");
    assert!(done.iter().all(|l| !l.starts_with("done tree/f07 ")), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("client ")).count(), 1, "{lines:?}");

    // The file already there, skipped by the client's choice: counted as skipped.
    let lines = folder_with_one_refused(&[], &["--skip-existing"]);
    let clients: Vec<&String> = lines.iter().filter(|l| l.starts_with("client ")).collect();
    let wanted = format!(": 39 published, 1 skipped, 0 failed, {bytes} bytes in ");
    assert!(clients.len() == 1 && clients[0].contains(&wanted), "{lines:?} lacks {wanted:?}");
}

/// A folder whose name is a file on the server fails every file in it, large ones
/// (each gives its stream up) and batched ones alike: the server still prints one
/// line for the client (each of its streams' ends is not a line of its own).
#[test]
fn a_client_whose_files_all_fail_gets_one_server_line() {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    fs::create_dir(&tree).unwrap();
    for i in 0..12 {
        write_file(&tree, &format!("big{i:02}"), 300_000, i);
    }
    for i in 0..30 {
        write_file(&tree, &format!("small{i:02}"), 50, 100 + i);
    }
    let out = tempfile::tempdir().unwrap();
    fs::write(out.path().join("tree"), b"a file in the way").unwrap();
    let server = Server::start(&unique_name("onefail"), out.path(), &[]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &[]);
    let mut client = server.client(&config);
    client.arg(&tree);
    let output = run(client);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("tree is not a folder: remove it"), "{}", show(&output));
    server.wait_for_line("the client's line", |l| l.starts_with("client "));
    std::thread::sleep(Duration::from_millis(1500));
    let lines = server.stdout();
    let clients: Vec<&String> = lines.iter().filter(|l| l.starts_with("client ")).collect();
    assert_eq!(clients.len(), 1, "{lines:?}");
    // The folder and its 42 files, each failed once.
    assert!(clients[0].contains(": 0 published, 0 skipped, 43 failed, 0 bytes"), "{lines:?}");
    assert_eq!(fs::read(out.path().join("tree")).unwrap(), b"a file in the way");
}

/// The client's `--skip-existing` wins over the server's `--overwrite`: files there
/// already (a small one, sent in a batch, and a large one, sent on its own) are
/// skipped and left as they are; a new one arrives.
#[test]
fn skip_existing_wins_over_the_servers_overwrite() {
    let src = tempfile::tempdir().unwrap();
    let small = write_file(src.path(), "small.txt", 100, 1);
    let large = write_file(src.path(), "large.bin", 300_000, 2);
    let new = write_file(src.path(), "new.bin", 5_000, 3);
    let out = tempfile::tempdir().unwrap();
    fs::write(out.path().join("small.txt"), b"kept").unwrap();
    fs::write(out.path().join("large.bin"), b"kept too").unwrap();
    let server = Server::start(&unique_name("skipover"), out.path(), &["--overwrite"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &[]);
    let output = run({
        let mut c = server.client(&config);
        c.arg("--skip-existing").args([&small, &large, &new]);
        c
    });
    assert!(output.status.success(), "{}", show(&output));
    assert!(stdout_of(&output).contains(", 2 skipped, 0 failed"), "{}", show(&output));
    assert_eq!(fs::read(out.path().join("small.txt")).unwrap(), b"kept");
    assert_eq!(fs::read(out.path().join("large.bin")).unwrap(), b"kept too");
    assert!(fs::read(out.path().join("new.bin")).unwrap() == fs::read(&new).unwrap());
}

/// `--skip-existing` holds to the end under `--overwrite`: a file that appears under
/// the name while the source is still being read (a FIFO, written in two parts) is
/// skipped when the server would publish over it, not replaced.
#[test]
fn skip_existing_skips_a_file_that_appears_while_it_is_sent() {
    use std::io::Write;
    let src = tempfile::tempdir().unwrap();
    let fifo = src.path().join("late.bin");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("skiplate"), out.path(), &["--overwrite"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &[]);
    let client = {
        let mut c = server.client(&config);
        c.arg("--skip-existing").arg(&fifo);
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    };
    let mut writer = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    writer.write_all(&pattern(1 << 20, 5)).unwrap();
    // The server checked the name when the file was opened; it appears only now.
    std::thread::sleep(Duration::from_millis(300));
    fs::write(out.path().join("late.bin"), b"kept").unwrap();
    writer.write_all(&pattern(1 << 20, 6)).unwrap();
    drop(writer);
    let output = client.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", show(&output));
    assert!(stdout_of(&output).contains(", 1 skipped, 0 failed"), "{}", show(&output));
    assert_eq!(fs::read(out.path().join("late.bin")).unwrap(), b"kept", "{}", show(&output));
}

/// A client at its quota whose files fail (they exist already) takes a new stream
/// after each failure: the server must have released the old one first, or the new
/// one is refused as over the quota and a file that could arrive fails.
#[test]
fn failures_at_the_quota_do_not_cost_other_files_their_streams() {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("d");
    fs::create_dir(&tree).unwrap();
    let out = tempfile::tempdir().unwrap();
    fs::create_dir(out.path().join("d")).unwrap();
    for i in 0..40 {
        let name = format!("f{i:02}.bin");
        let file = write_file(&tree, &name, 200_000, i as u64);
        if i % 2 == 1 {
            fs::copy(&file, out.path().join("d").join(&name)).unwrap();
        }
    }
    let server = Server::start(&unique_name("quotafail"), out.path(), &["--max-streams-per-client", "2"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &[]);
    let output = run({
        let mut c = server.client(&config);
        // -v: every failure gets its line.
        c.args(["-v", "-j", "4"]).arg(&tree);
        c
    });
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(!err.contains("--max-streams-per-client"), "{}", show(&output));
    assert_eq!(err.matches("already exists").count(), 20, "{}", show(&output));
    // Named where they are on the server's side, as a batched file's are.
    let taken = format!("{} already exists", out.path().join("d").join("f01.bin").display());
    assert!(err.contains(&taken), "no {taken:?}: {}", show(&output));
    for i in (0..40).step_by(2) {
        let name = format!("f{i:02}.bin");
        assert!(fs::read(out.path().join("d").join(&name)).unwrap() == fs::read(tree.join(&name)).unwrap());
    }
}

/// A new folder with files the server refuses (`--max-file-size`), each of which
/// ends its stream, under a stream quota of 1 (nothing staged: no stream can be
/// held aside for a commit) and of 2 (staged, one stream held aside): every other
/// file is published and reported sent, each refused one fails alone, and nothing
/// staged is left.
#[test]
fn a_folder_with_refused_files_under_a_stream_quota_publishes_all_the_rest() {
    for quota in ["1", "2"] {
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        fs::create_dir_all(tree.join("sub")).unwrap();
        for i in 0..10 {
            write_file(&tree, &format!("small{i}.txt"), 1000 + i, i as u64);
        }
        for i in 0..3 {
            write_file(&tree.join("sub"), &format!("big{i}.bin"), 200_000, 50 + i as u64);
            write_file(&tree.join("sub"), &format!("fits{i}.bin"), 90_000, 60 + i as u64);
        }
        let out = tempfile::tempdir().unwrap();
        let server = Server::start(
            &unique_name("quotastage"),
            out.path(),
            &["--max-streams-per-client", quota, "--max-file-size", "100K"],
        );
        let work = tempfile::tempdir().unwrap();
        let config = write_config(work.path(), &[]);
        let output = run({
            let mut c = server.client(&config);
            c.args(["-j", "4", "--json"]).arg(&tree);
            c
        });
        assert_eq!(output.status.code(), Some(1), "quota {quota}: {}", show(&output));
        let doc: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();
        assert_eq!((doc["sent"].as_u64(), doc["failed"].as_u64()), (Some(13), Some(3)), "{}", show(&output));
        assert_eq!(
            stderr_of(&output).matches("larger than this server takes").count(),
            3,
            "{}",
            show(&output)
        );
        for name in (0..10).map(|i| format!("small{i}.txt")).chain((0..3).map(|i| format!("sub/fits{i}.bin")))
        {
            let got = fs::read(out.path().join("tree").join(&name));
            assert!(got.ok() == fs::read(tree.join(&name)).ok(), "quota {quota}: {name}\n{}", show(&output));
        }
        assert!(!out.path().join("tree/sub/big0.bin").exists());
        wait_until("nothing staged left", || server.temp_files().is_empty());
    }
}

/// A server that holds its lock but has not made its segment yet (it reserves the
/// segment's pages first) is waited for, within --timeout; with no server at all
/// the client says so at once.
#[test]
fn a_starting_server_is_waited_for_and_a_missing_one_is_not() {
    let name = unique_name("starting");
    let locks = sharedxfer::lock::LockDir::create(&name).unwrap();
    let held = locks.lock(sharedxfer::lock::SERVER_LOCK).unwrap();
    let guard = sharedxfer::lock::acquire(&held).unwrap();
    let send = |timeout: &str| {
        let mut command = std::process::Command::new(CLIENT);
        command.args(["--name", &name, "--timeout", timeout, "-", "--as", "x.txt"]);
        command.stdin(std::process::Stdio::null());
        let started = std::time::Instant::now();
        let output = run(command);
        assert_eq!(output.status.code(), Some(1), "{}", show(&output));
        assert!(stderr_of(&output).contains("no server on segment"), "{}", show(&output));
        started.elapsed()
    };
    let waited = send("2");
    assert!(waited >= Duration::from_millis(1900), "gave up on a starting server after {waited:?}");
    drop(guard);
    drop(held);
    locks.remove();
    let waited = send("60");
    assert!(waited < Duration::from_secs(30), "waited {waited:?} for no server at all");
}

/// The final line's first count is of files: with no server, a tree of 3 files in 4
/// folders fails "7 (3 files, 4 folders)", never "0 files ... 7 failed" alone; the
/// JSON count stays one per entry listed.
#[test]
fn failed_folders_are_counted_apart_from_files() {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("t");
    fs::create_dir_all(tree.join("a/b")).unwrap();
    fs::create_dir_all(tree.join("c")).unwrap();
    for file in ["a/f1", "a/b/f2", "c/f3"] {
        fs::write(tree.join(file), b"x").unwrap();
    }
    let missing = unique_name("foldercount-none");
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &missing]).arg(&tree);
    let output = run(command);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let line = stdout_of(&output);
    assert!(line.contains("0 files, 0 bytes"), "{}", show(&output));
    assert!(line.contains(", 0 skipped, 7 failed (3 files, 4 folders)\n"), "{}", show(&output));
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &missing, "--json"]).arg(&tree);
    let doc: serde_json::Value = serde_json::from_str(&stdout_of(&run(command))).unwrap();
    assert_eq!(doc["failed"], 7, "{doc}");
    assert_eq!(doc["files"].as_array().map(Vec::len), Some(7), "{doc}");
}

/// A `--timeout` too long to add to the clock means "as long as it takes", not a
/// panic (exit 101): with no server the client says so, with one it sends.
#[test]
fn a_huge_timeout_is_forever_not_a_panic() {
    let out = tempfile::tempdir().unwrap();
    let missing = unique_name("hugetimeout-none");
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &missing, "--timeout", "18446744073709551615", "-", "--as", "x.txt"]);
    let output = run(command);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("no server on segment"), "{}", show(&output));
    let server = Server::start(&unique_name("hugetimeout"), out.path(), &[]);
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &server.name, "--timeout", "9223372036854775807", "-", "--as", "x.txt"]);
    command.stdin(std::process::Stdio::null());
    let output = run(command);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(fs::read(out.path().join("x.txt")).unwrap(), b"");
}
