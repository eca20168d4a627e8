//! Faults around the transfer: resource limits, a vanished output folder, a source
//! that changes under the client, and signals mid-transfer. Mid-transfer states are
//! reached by stepping client and server with SIGSTOP/SIGCONT while watching the
//! segment (`common::Frozen`), never by sleeping and hoping.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

/// A 4 MiB source and a 1 MiB segment: the file is many times the ring.
const BIG: usize = 4 << 20;

fn client_for(server: &Server, config: &Path, ids: &[&str]) -> std::process::Command {
    let mut command = server.client(config);
    command.args(ids);
    command
}

fn assert_alive(server: &Server) {
    assert!(!has_exited(server.pid()), "the server died\nstderr: {:#?}", server.stderr());
}

fn assert_same(out: &Path, source: &Path) {
    let name = source.file_name().unwrap();
    let got = fs::read(out.join(name)).unwrap_or_else(|e| panic!("{name:?} was not published: {e}"));
    assert!(got == fs::read(source).unwrap(), "{name:?} differs from its source");
}

// ---------------------------------------------------------------------------------
// RLIMIT_FSIZE.
// ---------------------------------------------------------------------------------

#[test]
fn a_file_over_the_size_limit_fails_alone_and_the_server_goes_on() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let too_big = write_file(src.path(), "toobig.bin", 3 << 20, 1);
    let at_limit = write_file(src.path(), "atlimit.bin", 2 << 20, 2);
    let small = write_file(src.path(), "small.bin", 100_000, 3);
    let config = write_config(src.path(), &[&too_big, &at_limit, &small]);
    // 2048 blocks of 1 KiB: writes past 2 MiB fail with EFBIG (SIGXFSZ is ignored).
    let server =
        Server::start_wrapped(&unique_name("fsize"), out.path(), "ulimit -f 2048", &["--size", "1M"]);

    let output = run(client_for(&server, &config, &["1"]));
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(err.contains("stream 1: failed") && err.contains("File too large"), "{}", show(&output));
    // The message names the user's file, never only a temporary one.
    let user_file = out.path().join("toobig.bin").display().to_string();
    assert!(err.contains(&user_file) && !err.contains(".part"), "{}", show(&output));
    let line = server.wait_for_line("the failure", |l| l.starts_with("failed toobig.bin"));
    assert!(line.contains("File too large") && line.contains(&user_file), "{line}");
    wait_until("the temporary file removed", || server.temp_files().is_empty());
    assert!(!out.path().join("toobig.bin").exists());
    assert_alive(&server);

    let output = run(client_for(&server, &config, &["2", "3"]));
    assert!(output.status.success(), "{}", show(&output));
    assert_same(out.path(), &at_limit);
    assert_same(out.path(), &small);
    assert!(server.temp_files().is_empty());
}

/// A file size limit below the segment's size: the server does not start, and
/// says which limit (not an "unexpected OS error" of the shared-memory crate).
#[test]
fn a_file_size_limit_below_the_segment_size_is_named_at_start() {
    let out = tempfile::tempdir().unwrap();
    let name = unique_name("fsizeseg");
    let mut command = std::process::Command::new("bash");
    command.arg("-c").arg("ulimit -f 100; exec \"$0\" \"$@\"").arg(SERVER);
    command.arg(out.path()).args(["--name", &name, "--size", "1M"]);
    let output = run(command);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(err.contains("File too large") && err.contains("ulimit -f"), "{}", show(&output));
    assert!(!std::path::Path::new("/dev/shm").join(&name).exists(), "the segment was left behind");
}

// ---------------------------------------------------------------------------------
// OUTPUT_DIR removed while the server runs.
// ---------------------------------------------------------------------------------

#[test]
fn a_removed_output_dir_fails_the_transfer_clearly_and_the_server_recovers() {
    let src = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let first = write_file(src.path(), "first.bin", 50_000, 4);
    let second = write_file(src.path(), "second.bin", 60_000, 5);
    let config = write_config(src.path(), &[&first, &second]);
    let server = Server::start(&unique_name("rmout"), &out, &[]);
    fs::remove_dir_all(&out).unwrap();

    let output = run(client_for(&server, &config, &["1"]));
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(
        err.contains(&out.display().to_string()) && err.contains("No such file or directory"),
        "the client should name the missing folder: {}",
        show(&output)
    );
    server.wait_for_line("the failure", |l| l.starts_with("failed first.bin") && l.contains("No such file"));
    assert_alive(&server);

    fs::create_dir_all(&out).unwrap();
    let output = run(client_for(&server, &config, &["2"]));
    assert!(output.status.success(), "{}", show(&output));
    assert_same(&out, &second);
}

#[test]
fn output_dir_removed_mid_transfer_fails_at_publish_and_the_server_recovers() {
    let src = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let big = write_file(src.path(), "big.bin", BIG, 6);
    let after = write_file(src.path(), "after.bin", 70_000, 7);
    let config = write_config(src.path(), &[&big, &after]);
    let server = Server::start(&unique_name("rmoutmid"), &out, &["--size", "1M"]);
    let frozen = Frozen::start(&server, {
        let mut c = server.patient_client(&config);
        c.arg("1");
        c
    });
    assert!(!server.temp_files().is_empty(), "the transfer has a file in progress");
    fs::remove_dir_all(&out).unwrap();
    thaw(server.pid());
    let Frozen { client, .. } = frozen;
    let output = client.finish();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(
        err.contains(&out.display().to_string()) && err.contains("No such file or directory"),
        "{}",
        show(&output)
    );
    server.wait_for_line("the failure", |l| l.starts_with("failed big.bin"));
    assert_alive(&server);

    fs::create_dir(&out).unwrap();
    let output = run(client_for(&server, &config, &["2"]));
    assert!(output.status.success(), "{}", show(&output));
    assert_same(&out, &after);
    assert!(!out.join("big.bin").exists());
}

// ---------------------------------------------------------------------------------
// The source changes while it is being sent.
// ---------------------------------------------------------------------------------

/// Freezes a 4 MiB transfer with the client part-way through the file, applies
/// `change` to the source, lets it run on, and checks the stream fails with
/// `expect` at both ends and nothing is published.
fn source_change_fails_the_stream(tag: &str, change: impl FnOnce(&Path, u64), expect: &str) {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let big = write_file(src.path(), "big.bin", BIG, 8);
    // An old timestamp, so any rewrite shows in the mtime whatever the clock's grain.
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options().write(true).open(&big).unwrap().set_modified(old).unwrap();
    let config = write_config(src.path(), &[&big]);
    let server = Server::start(&unique_name(tag), out.path(), &["--size", "1M"]);
    let frozen = Frozen::start(&server, {
        let mut c = server.patient_client(&config);
        c.arg("1");
        c
    });
    // The client has read exactly the ring's worth and waits for the stopped server.
    let read = frozen.slots as u64 * frozen.chunk;
    assert!(read < frozen.size);
    change(&big, frozen.size);
    thaw(server.pid());
    let Frozen { client, .. } = frozen;
    let output = client.finish();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains(&format!("stream 1: failed: {expect}")), "{}", show(&output));
    let line = server.wait_for_line("the failure", |l| l.starts_with("failed big.bin"));
    assert!(line.contains("client aborted") && line.contains(expect), "{line}");
    wait_until("the file in progress dropped", || server.temp_files().is_empty());
    assert!(!out.path().join("big.bin").exists(), "a changed file was published");
    assert_alive(&server);
}

#[test]
fn a_source_that_shrinks_mid_transfer_fails_and_nothing_is_published() {
    source_change_fails_the_stream(
        "shrink",
        |path, size| fs::File::options().write(true).open(path).unwrap().set_len(size / 2).unwrap(),
        "the source file shrank while it was being sent",
    );
}

#[test]
fn a_source_that_grows_mid_transfer_fails_and_nothing_is_published() {
    source_change_fails_the_stream(
        "grow",
        |path, _| fs::File::options().append(true).open(path).unwrap().write_all(&[7u8; 4096]).unwrap(),
        "the source file grew while it was being sent",
    );
}

#[test]
fn a_source_rewritten_in_place_mid_transfer_fails_and_nothing_is_published() {
    source_change_fails_the_stream(
        "rewrite",
        |path, size| fs::write(path, pattern(size as usize, 99)).unwrap(),
        "the source file changed while it was being sent",
    );
}

// ---------------------------------------------------------------------------------
// SIGINT to a client mid-transfer.
// ---------------------------------------------------------------------------------

/// The server's clean-up of an interrupted stream: a "failed" line, no temporary
/// file, nothing published, still serving.
fn assert_interrupted_stream_cleaned_up(server: &Server, out: &Path) {
    let line = server.wait_for_line("the interrupted stream's failure", |l| l.starts_with("failed big.bin"));
    assert!(line.contains("interrupted") || line.contains("died"), "{line}");
    wait_until("the file in progress dropped", || server.temp_files().is_empty());
    assert!(!out.join("big.bin").exists(), "an interrupted file was published");
    assert_alive(server);
}

#[test]
fn sigint_to_a_client_waiting_on_the_server_exits_130_and_the_stream_is_cleaned_up() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let big = write_file(src.path(), "big.bin", BIG, 9);
    let config = write_config(src.path(), &[&big]);
    let server = Server::start(&unique_name("intwait"), out.path(), &["--size", "1M"]);
    let frozen = Frozen::start(&server, {
        let mut c = server.patient_client(&config);
        c.arg("1");
        c
    });
    assert!(!server.temp_files().is_empty(), "the transfer has a file in progress");
    signal(frozen.client.pid(), "INT");
    let Frozen { client, .. } = frozen;
    // The server is still stopped: the client notices the signal on its own.
    let output = client.finish();
    assert_eq!(output.status.code(), Some(130), "{}", show(&output));
    assert!(stderr_of(&output).contains("stream 1: interrupted"), "{}", show(&output));
    thaw(server.pid());
    assert_interrupted_stream_cleaned_up(&server, out.path());
}

#[test]
fn sigint_to_a_client_mid_transfer_exits_130_and_nothing_is_published() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let big = write_file(src.path(), "big.bin", BIG, 10);
    let config = write_config(src.path(), &[&big]);
    let server = Server::start(&unique_name("intsend"), out.path(), &["--size", "1M"]);
    let frozen = Frozen::start(&server, {
        let mut c = server.patient_client(&config);
        c.arg("1");
        c
    });
    // Client stopped part-way, server running with an empty ring: as soon as the
    // client continues, every slot it needs is free.
    frozen.drain_with_client_stopped();
    assert!(!server.temp_files().is_empty(), "the transfer has a file in progress");
    signal(frozen.client.pid(), "INT");
    thaw(frozen.client.pid());
    let Frozen { client, .. } = frozen;
    let output = client.finish();
    assert_eq!(output.status.code(), Some(130), "{}", show(&output));
    assert!(stderr_of(&output).contains("stream 1: interrupted"), "{}", show(&output));
    assert_interrupted_stream_cleaned_up(&server, out.path());
}

// ---------------------------------------------------------------------------------
// SIGINT / SIGTERM to the server mid-transfer.
// ---------------------------------------------------------------------------------

fn server_signal_mid_transfer(signal_name: &str) {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let big = write_file(src.path(), "big.bin", BIG, 11);
    let config = write_config(src.path(), &[&big]);
    let name = unique_name(&format!("srv{}", signal_name.to_lowercase()));
    let mut server = Server::start(&name, out.path(), &["--size", "1M"]);
    let frozen = Frozen::start(&server, {
        let mut c = server.patient_client(&config);
        c.arg("1");
        c
    });
    frozen.drain_with_client_stopped();
    assert!(!server.temp_files().is_empty(), "the transfer has a file in progress");
    let status = server.stop(signal_name);
    assert_eq!(status.code(), Some(0), "stderr: {:#?}", server.stderr());
    assert!(!shm_path(&name).exists(), "segment left behind");
    assert!(!lock_dir(&name).exists(), "lock folder left behind");
    assert!(server.temp_files().is_empty(), "temporary file left behind");
    thaw(frozen.client.pid());
    let Frozen { client, .. } = frozen;
    let output = client.finish();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(
        err.contains("stream 1: failed") && (err.contains("shutting down") || err.contains("exited")),
        "the client should say the server went away: {}",
        show(&output)
    );
    assert!(!out.path().join("big.bin").exists());
}

#[test]
fn sigint_to_the_server_mid_transfer_fails_the_client_and_cleans_up() {
    server_signal_mid_transfer("INT");
}

#[test]
fn sigterm_to_the_server_mid_transfer_fails_the_client_and_cleans_up() {
    server_signal_mid_transfer("TERM");
}

// ---------------------------------------------------------------------------------
// A server that stops answering.
// ---------------------------------------------------------------------------------

/// A server stopped (SIGSTOP) before a client of many files starts: the client
/// gives up after about one `--timeout` in all, not one per file (its jobs open a
/// fresh stream after each failed file), fails every file with that reason, and
/// exits non-zero; the server, once resumed, serves the next client.
#[test]
fn a_silent_server_costs_one_timeout_not_one_per_file() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let folder = src.path().join("many");
    fs::create_dir(&folder).unwrap();
    for i in 0..30 {
        write_file(&folder, &format!("f{i:02}"), 100, i);
    }
    let server = Server::start(&unique_name("silent"), out.path(), &["--workers", "1"]);
    freeze(server.pid());
    let started = std::time::Instant::now();
    let mut client = std::process::Command::new(CLIENT);
    client.args(["--name", &server.name, "--timeout", "1", "-j", "2"]).arg(&folder);
    let output = client.output().unwrap();
    let took = started.elapsed();
    thaw(server.pid());
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let stderr = stderr_of(&output);
    assert!(stderr.contains("has not answered for 1 s (see --timeout)"), "{}", show(&output));
    // One timeout per file would be 30 s and more.
    assert!(took < Duration::from_secs(12), "the client took {took:?}\n{}", show(&output));
    assert!(files_under(out.path()).is_empty(), "nothing was published");
    let again = write_file(src.path(), "after.bin", 1000, 99);
    let mut next = std::process::Command::new(CLIENT);
    next.args(["--name", &server.name]).arg(&again);
    let output = next.output().unwrap();
    assert!(output.status.success(), "{}", show(&output));
    assert_same(out.path(), &again);
}
