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

#[test]
fn one_client_cannot_hold_more_streams_than_its_quota_and_others_are_served() {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    fs::create_dir(&tree).unwrap();
    for i in 0..8 {
        write_file(&tree, &format!("f{i}.bin"), 200_000 + i, i as u64);
    }
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("quota"), out.path(), &["--max-streams-per-client", "2"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &[]);
    let greedy = run({
        let mut c = server.client(&config);
        c.args(["-j", "6"]).arg(&tree);
        c
    });
    assert_eq!(greedy.status.code(), Some(1), "{}", show(&greedy));
    assert!(stderr_of(&greedy).contains("--max-streams-per-client"), "{}", show(&greedy));
    // Whatever arrived is whole; a client within the quota gets everything.
    let second = tempfile::tempdir().unwrap();
    let copy = second.path().join("again");
    fs::create_dir(&copy).unwrap();
    for i in 0..8 {
        fs::copy(tree.join(format!("f{i}.bin")), copy.join(format!("f{i}.bin"))).unwrap();
    }
    let polite = run({
        let mut c = server.client(&config);
        c.args(["-j", "2"]).arg(&copy);
        c
    });
    assert!(polite.status.success(), "{}", show(&polite));
    for i in 0..8 {
        let name = format!("f{i}.bin");
        assert!(
            fs::read(out.path().join("again").join(&name)).unwrap() == fs::read(tree.join(&name)).unwrap()
        );
        if let Ok(got) = fs::read(out.path().join("tree").join(&name)) {
            assert!(got == fs::read(tree.join(&name)).unwrap(), "{name} arrived torn");
        }
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
    assert!(server.stdout().iter().all(|l| !l.starts_with("done ")), "{:?}", server.stdout());
}
