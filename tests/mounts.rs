//! Faults that need a filesystem of their own: OUTPUT_DIR on a tiny tmpfs (disk
//! full) and OUTPUT_DIR remounted read-only while the server runs. Mounting needs
//! root (CAP_SYS_ADMIN); where it is not allowed these tests say so on stderr and
//! return, since the case cannot be staged there (tests/faults.rs covers the
//! RLIMIT_FSIZE variant everywhere).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A tmpfs of `size` mounted on a fresh folder, unmounted on drop.
struct SmallFs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("out");
        fs::create_dir(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(SmallFs { dir, _parent: parent })
    }

    fn remount(&self, mode: &str) {
        let status =
            Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(&self.dir).status().unwrap();
        assert!(status.success(), "remount {mode} failed");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn send(server: &Server, config: &Path, id: &str) -> std::process::Output {
    run({
        let mut c = server.client(config);
        c.arg(id);
        c
    })
}

#[test]
fn a_full_output_disk_fails_that_stream_at_both_ends_and_the_server_goes_on() {
    let Some(small) = SmallFs::mount("1m") else { return };
    let src = tempfile::tempdir().unwrap();
    let big = write_file(src.path(), "too-big.bin", 3 << 20, 21);
    let fits = write_file(src.path(), "fits.bin", 100_000, 22);
    let config = write_config(src.path(), &[&big, &fits]);
    let server = Server::start(&unique_name("diskfull"), &small.dir, &[]);

    let output = send(&server, &config, "1");
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("No space left on device"), "{}", show(&output));
    let line = server.wait_for_line("the failure", |l| l.starts_with("failed too-big.bin"));
    assert!(line.contains("No space left on device"), "{line}");
    wait_until("the temporary file removed", || server.temp_files().is_empty());
    assert!(!small.dir.join("too-big.bin").exists());

    let output = send(&server, &config, "2");
    assert!(output.status.success(), "{}", show(&output));
    assert!(fs::read(small.dir.join("fits.bin")).unwrap() == fs::read(&fits).unwrap());
    assert!(!has_exited(server.pid()));
}

#[test]
fn a_read_only_output_dir_fails_clearly_and_the_server_recovers() {
    let Some(small) = SmallFs::mount("8m") else { return };
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "ro.bin", 200_000, 23);
    let config = write_config(src.path(), &[&file]);
    let server = Server::start(&unique_name("readonly"), &small.dir, &[]);

    small.remount("ro");
    let output = send(&server, &config, "1");
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("Read-only file system"), "{}", show(&output));
    assert!(!has_exited(server.pid()), "the server died\n{:#?}", server.stderr());
    // Many files failing for one error of the system: three lines, then a count.
    let tree = src.path().join("tree");
    fs::create_dir(&tree).unwrap();
    for i in 0..8 {
        write_file(&tree, &format!("f{i}"), 10, i);
    }
    let output = run({
        let mut c = server.client(&config);
        c.arg(&tree);
        c
    });
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let failed: Vec<String> =
        stderr_of(&output).lines().filter(|l| l.starts_with("failed: ")).map(String::from).collect();
    assert_eq!(failed.len(), 4, "{}", show(&output));
    assert!(failed[3].starts_with("failed: 6 more: Read-only file system"), "{failed:?}");
    // Each line names its file once (the client names it; the server's message names
    // only the folder it could not use).
    let file_line = failed.iter().find(|l| l.contains("/f0") || l.contains("/f1")).expect("a file's line");
    assert_eq!(file_line.matches("tree/f").count(), 1, "{file_line}");

    small.remount("rw");
    let output = send(&server, &config, "1");
    assert!(output.status.success(), "{}", show(&output));
    assert!(fs::read(small.dir.join("ro.bin")).unwrap() == fs::read(&file).unwrap());
}

/// The point of sharing memory rather than a folder: a client in its own mount
/// namespace (a container, a sandbox) whose files only it can see, sharing only
/// /dev/shm with the server, still delivers them.
#[test]
fn a_client_in_its_own_mount_namespace_sends_files_only_it_can_see() {
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("mountns"), out.path(), &[]);
    let private = tempfile::tempdir().unwrap();
    let dir = private.path().display().to_string();
    // Inside: a private tmpfs over `dir`, a file written there, sent from there.
    let script = format!(
        "mount -t tmpfs tmpfs '{dir}' && printf 'made inside' > '{dir}/inside.txt' && '{CLIENT}' --name '{}' '{dir}/inside.txt'",
        server.name
    );
    let output =
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output();
    let Ok(output) = output else {
        eprintln!("skipped: unshare is not installed");
        return;
    };
    if !output.status.success() && stderr_of(&output).contains("unshare:") {
        eprintln!("skipped: cannot make a mount namespace here (needs root): {}", stderr_of(&output));
        return;
    }
    assert!(output.status.success(), "{}", show(&output));
    assert!(!private.path().join("inside.txt").exists(), "the file was visible outside the namespace");
    assert_eq!(fs::read(out.path().join("inside.txt")).unwrap(), b"made inside");
}
