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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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

/// OUTPUT_DIR. Folders are opened from it afresh when the stream's `DirCache` does
/// not hold them (or a folder above them), and again from it when a kept one turns
/// out to be gone: a folder removed and made again while the server runs is used
/// again.
#[derive(Debug, Clone)]
pub struct OutputDir {
    path: PathBuf,
    /// `--sync file`: a folder made is flushed in its parent at once, so a file
    /// confirmed in a new folder is reachable after a crash.
    sync_new_folders: bool,
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

/// The last few folders a stream wrote into or passed through, kept open: files of
/// one folder usually come close together, and each would otherwise cost an
/// `openat` and a `close` per path component. Cleared on any failure, so a folder
/// removed and made again is opened afresh. (A folder kept open that is moved
/// elsewhere in the output is still written into, as a file being written is.)
#[derive(Default)]
pub struct DirCache {
    /// (relative folder, descriptor, no default ACL once asked), most recently used
    /// last.
    recent: Vec<(String, Arc<OwnedFd>, Option<bool>)>,
}

/// Folders a `DirCache` keeps open.
const CACHED_DIRS: usize = 8;

impl DirCache {
    /// Forgets the kept folders, so the next file opens its folder afresh.
    pub fn clear(&mut self) {
        self.recent.clear();
    }

    /// Keeps `dir`, the folder `folders`, as the most recently used.
    fn keep(&mut self, folders: String, dir: Arc<OwnedFd>) {
        self.recent.retain(|(cached, _, _)| *cached != folders);
        if self.recent.len() == CACHED_DIRS {
            self.recent.remove(0);
        }
        self.recent.push((folders, dir, None));
    }
}

impl Target {
    /// Whether something (a link included, not followed) already has the name.
    pub fn exists(&self) -> bool {
        self.entry().is_some()
    }

    /// Whether a folder has the name (a link to one is not a folder).
    pub fn is_folder(&self) -> bool {
        self.entry() == Some(true)
    }

    /// Whether something other than a folder (a link included) has the name.
    pub fn is_file(&self) -> bool {
        self.entry() == Some(false)
    }

    fn entry(&self) -> Option<bool> {
        sys::entry_at(self.parent.as_fd(), &self.base)
    }

    /// A folder in the way of a file reads as `IsADirectory` whatever the call
    /// said (`EEXIST` from a create or link that never replaces).
    fn folder_in_the_way(&self, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::AlreadyExists if self.is_folder() => io::Error::from(io::ErrorKind::IsADirectory),
            _ => e,
        }
    }
}

impl OutputDir {
    /// OUTPUT_DIR at `path`; nothing is opened until a file needs it.
    pub fn new(path: &Path) -> OutputDir {
        OutputDir { path: path.to_owned(), sync_new_folders: false }
    }

    /// Every folder made is flushed in its parent (`fsync` of the parent) at once.
    pub fn syncing_new_folders(mut self) -> OutputDir {
        self.sync_new_folders = true;
        self
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
        let at = match cache.recent.iter().rposition(|(cached, _, _)| cached == folders) {
            Some(at) => at,
            None => {
                self.open_folders(rel, folders, None, cache)?;
                cache.recent.len() - 1
            }
        };
        let mut hit = cache.recent.remove(at);
        let plain = *hit.2.get_or_insert_with(|| !sys::has_default_acl(hit.1.as_fd()));
        let target = Target { parent: Arc::clone(&hit.1), base: base.to_owned(), plain };
        cache.recent.push(hit);
        Ok(target)
    }

    /// Creates every folder of `rel`, the last with exactly `mode` (whatever the
    /// umask), the others as `mkdir -p` would; an existing folder is kept as it is.
    pub fn make_dirs(&self, rel: &str, mode: u32, cache: &mut DirCache) -> Result<(), PathError> {
        self.open_folders(rel, rel, Some(mode), cache)
    }

    /// Opens the folder `folders` of `rel` (`""`: the output folder), creating what is
    /// missing (the last with exactly `last_mode`, if given), from the deepest folder
    /// above it that `cache` keeps; every folder opened is kept, the last most
    /// recently (a tree's next folder is mostly a sibling or a child: one `openat`).
    fn open_folders(
        &self,
        rel: &str,
        folders: &str,
        last_mode: Option<u32>,
        cache: &mut DirCache,
    ) -> Result<(), PathError> {
        match self.open_folders_from_kept(rel, folders, last_mode, cache) {
            // A kept folder was removed meanwhile: once more, from the output folder.
            Err(e) if e.kind == io::ErrorKind::NotFound && !cache.recent.is_empty() => {
                cache.clear();
                self.open_folders_from_kept(rel, folders, last_mode, cache)
            }
            other => other,
        }
    }

    fn open_folders_from_kept(
        &self,
        rel: &str,
        folders: &str,
        last_mode: Option<u32>,
        cache: &mut DirCache,
    ) -> Result<(), PathError> {
        let above = cache
            .recent
            .iter()
            .filter(|(cached, _, _)| {
                cached.is_empty() && !folders.is_empty()
                    || folders.starts_with(cached.as_str())
                        && folders.as_bytes().get(cached.len()) == Some(&b'/')
            })
            .max_by_key(|(cached, _, _)| cached.len());
        let (mut dir, done) = match above {
            Some((cached, dir, _)) => (Arc::clone(dir), cached.len()),
            None => {
                let root = Arc::new(self.open_root()?);
                cache.keep(String::new(), Arc::clone(&root));
                (root, 0)
            }
        };
        if folders.is_empty() {
            return Ok(());
        }
        let skipped = match done {
            0 => 0,
            _ => folders[..done].split('/').count(),
        };
        let rest = folders[done..].trim_start_matches('/');
        let count = rest.split('/').count();
        let mut end = folders.len() - rest.len();
        for (index, component) in rest.split('/').enumerate() {
            let exact = last_mode.filter(|_| index + 1 == count);
            dir = Arc::new(self.step(dir.as_fd(), rel, component, skipped + index, exact)?);
            end += component.len();
            cache.keep(folders[..end].to_owned(), Arc::clone(&dir));
            end += 1;
        }
        Ok(())
    }

    fn step(
        &self,
        dir: BorrowedFd<'_>,
        rel: &str,
        component: &str,
        index: usize,
        exact_mode: Option<u32>,
    ) -> Result<OwnedFd, PathError> {
        let made = || -> io::Result<OwnedFd> {
            let opened = sys::open_dir_at(dir, component)?;
            if let Some(mode) = exact_mode {
                sys::fchmod(opened.as_fd(), mode)?;
            }
            Ok(opened)
        };
        let make = || match sys::mkdir_at(dir, component, exact_mode.unwrap_or(0o777)) {
            Ok(()) if self.sync_new_folders => sys::fsync_fd(dir).and_then(|()| made()),
            Ok(()) => made(),
            // There already, or made by another stream meanwhile: use it (still never
            // a link).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => sys::open_dir_at(dir, component),
            Err(e) => Err(e),
        };
        // A folder sent is mostly new (made first); one on a file's path mostly
        // exists (opened first).
        let opened = match exact_mode {
            Some(_) => make(),
            None => match sys::open_dir_at(dir, component) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => make(),
                other => other,
            },
        };
        opened.map_err(|e| {
            let prefix: Vec<&str> = rel.split('/').take(index + 1).collect();
            let at = self.path.join(prefix.join("/"));
            // The file itself is named by whoever reports this (the server's line, the
            // client's): only the folder in the way here.
            let at = crate::escape::escaped(&at.display().to_string()).into_owned();
            let message = match e.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR) if sys::is_link_at(dir, component) => {
                    format!("{at} is a symbolic link: refusing to write through it")
                }
                Some(libc::ELOOP | libc::ENOTDIR) => {
                    format!("{at} is not a folder: remove it, or send under another name")
                }
                _ => format!("cannot use folder {at}: {e}"),
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
    /// server is killed in between); if they fail it is removed. A folder under the
    /// name is `IsADirectory`.
    pub fn create_empty(target: Target, mode: u32, mtime: Option<SystemTime>) -> io::Result<()> {
        let (asked, made) = match target.plain {
            true => (mode, Some(mode & !sys::umask())),
            false => (0o600, None),
        };
        let file = sys::create_new_at_mode(target.parent.as_fd(), &target.base, asked)
            .map_err(|e| target.folder_in_the_way(e))?;
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
    /// the rename. On failure the file is discarded; a folder under the name is
    /// `IsADirectory`.
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
        let result = result.map_err(|e| self.target.folder_in_the_way(e));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept folder removed while the stream goes on: the next file's folders are
    /// made again from the output folder, not looked for in the removed one.
    #[test]
    fn folders_removed_meanwhile_are_made_again() {
        let out = tempfile::tempdir().unwrap();
        let output = OutputDir::new(out.path());
        let mut cache = DirCache::default();
        output.target("a/b/first", &mut cache).unwrap();
        assert!(out.path().join("a/b").is_dir());
        std::fs::remove_dir_all(out.path().join("a")).unwrap();
        let target = output.target("a/b/c/second", &mut cache).unwrap();
        assert!(out.path().join("a/b/c").is_dir());
        sys::create_new_at(target.parent.as_fd(), &target.base).unwrap();
        assert!(out.path().join("a/b/c/second").is_file());
    }

    /// A folder sent is made with exactly its mode; one already there is kept as
    /// it is; folders above it are made as `mkdir -p` would.
    #[test]
    fn make_dirs_sets_the_mode_of_a_new_folder_only() {
        use std::os::unix::fs::PermissionsExt;
        let out = tempfile::tempdir().unwrap();
        let output = OutputDir::new(out.path());
        let mut cache = DirCache::default();
        output.make_dirs("x/y", 0o750, &mut cache).unwrap();
        let mode = |p: &str| std::fs::metadata(out.path().join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("x/y"), 0o750);
        output.make_dirs("x/y", 0o700, &mut cache).unwrap();
        assert_eq!(mode("x/y"), 0o750, "an existing folder keeps its mode");
        output.make_dirs("x/y/z", 0o705, &mut cache).unwrap();
        assert_eq!(mode("x/y/z"), 0o705);
    }
}
