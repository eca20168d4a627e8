//! End-to-end tests of batch mode (many small files packed into ring slots) with the
//! real binaries: a segment many times smaller than the tree sent, a client killed
//! mid-batch, and `--skip-existing` answered entry by entry. Each test checks every
//! file that arrives: name, size, mode, modification time and contents.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

// ---------------------------------------------------------------------------------
// Source trees and what arrives.
// ---------------------------------------------------------------------------------

/// One entry of a tree as it is on disk.
#[derive(Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, mtime: SystemTime, data: Vec<u8> },
    Other { what: String },
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Dir { mode } => write!(f, "dir {mode:04o}"),
            Node::File { mode, mtime, data } => {
                let since = |t: &SystemTime| match t.duration_since(UNIX_EPOCH) {
                    Ok(d) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
                    Err(e) => format!("-{:?}", e.duration()),
                };
                write!(f, "file {mode:04o}, mtime {}, {} bytes", since(mtime), data.len())
            }
            Node::Other { what } => write!(f, "{what}"),
        }
    }
}

fn node(path: &Path) -> Node {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_dir() {
        Node::Dir { mode }
    } else if meta.is_file() {
        let data = fs::read(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        Node::File { mode, mtime: meta.modified().unwrap(), data }
    } else {
        Node::Other { what: format!("{:?}", meta.file_type()) }
    }
}

/// Everything beneath `root` (not `root` itself), by path relative to it.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    walk_tree(root, node, |n| matches!(n, Node::Dir { .. }))
}

/// What a sent entry must look like on arrival: a file keeps its permission bits
/// and mtime exactly; a folder gets u+rwx on top of its bits.
fn as_sent(n: &Node) -> Node {
    match n {
        Node::Dir { mode } => Node::Dir { mode: (mode & 0o777) | 0o700 },
        Node::File { mode, mtime, data } => {
            Node::File { mode: mode & 0o777, mtime: *mtime, data: data.clone() }
        }
        other => other.clone(),
    }
}

/// `got` (a snapshot of what arrived under `prefix`) against `want` (the source's);
/// returns the problems. With `partial`, entries may be missing but every one that
/// is there must be whole and right.
fn compare(want: &BTreeMap<PathBuf, Node>, got: &BTreeMap<PathBuf, Node>, partial: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, g) in got {
        match want.get(path) {
            None => problems.push(format!("unexpected: {path:?} ({g:?})")),
            Some(w) if as_sent(w) != *g => {
                problems.push(format!("differs: {path:?}: want {:?}, got {g:?}", as_sent(w)))
            }
            Some(_) => {}
        }
    }
    if !partial {
        for (path, w) in want {
            if !got.contains_key(path) {
                problems.push(format!("missing: {path:?} ({w:?})"));
            }
        }
    }
    problems
}

/// Asserts that `out/<name>` holds exactly the tree `src` (all of it, or with
/// `partial` only whole, correct entries of it) and nothing else is in `out`.
fn assert_arrived(src: &Path, out: &Path, partial: bool, context: &str) -> usize {
    let name = src.file_name().unwrap();
    let top: Vec<_> = fs::read_dir(out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(top.iter().all(|n| n == name), "{context}: other entries in the output folder: {top:?}");
    let want = snapshot(src);
    let got = if out.join(name).exists() { snapshot(&out.join(name)) } else { BTreeMap::new() };
    let problems = compare(&want, &got, partial);
    assert!(
        problems.is_empty(),
        "{context}: {} is not {} copy of {}:\n{}",
        out.join(name).display(),
        if partial { "a partial" } else { "a whole" },
        src.display(),
        problems.join("\n")
    );
    got.values().filter(|n| matches!(n, Node::File { .. })).count()
}

/// A tree of `files` small files (1 to 3 KiB) in nested folders under `root`, with
/// varied permission bits and modification times (to the nanosecond, one before
/// 1970). Returns the total of their sizes.
fn small_tree(root: &Path, files: usize, seed: u64) -> u64 {
    const FILE_MODES: [u32; 7] = [0o644, 0o600, 0o640, 0o755, 0o444, 0o400, 0o700];
    const DIR_MODES: [u32; 3] = [0o755, 0o750, 0o700];
    let mut total = 0;
    let mut folders = Vec::new();
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 7)).join(format!("e{}", i % 5)).join(format!("f{}", i % 3));
        if !dir.exists() {
            fs::create_dir_all(&dir).unwrap();
            folders.push(dir.clone());
        }
        let len = 1024 + (i * 7919 + seed as usize) % 2049;
        let path = write_file(&dir, &format!("small-{i:05}.bin"), len, seed * 100_000 + i as u64);
        let mtime = if i == 17 {
            UNIX_EPOCH - Duration::new(300_000_000, 250_000_000)
        } else {
            UNIX_EPOCH
                + Duration::new(
                    1_000_000_000 + i as u64 * 3_701,
                    ((i as u64 * 7_919_113) % 1_000_000_000) as u32,
                )
        };
        let file = fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(mtime).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(FILE_MODES[i % FILE_MODES.len()])).unwrap();
        total += len as u64;
    }
    // Empty folders travel too.
    for i in 0..3 {
        let dir = root.join(format!("empty{i}"));
        fs::create_dir_all(&dir).unwrap();
        folders.push(dir);
    }
    // Folder modes last: a 0o500 folder could not be filled.
    for (i, dir) in folders.iter().enumerate() {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODES[i % DIR_MODES.len()])).unwrap();
    }
    total
}

/// A temporary folder on tmpfs when there is one: thousands of small files are
/// made and compared here, and a disk's metadata journal would make that the
/// slowest part of the test.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new().prefix("sxt-batches-").tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

fn client(server: &Server) -> Command {
    let mut command = Command::new(CLIENT);
    command.args(["--name", &server.name, "--timeout", "60"]);
    command
}

fn parse_json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e})\n{}", show(output)))
}

/// The JSON summary's `files` entries that are files (folders are listed too).
fn json_files<'a>(doc: &'a serde_json::Value, out: &Path, output: &Output) -> Vec<&'a serde_json::Value> {
    let files = doc["files"].as_array().unwrap_or_else(|| panic!("no files array\n{}", show(output)));
    files
        .iter()
        .filter(|f| {
            let name =
                f["name"].as_str().unwrap_or_else(|| panic!("an entry without a name\n{}", show(output)));
            !out.join(name).is_dir()
        })
        .collect()
}

fn assert_alive(server: &Server) {
    assert!(!has_exited(server.pid()), "the server died\nstderr: {:#?}", server.stderr());
}

/// The server is back at rest: no stream lock files but the offer's, no temporary
/// files anywhere in the output folder.
fn wait_until_clean(server: &Server) {
    wait_until("the streams' lock files removed", || server.stream_locks().len() <= 1);
    wait_until("no temporary files", || server.temp_files().is_empty());
}

/// Published files the server reported (`done NAME ...` lines).
fn done_lines(server: &Server) -> usize {
    server.stdout().iter().filter(|l| l.starts_with("done ")).count()
}

// ---------------------------------------------------------------------------------
// A batch transfer many times the segment.
// ---------------------------------------------------------------------------------

#[test]
fn a_tree_many_times_the_segment_arrives_whole_in_batches() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("tree");
    let small = small_tree(&root, 3000, 1);
    // A few files too large for a batch go on their own, beside the batches.
    let mut total = small;
    for (i, len) in [(0, 65_537usize), (1, 300_000), (2, 1 << 20)] {
        let path = write_file(&root.join("d1"), &format!("large-{i}.bin"), len, 900 + i);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        total += len as u64;
    }
    // The smallest segment the server accepts.
    let segment = 256u64 << 10;
    assert!(total > 20 * segment, "the tree ({total} bytes) should be many times the segment");
    let server = Server::start(&unique_name("bigtree"), out.path(), &["--size", "256K"]);
    let output = run({
        let mut c = client(&server);
        c.args(["-j", "4", "--json"]).arg(&root);
        c
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let doc = parse_json(&output);
    assert_eq!(doc["sent"], 3003, "{}", show(&output));
    assert_eq!(doc["skipped"], 0, "{}", show(&output));
    assert_eq!(doc["failed"], 0, "{}", show(&output));
    assert_eq!(doc["bytes"], total, "{}", show(&output));
    let files = json_files(&doc, out.path(), &output);
    assert_eq!(files.len(), 3003, "{}", show(&output));
    assert!(files.iter().all(|f| f["status"] == "sent" && f["error"].is_null()), "{}", show(&output));
    let arrived = assert_arrived(&root, out.path(), false, "after the transfer");
    assert_eq!(arrived, 3003);
    wait_until_clean(&server);
    // Every buffer went back: the buffer area is one free hole again.
    wait_until("the segment back to one hole", || server.status(false).contains("in 1 hole(s)"));
    assert_alive(&server);
}

// ---------------------------------------------------------------------------------
// A client killed mid-batch.
// ---------------------------------------------------------------------------------

/// Starts a client sending `root` with `-j 4` and waits until the server has
/// published at least one of its files.
fn start_and_wait_for_progress(server: &Server, root: &Path) -> Running {
    let client = Running::spawn({
        let mut c = client(server);
        c.args(["-j", "4", "-q"]).arg(root);
        c
    });
    wait_until("the first published file", || done_lines(server) > 0 || client.has_exited());
    client
}

/// After a kill: the dead client's streams are released, what the server had
/// published of its (staged) folder is there, only whole files (some, fewer than
/// all), and another client completes the tree with `--skip-existing`, skipping
/// exactly those.
fn finish_after_kill(server: &Server, root: &Path, out: &Path, total: usize) {
    wait_until_clean(server);
    let before = assert_arrived(root, out, true, "after the kill");
    assert!(before < total, "the client was killed after it had sent everything");
    assert!(before > 0, "the files the server had published before the kill are gone");
    assert_alive(server);
    let output = run({
        let mut c = client(server);
        c.args(["-j", "4", "--json", "--skip-existing"]).arg(root);
        c
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let doc = parse_json(&output);
    assert_eq!(doc["skipped"], before, "{}", show(&output));
    assert_eq!(doc["sent"], total - before, "{}", show(&output));
    assert_eq!(doc["failed"], 0, "{}", show(&output));
    assert_eq!(assert_arrived(root, out, false, "after the second client"), total);
    wait_until_clean(server);
}

#[test]
fn a_client_killed_while_its_batches_wait_for_a_stopped_server_leaves_only_whole_files() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("tree");
    small_tree(&root, 3000, 2);
    let server = Server::start(&unique_name("killbatch"), out.path(), &["--size", "1M", "-v"]);
    let client = start_and_wait_for_progress(&server, &root);
    // The server stops answering: the client fills its rings and waits, with
    // batches handed over and not yet published.
    freeze(server.pid());
    assert!(!client.has_exited(), "the client finished before the server was stopped");
    assert!(done_lines(&server) < 3000, "every file was published before the server was stopped");
    signal(client.pid(), "KILL");
    let status = client.finish().status;
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status:?}");
    thaw(server.pid());
    finish_after_kill(&server, &root, out.path(), 3000);
    assert_alive(&server);
}

#[test]
fn a_client_stopped_and_killed_mid_batch_leaves_only_whole_files() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("tree");
    small_tree(&root, 3000, 3);
    let server = Server::start(&unique_name("stopbatch"), out.path(), &["--size", "1M", "-v"]);
    let client = start_and_wait_for_progress(&server, &root);
    // Stopped mid-batch while the server runs on, then killed.
    freeze(client.pid());
    assert!(done_lines(&server) < 3000, "every file was published before the client was stopped");
    signal(client.pid(), "KILL");
    let status = client.finish().status;
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status:?}");
    finish_after_kill(&server, &root, out.path(), 3000);
    assert_alive(&server);
}

/// A resend started right after a client was killed, before the server noticed
/// (it does within about half a second):
/// its folder is not staged a second time (the dead client's stage, published when
/// its streams are dropped, would take the name and fail the resend's commit); it
/// is made in place, or found there, and `--skip-existing` completes it.
#[test]
fn a_resend_right_after_a_kill_completes_the_folder() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("tree");
    small_tree(&root, 3000, 4);
    let server = Server::start(&unique_name("killresend"), out.path(), &["--size", "1M", "-v"]);
    let first = start_and_wait_for_progress(&server, &root);
    let dead = first.pid();
    // At once: the server notices a dead client's streams a moment later.
    signal(dead, "KILL");
    let resend = Running::spawn({
        let mut c = client(&server);
        c.args(["-j", "4", "--json", "--skip-existing"]).arg(&root);
        c
    });
    let status = first.finish().status;
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status:?}");
    // The resend has its folder (a second stage, or the folder made in place, or the
    // dead client's published already); it waits while the server notices the kill
    // and publishes (or drops) the dead client's stage, then goes on.
    let stages = || {
        let entries = fs::read_dir(out.path()).unwrap();
        entries.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".stage")).count()
    };
    wait_until("the resend's folder", || stages() >= 2 || out.path().join("tree").exists());
    freeze(resend.pid());
    server.wait_for_line("the killed client's line", |l| l.starts_with(&format!("client {dead}:")));
    thaw(resend.pid());
    let output = resend.finish();
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let doc = parse_json(&output);
    assert_eq!(doc["failed"], 0, "{}", show(&output));
    let (sent, skipped) = (doc["sent"].as_u64().unwrap(), doc["skipped"].as_u64().unwrap());
    eprintln!("DBG sent {sent} skipped {skipped}");
    assert_eq!(sent + skipped, 3000, "{}", show(&output));
    // The dead client's stage, dropped once its name was found taken, goes too.
    wait_until_clean(&server);
    assert_eq!(assert_arrived(&root, out.path(), false, "after the resend"), 3000);
    assert_alive(&server);
}

// ---------------------------------------------------------------------------------
// --skip-existing, entry by entry.
// ---------------------------------------------------------------------------------

#[test]
fn skip_existing_in_batches_skips_exactly_the_files_already_there() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("tree");
    small_tree(&root, 300, 4);
    let want = snapshot(&root);
    let files: Vec<&PathBuf> =
        want.iter().filter(|(_, n)| matches!(n, Node::File { .. })).map(|(p, _)| p).collect();
    assert_eq!(files.len(), 300);
    // Every fifth file is already on the server, with other contents.
    let existing: Vec<&PathBuf> = files.iter().copied().step_by(5).collect();
    for (i, rel) in existing.iter().enumerate() {
        let path = out.path().join("tree").join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, format!("precious {i}")).unwrap();
    }
    let server = Server::start(&unique_name("skipbatch"), out.path(), &[]);

    let output = run({
        let mut c = client(&server);
        c.args(["-j", "4", "--json", "--skip-existing"]).arg(&root);
        c
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let doc = parse_json(&output);
    assert_eq!(doc["skipped"], existing.len(), "{}", show(&output));
    assert_eq!(doc["sent"], 300 - existing.len(), "{}", show(&output));
    assert_eq!(doc["failed"], 0, "{}", show(&output));
    let entries = json_files(&doc, out.path(), &output);
    assert_eq!(entries.len(), 300, "{}", show(&output));
    for entry in entries {
        let name = entry["name"].as_str().unwrap();
        let rel = Path::new(name).strip_prefix("tree").unwrap();
        let expected = if existing.iter().any(|e| e.as_path() == rel) { "skipped" } else { "sent" };
        assert_eq!(entry["status"], expected, "{name}\n{}", show(&output));
        assert!(entry["error"].is_null(), "{name}\n{}", show(&output));
    }
    for (i, rel) in existing.iter().enumerate() {
        let got = fs::read(out.path().join("tree").join(rel)).unwrap();
        assert_eq!(got, format!("precious {i}").as_bytes(), "{rel:?} was touched");
    }
    for rel in files.iter().filter(|f| !existing.contains(f)) {
        let got = node(&out.path().join("tree").join(rel));
        assert_eq!(got, as_sent(&want[*rel]), "{rel:?}");
    }
    let failures: Vec<_> = server.stdout().into_iter().filter(|l| l.starts_with("failed ")).collect();
    assert!(failures.is_empty(), "the server reported failures: {failures:#?}");

    // Without the flag every file now fails alone as existing, and nothing changes.
    let before = snapshot(out.path());
    let output = run({
        let mut c = client(&server);
        c.args(["-j", "4", "--json"]).arg(&root);
        c
    });
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let doc = parse_json(&output);
    assert_eq!(doc["failed"], 300, "{}", show(&output));
    assert_eq!(doc["sent"], 0, "{}", show(&output));
    for entry in json_files(&doc, out.path(), &output) {
        let error = entry["error"].as_str().unwrap_or_default();
        assert!(
            entry["status"] == "failed" && error.contains("already exists"),
            "{entry}\n{}",
            show(&output)
        );
    }
    assert!(snapshot(out.path()) == before, "a refused batch changed the output folder");
    wait_until_clean(&server);
    assert_alive(&server);
}

// ---------------------------------------------------------------------------------
// The server's side of a failure mid-batch.
// ---------------------------------------------------------------------------------

#[test]
fn a_server_stopped_mid_batch_leaves_only_whole_files_and_a_new_one_completes_the_tree() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("tree");
    small_tree(&root, 3000, 5);
    let name = unique_name("intbatch");
    let mut server = Server::start(&name, out.path(), &["--size", "1M", "-v"]);
    let first = start_and_wait_for_progress(&server, &root);
    // The server notices a stop signal within its heartbeat and serves on until
    // then: the client is held mid-batch meanwhile, so the stop lands mid-transfer.
    freeze(first.pid());
    assert!(done_lines(&server) < 3000, "every file was published before the client was stopped");
    assert_eq!(server.stop("INT").code(), Some(0), "a requested stop is not a failure");
    thaw(first.pid());
    let output = first.finish();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(
        err.contains("shutting down") || err.contains("has stopped"),
        "the client should say why: {}",
        show(&output)
    );
    // The folder was staged: the stopping server published what it had of it, and
    // the client says so for the files it had confirmed.
    assert!(stderr_of(&output).contains("the server stopped before the commit"), "{}", show(&output));
    let before = assert_arrived(&root, out.path(), true, "after the server stopped");
    assert!(before > 0 && before < 3000, "{before} files");

    let server = Server::start(&name, out.path(), &["--size", "1M"]);
    let output = run({
        let mut c = client(&server);
        c.args(["-j", "4", "--json", "--skip-existing"]).arg(&root);
        c
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let doc = parse_json(&output);
    assert_eq!(doc["skipped"], before, "{}", show(&output));
    assert_eq!(doc["sent"], 3000 - before, "{}", show(&output));
    assert_eq!(assert_arrived(&root, out.path(), false, "after the second server"), 3000);
    wait_until_clean(&server);
}

#[test]
fn files_over_max_file_size_fail_alone_inside_their_batches() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("tree");
    small_tree(&root, 400, 6);
    let limit = 2048u64;
    let server = Server::start(&unique_name("maxbatch"), out.path(), &["--max-file-size", "2K"]);
    let output = run({
        let mut c = client(&server);
        c.args(["-j", "4", "--json"]).arg(&root);
        c
    });
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let doc = parse_json(&output);
    let want = snapshot(&root);
    let too_big = |rel: &Path| matches!(&want[rel], Node::File { data, .. } if data.len() as u64 > limit);
    let big = want.keys().filter(|rel| too_big(rel)).count();
    assert!(big > 0 && big < 400, "the tree should mix files under and over the limit: {big}");
    assert_eq!(doc["failed"], big, "{}", show(&output));
    assert_eq!(doc["sent"], 400 - big, "{}", show(&output));
    for entry in json_files(&doc, out.path(), &output) {
        let name = entry["name"].as_str().unwrap();
        let rel = Path::new(name).strip_prefix("tree").unwrap();
        if too_big(rel) {
            let error = entry["error"].as_str().unwrap_or_default();
            assert!(entry["status"] == "failed" && error.contains("--max-file-size"), "{entry}");
            assert!(!out.path().join(name).exists(), "{name} is over the limit and was published");
        } else {
            assert!(entry["status"] == "sent" && entry["error"].is_null(), "{entry}");
        }
    }
    assert_eq!(assert_arrived(&root, out.path(), true, "with a size limit"), 400 - big);
    wait_until_clean(&server);
    assert_alive(&server);
}

/// Every failed file comes with its reason, even when many tiny files of one batch
/// fail (here: all exist already) and their messages are longer than their entries
/// were: the results are written over the batch and must fit the slot (small
/// segments, `--size 256K` and `1M`, give slots of a few KiB).
#[test]
fn every_file_failed_in_a_batch_is_reported_with_its_reason() {
    for (size, name_len) in [("256K", 40usize), ("1M", 40)] {
        let src = scratch();
        let out = scratch();
        let root = src.path().join("tree");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(out.path().join("tree")).unwrap();
        for i in 0..1500 {
            let name = format!("{i:05}-{}", "n".repeat(name_len - 6));
            fs::write(root.join(&name), b"tiny").unwrap();
            fs::write(out.path().join("tree").join(&name), b"precious").unwrap();
        }
        let server = Server::start(&unique_name("reasons"), out.path(), &["--size", size]);
        let output = run({
            let mut c = client(&server);
            c.args(["-j", "1", "--json"]).arg(&root);
            c
        });
        assert_eq!(output.status.code(), Some(1), "{}", show(&output));
        let doc = parse_json(&output);
        assert_eq!(doc["failed"], 1500, "{}", show(&output));
        let without: Vec<String> = json_files(&doc, out.path(), &output)
            .iter()
            .filter(|f| !f["error"].as_str().unwrap_or_default().contains("already exists"))
            .map(|f| format!("{}: {}", f["name"], f["error"]))
            .collect();
        assert!(
            without.is_empty(),
            "--size {size}, {name_len}-byte names: {} of 1500 failures lost their reason, e.g.\n{}",
            without.len(),
            without.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

/// A job with nothing to batch waits for large files the batching jobs may find; it
/// must not hold a stream idle meanwhile (the server drops an idle stream after
/// `--idle-timeout`, and the large file sent on it later would fail). Here batching
/// 60,000 empty files takes longer than the 1 s timeout; the large file comes last.
/// (Which job held the carried stream was a race: this caught the bug only when a
/// job that does not batch won it; the soak caught its deadlock twin every time.)
#[test]
fn a_large_file_after_a_long_batching_phase_arrives() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("tree");
    fs::create_dir_all(root.join("sub")).unwrap();
    for i in 0..60_000 {
        fs::write(root.join("sub").join(format!("e{i:05}")), b"").unwrap();
    }
    write_file(&root, "zz-large.bin", 3 << 20, 5);
    let server = Server::start(&unique_name("latelarge"), out.path(), &["--idle-timeout", "1"]);
    let started = std::time::Instant::now();
    let output = run({
        let mut c = client(&server);
        c.args(["-j", "4"]).arg(&root);
        c
    });
    assert!(output.status.success(), "{}", show(&output));
    assert_eq!(
        fs::read(out.path().join("tree/zz-large.bin")).unwrap(),
        fs::read(root.join("zz-large.bin")).unwrap()
    );
    assert_eq!(fs::read_dir(out.path().join("tree/sub")).unwrap().count(), 60_000);
    if started.elapsed() < Duration::from_secs(2) {
        eprintln!("note: batching took {:?}, within the idle timeout's reach only just", started.elapsed());
    }
}

/// A FIFO among small files whose writer comes 3 s late, with a 1 s idle timeout:
/// the job that meets the FIFO must not hold its stream (and the files it packed)
/// idle until the server drops it, nor must the job waiting for it. Everything
/// arrives, the FIFO's line included.
#[test]
fn a_fifo_among_small_files_with_a_late_writer_does_not_cost_the_batches() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("tree");
    small_tree(&root, 100, 11);
    let fifo = root.join("zz-fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success(), "mkfifo failed");
    let want = snapshot(&root);
    let server =
        Server::start(&unique_name("latefifo"), out.path(), &["--idle-timeout", "1", "--workers", "2"]);
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        assert!(write_fifo(&writer_path, b"late line\n"), "no reader opened the FIFO within 60 s");
    });
    let output = run({
        let mut c = client(&server);
        c.args(["-j", "2"]).arg(&root);
        c
    });
    writer.join().unwrap();
    assert!(output.status.success(), "{}", show(&output));
    assert_eq!(fs::read(out.path().join("tree/zz-fifo")).unwrap(), b"late line\n");
    let mut got = snapshot(&out.path().join("tree"));
    got.remove(Path::new("zz-fifo"));
    let mut want = want;
    want.retain(|_, node| !matches!(node, Node::Other { .. }));
    let problems = compare(&want, &got, false);
    assert!(problems.is_empty(), "{problems:#?}\n{}", show(&output));
    assert_alive(&server);
}

/// A folder sent whole is staged: nothing shows under its name until the client
/// commits it, whole, after its last file was confirmed. If the name appears
/// meanwhile, nothing is published over it and every file is reported failed,
/// saying why; the client exits 1 and the server leaves no staged folder.
#[test]
fn a_tree_whose_name_appears_mid_transfer_is_not_published_over_it() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("tree");
    small_tree(&root, 6000, 11);
    let server = Server::start(&unique_name("appear"), out.path(), &["--size", "1M", "-v"]);
    let client = start_and_wait_for_progress(&server, &root);
    freeze(client.pid());
    assert!(!out.path().join("tree").exists(), "the folder showed before it was whole");
    fs::create_dir(out.path().join("tree")).unwrap();
    fs::write(out.path().join("tree/intruder"), b"mine").unwrap();
    thaw(client.pid());
    let pid = client.pid();
    let output = client.finish();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let text = show(&output);
    assert!(text.contains("appeared while the folder was being sent"), "{text}");
    assert!(!text.contains(".sharedxfer-"), "a hidden name in a message: {text}");
    let inside: Vec<_> =
        fs::read_dir(out.path().join("tree")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(inside, vec![std::ffi::OsString::from("intruder")]);
    wait_until_clean(&server);
    // The server's line for the client counts none of the dropped files published.
    let mut line = None;
    wait_until("the server's line for the client", || {
        line = server.stdout().into_iter().find(|l| l.starts_with(&format!("client {pid}:")));
        line.is_some()
    });
    let line = line.unwrap();
    assert!(line.contains(" 0 published") && line.contains(" 6001 failed"), "{line}");
    assert_alive(&server);
}

/// 300 FIFOs among small files, under a soft limit of 256 open files: the client
/// keeps each FIFO it meets while batching open until its turn, so it raises the
/// limit (towards the hard one) rather than fail with "too many open files".
#[test]
fn many_fifos_under_a_low_open_files_limit_all_arrive() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("pipes");
    small_tree(&root, 50, 12);
    let fifos: Vec<PathBuf> = (0..300).map(|i| root.join(format!("fifo{i:03}"))).collect();
    let status = Command::new("mkfifo").args(&fifos).status().unwrap();
    assert!(status.success(), "mkfifo failed");
    let server = Server::start(&unique_name("manyfifo"), out.path(), &[]);
    let writers = fifos.clone();
    let writer = std::thread::spawn(move || {
        for (i, fifo) in writers.iter().enumerate() {
            assert!(write_fifo(fifo, format!("line {i}\n").as_bytes()), "no reader opened {fifo:?}");
        }
    });
    let client = client(&server);
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -Sn 256 && exec \"$0\" \"$@\"")
        .arg(client.get_program())
        .args(client.get_args());
    command.args(["-j", "4"]).arg(&root);
    let output = run(command);
    writer.join().unwrap();
    assert!(output.status.success(), "{}", show(&output));
    for (i, fifo) in fifos.iter().enumerate() {
        let got = fs::read(out.path().join("pipes").join(fifo.file_name().unwrap())).unwrap();
        assert_eq!(got, format!("line {i}\n").as_bytes());
    }
    assert_alive(&server);
}

// ---------------------------------------------------------------------------------
// Many streams on the smallest segment.
// ---------------------------------------------------------------------------------

/// Files of 256 KiB (sent on their own) and of 8 KiB: on the smallest segment a
/// batch slot holds 8 KiB, so these fit a slot but not a batch entry.
fn mixed_tree(root: &Path, seed: u64) {
    for dir in ["large", "s0", "s1", "s2", "s3"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    for i in 0..12 {
        write_file(&root.join("large"), &format!("l{i:02}.bin"), 256 << 10, seed * 1000 + i);
    }
    for i in 0..200 {
        write_file(&root.join(format!("s{}", i % 4)), &format!("s{i:03}.bin"), 8192, seed * 1000 + 100 + i);
    }
}

/// One client per root, all at once, each with `-j JOBS`: every one exits 0 and its
/// tree arrives whole in `out`.
fn send_at_once(server: &Server, roots: &[PathBuf], jobs: &str, out: &Path) {
    let clients: Vec<Running> = roots
        .iter()
        .map(|root| {
            let mut c = client(server);
            c.args(["-q", "-j", jobs]).arg(root);
            Running::spawn(c)
        })
        .collect();
    for (root, running) in roots.iter().zip(clients) {
        let output = running.finish();
        assert_eq!(output.status.code(), Some(0), "{}: {}", root.display(), show(&output));
        let name = root.file_name().unwrap();
        let problems = compare(&snapshot(root), &snapshot(&out.join(name)), false);
        assert!(problems.is_empty(), "{}:\n{}", root.display(), problems.join("\n"));
    }
}

/// More streams than the segment has room for, from one client and from several:
/// streams waiting for space once held records and buffers that jobs waiting for
/// one another kept idle, and the server stalled for every client (for good); and
/// a file put into a stream's slot still in batch mode was read as a malformed
/// batch. Every run must end, whole.
#[test]
fn more_streams_than_the_smallest_segment_holds_never_stall_it() {
    let src = scratch();
    let out = scratch();
    let server = Server::start(&unique_name("crowd"), out.path(), &["--size", "256K"]);
    let root = src.path().join("mix");
    mixed_tree(&root, 1);
    for round in 0..3 {
        let output = run({
            let mut c = client(&server);
            c.args(["-q", "-j", "64"]).arg(&root);
            c
        });
        assert_eq!(output.status.code(), Some(0), "round {round}: {}", show(&output));
        assert_arrived(&root, out.path(), false, &format!("round {round}"));
        fs::remove_dir_all(out.path().join("mix")).unwrap();
    }
    let roots: Vec<PathBuf> = (0..4).map(|i| src.path().join(format!("mix{i}"))).collect();
    for (i, root) in roots.iter().enumerate() {
        mixed_tree(root, 10 + i as u64);
    }
    send_at_once(&server, &roots, "16", out.path());
    assert_alive(&server);
    wait_until_clean(&server);
}

/// On the smallest segment a batch slot holds 8 KiB: an 8 KiB file fits the slot but
/// not a batch entry, so it goes on its own, on the stream that just made the
/// folder in batch mode. It once went as a one-step put into slot 0 while the
/// server still read that stream's slots as batches: `malformed batch: bad magic`,
/// then `received 0`, every time with one job.
#[test]
fn a_file_that_fits_a_slot_but_not_a_batch_arrives_after_the_batches() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("slotsized");
    fs::create_dir(&root).unwrap();
    for i in 0..20 {
        write_file(&root, &format!("s{i:02}.bin"), 8192, 700 + i);
    }
    let server = Server::start(&unique_name("slotsized"), out.path(), &["--size", "256K"]);
    let output = run({
        let mut c = client(&server);
        c.args(["-j", "1"]).arg(&root);
        c
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(assert_arrived(&root, out.path(), false, "after the transfer"), 20);
    assert_alive(&server);
}

/// More clients sending folders at once than the smallest segment has records:
/// each holds a stream for its folder's commit, and once those streams held every
/// record, no client could get one to send its files (found in a review: 9 of 60
/// clients finished). A job that waits for a record borrows its own client's
/// commit stream.
#[test]
fn more_folder_clients_than_records_all_finish() {
    let src = scratch();
    let out = scratch();
    let server = Server::start(&unique_name("folders"), out.path(), &["--size", "256K"]);
    let roots: Vec<PathBuf> = (0..60)
        .map(|c| {
            let root = src.path().join(format!("tree{c:02}"));
            fs::create_dir_all(root.join("sub")).unwrap();
            for f in 0..100 {
                write_file(&root.join("sub"), &format!("f{f}.bin"), 3000, c * 1000 + f);
            }
            root
        })
        .collect();
    send_at_once(&server, &roots, "2", out.path());
    assert_alive(&server);
    wait_until_clean(&server);
}

/// A batch stream the server gives up on (here: its client stopped past
/// --idle-timeout) is named in the server's line by its client's pid, not as a
/// file called "batches".
#[test]
fn a_failed_batch_stream_is_named_by_its_client() {
    let src = scratch();
    let out = scratch();
    let root = src.path().join("tree");
    small_tree(&root, 3000, 5);
    let server =
        Server::start(&unique_name("batchlabel"), out.path(), &["--size", "1M", "-v", "--idle-timeout", "2"]);
    let client = start_and_wait_for_progress(&server, &root);
    freeze(client.pid());
    let wanted = format!("failed batch stream of client pid {}: no activity", client.pid());
    let line = server.wait_for_line("the dropped batch stream", |l| l.starts_with("failed batch stream"));
    assert!(line.starts_with(&wanted), "{line}");
    thaw(client.pid());
    let output = client.finish();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
}
