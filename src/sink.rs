//! Where a server puts what it receives. The server checks every name, size and
//! checksum itself; a sink only stores bytes and gives a whole, verified file its
//! name. [`FolderSink`] (the default) writes beneath an output folder with the
//! rules in [`crate::outdir`]; a program embedding a server can plug in its own (see
//! `tests/examples/receive_into_memory.rs`).

use std::fmt;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use uuid::Uuid;

use crate::escape::escaped;
use crate::outdir::{DirCache, Incoming, OutputDir};

/// What went wrong, for the client's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// A file already has the name (and replacing was not asked for).
    Exists,
    /// The name cannot be used here (a link or a file where a folder should be...).
    Refused,
    /// Storage failed (disk full, read-only, removed folder...).
    Io,
}

/// Why a sink refused or failed a file. The message names the user's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkError {
    /// What kind of failure it is.
    pub kind: SinkErrorKind,
    /// For people: says which file and what to do.
    pub message: String,
}

impl SinkError {
    /// A failure of `kind`, explained by `message`.
    pub fn new(kind: SinkErrorKind, message: impl Into<String>) -> SinkError {
        SinkError { kind, message: message.into() }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SinkError {}

/// When a published file is flushed to stable storage before its client hears it
/// is done (`sharedserver --sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Never, as `cp` and `rsync` do: after a power loss a confirmed file may be
    /// empty or missing.
    #[default]
    None,
    /// Each file and its folder, before its confirmation.
    File,
    /// The whole output filesystem once per group of confirmations (`syncfs`):
    /// one flush for many small files.
    Batch,
}

impl std::str::FromStr for SyncMode {
    type Err = String;

    fn from_str(text: &str) -> Result<SyncMode, String> {
        match text {
            "none" => Ok(SyncMode::None),
            "file" => Ok(SyncMode::File),
            "batch" => Ok(SyncMode::Batch),
            other => Err(format!("{other:?} is not a sync mode: use none, file or batch")),
        }
    }
}

/// A place for received files, shared by all the server's worker threads.
pub trait Sink: Send + Sync + 'static {
    /// What one stream writes through: a stream sends its files one after another,
    /// so a session may keep state between them. `stream` identifies the stream (its
    /// GUID), unique among the server's live streams.
    fn session(&self, stream: u128) -> Box<dyn SinkSession>;

    /// Makes everything published so far durable (`--sync batch`: called once per
    /// group of confirmations, before they are sent). The default does nothing.
    fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// The client of the staged folder `hidden` went away before committing it:
    /// publish it as `root` as far as it got (every file in it is whole), or, if
    /// `root` exists meanwhile, remove it and say why (the message does not name
    /// `root`). The default does nothing (nothing is ever staged).
    fn abandon_staged(&self, _hidden: &str, _root: &str) -> Result<(), SinkError> {
        Ok(())
    }
}

/// One stream's way into a sink. Names are relative paths the server already
/// checked (`protocol::validate_path`, no reserved names).
pub trait SinkSession: Send {
    /// Whether a file of that name exists (checked before a large transfer starts,
    /// and for `--skip-existing`): anything but a folder, a link included.
    fn exists(&mut self, name: &str) -> bool;
    /// Whether a folder has that name, where a file is to go (checked before a large
    /// transfer starts; the publish fails anyway). The default: never.
    fn is_folder(&mut self, _name: &str) -> bool {
        false
    }
    /// `name` as messages show it (the default: escaped, as the client named it).
    fn shown(&self, name: &str) -> String {
        escaped(name).into_owned()
    }
    /// Starts a file that will be published as `name`, most likely with permission
    /// bits `mode` (`SinkFile::publish` names them for certain).
    fn create(&mut self, name: &str, mode: u32) -> Result<Box<dyn SinkFile>, SinkError>;
    /// Makes the folder `name` (and its parents), the last with permission bits
    /// `mode`; an existing folder is fine.
    fn make_dir(&mut self, name: &str, mode: u32) -> Result<(), SinkError>;

    /// Makes the new folder `root` under the hidden name `hidden` instead, with
    /// `mode`, to be given its name whole by `commit`: `Ok(true)`. `Ok(false)`: not
    /// staged (`root` exists, or this sink does not stage: the default); the caller
    /// then goes on as for any folder. Files beneath a staged folder are made with
    /// `create_private`.
    fn stage(&mut self, _root: &str, _hidden: &str, _mode: u32) -> Result<bool, SinkError> {
        Ok(false)
    }

    /// Gives the staged folder `hidden` its name `root`, never over anything that
    /// has the name meanwhile (then it is removed, and the error says so).
    fn commit(&mut self, _hidden: &str, root: &str) -> Result<(), SinkError> {
        Err(SinkError::new(SinkErrorKind::Refused, format!("{}: nothing was staged", escaped(root))))
    }

    /// Starts a file inside a staged folder, where no one sees it until the commit:
    /// a sink may make it under its name at once. The default is `create`.
    fn create_private(&mut self, name: &str, mode: u32) -> Result<Box<dyn SinkFile>, SinkError> {
        self.create(name, mode)
    }

    /// Publishes an empty file `name`, as `create` then `SinkFile::publish` with no
    /// bytes would (the default does just that); a sink may do it in one step.
    fn publish_empty(
        &mut self,
        name: &str,
        mode: u32,
        mtime: Option<SystemTime>,
        replace: bool,
    ) -> Result<(), SinkError> {
        self.create(name, mode)?.publish(mode, mtime, replace)
    }
}

/// A file being received.
pub trait SinkFile: Send {
    /// Appends `bytes` (the server calls this in order, chunk by chunk).
    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError>;
    /// The file is whole and verified: give it `mode`, `mtime` and its name. Without
    /// `replace`, an existing file of that name is an `Exists` error.
    fn publish(self: Box<Self>, mode: u32, mtime: Option<SystemTime>, replace: bool)
        -> Result<(), SinkError>;
    /// Drops the unfinished file; nothing may remain under its name.
    fn discard(self: Box<Self>);
}

/// The default sink: files beneath an output folder, never through a link planted
/// there, unnamed until whole (an empty file is whole at once; see [`crate::outdir`]).
#[derive(Debug, Clone)]
pub struct FolderSink {
    output: OutputDir,
    temp_prefix: String,
    sync: SyncMode,
}

impl FolderSink {
    /// Files go beneath `dir`; temporary names (where one is needed) start with
    /// `temp_prefix` and end with the stream's GUID and `.part`.
    pub fn new(dir: &Path, temp_prefix: &str) -> FolderSink {
        FolderSink { output: OutputDir::new(dir), temp_prefix: temp_prefix.to_owned(), sync: SyncMode::None }
    }

    /// Flushes as `sync` says (see [`SyncMode`]).
    pub fn with_sync(mut self, sync: SyncMode) -> FolderSink {
        self.sync = sync;
        self
    }

    /// The output folder.
    pub fn path(&self) -> &Path {
        self.output.path()
    }
}

impl Sink for FolderSink {
    fn session(&self, stream: u128) -> Box<dyn SinkSession> {
        let output = self.output.clone();
        Box::new(FolderSession {
            output: if self.sync == SyncMode::File { output.syncing_new_folders() } else { output },
            temp_name: format!("{}{}.part", self.temp_prefix, Uuid::from_u128(stream).simple()),
            staging: self.sync == SyncMode::None,
            dirs: DirCache::default(),
            sync_each: self.sync == SyncMode::File,
        })
    }

    fn abandon_staged(&self, hidden: &str, root: &str) -> Result<(), SinkError> {
        publish_staged(&self.output, hidden, root).map_err(|e| {
            SinkError::new(
                SinkErrorKind::Exists,
                format!("its client went away before the folder was whole, and it could not be published ({e}): dropped"),
            )
        })
    }

    fn flush(&self) -> Result<(), SinkError> {
        if self.sync != SyncMode::Batch {
            return Ok(());
        }
        let shown = escaped(&self.output.path().to_string_lossy()).into_owned();
        std::fs::File::open(self.output.path())
            .and_then(|dir| crate::sys::syncfs(&dir))
            .map_err(|e| SinkError::new(SinkErrorKind::Io, format!("cannot flush {shown}: {e}")))
    }
}

/// Why a file is not published over one that has its name (`shown`, escaped).
pub(crate) fn already_exists(shown: &str) -> String {
    format!(
        "{shown} already exists: remove it, send with --skip-existing to leave it, or run the server with --overwrite"
    )
}

/// Why a file is not published where a folder has its name (`shown`, escaped):
/// neither `--overwrite` nor `--skip-existing` applies to a folder.
pub(crate) fn folder_in_the_way(shown: &str) -> String {
    format!("{shown} is a folder: a file cannot take its place; remove the folder or send the file under another name")
}

/// Gives the staged folder `hidden` its name `root` (a top-level name) in
/// `output`, never over anything that has it; one that cannot be published is
/// removed.
fn publish_staged(output: &OutputDir, hidden: &str, root: &str) -> io::Result<()> {
    let renamed = output
        .target(root, &mut DirCache::default())
        .map_err(|e| io::Error::new(e.kind, e.message))
        .and_then(|target| crate::sys::rename_dir_at(target.parent.as_fd(), hidden, root));
    if renamed.is_err() {
        remove_in_background(output.path().join(hidden));
    }
    renamed
}

/// Removes a staged folder that cannot be published, and all in it, on one thread
/// kept for that (a large tree would hold up the worker's other streams; a thread
/// per folder would let a peer start thousands). Never through a link:
/// `remove_dir_all` does not follow them. Where no thread can be started, here
/// and now. A server that exits first leaves the rest to the next one on the name
/// (stale staged folders).
fn remove_in_background(path: PathBuf) {
    static REMOVER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<PathBuf>>> =
        std::sync::OnceLock::new();
    let remover = REMOVER.get_or_init(|| {
        let (queue, paths) = std::sync::mpsc::channel::<PathBuf>();
        let thread = std::thread::Builder::new().name("remove-staged".into()).spawn(move || {
            for path in paths {
                let _ = std::fs::remove_dir_all(path);
            }
        });
        thread.ok().map(|_| queue)
    });
    let left = match remover {
        Some(queue) => queue.send(path).err().map(|unsent| unsent.0),
        None => Some(path),
    };
    if let Some(path) = left {
        let _ = std::fs::remove_dir_all(path);
    }
}

struct FolderSession {
    output: OutputDir,
    temp_name: String,
    /// New folders may be staged (not with `--sync`, which would need the commit
    /// flushed too).
    staging: bool,
    /// The folder of the last file, kept open for the next one.
    dirs: DirCache,
    /// `--sync file`: flush each file and its folder before it is confirmed.
    sync_each: bool,
}

impl SinkSession for FolderSession {
    /// Where it is on the server's side: the output folder's path joined.
    fn shown(&self, name: &str) -> String {
        escaped(&self.output.path().join(name).to_string_lossy()).into_owned()
    }

    fn exists(&mut self, name: &str) -> bool {
        self.output.target(name, &mut self.dirs).is_ok_and(|target| target.is_file())
    }

    fn is_folder(&mut self, name: &str) -> bool {
        self.output.target(name, &mut self.dirs).is_ok_and(|target| target.is_folder())
    }

    fn create(&mut self, name: &str, mode: u32) -> Result<Box<dyn SinkFile>, SinkError> {
        let target = self.output.target(name, &mut self.dirs).map_err(|e| {
            self.dirs.clear();
            SinkError::new(SinkErrorKind::Io, e.message)
        })?;
        let incoming = Incoming::create(target, &self.temp_name, mode).map_err(|e| {
            self.dirs.clear();
            SinkError::new(SinkErrorKind::Io, format!("cannot create {}: {e}", self.shown(name)))
        })?;
        Ok(Box::new(FolderFile { incoming, path: self.output.path().join(name), sync: self.sync_each }))
    }

    fn make_dir(&mut self, name: &str, mode: u32) -> Result<(), SinkError> {
        self.output.make_dirs(name, mode, &mut self.dirs).map_err(|e| {
            self.dirs.clear();
            SinkError::new(SinkErrorKind::Io, e.message)
        })
    }

    fn stage(&mut self, root: &str, hidden: &str, mode: u32) -> Result<bool, SinkError> {
        // Anything under the name, a folder included: merged into, not staged.
        if !self.staging || self.output.target(root, &mut self.dirs).is_ok_and(|target| target.exists()) {
            return Ok(false);
        }
        self.make_dir(hidden, mode)?;
        Ok(true)
    }

    fn commit(&mut self, hidden: &str, root: &str) -> Result<(), SinkError> {
        let renamed = publish_staged(&self.output, hidden, root);
        // The kept folders beneath the hidden name are renamed with it.
        self.dirs.clear();
        renamed.map_err(|e| {
            match e.kind() {
                io::ErrorKind::AlreadyExists => SinkError::new(
                    SinkErrorKind::Exists,
                    format!(
                        "{} appeared while the folder was being sent: nothing of it was published (send it again)",
                        self.shown(root)
                    ),
                ),
                _ => SinkError::new(SinkErrorKind::Io, format!("cannot publish {}: {e}", self.shown(root))),
            }
        })
    }

    fn create_private(&mut self, name: &str, mode: u32) -> Result<Box<dyn SinkFile>, SinkError> {
        let target = self.output.target(name, &mut self.dirs).map_err(|e| {
            self.dirs.clear();
            SinkError::new(SinkErrorKind::Io, e.message)
        })?;
        let incoming = Incoming::create_direct(target, mode).map_err(|e| {
            self.dirs.clear();
            SinkError::new(SinkErrorKind::Io, format!("cannot create {}: {e}", self.shown(name)))
        })?;
        Ok(Box::new(FolderFile { incoming, path: self.output.path().join(name), sync: false }))
    }

    /// Made under its name at once (`Incoming::create_empty`), unless it replaces a
    /// file or must be flushed first (`--sync file`): then as any file.
    fn publish_empty(
        &mut self,
        name: &str,
        mode: u32,
        mtime: Option<SystemTime>,
        replace: bool,
    ) -> Result<(), SinkError> {
        if replace || self.sync_each {
            return self.create(name, mode)?.publish(mode, mtime, replace);
        }
        let target = self.output.target(name, &mut self.dirs).map_err(|e| {
            self.dirs.clear();
            SinkError::new(SinkErrorKind::Io, e.message)
        })?;
        Incoming::create_empty(target, mode, mtime).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => {
                SinkError::new(SinkErrorKind::Exists, already_exists(&self.shown(name)))
            }
            io::ErrorKind::IsADirectory => {
                SinkError::new(SinkErrorKind::Io, folder_in_the_way(&self.shown(name)))
            }
            _ => {
                self.dirs.clear();
                SinkError::new(SinkErrorKind::Io, format!("cannot create {}: {e}", self.shown(name)))
            }
        })
    }
}

struct FolderFile {
    incoming: Incoming,
    /// The final path, for messages.
    path: PathBuf,
    /// Flush the file before its name appears, and its folder after.
    sync: bool,
}

impl FolderFile {
    fn shown(&self) -> String {
        escaped(&self.path.to_string_lossy()).into_owned()
    }
}

impl SinkFile for FolderFile {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        (&self.incoming.file)
            .write_all(bytes)
            .map_err(|e| SinkError::new(SinkErrorKind::Io, format!("writing {} failed: {e}", self.shown())))
    }

    fn publish(
        self: Box<Self>,
        mode: u32,
        mtime: Option<SystemTime>,
        replace: bool,
    ) -> Result<(), SinkError> {
        let FolderFile { incoming, path, sync } = *self;
        // Made only for a message (thousands of small files are published a second).
        let shown = || escaped(&path.to_string_lossy()).into_owned();
        if sync {
            if let Err(e) = incoming.file.sync_all() {
                incoming.discard();
                return Err(SinkError::new(SinkErrorKind::Io, format!("cannot flush {}: {e}", shown())));
            }
        }
        let folder = sync.then(|| incoming.folder());
        incoming.publish(mode, mtime, replace).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => SinkError::new(SinkErrorKind::Exists, already_exists(&shown())),
            io::ErrorKind::IsADirectory => SinkError::new(SinkErrorKind::Io, folder_in_the_way(&shown())),
            _ => SinkError::new(SinkErrorKind::Io, format!("cannot publish {}: {e}", shown())),
        })?;
        // The new name is durable only once its folder is.
        match folder.map(|dir| crate::sys::fsync_fd(dir.as_fd())) {
            Some(Err(e)) => {
                Err(SinkError::new(SinkErrorKind::Io, format!("cannot flush the folder of {}: {e}", shown())))
            }
            _ => Ok(()),
        }
    }

    fn discard(self: Box<Self>) {
        self.incoming.discard();
    }
}

/// Published files by name, in memory.
pub type Files = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>>;

/// A sink that keeps every published file in memory (small files, tests, a
/// program that wants the bytes rather than a folder). Folders are accepted and
/// not recorded; modes and times are not kept. Clones share the same files.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    files: Files,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// The files published so far, by name (shared with the running server).
    pub fn files(&self) -> Files {
        std::sync::Arc::clone(&self.files)
    }
}

impl Sink for MemorySink {
    fn session(&self, _stream: u128) -> Box<dyn SinkSession> {
        Box::new(self.clone())
    }
}

impl SinkSession for MemorySink {
    fn exists(&mut self, name: &str) -> bool {
        self.files.lock().expect("memory sink lock").contains_key(name)
    }

    fn create(&mut self, name: &str, _mode: u32) -> Result<Box<dyn SinkFile>, SinkError> {
        Ok(Box::new(MemoryFile { name: name.to_owned(), bytes: Vec::new(), files: self.files() }))
    }

    fn make_dir(&mut self, _name: &str, _mode: u32) -> Result<(), SinkError> {
        Ok(())
    }
}

struct MemoryFile {
    name: String,
    bytes: Vec<u8>,
    files: Files,
}

impl SinkFile for MemoryFile {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn publish(
        self: Box<Self>,
        _mode: u32,
        _mtime: Option<SystemTime>,
        replace: bool,
    ) -> Result<(), SinkError> {
        let mut files = self.files.lock().expect("memory sink lock");
        if !replace && files.contains_key(&self.name) {
            let message = format!("{} already exists: run the server with --overwrite", escaped(&self.name));
            return Err(SinkError::new(SinkErrorKind::Exists, message));
        }
        files.insert(self.name, self.bytes);
        Ok(())
    }

    fn discard(self: Box<Self>) {}
}
