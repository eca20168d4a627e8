//! Operating the server: what a refused start leaves (nothing), what it says, and
//! how a stop on request ends. Each case failed before its fix.

mod common;

use std::fs;

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
