//! `sharedclient --status`: a read-only map of a live segment, as text and JSON.

mod common;

use common::*;

/// A FIFO the test holds open for writing, blocking: opened once a reader has it.
fn fifo_writer(path: &std::path::Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let mut writer = None;
    // O_NONBLOCK: fails (ENXIO) while no reader has the FIFO open, instead of waiting.
    wait_until("the client to open the FIFO", || {
        writer = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path).ok();
        writer.is_some()
    });
    let writer = writer.unwrap();
    // SAFETY: fcntl on a descriptor this function owns; clears O_NONBLOCK so writes wait.
    assert_eq!(unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETFL, 0) }, 0);
    writer
}

fn live_stream(json: &serde_json::Value) -> Option<serde_json::Value> {
    json["streams"].as_array().unwrap().iter().find(|s| s["file"] == "watched.bin").cloned()
}

/// The stream is held live without racing the clock: its source is a FIFO the test
/// keeps open, and the server is stopped so the client's chunks stay in the ring.
#[test]
fn status_shows_a_live_stream_and_the_segment_map() {
    use std::io::Write;
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let fifo = src.path().join("watched.bin");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let server = Server::start(&unique_name("status"), out.path(), &["--size", "4M"]);
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &server.name]).arg(&fifo);
    let mut client = command.stdout(std::process::Stdio::null()).spawn().unwrap();
    let mut writer = fifo_writer(&fifo);
    let data = pattern(16 << 20, 3);
    writer.write_all(&data[..1 << 20]).unwrap();
    wait_until("the stream to be received", || {
        let json: serde_json::Value = serde_json::from_str(&server.status(true)).unwrap();
        live_stream(&json).is_some_and(|s| s["bytes_done"].as_u64().unwrap() > 0)
    });
    signal(server.pid(), "STOP");
    // The rest waits in the pipe and the ring until the server goes on.
    let feeder = std::thread::spawn(move || {
        writer.write_all(&data[1 << 20..]).unwrap();
    });
    let mut json = serde_json::Value::Null;
    wait_until("the client to fill a buffer", || {
        // Stopped: the map still, and exit 1 (it serves no one meanwhile).
        json = serde_json::from_str(&server.status_once_exiting(true, 1)).unwrap();
        live_stream(&json).is_some_and(|s| !s["buffers"].as_array().unwrap().is_empty())
    });
    let live = live_stream(&json).unwrap();
    assert_eq!(live["stream_id"], 0, "a path, not an options.xml id");
    assert_eq!(live["client_pid"], client.id());
    assert_eq!(live["size_is_hint"], true, "a FIFO's size is unknown: {live}");
    assert!(live["file_size"].is_null(), "no made-up total for a FIFO: {live}");
    let map = json["map"].as_str().unwrap();
    assert!(map.starts_with("[R") && map.ends_with("B]"), "records low, buffers high: {map}");
    assert!(json["free_bytes"].as_u64().unwrap() < json["size"].as_u64().unwrap());

    let text = server.status_exiting(false, 1);
    assert!(text.contains("watched.bin") && text.contains("receiving") && text.contains('?'), "{text}");

    signal(server.pid(), "CONT");
    feeder.join().unwrap(); // the writer is closed: the client reads to EOF
    let status_code = wait_with_deadline(&mut client, "client");
    assert!(status_code.success());
    assert!(
        std::fs::read(out.path().join("watched.bin")).unwrap() == pattern(16 << 20, 3),
        "content differs"
    );
    wait_until("the stream's record to be freed", || {
        let json: serde_json::Value = serde_json::from_str(&server.status(true)).unwrap();
        json["streams_done"] == 1 && json["buffer_bytes"] == 0 && json["records"] == 1 && json["holes"] == 1
    });
}

#[test]
fn status_without_a_server_fails_clearly() {
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &unique_name("nostatus"), "--status"]);
    let output = run(command);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("no server on segment"), "{}", show(&output));

    // --json: a document on stdout too, for scripts.
    let name = unique_name("nostatusjson");
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &name, "--status", "--json"]);
    let output = run(command);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let doc: serde_json::Value = serde_json::from_str(&stdout_of(&output)).expect("JSON on stdout");
    assert_eq!(doc["segment"], name.as_str(), "{doc}");
    assert!(doc["error"].as_str().unwrap_or_default().contains("no server on segment"), "{doc}");

    // A command line that cannot run, with --json: a document too, exit 2.
    for (args, wanted) in [
        (&["--json", "--as", "x", "a.txt", "b.txt"][..], "--as needs exactly one file"),
        (&["--json", "--bogus"][..], "unexpected argument '--bogus'"),
        // The detail on clap's next line (the missing argument) is kept.
        (&["--json"][..], "the following required arguments were not provided: <ARG>..."),
    ] {
        let mut command = std::process::Command::new(CLIENT);
        command.args(["--name", &name]).args(args);
        let output = run(command);
        assert_eq!(output.status.code(), Some(2), "{}", show(&output));
        let doc: serde_json::Value = serde_json::from_str(&stdout_of(&output)).expect("JSON on stdout");
        assert!(doc["error"].as_str().unwrap_or_default().starts_with(wanted), "{doc}");
        assert_eq!(doc["exit"], 2, "{doc}");
        // On stderr as clap prints it (the detail may be on the next line).
        let first_line = wanted.split(": <").next().unwrap();
        assert!(stderr_of(&output).contains(first_line), "the message on stderr too: {}", show(&output));
    }
}

#[test]
fn status_tells_a_stopped_server_and_a_killed_one_from_a_running_one() {
    let out = tempfile::tempdir().unwrap();
    let name = unique_name("statlive");
    let mut server = Server::start(&name, out.path(), &[]);
    let text = server.status(false);
    assert!(text.contains(&format!("server pid {} (running)", server.pid())), "{text}");
    assert!(text.contains(" s ago"), "the heartbeat's age is shown: {text}");

    // Not serving (stopped, then gone): the map, and exit 1 (a health check).
    signal(server.pid(), "STOP");
    let text = server.status_once_exiting(false, 1);
    signal(server.pid(), "CONT");
    assert!(text.contains("(stopped (SIGSTOP))"), "{text}");

    // SIGKILL leaves the segment behind, its header still saying "running".
    signal(server.pid(), "KILL");
    wait_with_deadline(&mut server.child, "the killed server");
    let text = server.status_exiting(false, 1);
    let json: serde_json::Value = serde_json::from_str(&server.status_exiting(true, 1)).unwrap();
    let _ = std::fs::remove_file(shm_path(&name));
    let _ = std::fs::remove_dir_all(lock_dir(&name));
    assert!(text.contains(&format!("server pid {} (gone", server.pid())), "{text}");
    assert!(json["server_state"].as_str().unwrap().starts_with("gone"), "{json}");
}
