//! End-to-end tests of the foundation: the real binaries, unique segment names,
//! temp folders. Each test asserts exit codes, messages and file contents.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

#[test]
fn files_arrive_byte_identical_under_their_own_names() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let nested = src.path().join("Тяжелое - наше");
    fs::create_dir(&nested).unwrap();
    let sizes = [0usize, 1, 4095, 4096, (1 << 20) + 3, 20 << 20];
    let mut files: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| write_file(src.path(), &format!("f{i}.bin"), len, i as u64))
        .collect();
    files.push(write_file(&nested, "01. Время.mp3", 70_000, 99));
    let refs: Vec<_> = files.iter().map(|p| p.as_path()).collect();
    let config = write_config(src.path(), &refs);
    let server = Server::start(&unique_name("basic"), out.path(), &[]);
    let ids: Vec<String> = (1..=files.len()).map(|i| i.to_string()).collect();
    let output = run({
        let mut c = server.client(&config);
        c.args(&ids);
        c
    });
    assert!(output.status.success(), "{}", show(&output));
    for file in &files {
        let name = file.file_name().unwrap();
        let got = fs::read(out.path().join(name)).unwrap_or_else(|e| panic!("{name:?} missing: {e}"));
        assert!(got == fs::read(file).unwrap(), "{name:?} differs");
        assert!(
            stdout_of(&output).contains(&format!("sent {}", name.to_string_lossy())),
            "{}",
            show(&output)
        );
    }
    assert!(server.temp_files().is_empty(), "temporary files left: {:?}", server.temp_files());
    wait_until("stream lock files removed", || server.stream_locks().len() <= 1);
}

#[test]
fn several_clients_at_once_all_complete() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let files: Vec<_> =
        (0..6).map(|i| write_file(src.path(), &format!("c{i}.bin"), 3 << 20, 100 + i)).collect();
    let refs: Vec<_> = files.iter().map(|p| p.as_path()).collect();
    let config = write_config(src.path(), &refs);
    let server = Server::start(&unique_name("multi"), out.path(), &["--size", "2M"]);
    let children: Vec<_> = [["1", "2", "3"], ["4", "5", "6"]]
        .iter()
        .map(|ids| {
            let mut c = server.client(&config);
            c.args(ids);
            std::thread::spawn(move || run(c))
        })
        .collect();
    for child in children {
        let output = child.join().unwrap();
        assert!(output.status.success(), "{}", show(&output));
    }
    for file in &files {
        assert!(fs::read(out.path().join(file.file_name().unwrap())).unwrap() == fs::read(file).unwrap());
    }
}

#[test]
fn an_existing_file_is_kept_and_the_client_is_told_why() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "keep.bin", 1000, 1);
    fs::write(out.path().join("keep.bin"), b"precious").unwrap();
    let config = write_config(src.path(), &[&file]);
    let server = Server::start(&unique_name("exists"), out.path(), &[]);
    let output = run({
        let mut c = server.client(&config);
        c.arg("1");
        c
    });
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("already exists"), "{}", show(&output));
    assert!(stderr_of(&output).contains("--overwrite"), "{}", show(&output));
    assert_eq!(fs::read(out.path().join("keep.bin")).unwrap(), b"precious");
    assert!(server.temp_files().is_empty());
}

#[test]
fn overwrite_replaces_an_existing_file() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "new.bin", 5000, 2);
    fs::write(out.path().join("new.bin"), b"old").unwrap();
    let config = write_config(src.path(), &[&file]);
    let server = Server::start(&unique_name("overwrite"), out.path(), &["--overwrite"]);
    let output = run({
        let mut c = server.client(&config);
        c.arg("1");
        c
    });
    assert!(output.status.success(), "{}", show(&output));
    assert!(fs::read(out.path().join("new.bin")).unwrap() == fs::read(&file).unwrap());
}

#[test]
fn a_second_server_on_a_live_name_is_refused_naming_the_first() {
    let out = tempfile::tempdir().unwrap();
    let name = unique_name("second");
    let first = Server::start(&name, out.path(), &[]);
    let mut second = Server::spawn(&name, out.path(), &[]);
    let status = wait_with_deadline(&mut second.child, "second server");
    assert_eq!(status.code(), Some(2));
    wait_until("second server's message", || !second.stderr().is_empty());
    let message = second.stderr().join("\n");
    assert!(message.contains("already running") && message.contains(&first.pid().to_string()), "{message}");
    std::mem::forget(second); // its Drop would remove the first server's segment
}

#[test]
fn a_client_without_a_server_fails_with_a_hint() {
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "x.bin", 10, 1);
    let config = write_config(src.path(), &[&file]);
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &unique_name("noserver"), "--config"]).arg(&config).arg("1");
    let output = run(command);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("start one with `sharedserver --name"), "{}", show(&output));
}

#[test]
fn a_client_waits_its_whole_timeout_for_a_segment_still_being_set_up() {
    // What a server starting with a large --size shows while it reserves the pages:
    // the object exists but is not sized (and has no header) yet.
    let name = unique_name("settingup");
    let shm = shm_path(&name);
    fs::write(&shm, b"").unwrap();
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(shm);
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "x.bin", 10, 1);
    let started = std::time::Instant::now();
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &name, "--timeout", "4"]).arg(&file);
    let output = run(command);
    let waited = started.elapsed();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("never finished setting it up"), "{}", show(&output));
    // A lower bound only: it must not give up before its --timeout (it used to after 2 s).
    assert!(waited >= Duration::from_millis(3500), "gave up after {waited:?}\n{}", show(&output));
}

#[test]
fn a_client_without_ids_prints_usage_and_exits_2() {
    let output = run(std::process::Command::new(CLIENT));
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("Usage"), "{}", show(&output));
}

/// Arguments that cannot mean what they say are refused before anything runs: a
/// host that ssh would take for an option, an empty one, paths beside --ping.
#[test]
fn a_host_taken_for_an_option_and_paths_beside_ping_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("touched");
    let cases: [(Vec<String>, &str); 3] = [
        (vec![format!("--remote=-oProxyCommand=touch {}", marker.display()), "f".into()], "starts with '-'"),
        (vec!["--remote=".into(), "f".into()], "give a host name"),
        (vec!["--ping".into(), "3".into(), "f".into()], "cannot be used with"),
    ];
    for (args, expect) in cases {
        let mut command = std::process::Command::new(CLIENT);
        command.current_dir(dir.path()).args(["--name", &unique_name("usage")]).args(&args);
        let output = run(command);
        assert_eq!(output.status.code(), Some(2), "{args:?}\n{}", show(&output));
        assert!(stderr_of(&output).contains(expect), "{args:?}\n{}", show(&output));
    }
    assert!(!marker.exists(), "ssh ran the planted option");
}

#[test]
fn config_problems_are_named_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.xml");
    let mut command = std::process::Command::new(CLIENT);
    command.arg("--config").arg(&missing).arg("1");
    let output = run(command);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("nope.xml"), "{}", show(&output));

    let broken = dir.path().join("broken.xml");
    fs::write(&broken, "<streams>\n  <stream id=\"1\" file=\"a\">\n</streams>\n").unwrap();
    let mut command = std::process::Command::new(CLIENT);
    command.arg("--config").arg(&broken).arg("1");
    let output = run(command);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("broken.xml:"), "{}", show(&output));

    // The server too: an options file named with -c must be there (else the files
    // would land in the current folder), even beside an OUTPUT_DIR.
    // Named as the default is spelt, too: it was named.
    for (with_output_dir, named) in
        [(false, missing.as_path()), (true, &missing), (false, std::path::Path::new("options.xml"))]
    {
        let mut command = std::process::Command::new(SERVER);
        command.current_dir(dir.path()).args(["--name", &unique_name("cfgmiss"), "-c"]).arg(named);
        if with_output_dir {
            command.arg(dir.path().join("out"));
        }
        let output = run(command);
        assert_eq!(output.status.code(), Some(2), "{}", show(&output));
        let file_name = named.file_name().unwrap().to_str().unwrap();
        assert!(stderr_of(&output).contains(file_name), "{}", show(&output));
        assert!(!dir.path().join("out").exists(), "{}", show(&output));
    }
}

/// Ids that name one file (however the path is spelt) send it once, and each id
/// still gets its line, saying so.
#[test]
fn ids_naming_one_file_send_it_once_and_each_gets_its_line() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "same.bin", 1000, 3);
    let other_spelling = src.path().join(".").join("same.bin");
    let config = write_config(src.path(), &[&file, &file, &other_spelling]);
    let server = Server::start(&unique_name("sameids"), out.path(), &[]);
    let output = run({
        let mut c = server.client(&config);
        c.args(["1", "2", "3"]);
        c
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let text = stdout_of(&output);
    assert!(text.contains("stream 1: sent same.bin (1000 bytes)"), "{}", show(&output));
    for id in [2, 3] {
        let line = format!("stream {id}: sent, as stream 1: the same file (same.bin)");
        assert!(text.contains(&line), "no {line:?}\n{}", show(&output));
    }
    assert!(fs::read(out.path().join("same.bin")).unwrap() == fs::read(&file).unwrap());
    // Sent again: the file is there, so stream 1 fails, and the others with it;
    // the summary counts the file once.
    let output = run({
        let mut c = server.client(&config);
        c.args(["--json", "1", "2", "3"]);
        c
    });
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let doc: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();
    assert_eq!((doc["failed"].as_u64(), doc["skipped"].as_u64()), (Some(1), Some(0)), "{doc}");
    // Stdout holds only the document; the failure is said on stderr too, once.
    let said = stderr_of(&output);
    assert_eq!(said.matches("stream 1: failed: ").count(), 1, "{}", show(&output));
    assert!(said.contains("already exists"), "{}", show(&output));
    let files = doc["files"].as_array().unwrap();
    assert_eq!(files.len(), 3, "{doc}");
    assert!(files.iter().all(|f| f["status"] == "failed"), "{doc}");
    assert_eq!(files[1]["same_as"], "stream 1", "{doc}");
}

#[test]
fn bad_ids_and_missing_files_fail_alone_while_the_rest_arrive() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let good = write_file(src.path(), "good.bin", 300_000, 5);
    let missing = src.path().join("missing.bin");
    let config = write_config(src.path(), &[&good, &missing]);
    let server = Server::start(&unique_name("partial"), out.path(), &[]);
    let output = run({
        let mut c = server.client(&config);
        c.args(["1", "2", "77"]);
        c
    });
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(
        err.contains("stream 2: failed: cannot open") && err.contains("missing.bin"),
        "{}",
        show(&output)
    );
    assert!(err.contains("unknown stream id 77"), "{}", show(&output));
    assert!(fs::read(out.path().join("good.bin")).unwrap() == fs::read(&good).unwrap());
}

#[test]
fn a_killed_client_is_cleaned_up_and_the_server_keeps_serving() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let big = write_file(src.path(), "big.bin", 64 << 20, 7);
    let small = write_file(src.path(), "after.bin", 100_000, 8);
    let config = write_config(src.path(), &[&big, &small]);
    let server = Server::start(&unique_name("killclient"), out.path(), &["--size", "1M"]);
    let mut client = server.client(&config).arg("1").stdout(std::process::Stdio::null()).spawn().unwrap();
    // Freeze the client once the server has its temporary file: it is mid-transfer.
    wait_until("the transfer to start", || !server.temp_files().is_empty());
    signal(client.id(), "STOP");
    signal(client.id(), "KILL");
    wait_with_deadline(&mut client, "killed client");
    server.wait_for_line("the dead client's failure", |l| l.contains("failed big.bin") && l.contains("died"));
    wait_until("temporary file removed", || server.temp_files().is_empty());
    assert!(!out.path().join("big.bin").exists(), "a half file was published");
    let output = run({
        let mut c = server.client(&config);
        c.arg("2");
        c
    });
    assert!(output.status.success(), "{}", show(&output));
    assert!(fs::read(out.path().join("after.bin")).unwrap() == fs::read(&small).unwrap());
}

#[test]
fn a_killed_server_fails_its_clients_and_a_new_one_starts_cleanly() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let big = write_file(src.path(), "big.bin", 64 << 20, 9);
    let small = write_file(src.path(), "small.bin", 1000, 10);
    let config = write_config(src.path(), &[&big, &small]);
    let name = unique_name("killserver");
    let mut server = Server::start(&name, out.path(), &["--size", "1M"]);
    let client = server
        .client(&config)
        .args(["--timeout", "3", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the transfer to start", || !server.temp_files().is_empty());
    signal(client.id(), "STOP");
    server.stop("KILL");
    signal(client.id(), "CONT");
    let started = std::time::Instant::now();
    let output = {
        let mut client = client;
        wait_with_deadline(&mut client, "client of a dead server");
        client.wait_with_output().unwrap()
    };
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(started.elapsed() < Duration::from_secs(30), "the client took {:?} to notice", started.elapsed());
    assert!(stderr_of(&output).contains("server"), "{}", show(&output));
    assert!(!out.path().join("big.bin").exists());
    assert!(shm_path(&name).exists(), "SIGKILL leaves the segment behind");
    let server = Server::start(&name, out.path(), &[]);
    assert!(server.stderr().join("\n").contains("stale") || server.stderr().is_empty());
    assert!(server.temp_files().is_empty(), "the new server removes stale temporary files");
    let output = run({
        let mut c = server.client(&config);
        c.arg("2");
        c
    });
    assert!(output.status.success(), "{}", show(&output));
}

#[test]
fn sigint_sigterm_or_sighup_stops_the_server_cleanly_exit_0_and_removes_everything_it_made() {
    for signal_name in ["INT", "TERM", "HUP"] {
        let out = tempfile::tempdir().unwrap();
        let name = unique_name("sigstop");
        let mut server = Server::start(&name, out.path(), &[]);
        assert!(shm_path(&name).exists() && lock_dir(&name).exists());
        let status = server.stop(signal_name);
        assert_eq!(status.code(), Some(0), "a requested stop is not a failure (SIG{signal_name})");
        assert!(!shm_path(&name).exists(), "segment left behind");
        assert!(!lock_dir(&name).exists(), "lock folder left behind");
    }
}

#[test]
fn ping_reports_min_median_and_p99() {
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("ping"), out.path(), &[]);
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &server.name, "--ping", "200"]);
    let output = run(command);
    assert!(output.status.success(), "{}", show(&output));
    let text = stdout_of(&output);
    assert!(text.contains("200 round trips") && text.contains("median") && text.contains("p99"), "{text}");
    // --json: one document on stdout, with or without a server.
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &server.name, "--ping", "50", "--json"]);
    let output = run(command);
    assert!(output.status.success(), "{}", show(&output));
    let doc: serde_json::Value = serde_json::from_str(&stdout_of(&output)).expect("JSON on stdout");
    assert_eq!(doc["round_trips"], 50, "{doc}");
    let (min, median, p99) = (doc["min_us"].as_f64(), doc["median_us"].as_f64(), doc["p99_us"].as_f64());
    assert!(min.is_some_and(|m| m > 0.0) && min <= median && median <= p99, "{doc}");
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &unique_name("noping"), "--ping", "5", "--json", "--timeout", "1"]);
    let output = run(command);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let doc: serde_json::Value = serde_json::from_str(&stdout_of(&output)).expect("JSON on stdout");
    assert!(doc["error"].as_str().is_some_and(|e| !e.is_empty()), "{doc}");
}

/// What the client prints on stdout is its result: if stdout cannot be written
/// (`--json > /dev/full`), it says so and exits 1, though every file was sent.
#[test]
fn a_client_whose_stdout_cannot_be_written_exits_non_zero() {
    let out = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "a.bin", 100, 1);
    let server = Server::start(&unique_name("devfull"), out.path(), &[]);
    for json in [true, false] {
        let _ = fs::remove_file(out.path().join("a.bin"));
        let mut command = std::process::Command::new(CLIENT);
        command.args(["--name", &server.name]).arg(&file);
        if json {
            command.arg("--json");
        }
        command.stdout(fs::OpenOptions::new().write(true).open("/dev/full").unwrap());
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(1), "json {json}: {}", show(&output));
        let err = stderr_of(&output);
        assert!(
            err.contains("cannot write to standard output: No space left on device"),
            "{}",
            show(&output)
        );
        assert!(out.path().join("a.bin").exists(), "the file itself was sent");
    }
    // A reader that closed the pipe (`| head`, `| true`) chose to read no more.
    fs::remove_file(out.path().join("a.bin")).unwrap();
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &server.name, "-v"]).arg(&file);
    let mut child =
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let status = wait_with_deadline(&mut child, "the client with a closed pipe");
    assert!(status.success(), "{status:?}");
    assert!(out.path().join("a.bin").exists());
}

#[test]
fn a_segment_larger_than_dev_shm_is_refused_with_sizes() {
    let out = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(&unique_name("huge"), out.path(), &["--size", "1000G"]);
    let status = wait_with_deadline(&mut server.child, "oversized server");
    assert_eq!(status.code(), Some(2));
    wait_until("the message", || !server.stderr().is_empty());
    let message = server.stderr().join("\n");
    assert!(message.contains("free") && message.contains("--size"), "{message}");
}

#[test]
fn a_bad_segment_name_is_a_usage_error_for_every_client_mode() {
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "x.bin", 10, 1);
    let config = write_config(src.path(), &[&file]);
    for args in [vec!["1"], vec!["--status"], vec!["--ping", "3"]] {
        let mut command = std::process::Command::new(CLIENT);
        command.args(["--name", "bad/name", "--config"]).arg(&config).args(&args);
        let output = run(command);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", show(&output));
        assert!(stderr_of(&output).contains("letters, digits"), "{args:?}: {}", show(&output));
    }
}

/// The ready line, and every message, name OUTPUT_DIR as an absolute path without
/// `..` (a service's log, or a client in another folder, knows nothing of the
/// folder the server was started in).
#[test]
fn the_output_folder_is_named_absolutely_in_the_ready_line_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("cfg")).unwrap();
    fs::create_dir(dir.path().join("inbox")).unwrap();
    let name = unique_name("readyabs");
    let mut command = std::process::Command::new(SERVER);
    command.current_dir(dir.path().join("cfg")).args(["--name", &name, "../inbox/sub"]);
    let server = Running::spawn(command);
    wait_until("the server's segment", || shm_path(&name).exists());
    // The current folder as the kernel names it (the temporary folder may be
    // reached through a link).
    let shown = dir.path().canonicalize().unwrap().join("inbox/sub");
    let source = write_file(dir.path(), "a.txt", 10, 1);
    for _ in 0..2 {
        let mut client = std::process::Command::new(CLIENT);
        client.args(["--name", &name]).arg(&source);
        let _ = run(client);
    }
    let mut client = std::process::Command::new(CLIENT);
    client.args(["--name", &name]).arg(&source);
    let again = run(client);
    let wanted = format!("{}/a.txt already exists", shown.display());
    assert!(stderr_of(&again).contains(&wanted), "no {wanted:?}: {}", show(&again));
    signal(server.pid(), "INT");
    let output = server.finish();
    let wanted = format!("writing to {}", shown.display());
    assert!(stdout_of(&output).lines().any(|l| l.ends_with(&wanted)), "no {wanted:?}: {}", show(&output));
}
