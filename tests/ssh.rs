//! `sharedclient --remote` through a real `sshd` on 127.0.0.1 with throwaway keys.
//! Skipped (and says so) where sshd is not installed: `scripts/ssh-test.sh` installs
//! it and runs this test.

mod common;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SSHD: &str = "/usr/sbin/sshd";

/// A private sshd on a free port of 127.0.0.1, killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success(), "ssh-keygen failed");
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("user_key"));
        let bin = Path::new(CLIENT).parent().unwrap().display().to_string();
        let public = fs::read_to_string(d.join("user_key.pub")).unwrap();
        // The session finds this build's sharedclient first on its PATH.
        let authorized = format!("environment=\"PATH={bin}:/usr/local/bin:/usr/bin:/bin\" {public}");
        fs::write(d.join("authorized_keys"), authorized).unwrap();
        fs::set_permissions(d.join("authorized_keys"), fs::Permissions::from_mode(0o600)).unwrap();
        // Privilege separation needs this folder when sshd runs as root.
        let _ = fs::create_dir_all("/run/sshd");
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {auth}\n\
                 PidFile {pid}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
                 PermitUserEnvironment yes\n",
                host = d.join("host_key").display(),
                auth = d.join("authorized_keys").display(),
                pid = d.join("sshd.pid").display(),
            );
            fs::write(d.join("sshd_config"), config).unwrap();
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sshd starts");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd { child, port, key: d.join("user_key"), _dir: dir };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start on 127.0.0.1");
    }

    /// The `--rsh` value that reaches it.
    fn rsh(&self) -> String {
        format!(
            "ssh -p {} -i {} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            self.port,
            self.key.display()
        )
    }
}

fn user() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into())
}

#[test]
fn a_folder_goes_through_a_real_sshd() {
    if !Path::new(SSHD).exists() {
        eprintln!("skipped: {SSHD} is not installed (scripts/ssh-test.sh installs it and runs this test)");
        return;
    }
    let sshd = Sshd::start();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    fs::create_dir_all(tree.join("inner")).unwrap();
    for i in 0..30 {
        write_file(&tree.join("inner"), &format!("f{i}.bin"), 1000 * i + 3, i as u64);
    }
    write_file(&tree, "big.bin", 5 << 20, 99);
    let server = Server::start(&unique_name("sshd"), out.path(), &[]);
    let output = run({
        let mut c = Command::new(CLIENT);
        c.current_dir(src.path())
            .args(["--remote", &format!("{}@127.0.0.1", user()), "--rsh", &sshd.rsh(), "-n", &server.name])
            .arg("tree");
        c
    });
    assert!(output.status.success(), "{}", show(&output));
    assert!(stdout_of(&output).contains("sharedclient: 31 files"), "{}", show(&output));
    for i in 0..30 {
        let rel = format!("tree/inner/f{i}.bin");
        assert_eq!(
            fs::read(out.path().join(&rel)).unwrap(),
            fs::read(src.path().join(&rel)).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(fs::read(out.path().join("tree/big.bin")).unwrap(), fs::read(tree.join("big.bin")).unwrap());

    // A segment with no server behind it on the remote host: exit 1, and why.
    let output = run({
        let mut c = Command::new(CLIENT);
        c.current_dir(src.path())
            .args([
                "--remote",
                &format!("{}@127.0.0.1", user()),
                "--rsh",
                &sshd.rsh(),
                "-n",
                "sxt-no-such-server",
            ])
            .arg("tree");
        c
    });
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("no server on segment"), "{}", show(&output));
}
