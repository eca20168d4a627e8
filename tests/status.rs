//! `sharedclient --status`: a read-only map of a live segment, as text and JSON.

mod common;

use common::*;

fn status(server: &Server, json: bool) -> String {
    let mut command = std::process::Command::new(CLIENT);
    command.args(["--name", &server.name, "--status"]);
    if json {
        command.arg("--json");
    }
    let output = run(command);
    assert!(output.status.success(), "{}", show(&output));
    stdout_of(&output)
}

#[test]
fn status_shows_a_live_stream_and_the_segment_map() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let big = write_file(src.path(), "watched.bin", 32 << 20, 3);
    let config = write_config(src.path(), &[&big]);
    let server = Server::start(&unique_name("status"), out.path(), &["--size", "4M"]);
    let mut client = server.client(&config).arg("1").stdout(std::process::Stdio::null()).spawn().unwrap();
    wait_until("the transfer to start", || !server.temp_files().is_empty());
    signal(client.id(), "STOP");

    let json: serde_json::Value = serde_json::from_str(&status(&server, true)).unwrap();
    let streams = json["streams"].as_array().unwrap();
    let live = streams.iter().find(|s| s["file"] == "watched.bin").expect("the live stream is listed");
    assert_eq!(live["stream_id"], 1);
    assert_eq!(live["client_pid"], client.id());
    assert_eq!(live["file_size"], 32u64 << 20);
    assert!(!live["buffers"].as_array().unwrap().is_empty());
    let map = json["map"].as_str().unwrap();
    assert!(map.starts_with("[R") && map.ends_with("B]"), "records low, buffers high: {map}");
    assert!(json["free_bytes"].as_u64().unwrap() < json["size"].as_u64().unwrap());

    let text = status(&server, false);
    assert!(text.contains("watched.bin") && text.contains("receiving"), "{text}");

    signal(client.id(), "CONT");
    let status_code = wait_with_deadline(&mut client, "client");
    assert!(status_code.success());
    wait_until("the stream's record to be freed", || {
        let json: serde_json::Value = serde_json::from_str(&status(&server, true)).unwrap();
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
}

#[test]
fn status_tells_a_stopped_server_and_a_killed_one_from_a_running_one() {
    let out = tempfile::tempdir().unwrap();
    let name = unique_name("statlive");
    let mut server = Server::start(&name, out.path(), &[]);
    let text = status(&server, false);
    assert!(text.contains(&format!("server pid {} (running)", server.pid())), "{text}");
    assert!(text.contains(" s ago"), "the heartbeat's age is shown: {text}");

    signal(server.pid(), "STOP");
    let text = status(&server, false);
    signal(server.pid(), "CONT");
    assert!(text.contains("(stopped (SIGSTOP))"), "{text}");

    // SIGKILL leaves the segment behind, its header still saying "running".
    signal(server.pid(), "KILL");
    wait_with_deadline(&mut server.child, "the killed server");
    let text = status(&server, false);
    let json: serde_json::Value = serde_json::from_str(&status(&server, true)).unwrap();
    let _ = std::fs::remove_file(shm_path(&name));
    let _ = std::fs::remove_dir_all(lock_dir(&name));
    assert!(text.contains(&format!("server pid {} (gone", server.pid())), "{text}");
    assert!(json["server_state"].as_str().unwrap().starts_with("gone"), "{json}");
}
