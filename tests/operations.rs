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
