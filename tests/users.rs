//! Other users: a server shares its segment with a group (`--group`); members send,
//! anyone else is refused with a clear message, files belong to the server's user,
//! and one member's dead client does not hurt another's transfer. Needs root to make
//! a group and two users (CI runs as root); elsewhere the test says so and returns.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use common::*;

/// A group and two users made for one test run, removed on drop.
struct Accounts {
    group: String,
    member: String,
    other: String,
}

impl Accounts {
    fn make() -> Option<Accounts> {
        // Unique per test too: the tests of this file run at once in one process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tag =
            format!("{}x{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let accounts =
            Accounts { group: format!("sxg{tag}"), member: format!("sxm{tag}"), other: format!("sxo{tag}") };
        let quiet = |args: &[&str]| {
            Command::new(args[0])
                .args(&args[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !quiet(&["groupadd", &accounts.group]) {
            eprintln!("skipped: cannot make a group here (needs root and groupadd)");
            return None;
        }
        let made = quiet(&["useradd", "-M", "-N", "-g", "nogroup", "-G", &accounts.group, &accounts.member])
            && quiet(&["useradd", "-M", "-N", "-g", "nogroup", &accounts.other]);
        if !made {
            eprintln!("skipped: cannot make users here (needs root and useradd)");
            return None;
        }
        Some(accounts)
    }

    /// `sharedclient ARGS` run as `user`.
    fn client_as(&self, user: &str, name: &str, args: &[&str]) -> Command {
        let mut command = Command::new("runuser");
        command.args(["-u", user, "--", CLIENT, "--name", name]).args(args);
        command
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for user in [&self.member, &self.other] {
            let _ = Command::new("userdel").arg(user).stderr(Stdio::null()).status();
        }
        let _ = Command::new("groupdel").arg(&self.group).stderr(Stdio::null()).status();
    }
}

#[test]
fn members_of_the_group_send_others_are_refused_and_files_are_the_servers() {
    let Some(accounts) = Accounts::make() else { return };
    // Sources every user can read.
    let src = tempfile::tempdir().unwrap();
    fs::set_permissions(src.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let file = write_file(src.path(), "shared.txt", 5000, 1);
    let big = write_file(src.path(), "big.bin", 16 << 20, 2);
    for path in [&file, &big] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("group"), out.path(), &["--group", &accounts.group]);
    assert_eq!(fs::metadata(shm_path(&server.name)).unwrap().mode() & 0o777, 0o660);

    let path = file.display().to_string();
    let output = run(accounts.client_as(&accounts.member, &server.name, &[&path]));
    assert!(output.status.success(), "a member: {}", show(&output));
    let arrived = fs::metadata(out.path().join("shared.txt")).unwrap();
    assert_eq!(arrived.uid(), 0, "received files belong to the server's user");
    assert!(fs::read(out.path().join("shared.txt")).unwrap() == fs::read(&file).unwrap());

    let output = run(accounts.client_as(&accounts.other, &server.name, &[&path, "--as", "other.txt"]));
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let not_in = format!("shares it with group {}", accounts.group);
    assert!(stderr_of(&output).contains(&not_in), "{}", show(&output));
    assert!(stderr_of(&output).contains("which you are not in"), "{}", show(&output));
    assert!(!out.path().join("other.txt").exists());

    // A member's client killed mid-transfer: the server drops only its stream.
    let mut dying = accounts
        .client_as(&accounts.member, &server.name, &["-", "--as", "dying.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = dying.stdin.take().unwrap();
        stdin.write_all(&pattern(1 << 20, 3)).unwrap();
        stdin.flush().unwrap();
        server.wait_for_line("the dying stream", |_| !server.temp_files().is_empty());
        // runuser waits for the client it started: kill the client itself, then
        // let runuser go (the client is dead, the pipe is never closed cleanly).
        let children = format!("/proc/{0}/task/{0}/children", dying.id());
        let client: u32 =
            fs::read_to_string(children).unwrap().split_whitespace().next().unwrap().parse().unwrap();
        signal(client, "KILL");
        let _ = dying.wait();
        drop(stdin);
    }
    let big_path = big.display().to_string();
    let output = run(accounts.client_as(&accounts.member, &server.name, &[&big_path]));
    assert!(output.status.success(), "{}", show(&output));
    assert!(fs::read(out.path().join("big.bin")).unwrap() == fs::read(&big).unwrap());
    server.wait_for_line("the dead client's stream dropped", |l| l.starts_with("failed dying.bin"));
    assert!(!out.path().join("dying.bin").exists(), "a dead client's file was published");
}

/// A user outside the group of another user's `--group` server, root included, is
/// told which group it is shared with, not to ask for `--group` (it has it).
#[test]
fn root_outside_the_group_of_a_members_server_is_told_which_group() {
    let Some(accounts) = Accounts::make() else { return };
    let out = tempfile::tempdir().unwrap();
    fs::set_permissions(out.path(), fs::Permissions::from_mode(0o777)).unwrap();
    // setpriv execs the server in place (runuser forks it: killing runuser at the
    // end would leave the server running).
    let prelude =
        format!("exec setpriv --reuid={0} --regid=nogroup --init-groups \"$0\" \"$@\"", accounts.member);
    let server =
        Server::start_wrapped(&unique_name("rootout"), out.path(), &prelude, &["--group", &accounts.group]);
    assert_ne!(fs::metadata(shm_path(&server.name)).unwrap().uid(), 0, "the member's server");
    let mut root = Command::new(CLIENT);
    root.args(["--name", &server.name, "-", "--as", "root.txt"]).stdin(Stdio::null());
    let output = run(root);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(err.contains(&format!("shares it with group {}", accounts.group)), "{}", show(&output));
    assert!(!err.contains("ask them to run it with --group"), "{}", show(&output));
    assert!(!out.path().join("root.txt").exists());
    // A server started on that name by someone else is told the name is taken, not
    // to join the group (which would not let it serve there).
    let other_out = tempfile::tempdir().unwrap();
    let mut second = Command::new(SERVER);
    second.args(["--name", &server.name]).arg(other_out.path());
    let output = run(second);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(
        err.contains("pick another --name") && !err.contains("which you are not in"),
        "{}",
        show(&output)
    );
    let mut server = server;
    assert_eq!(server.stop("TERM").code(), Some(0), "the member's server stops on request");

    // A server whose own user is not in the --group is told so, and leaves nothing.
    let name = unique_name("notmember");
    let mut outsider = Command::new("setpriv");
    outsider.args([&format!("--reuid={}", accounts.other), "--regid=nogroup", "--init-groups", SERVER]);
    outsider.args(["--name", &name, "--group", &accounts.group]).arg(out.path());
    let output = run(outsider);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let wanted = format!("is not in group {}", accounts.group);
    assert!(stderr_of(&output).contains(&wanted), "{}", show(&output));
    assert!(!lock_dir(&name).exists() && !shm_path(&name).exists(), "a refused start left its lock folder");
}

/// The shared lock folder is sticky (3770): a member cannot remove or replace the
/// server's lock files or its pid file (a link there would have the server write
/// through it; a FIFO would hang every opener). A folder left by an older server
/// without the sticky bit, where a member did plant a FIFO and a link, is refused
/// at start with a message saying what to do, and no link is written through.
#[test]
fn a_member_cannot_swap_the_servers_lock_files() {
    let Some(accounts) = Accounts::make() else { return };
    let out = tempfile::tempdir().unwrap();
    let mut server = Server::start(&unique_name("sticky"), out.path(), &["--group", &accounts.group]);
    let locks = lock_dir(&server.name);
    assert_eq!(fs::metadata(&locks).unwrap().mode() & 0o7777, 0o3770);
    let as_member = |dir: &std::path::Path, script: &str| {
        let mut command = Command::new("runuser");
        command.args(["-u", &accounts.member, "--", "sh", "-c", script]).current_dir(dir);
        run(command)
    };
    for file in ["server.lock", "handout.lock", "server.pid"] {
        let output = as_member(&locks, &format!("rm -f {file} || mv {file} moved; ln -s /tmp {file}"));
        assert!(!output.status.success(), "{file}: {}", show(&output));
        assert!(fs::symlink_metadata(locks.join(file)).unwrap().file_type().is_file(), "{file} was replaced");
    }
    // The member can still send.
    let src = tempfile::tempdir().unwrap();
    fs::set_permissions(src.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let file = write_file(src.path(), "m.txt", 1000, 4);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let output = run(accounts.client_as(&accounts.member, &server.name, &[&file.display().to_string()]));
    assert!(output.status.success(), "{}", show(&output));
    // A second server refused the name leaves the live one's folder and lock files
    // as they are (without a group, or with another one).
    let gid = |file: &str| fs::metadata(locks.join(file)).unwrap().gid();
    let before = (gid("server.lock"), gid("handout.lock"));
    for extra in [&[][..], &["--group", "root"][..]] {
        let mut second = Command::new(SERVER);
        second.args(["--name", &server.name]).args(extra).arg(out.path());
        let output = run(second);
        assert_eq!(output.status.code(), Some(2), "{}", show(&output));
        assert!(stderr_of(&output).contains("already running"), "{}", show(&output));
        assert_eq!(fs::metadata(&locks).unwrap().mode() & 0o7777, 0o3770, "the live server's folder changed");
        assert_eq!(
            (gid("server.lock"), gid("handout.lock")),
            before,
            "{extra:?}: a lock file's group changed"
        );
    }
    assert_eq!(server.stop("TERM").code(), Some(0));

    // An older, non-sticky folder with a member's FIFO and link in it.
    let name = unique_name("planted");
    let locks = lock_dir(&name);
    fs::create_dir(&locks).unwrap();
    let _cleanup = RemoveOnDrop(locks.clone());
    let group_of = |group: &str| {
        let line = fs::read_to_string("/etc/group").unwrap();
        let gid =
            line.lines().find(|l| l.starts_with(&format!("{group}:"))).unwrap().split(':').nth(2).unwrap();
        gid.parse::<u32>().unwrap()
    };
    std::os::unix::fs::chown(&locks, None, Some(group_of(&accounts.group))).unwrap();
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o2770)).unwrap();
    let victim = tempfile::NamedTempFile::new().unwrap();
    fs::write(victim.path(), b"precious").unwrap();
    let plant = format!("mkfifo -m 666 handout.lock && ln -s {} server.pid", victim.path().display());
    let output = as_member(&locks, &plant);
    assert!(output.status.success(), "{}", show(&output));
    let mut start = Command::new(SERVER);
    start.args(["--name", &name, "--group", &accounts.group]).arg(out.path());
    let output = run(start);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let err = stderr_of(&output);
    assert!(err.contains("handout.lock is a FIFO") && err.contains("remove"), "{}", show(&output));
    assert_eq!(fs::read(victim.path()).unwrap(), b"precious", "written through a planted link");
    // With the FIFO gone, the link alone: the server starts, and replaces the link
    // with its own file instead of writing through it.
    fs::remove_file(locks.join("handout.lock")).unwrap();
    let mut server = Server::start(&name, out.path(), &["--group", &accounts.group]);
    let pid_file = fs::symlink_metadata(locks.join("server.pid")).unwrap();
    assert!(pid_file.file_type().is_file(), "server.pid is still a link");
    assert_eq!(fs::read_to_string(locks.join("server.pid")).unwrap().trim(), server.pid().to_string());
    assert_eq!(fs::read(victim.path()).unwrap(), b"precious", "written through a planted link");
    assert_eq!(fs::metadata(&locks).unwrap().mode() & 0o7777, 0o3770);
    assert_eq!(server.stop("TERM").code(), Some(0));
}

/// Removes a lock folder a test made by hand, whatever happens to the test.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
