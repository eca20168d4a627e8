//! The server's output folder. A client's relative path is resolved one component
//! at a time from a descriptor of OUTPUT_DIR, never through a symbolic link that
//! someone planted there (`O_NOFOLLOW` on every folder), so nothing is ever written
//! outside it. A file is written unnamed (`O_TMPFILE`) in its own folder and given
//! its name only when whole (`linkat`, which never replaces a file), so a killed
//! server leaves no temporary file; where `O_TMPFILE` is missing, or to replace a
//! file (`--overwrite`), a temporary name in the same folder is renamed instead. An
//! empty file, whole from the start, is made under its name (`O_EXCL`) and then
//! given its mode and mtime (`Incoming::create_empty`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::sys;

/// Why a path could not be used, naming the user's path and the component at fault.
#[derive(Debug)]
pub struct PathError {
    /// What failed and why, for people.
    pub message: String,
    /// The kind of the system error behind it.
    pub kind: io::ErrorKind,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// OUTPUT_DIR, opened afresh for each file so that a folder removed and made again
/// while the server runs is used again.
#[derive(Debug, Clone)]
pub struct OutputDir {
    path: PathBuf,
}

/// The folder a file goes into, and its base name there.
pub struct Target {
    /// The folder, opened without following links (shared with the `DirCache`).
    pub parent: Arc<OwnedFd>,
    /// The file's name in that folder.
    pub base: String,
    /// The folder has no default ACL: a file made there gets exactly the mode asked
    /// for, less the umask.
    pub plain: bool,
}

/// The last few folders a stream wrote into, kept open: files of one folder usually
/// come close together, and each would otherwise cost an `openat` and a `close` per
/// path component. Cleared on any failure, so a folder removed and made again is
/// opened afresh.
#[derive(Default)]
pub struct DirCache {
    /// (relative folder, descriptor, no default ACL), most recently used last.
    recent: Vec<(String, Arc<OwnedFd>, bool)>,
}

/// Folders a `DirCache` keeps open.
const CACHED_DIRS: usize = 8;

impl DirCache {
    /// Forgets the kept folders, so the next file opens its folder afresh.
    pub fn clear(&mut self) {
        self.recent.clear();
    }
}

impl Target {
    /// Whether something (a link included, not followed) already has the name.
    pub fn exists(&self) -> bool {
        sys::exists_at(self.parent.as_fd(), &self.base)
    }
}

impl OutputDir {
    /// OUTPUT_DIR at `path`; nothing is opened until a file needs it.
    pub fn new(path: &Path) -> OutputDir {
        OutputDir { path: path.to_owned() }
    }

    /// The output folder's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_root(&self) -> Result<OwnedFd, PathError> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&self.path)
            .map(OwnedFd::from)
            .map_err(|e| PathError {
                message: format!("cannot open output folder {}: {e}", self.path.display()),
                kind: e.kind(),
            })
    }

    /// Opens (creating if missing) every folder of `rel` but the last component, or
    /// takes the folder from `cache`; `rel` was checked by `protocol::validate_path`.
    pub fn target(&self, rel: &str, cache: &mut DirCache) -> Result<Target, PathError> {
        let (folders, base) = rel.rsplit_once('/').unwrap_or(("", rel));
        if let Some(at) = cache.recent.iter().rposition(|(cached, _, _)| cached == folders) {
            let hit = cache.recent.remove(at);
            let target = Target { parent: Arc::clone(&hit.1), base: base.to_owned(), plain: hit.2 };
            cache.recent.push(hit);
            return Ok(target);
        }
        let mut dir = self.open_root()?;
        if !folders.is_empty() {
            for (index, component) in folders.split('/').enumerate() {
                dir = self.step(dir, rel, component, index, None)?;
            }
        }
        let plain = !sys::has_default_acl(dir.as_fd());
        let dir = Arc::new(dir);
        if cache.recent.len() == CACHED_DIRS {
            cache.recent.remove(0);
        }
        cache.recent.push((folders.to_owned(), Arc::clone(&dir), plain));
        Ok(Target { parent: dir, base: base.to_owned(), plain })
    }

    /// Creates every folder of `rel`, the last with exactly `mode` (whatever the
    /// umask), the others as `mkdir -p` would; an existing folder is kept as it is.
    pub fn make_dirs(&self, rel: &str, mode: u32) -> Result<(), PathError> {
        let mut dir = self.open_root()?;
        let count = rel.split('/').count();
        for (index, component) in rel.split('/').enumerate() {
            let exact = (index + 1 == count).then_some(mode);
            dir = self.step(dir, rel, component, index, exact)?;
        }
        Ok(())
    }

    fn step(
        &self,
        dir: OwnedFd,
        rel: &str,
        component: &str,
        index: usize,
        exact_mode: Option<u32>,
    ) -> Result<OwnedFd, PathError> {
        let made = || -> io::Result<OwnedFd> {
            let opened = sys::open_dir_at(dir.as_fd(), component)?;
            if let Some(mode) = exact_mode {
                sys::fchmod(opened.as_fd(), mode)?;
            }
            Ok(opened)
        };
        let opened = match sys::open_dir_at(dir.as_fd(), component) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mode = exact_mode.unwrap_or(0o777);
                match sys::mkdir_at(dir.as_fd(), component, mode) {
                    Ok(()) => made(),
                    // Made by another stream meanwhile: use it (still never a link).
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        sys::open_dir_at(dir.as_fd(), component)
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        opened.map_err(|e| {
            let prefix: Vec<&str> = rel.split('/').take(index + 1).collect();
            let at = self.path.join(prefix.join("/"));
            let message = match e.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR) => format!(
                    "{}: {} is a symbolic link or not a folder: refusing to write through it",
                    crate::escape::escaped(rel),
                    crate::escape::escaped(&at.display().to_string())
                ),
                _ => format!(
                    "{}: cannot use folder {}: {e}",
                    crate::escape::escaped(rel),
                    crate::escape::escaped(&at.display().to_string())
                ),
            };
            PathError { message, kind: e.kind() }
        })
    }
}

/// How the file being received is named until it is published.
enum Temp {
    /// `O_TMPFILE`: no name at all (the temporary name is used only for the moment
    /// of a replacing rename).
    Unnamed(String),
    /// A temporary name in the same folder.
    Named(String),
    /// Its final name from the start, in a folder nobody else sees yet (a staged
    /// folder: see `crate::batch::KIND_STAGE`).
    Direct,
}

/// A file being received beneath the output folder.
pub struct Incoming {
    /// The file to write the data into (unnamed, or under its temporary name).
    pub file: File,
    target: Target,
    temp: Temp,
    /// The permission bits it was made with, when certain (else `publish` sets them).
    mode: Option<u32>,
}

impl Incoming {
    /// Creates the file that will become `target`: unnamed where the filesystem
    /// allows, else under `temp_name`. `mode` is the one it will likely be published with: made with it where the
    /// result is certain, publishing it needs no `fchmod`.
    pub fn create(target: Target, temp_name: &str, mode: u32) -> io::Result<Incoming> {
        let (asked, made) = match target.plain {
            true => (mode, Some(mode & !sys::umask())),
            false => (0o600, None),
        };
        match sys::tmpfile_in(target.parent.as_fd(), asked) {
            Ok(file) => {
                return Ok(Incoming { file, target, temp: Temp::Unnamed(temp_name.to_owned()), mode: made })
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {}
            Err(e) => return Err(e),
        }
        let file = sys::create_new_at(target.parent.as_fd(), temp_name)?;
        Ok(Incoming { file, target, temp: Temp::Named(temp_name.to_owned()), mode: None })
    }

    /// Publishes an empty file as `target` in one step: made under its name (never
    /// over an existing file: AlreadyExists), then given `mode` and `mtime`. An empty
    /// file has no half-written state, so it needs no unnamed file and no link: one
    /// directory operation instead of two. Until its `fchmod` and `futimens` it may
    /// show fewer permission bits and the time of making (and keeps them if the
    /// server is killed in between); if they fail it is removed.
    pub fn create_empty(target: Target, mode: u32, mtime: Option<SystemTime>) -> io::Result<()> {
        let (asked, made) = match target.plain {
            true => (mode, Some(mode & !sys::umask())),
            false => (0o600, None),
        };
        let file = sys::create_new_at_mode(target.parent.as_fd(), &target.base, asked)?;
        let incoming = Incoming { file, target, temp: Temp::Unnamed(String::new()), mode: made };
        incoming.finish_metadata(mode, mtime).inspect_err(|_| {
            // Only if the name is still ours (in a folder others write to, it may
            // have been replaced meanwhile).
            let (dir, base) = (incoming.target.parent.as_fd(), &incoming.target.base);
            if sys::names_file_at(dir, base, &incoming.file) {
                let _ = sys::unlink_at(dir, base);
            }
        })
    }

    /// Creates `target` under its own name (never over an existing file), with
    /// `mode` where certain: for a folder no one else sees yet (a staged folder),
    /// where a half-written file cannot be seen.
    pub fn create_direct(target: Target, mode: u32) -> io::Result<Incoming> {
        let (asked, made) = match target.plain {
            true => (mode, Some(mode & !sys::umask())),
            false => (0o600, None),
        };
        let file = sys::create_new_at_mode(target.parent.as_fd(), &target.base, asked)?;
        Ok(Incoming { file, target, temp: Temp::Direct, mode: made })
    }

    /// The folder the file goes into (to flush it after publishing).
    pub fn folder(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.target.parent)
    }

    /// Gives the file its permission bits and modification time, then its name:
    /// never over an existing file unless `replace` (AlreadyExists otherwise). To
    /// replace, an unnamed file is linked under its temporary name for the moment of
    /// the rename. On failure the file is discarded.
    pub fn publish(self, mode: u32, mtime: Option<SystemTime>, replace: bool) -> io::Result<()> {
        let dir = self.target.parent.as_fd();
        let base = &self.target.base;
        let result = self.finish_metadata(mode, mtime).and_then(|()| match &self.temp {
            Temp::Unnamed(_) if !replace => sys::link_tmpfile(&self.file, dir, base),
            Temp::Unnamed(temp) => {
                sys::link_tmpfile(&self.file, dir, temp).map_err(|e| match e.kind() {
                    // Not "the file exists": the final name is about to be replaced.
                    io::ErrorKind::AlreadyExists => {
                        io::Error::other(format!("its temporary name {temp} is taken"))
                    }
                    _ => e,
                })?;
                sys::rename_at(dir, temp, base, true).inspect_err(|_| {
                    let _ = sys::unlink_at(dir, temp);
                })
            }
            Temp::Named(temp) => sys::rename_at(dir, temp, base, replace),
            Temp::Direct => Ok(()),
        });
        if result.is_err() {
            self.discard();
        }
        result
    }

    fn finish_metadata(&self, mode: u32, mtime: Option<SystemTime>) -> io::Result<()> {
        if self.mode != Some(mode) {
            self.file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        if let Some(time) = mtime {
            self.file.set_times(std::fs::FileTimes::new().set_modified(time))?;
        }
        Ok(())
    }

    /// Drops an unpublished file (an unnamed one simply vanishes with its descriptor).
    pub fn discard(self) {
        let dir = self.target.parent.as_fd();
        match &self.temp {
            Temp::Named(temp) => {
                let _ = sys::unlink_at(dir, temp);
            }
            Temp::Direct if sys::names_file_at(dir, &self.target.base, &self.file) => {
                let _ = sys::unlink_at(dir, &self.target.base);
            }
            _ => {}
        }
    }
}
