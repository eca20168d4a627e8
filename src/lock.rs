//! Named locks (the `named-lock` crate, flock on a file) kept in one private folder
//! per segment: `/dev/shm/<name>.locks/` (mode 0700; 3770 shared with a group, where
//! the sticky bit keeps members from removing or replacing the server's files). The
//! folder holds
//! `server.lock` (held by the live server for its whole life), `handout.lock`
//! (guards the GUID on offer) and `<guid>.lock` for each live stream, removed when
//! the stream is over so no trail builds up.
//!
//! The folder sits beside the segment (not under $TMPDIR) so a server and a client
//! with different environments still meet on the same files.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use named_lock::{NamedLock, NamedLockGuard};
use uuid::Uuid;

use crate::sys::{self, SHM_DIR};

/// Held by the live server for its whole life: a second server on the name fails.
pub const SERVER_LOCK: &str = "server.lock";
/// Guards the GUID on offer (`handout`).
pub const HANDOUT_LOCK: &str = "handout.lock";
/// Holds the live server's pid, for the "already running" message.
pub const SERVER_PID_FILE: &str = "server.pid";

/// The mode of a lock folder shared with a group: setgid (files get its group) and
/// sticky (a member may remove or rename only what it made, never the server's lock
/// files, which it could otherwise swap for a link or a FIFO).
const SHARED_MODE: u32 = 0o3770;

/// The lock folder of one segment name: private to the server's user (0700), or
/// shared with one group (3770, `sharedserver --group`).
#[derive(Debug, Clone)]
pub struct LockDir {
    path: PathBuf,
    /// The group lock files are shared with, if any.
    group: Option<u32>,
}

/// Checks a segment name: it becomes a file name in /dev/shm and part of the lock
/// folder's name, so only a safe alphabet is allowed.
pub fn validate_segment_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(format!("segment name {name:?} is not allowed: use 1 to 64 letters, digits, '_' or '-'"));
    }
    Ok(())
}

impl LockDir {
    /// The lock folder of segment `name`: `/dev/shm/<name>.locks`.
    pub fn path_for(name: &str) -> PathBuf {
        Path::new(SHM_DIR).join(format!("{name}.locks"))
    }

    /// Creates the folder (0700) if needed and refuses one that is a symlink, not a
    /// folder, or owned by someone else: an attacker could have planted it.
    pub fn create(name: &str) -> io::Result<LockDir> {
        Self::create_for(name, None)
    }

    /// As `create`, to be shared with `group` if given (see `share`). Changes the
    /// mode of a folder already there only if it is shared the way older servers
    /// shared it (2770, not sticky): made private, so no member can swap a file in it
    /// while it is checked; a live server's folder is left as it is.
    pub fn create_for(name: &str, group: Option<u32>) -> io::Result<LockDir> {
        let path = Self::path_for(name);
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let dir = LockDir { path, group };
        dir.check_owned()?;
        if fs::symlink_metadata(&dir.path)?.mode() & 0o7777 == 0o2770 {
            fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o700))?;
        }
        Ok(dir)
    }

    /// The server, once it holds the name's server lock: the folder becomes 3770 and
    /// the group's (every lock file in it 0660, so members can take locks; the
    /// server's own are made or checked first), or 0700 without a group. Never
    /// before the lock is held: a second server refused the name must not change the
    /// live one's folder.
    pub fn share(&self) -> io::Result<()> {
        match self.group {
            Some(gid) => {
                fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700))?;
                for file in [SERVER_LOCK, HANDOUT_LOCK] {
                    self.check_lock_file(&self.path.join(file), true)?;
                }
                std::os::unix::fs::chown(&self.path, None, Some(gid))?;
                fs::set_permissions(&self.path, fs::Permissions::from_mode(SHARED_MODE))
            }
            // Ours alone: make sure nobody else can plant or open locks in it.
            None => fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700)),
        }
    }

    /// Opens an existing folder (a client: the server made it). Changes nothing.
    pub fn open(name: &str) -> io::Result<LockDir> {
        let dir = LockDir { path: Self::path_for(name), group: None };
        match dir.check_owned() {
            // Ours, but shared with a group: its members may have put files in it
            // (a FIFO named as a lock file), so each is checked before it is opened.
            Ok(()) => {
                let meta = fs::symlink_metadata(&dir.path)?;
                let group = (meta.mode() & 0o7777 == SHARED_MODE).then_some(meta.gid());
                Ok(LockDir { group, ..dir })
            }
            // Another user's server that shares its folder with a group of ours.
            Err(e) => match dir.shared_group() {
                Some(gid) => Ok(LockDir { group: Some(gid), ..dir }),
                None => Err(dir.not_a_member().unwrap_or(e)),
            },
        }
    }

    /// Why a client may not use another user's server shared with a group (3770)
    /// that it is not in (`shared_group` found none of ours): root too is refused.
    fn not_a_member(&self) -> Option<io::Error> {
        let meta = fs::symlink_metadata(&self.path).ok()?;
        let shared = meta.file_type().is_dir() && meta.mode() & 0o7777 == SHARED_MODE;
        shared.then(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to {}, whose server shares it with {}, which you are not in: ask to be added \
                     to that group (then log in again)",
                    self.path.display(),
                    sys::user_label(meta.uid()),
                    sys::group_label(meta.gid())
                ),
            )
        })
    }

    /// The folder's group, if it is a shared lock folder (a real folder, 3770) and
    /// we are a member of that group.
    fn shared_group(&self) -> Option<u32> {
        let meta = fs::symlink_metadata(&self.path).ok()?;
        let shared = meta.file_type().is_dir() && meta.mode() & 0o7777 == SHARED_MODE;
        (shared && sys::current_groups().contains(&meta.gid())).then_some(meta.gid())
    }

    fn check_owned(&self) -> io::Result<()> {
        // symlink_metadata: never follow a link someone planted at our path.
        let meta = fs::symlink_metadata(&self.path)?;
        let refuse = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
        if !meta.file_type().is_dir() {
            return Err(refuse(format!(
                "{} is not a folder (a symlink or file is in the way)",
                self.path.display()
            )));
        }
        if meta.uid() != sys::current_uid() {
            let owner = sys::user_label(meta.uid());
            let segment = Path::new(SHM_DIR).join(self.path.file_stem().unwrap_or_default());
            let live = if segment.exists() {
                ", and a segment of that name exists: their server may be running"
            } else {
                ""
            };
            return Err(refuse(format!(
                "{} belongs to {owner}{live}: it is their server's name; to send to it, ask them to run it \
                 with --group; otherwise pick another --name (never remove it while their server runs)",
                self.path.display(),
            )));
        }
        Ok(())
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The named lock on `file` in the folder (the file is created if missing); not
    /// acquired yet.
    pub fn lock(&self, file: &str) -> io::Result<NamedLock> {
        let path = self.path.join(file);
        if self.group.is_some() {
            self.check_lock_file(&path, false)?;
        }
        NamedLock::with_path(path).map_err(|e| io::Error::other(e.to_string()))
    }

    /// In a shared folder, makes or checks lock file `path` before the `named-lock`
    /// crate opens it (following links, waiting on a FIFO): a regular file, never
    /// through a link, never waiting, made by the server or by us; 0660 whatever the
    /// umask of whoever made it, and the folder's group.
    /// The group and mode of a file that is ours are set only if it is new or
    /// `adjust` (the server, once it holds the name): a second server refused the
    /// name must not change the live one's lock files.
    fn check_lock_file(&self, path: &Path, adjust: bool) -> io::Result<()> {
        let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
        let opened =
            fs::OpenOptions::new().append(true).create_new(true).mode(0o660).custom_flags(flags).open(path);
        let (made, new) = match opened {
            Ok(file) => (Ok(file), true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                (fs::OpenOptions::new().append(true).custom_flags(flags).open(path), false)
            }
            Err(e) => (Err(e), true),
        };
        let made = made.map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => self.tampered(path, "a symbolic link"),
            Some(libc::ENXIO) => self.tampered(path, "a FIFO"),
            _ => e,
        })?;
        let meta = made.metadata()?;
        if !meta.file_type().is_file() {
            return Err(self.tampered(path, "not a regular file"));
        }
        let server = fs::symlink_metadata(&self.path)?.uid();
        if meta.uid() != server && meta.uid() != sys::current_uid() {
            return Err(
                self.tampered(path, &format!("made by {}, not by the server", sys::user_label(meta.uid())))
            );
        }
        if meta.uid() == sys::current_uid() && (new || adjust) {
            // Made before the folder had the group (the server's own), or by us.
            std::os::unix::fs::fchown(&made, None, self.group)?;
            made.set_permissions(fs::Permissions::from_mode(0o660))?;
        }
        Ok(())
    }

    /// A lock file someone else put in the way.
    fn tampered(&self, path: &Path, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is {what}: someone replaced the server's lock file; stop the server, remove {} and start it again",
                path.display(),
                self.path.display()
            ),
        )
    }

    /// Writes the live server's pid to `server.pid`: a new file renamed into place, so
    /// a link or FIFO someone left at that name is replaced, never written through.
    pub fn write_server_pid(&self) -> io::Result<()> {
        let pid = std::process::id();
        let fresh = self.path.join(format!("{SERVER_PID_FILE}.{pid}"));
        let _ = fs::remove_file(&fresh);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&fresh)?;
        io::Write::write_all(&mut file, format!("{pid}\n").as_bytes())?;
        fs::rename(&fresh, self.path.join(SERVER_PID_FILE)).inspect_err(|_| {
            let _ = fs::remove_file(&fresh);
        })
    }

    /// The pid in `server.pid`, as written (never through a link, never waiting on
    /// a FIFO); empty if there is none.
    pub fn read_server_pid(&self) -> String {
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(self.path.join(SERVER_PID_FILE));
        let mut text = String::new();
        if let Ok(file) = opened {
            if file.metadata().is_ok_and(|meta| meta.file_type().is_file()) {
                let _ = io::Read::read_to_string(&mut io::Read::take(file, 32), &mut text);
            }
        }
        text.trim().to_owned()
    }

    /// The lock file name of stream `guid`: `<guid>.lock`, the GUID as 32 hex digits.
    pub fn stream_lock_name(guid: Uuid) -> String {
        format!("{}.lock", guid.simple())
    }

    /// The lock guarding stream `guid`'s record (its mailboxes); not acquired yet.
    pub fn stream_lock(&self, guid: Uuid) -> io::Result<NamedLock> {
        self.lock(&Self::stream_lock_name(guid))
    }

    /// Removes a finished stream's lock file (a missing one is fine).
    pub fn remove_stream_lock(&self, guid: Uuid) {
        let _ = fs::remove_file(self.path.join(Self::stream_lock_name(guid)));
    }

    /// Lock files of streams, for the status view and leak checks.
    pub fn stream_lock_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.path) else { return Vec::new() };
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.ends_with(".lock") && name != SERVER_LOCK && name != HANDOUT_LOCK
            })
            .collect()
    }

    /// Removes every stream lock file (a new server cleaning up after a dead one).
    pub fn remove_stale_stream_locks(&self) -> usize {
        self.stream_lock_files().into_iter().filter(|p| fs::remove_file(p).is_ok()).count()
    }

    /// Removes the folder and everything in it (clean server shutdown).
    pub fn remove(&self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Whether a live process holds the server lock of segment `name`: a server that
/// is starting (it takes the lock before it makes the segment). Never waits, never
/// follows a link; `false` for a lock folder we may not read.
pub fn server_lock_held(name: &str) -> bool {
    let path = LockDir::path_for(name).join(SERVER_LOCK);
    let Ok(file) =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
    else {
        return false;
    };
    if !file.metadata().is_ok_and(|meta| meta.file_type().is_file()) {
        return false;
    }
    sys::flock_busy(&file)
}

/// Locks `lock`, mapping the crate's error to io.
pub fn acquire(lock: &NamedLock) -> io::Result<NamedLockGuard> {
    lock.lock().map_err(|e| io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_outside_the_safe_alphabet_are_refused() {
        for bad in ["", "a/b", "..", "a.locks", "x y", &"n".repeat(65)] {
            assert!(validate_segment_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_segment_name("sharedxfer_test-1").is_ok());
    }

    #[test]
    fn a_symlink_planted_at_the_lock_folder_is_refused() {
        let name = format!("sxf-unit-lock-{}", std::process::id());
        let target = tempfile::tempdir().unwrap();
        let path = LockDir::path_for(&name);
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(target.path(), &path).unwrap();
        let err = LockDir::create(&name).unwrap_err();
        fs::remove_file(&path).unwrap();
        assert!(err.to_string().contains("not a folder"), "{err}");
    }

    #[test]
    fn a_lock_folder_owned_by_another_user_is_refused() {
        let name = format!("sxf-unit-lockowner-{}", std::process::id());
        let path = LockDir::path_for(&name);
        fs::create_dir(&path).unwrap();
        // Only root can give a folder away; elsewhere this case cannot be staged.
        if std::os::unix::fs::chown(&path, Some(65534), None).is_err() {
            fs::remove_dir(&path).unwrap();
            return;
        }
        let err = LockDir::create(&name).unwrap_err();
        fs::remove_dir(&path).unwrap();
        let text = err.to_string();
        assert!(text.contains("uid 65534") && text.contains("--group"), "{text}");
        assert!(
            text.contains("never remove it while their server runs"),
            "says not to break a live server: {text}"
        );
    }

    #[test]
    fn stream_lock_files_are_listed_and_removed() {
        let name = format!("sxf-unit-lockfiles-{}", std::process::id());
        let dir = LockDir::create(&name).unwrap();
        let guid = Uuid::new_v4();
        let lock = dir.stream_lock(guid).unwrap();
        drop(acquire(&lock).unwrap());
        assert_eq!(dir.stream_lock_files().len(), 1);
        dir.remove_stream_lock(guid);
        assert!(dir.stream_lock_files().is_empty());
        dir.remove();
        assert!(!dir.path().exists());
    }
}
