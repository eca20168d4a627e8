//! What a client was asked to send, as one flat list of items: stream ids and id
//! ranges from options.xml, files, folders (walked, as `cp -r` does), `--files-from`
//! lists and standard input, each with the relative path it arrives under.
//!
//! Everything that can be refused before a byte moves is refused here: a bad list
//! entry, `--as` with several files, two sources landing on the same output path.
//! Problems of one source (an unknown id, a socket, a link inside a folder) become
//! items that are reported, not sent, and never stop the others.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::config::{Config, StreamId};
use crate::escape::{escaped, escaped_path};
use crate::protocol::{self, MODE_BITS};

/// Where an item came from on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A stream id of options.xml.
    Id(StreamId),
    /// A path, a folder's content, a list entry or standard input.
    Path,
}

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file, FIFO or folder; `no_follow`: a link found there now is not followed
    /// (it was not a link when the folder was walked). A folder with `no_follow` is a
    /// walk's (sent with everything in it: at the top, the sender stages it); one
    /// without is made alone (a `--files-from` entry, or a folder above one).
    Path {
        /// The path to open.
        path: PathBuf,
        /// Open it with `O_NOFOLLOW`.
        no_follow: bool,
    },
    /// Standard input (also the stand-in source of an unknown id, which is refused
    /// and never read).
    Stdin,
}

/// What the server is asked to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file, filled with the source's bytes.
    File,
    /// A folder, with the source's permission bits.
    Dir {
        /// The source folder's permission bits (within `MODE_BITS`).
        mode: u32,
    },
}

/// Decided before sending: the item is reported, not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Send,
    /// Not sent, and that is fine (a link inside a folder without `-L`).
    Skip(String),
    /// Not sent: the user must fix something (exit 2).
    Refuse(String),
    /// The same file as the item at this index (another stream id naming it): sent
    /// once, as that one; its result is that one's.
    Same(usize),
}

/// One thing to send.
#[derive(Debug, Clone)]
pub struct Item {
    /// Where it came from on the command line.
    pub origin: Origin,
    /// What to read.
    pub source: Source,
    /// The source as the user would name it, for messages and JSON.
    pub shown: String,
    /// The relative path it arrives under, beneath the server's output folder.
    pub name: String,
    /// A file or a folder.
    pub kind: Kind,
    /// The size `stat` reported for a regular file (a hint for progress and for
    /// choosing a batch); `None` for a file not stat'ed when planned (see
    /// `Request::sizes`): it is sized when opened.
    pub size_hint: Option<u64>,
    /// Whether it is sent, skipped or refused.
    pub verdict: Verdict,
}

impl Item {
    /// The source for human-readable lines: control characters escaped, bytes that
    /// are not UTF-8 as `\xNN`.
    pub fn human(&self) -> String {
        match &self.source {
            Source::Path { path, .. } => escaped_path(path),
            Source::Stdin => escaped(&self.shown).into_owned(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The ARGs: stream ids (`7`), id ranges (`3-9`), `-` for standard input, or paths.
    pub args: &'a [OsString],
    /// `--all`: every stream of the options file, before the ARGs.
    pub all: bool,
    /// `--files-from`: a list of paths (`-`: standard input).
    pub files_from: Option<&'a Path>,
    /// `--from0`: list entries end with NUL, not a newline.
    pub from0: bool,
    /// `--as`: the output name of the one file (or standard input) sent.
    pub as_name: Option<&'a str>,
    /// `-L`: follow symbolic links found inside folders.
    pub follow_symlinks: bool,
    /// The options file, read only if an id or `--all` needs it.
    pub config: &'a Path,
    /// Stat every file for its size (a progress bar's total). Without it, files
    /// found in folders (by the listing's file type) and named by id are not
    /// stat'ed when planned: they are sized when opened, as `cp -r` does.
    pub sizes: bool,
}

/// Builds the list of items, or says why the whole run is refused (exit 2).
pub fn plan(request: &Request<'_>, mut found: impl FnMut(usize)) -> Result<Vec<Item>, String> {
    let mut planner = Planner { request, items: Vec::new(), config: None, ids: BTreeSet::new(), roots: 0 };
    let mut stdin_used = false;
    if request.all {
        let ids: Vec<StreamId> = planner.config()?.streams.keys().copied().collect();
        for id in ids {
            planner.add_id(id)?;
        }
    }
    for arg in request.args {
        // An id whose options file cannot be read may have been meant as a path.
        let as_path = |message: String| match Path::new(arg).exists() {
            true => format!(
                "{message} ({} is read as a stream id; to send the path, write ./{})",
                escaped_path(Path::new(arg)),
                escaped_path(Path::new(arg))
            ),
            false => message,
        };
        match classify(arg)? {
            Arg::Ids(first, last) if first == last => planner.add_id(first).map_err(as_path)?,
            Arg::Ids(first, last) => planner.add_range(first, last).map_err(as_path)?,
            Arg::Stdin => {
                stdin_used = true;
                planner.add_stdin();
            }
            Arg::Path(path) => planner.add_path(path),
        }
        found(planner.items.len());
    }
    if let Some(list) = request.files_from {
        if list == Path::new("-") && stdin_used {
            return Err("standard input cannot be both `-` and `--files-from -`".into());
        }
        planner.add_list(list, &mut found)?;
    }
    if request.as_name.is_some() && planner.roots > 1 {
        // Counted by source, not by output name: a list entry inside the folder
        // named would otherwise pass as part of it, and be renamed with it.
        return Err(format!(
            "--as needs exactly one file, folder or `-` to send; {} were given",
            planner.roots
        ));
    }
    let mut items = planner.items;
    let one_source = !request.all && request.files_from.is_none() && request.args.len() == 1;
    apply_as_name(&mut items, request.as_name, one_source)?;
    check_names(&mut items);
    match planner.roots {
        0 | 1 => Ok(items),
        _ => dedupe(items),
    }
}

enum Arg {
    Ids(StreamId, StreamId),
    Stdin,
    Path(PathBuf),
}

/// `7` and `3-9` are ids, `-` is standard input, anything else is a path.
fn classify(arg: &OsStr) -> Result<Arg, String> {
    let Some(text) = arg.to_str() else { return Ok(Arg::Path(PathBuf::from(arg))) };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let id = |s: &str| s.parse::<StreamId>().map_err(|_| format!("stream id {s} is too large"));
    if text == "-" {
        return Ok(Arg::Stdin);
    }
    if digits(text) {
        let n = id(text)?;
        return Ok(Arg::Ids(n, n));
    }
    if let Some((first, last)) = text.split_once('-') {
        if digits(first) && digits(last) {
            let (first, last) = (id(first)?, id(last)?);
            if first > last {
                return Err(format!("id range {text} is empty: write the smaller id first ({last}-{first})"));
            }
            return Ok(Arg::Ids(first, last));
        }
    }
    Ok(Arg::Path(PathBuf::from(arg)))
}

/// `path` as an ARG that `plan` takes for a path whatever it looks like: `./` is
/// put before a name that would be stream ids or standard input (`2024`, `1-3`,
/// `-`), and only there (the library's paths are never ids).
pub(crate) fn path_arg(path: &Path) -> OsString {
    match classify(path.as_os_str()) {
        Ok(Arg::Path(_)) => path.as_os_str().to_owned(),
        _ => Path::new(".").join(path).into_os_string(),
    }
}

/// The refused item an id (or a range) not in options.xml stands for.
fn unknown_id(id: StreamId, message: String) -> Item {
    Item {
        origin: Origin::Id(id),
        source: Source::Stdin,
        shown: format!("id {id}"),
        name: String::new(),
        kind: Kind::File,
        size_hint: None,
        verdict: Verdict::Refuse(message),
    }
}

struct Planner<'a> {
    request: &'a Request<'a>,
    items: Vec<Item>,
    config: Option<Config>,
    /// Ids already planned: a repeated id is sent once.
    ids: BTreeSet<StreamId>,
    /// Sources named (ids, paths, list entries): with one, no two items can share a
    /// name (a walk names each entry once), and `dedupe` has nothing to do.
    roots: usize,
}

impl Planner<'_> {
    fn config(&mut self) -> Result<&Config, String> {
        if self.config.is_none() {
            self.config = Some(Config::load(self.request.config).map_err(|e| e.to_string())?);
        }
        Ok(self.config.as_ref().expect("loaded above"))
    }

    /// The ids of options.xml from `first` to `last` (a range names the streams
    /// defined in it, however wide: `1-4000000000` is not four billion unknown
    /// ids); one refused item if it holds none.
    fn add_range(&mut self, first: StreamId, last: StreamId) -> Result<(), String> {
        let config = self.config()?;
        let ids: Vec<StreamId> = config.streams.range(first..=last).map(|(&id, _)| id).collect();
        if ids.is_empty() {
            let known: Vec<String> = config.streams.keys().map(|k| k.to_string()).collect();
            let message = format!(
                "{}: no stream id from {first} to {last} (known ids: {})",
                config.source.display(),
                known.join(", ")
            );
            self.items.push(unknown_id(first, message));
            return Ok(());
        }
        ids.into_iter().try_for_each(|id| self.add_id(id))
    }

    fn add_id(&mut self, id: StreamId) -> Result<(), String> {
        if !self.ids.insert(id) {
            return Ok(());
        }
        self.roots += 1;
        let sizes = self.request.sizes;
        let config = self.config()?;
        let item = match config.stream_file(id) {
            Some(path) => {
                let name = base_name(path);
                let mut item = file_item(Origin::Id(id), path.to_path_buf(), name, false);
                if sizes {
                    if let Ok(meta) = fs::metadata(path) {
                        item.size_hint = meta.is_file().then_some(meta.len());
                    }
                }
                item
            }
            None => {
                let known: Vec<String> = config.streams.keys().map(|k| k.to_string()).collect();
                let message = format!(
                    "{}: unknown stream id {id} (known ids: {})",
                    config.source.display(),
                    known.join(", ")
                );
                unknown_id(id, message)
            }
        };
        self.items.push(item);
        Ok(())
    }

    fn add_stdin(&mut self) {
        self.roots += 1;
        self.items.push(Item {
            origin: Origin::Path,
            source: Source::Stdin,
            shown: "-".into(),
            name: String::new(),
            kind: Kind::File,
            size_hint: None,
            verdict: Verdict::Send,
        });
    }

    /// A path named on the command line: links are followed, a folder is walked.
    fn add_path(&mut self, path: PathBuf) {
        self.roots += 1;
        let name = match path.file_name() {
            Some(_) => base_name(&path),
            // `.`, `..`, `dir/.`: the folder's real name, as `cp -r . dst/` would not guess.
            None => fs::canonicalize(&path)
                .map_err(|e| format!("cannot read {}: {e}", escaped_path(&path)))
                .and_then(|real| base_name(&real)),
        };
        match fs::metadata(&path) {
            Err(e) => {
                // Still says where it would have arrived (`--json`, the library).
                let mut item = refused(&path, read_error(&path, &e));
                item.name = name.unwrap_or_default();
                self.items.push(item);
            }
            Ok(meta) if meta.is_dir() => match name {
                Ok(name) => {
                    let mut ancestors = vec![(meta.dev(), meta.ino())];
                    self.walk(&path, &name, &meta, &mut ancestors);
                }
                Err(message) => self.items.push(refused(&path, message)),
            },
            Ok(meta) => self.add_non_dir(&path, name, &meta, false),
        }
    }

    /// A file, FIFO, socket or device met anywhere.
    fn add_non_dir(&mut self, path: &Path, name: Result<String, String>, meta: &Metadata, no_follow: bool) {
        let kind = meta.file_type();
        if kind.is_socket() || kind.is_block_device() || kind.is_char_device() {
            let what = if kind.is_socket() { "a socket" } else { "a device" };
            let message =
                format!("{} is {what}: only files, folders and FIFOs can be sent", escaped_path(path));
            self.items.push(refused(path, message));
            return;
        }
        let mut item = file_item(Origin::Path, path.to_path_buf(), name, no_follow);
        item.size_hint = meta.is_file().then_some(meta.len());
        self.items.push(item);
    }

    /// A folder and everything beneath it, in name order; `ancestors` (device,
    /// inode) stops a loop of followed links.
    fn walk(&mut self, dir: &Path, name: &str, meta: &Metadata, ancestors: &mut Vec<(u64, u64)>) {
        self.items.push(Item {
            origin: Origin::Path,
            source: Source::Path { path: dir.to_path_buf(), no_follow: true },
            shown: dir.display().to_string(),
            name: name.to_owned(),
            kind: Kind::Dir { mode: dir_mode(meta) },
            size_hint: None,
            verdict: Verdict::Send,
        });
        // The listing's file type (no `stat`; the library falls back to one where the
        // filesystem does not say).
        let mut entries: Vec<_> = match fs::read_dir(dir) {
            Ok(entries) => {
                entries.filter_map(Result::ok).map(|e| (e.file_name(), e.file_type().ok())).collect()
            }
            Err(e) => {
                let message = match e.raw_os_error() {
                    Some(libc::ENAMETOOLONG) => read_error(dir, &e),
                    _ => format!("cannot read folder {}: {e}", escaped_path(dir)),
                };
                self.items.push(refused(dir, message));
                return;
            }
        };
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        self.items.reserve(entries.len());
        for (entry, kind) in entries {
            let path = dir.join(&entry);
            let child = match entry.to_str() {
                Some(text) => {
                    let mut child = String::with_capacity(name.len() + 1 + text.len());
                    child.push_str(name);
                    child.push('/');
                    child.push_str(text);
                    Ok(child)
                }
                None => Err(not_utf8(&path)),
            };
            if kind.is_some_and(|kind| kind.is_file()) && !self.request.sizes {
                // A regular file: opened (never through a link) and sized when sent.
                self.items.push(file_item(Origin::Path, path, child, true));
                continue;
            }
            self.add_entry(&path, child, ancestors);
        }
    }

    fn add_entry(&mut self, path: &Path, name: Result<String, String>, ancestors: &mut Vec<(u64, u64)>) {
        // An entry not sent still says where it would have arrived.
        let named = |mut item: Item| {
            item.name = name.as_ref().map_or_else(|_| String::new(), String::clone);
            item
        };
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                return self.items.push(named(refused(path, read_error(path, &e))));
            }
        };
        let followed = meta.file_type().is_symlink();
        let meta = if followed {
            if !self.request.follow_symlinks {
                let shown = escaped_path(path);
                let mut item = named(refused(path, String::new()));
                item.verdict = Verdict::Skip(format!("{shown}: symbolic link (use -L to follow)"));
                return self.items.push(item);
            }
            match fs::metadata(path) {
                Ok(meta) => meta,
                Err(e) => {
                    let message = format!("cannot follow link {}: {e}", escaped_path(path));
                    return self.items.push(named(refused(path, message)));
                }
            }
        } else {
            meta
        };
        if !meta.is_dir() {
            return self.add_non_dir(path, name, &meta, !followed);
        }
        let name = match name {
            Ok(name) => name,
            Err(message) => return self.items.push(refused(path, message)),
        };
        let key = (meta.dev(), meta.ino());
        if ancestors.contains(&key) {
            let message = format!("{}: link loop, not followed", escaped_path(path));
            return self.items.push(refused(path, message));
        }
        ancestors.push(key);
        self.walk(path, &name, &meta, ancestors);
        ancestors.pop();
    }

    /// `--files-from`: each entry relative to the current folder, arriving under
    /// the same relative path. A folder entry makes that folder only (list its
    /// files too, as `find` does); `.` is ignored.
    fn add_list(&mut self, list: &Path, found: &mut impl FnMut(usize)) -> Result<(), String> {
        let shown_list = escaped_path(list);
        let mut bytes = Vec::new();
        let read = if list == Path::new("-") {
            std::io::stdin().lock().read_to_end(&mut bytes)
        } else {
            fs::File::open(list).and_then(|mut f| f.read_to_end(&mut bytes))
        };
        read.map_err(|e| format!("cannot read --files-from {shown_list}: {e}"))?;
        let separator = if self.request.from0 { b'\0' } else { b'\n' };
        // Folders made so far: each entry's own parents are made first, with their
        // modes (a private folder must not arrive with the server's default).
        let mut folders: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (index, entry) in bytes.split(|&b| b == separator).enumerate() {
            let entry = if separator == b'\n' { entry.strip_suffix(b"\r").unwrap_or(entry) } else { entry };
            if entry.is_empty() {
                continue;
            }
            let line = index + 1;
            let path = Path::new(OsStr::from_bytes(entry));
            let shown = escaped_path(path);
            if entry.contains(&0) {
                return Err(format!(
                    "{shown_list}:{line}: {shown} holds a NUL byte, which no path can (a list of NUL-ended entries needs --from0)"
                ));
            }
            if path.is_absolute() {
                return Err(format!(
                    "{shown_list}:{line}: {shown} is absolute: entries must be relative to the current folder"
                ));
            }
            if path.components().any(|c| c == Component::ParentDir) {
                return Err(format!("{shown_list}:{line}: {shown} contains '..': entries must stay beneath the current folder"));
            }
            let parts: Vec<&OsStr> = path
                .components()
                .filter_map(|c| match c {
                    Component::Normal(part) => Some(part),
                    _ => None,
                })
                .collect();
            if parts.is_empty() {
                continue;
            }
            let name = parts
                .iter()
                .map(|p| p.to_str().ok_or_else(|| not_utf8(path)))
                .collect::<Result<Vec<_>, _>>()
                .map(|p| p.join("/"));
            // With --as the one entry is renamed whole: no folder above it is made.
            if let (Ok(name), None) = (&name, self.request.as_name) {
                self.add_implied_folders(name, &mut folders);
            }
            self.add_list_entry(path, name);
            if let Some(Item { kind: Kind::Dir { .. }, name, .. }) = self.items.last() {
                folders.insert(name.clone());
            }
            found(self.items.len());
        }
        Ok(())
    }

    /// The folders above list entry `name` not made yet (`folders`), each with its
    /// source's mode, as `rsync -a --files-from` makes them: `a/b/c.txt` makes `a` and
    /// `a/b` first. One that cannot be read is left to the server to make (with its
    /// default mode); the entry itself says what is wrong with it.
    fn add_implied_folders(&mut self, name: &str, folders: &mut std::collections::HashSet<String>) {
        let mut end = 0;
        while let Some(slash) = name[end..].find('/') {
            end += slash;
            let folder = &name[..end];
            end += 1;
            if folders.contains(folder) {
                continue;
            }
            let path = PathBuf::from(folder);
            let Ok(meta) = fs::metadata(&path) else { continue };
            if !meta.is_dir() {
                continue;
            }
            folders.insert(folder.to_owned());
            self.items.push(Item {
                origin: Origin::Path,
                shown: path.display().to_string(),
                source: Source::Path { path, no_follow: false },
                name: folder.to_owned(),
                kind: Kind::Dir { mode: dir_mode(&meta) },
                size_hint: None,
                verdict: Verdict::Send,
            });
        }
    }

    fn add_list_entry(&mut self, path: &Path, name: Result<String, String>) {
        self.roots += 1;
        match fs::metadata(path) {
            Err(e) => {
                let mut item = refused(path, read_error(path, &e));
                item.name = name.unwrap_or_default();
                self.items.push(item);
            }
            Ok(meta) if meta.is_dir() => match name {
                Ok(name) => self.items.push(Item {
                    origin: Origin::Path,
                    source: Source::Path { path: path.to_path_buf(), no_follow: false },
                    shown: path.display().to_string(),
                    name,
                    kind: Kind::Dir { mode: dir_mode(&meta) },
                    size_hint: None,
                    verdict: Verdict::Send,
                }),
                Err(message) => self.items.push(refused(path, message)),
            },
            Ok(meta) => self.add_non_dir(path, name, &meta, false),
        }
    }
}

/// A folder's permission bits as sent. The sticky bit is not sent (no mode is), so
/// a folder that relies on it (`/tmp`-like: writable by group or others, sticky)
/// arrives without their write bits rather than as a folder where anyone may delete
/// anyone's files.
fn dir_mode(meta: &Metadata) -> u32 {
    let mode = meta.permissions().mode();
    match mode & 0o1000 != 0 {
        true => mode & MODE_BITS & !0o022,
        false => mode & MODE_BITS,
    }
}

/// Why `path` could not be read. A name or path past the system's limits (255
/// bytes a name, 4,096 a path) says which, and a long path is shown by its two
/// ends: the whole of it would fill the screen.
fn read_error(path: &Path, e: &std::io::Error) -> String {
    if e.raw_os_error() != Some(libc::ENAMETOOLONG) {
        return format!("cannot read {}: {e}", escaped_path(path));
    }
    let text = path.to_string_lossy();
    let chars: Vec<char> = text.chars().collect();
    // Cut before escaping, so no escape is cut in two.
    let short = match chars.len() > 160 {
        true => {
            let (head, tail): (String, String) =
                (chars[..60].iter().collect(), chars[chars.len() - 80..].iter().collect());
            format!("{}...{}", escaped(&head), escaped(&tail))
        }
        false => escaped_path(path),
    };
    let longest = path.components().map(|part| part.as_os_str().len()).max().unwrap_or(0);
    if longest > 255 {
        return format!(
            "cannot read {short}: a name in it is {longest} bytes, longer than the system takes (255)"
        );
    }
    format!(
        "cannot read {short}: its path is {} bytes, longer than the system takes (4,096): send it from a folder nearer to it (cd there first)",
        path.as_os_str().len()
    )
}

fn not_utf8(path: &Path) -> String {
    format!("{}: the name is not valid UTF-8 (the server only takes UTF-8 names)", escaped_path(path))
}

fn base_name(path: &Path) -> Result<String, String> {
    match path.file_name() {
        Some(name) => name.to_str().map(str::to_owned).ok_or_else(|| not_utf8(path)),
        None => Err(format!("{} has no file name", escaped_path(path))),
    }
}

fn file_item(origin: Origin, path: PathBuf, name: Result<String, String>, no_follow: bool) -> Item {
    let (name, verdict) = match name {
        Ok(name) => (name, Verdict::Send),
        Err(message) => (String::new(), Verdict::Refuse(message)),
    };
    Item {
        origin,
        shown: path.to_string_lossy().into_owned(),
        source: Source::Path { path, no_follow },
        name,
        kind: Kind::File,
        size_hint: None,
        verdict,
    }
}

fn refused(path: &Path, message: String) -> Item {
    Item {
        origin: Origin::Path,
        source: Source::Path { path: path.to_path_buf(), no_follow: true },
        shown: path.display().to_string(),
        name: String::new(),
        kind: Kind::File,
        size_hint: None,
        verdict: Verdict::Refuse(message),
    }
}

/// `--as NAME` renames the one file or folder sent (a folder: everything in it
/// moves with it, as `cp -r src NAME` does); standard input needs it.
/// `one_source`: one ARG was given (what else was refused came from its walk).
fn apply_as_name(items: &mut [Item], as_name: Option<&str>, one_source: bool) -> Result<(), String> {
    let stdin = items.iter().any(|i| i.source == Source::Stdin && i.origin == Origin::Path);
    let Some(as_name) = as_name else {
        if stdin {
            return Err("standard input (`-`) needs a name: add --as NAME".into());
        }
        return Ok(());
    };
    if let Some((root, inside)) = items.split_first() {
        let beneath = |item: &Item| {
            item.name.len() > root.name.len()
                && item.name.starts_with(&root.name)
                && item.name.as_bytes()[root.name.len()] == b'/'
        };
        // What the walk refused (a socket, an unreadable folder, a name that is not
        // UTF-8) has no name; it lies beneath the folder's source all the same (a
        // second ARG refused there is another source: not this).
        let refused_beneath = |item: &Item| match (&item.source, &root.source) {
            _ if !one_source => false,
            (Source::Path { path, .. }, Source::Path { path: top, .. }) => {
                item.name.is_empty() && matches!(item.verdict, Verdict::Refuse(_)) && path.starts_with(top)
            }
            _ => false,
        };
        if matches!(root.kind, Kind::Dir { .. })
            && root.origin == Origin::Path
            && inside.iter().all(|item| beneath(item) || refused_beneath(item))
        {
            protocol::validate_output_path(as_name).map_err(|e| format!("--as {}: {e}", escaped(as_name)))?;
            let old = root.name.len();
            for item in items.iter_mut().filter(|item| !item.name.is_empty()) {
                item.name = format!("{as_name}{}", &item.name[old..]);
            }
            return Ok(());
        }
    }
    if let [item] = &mut *items {
        // A source whose own name is not UTF-8 can still be sent under --as.
        let unnamed = match (&item.source, &item.verdict) {
            (Source::Path { path, .. }, Verdict::Refuse(why)) => *why == not_utf8(path),
            _ => false,
        };
        if unnamed && item.kind == Kind::File {
            item.verdict = Verdict::Send;
        }
    }
    match items {
        [item] if item.kind == Kind::File && item.verdict == Verdict::Send => {
            protocol::validate_output_path(as_name).map_err(|e| format!("--as {}: {e}", escaped(as_name)))?;
            item.name = as_name.to_owned();
            Ok(())
        }
        _ if items.iter().any(|i| i.kind != Kind::File) => {
            Err("--as needs exactly one file, folder or `-` to send; several were given".into())
        }
        [item] => match &item.verdict {
            Verdict::Refuse(message) | Verdict::Skip(message) => Err(message.clone()),
            Verdict::Send => unreachable!("matched above"),
            Verdict::Same(_) => unreachable!("repeats are found after --as is applied"),
        },
        _ => Err(format!("--as needs exactly one file, folder or `-` to send; {} were given", items.len())),
    }
}

/// Every output name the server would refuse is refused here, naming the source.
fn check_names(items: &mut [Item]) {
    for item in items.iter_mut().filter(|i| i.verdict == Verdict::Send) {
        if let Err(e) = protocol::validate_output_path(&item.name) {
            item.verdict = Verdict::Refuse(format!("{}: {e}", item.human()));
        }
    }
}

/// Whether two items read the same thing (spelt alike, or the same file however
/// it was named: `a.txt`, `./a.txt`, `$PWD/a.txt`).
fn same_source(a: &Item, b: &Item) -> bool {
    if a.kind != b.kind {
        return false;
    }
    match (&a.source, &b.source) {
        (Source::Path { path: pa, .. }, Source::Path { path: pb, .. }) => {
            pa == pb
                || match (fs::metadata(pa), fs::metadata(pb)) {
                    (Ok(ma), Ok(mb)) => (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()),
                    _ => false,
                }
        }
        (sa, sb) => sa == sb,
    }
}

/// A file's name used as a folder by another item (`k` and `k/z`) fails one of
/// them at the server after the other is published: refuse it before sending.
fn check_files_are_not_folders(items: &[Item]) -> Result<(), String> {
    let files: HashMap<&str, &Item> = items
        .iter()
        .filter(|i| i.verdict == Verdict::Send && i.kind == Kind::File)
        .map(|i| (i.name.as_str(), i))
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    for item in items.iter().filter(|i| i.verdict == Verdict::Send && i.name.contains('/')) {
        for (end, _) in item.name.match_indices('/') {
            if let Some(file) = files.get(&item.name[..end]) {
                return Err(format!(
                    "{} arrives as the file {}, but {} would arrive inside it as {}: send them in separate runs",
                    file.human(),
                    escaped(&file.name),
                    item.human(),
                    escaped(&item.name)
                ));
            }
        }
    }
    Ok(())
}

/// The same source twice is sent once; two sources for one output path refuse the run.
fn dedupe(items: Vec<Item>) -> Result<Vec<Item>, String> {
    // First, by index: names borrowed from `items`, no copies.
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    let mut dropped = vec![false; items.len()];
    let mut same_as: Vec<Option<usize>> = vec![None; items.len()];
    for (index, item) in items.iter().enumerate() {
        if item.verdict != Verdict::Send {
            continue;
        }
        match first.entry(item.name.as_str()) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(index);
            }
            std::collections::hash_map::Entry::Occupied(seen) => {
                let other = &items[*seen.get()];
                if !same_source(other, item) {
                    return Err(format!(
                        "{} and {} would both arrive as {}: send them in separate runs, or use --as for a single file",
                        other.human(),
                        item.human(),
                        escaped(&item.name)
                    ));
                }
                // A stream id still gets its line: it names the file sent once.
                if matches!(item.origin, Origin::Id(_)) {
                    same_as[index] = Some(*seen.get());
                }
                dropped[index] = true;
            }
        }
    }
    drop(first);
    // Where each kept item lands once the dropped ones are gone.
    let mut at = vec![0; dropped.len()];
    let mut next = 0;
    for index in 0..dropped.len() {
        at[index] = next;
        if !dropped[index] || same_as[index].is_some() {
            next += 1;
        }
    }
    let kept: Vec<Item> = items
        .into_iter()
        .zip(dropped)
        .zip(same_as)
        .filter_map(|((mut item, dropped), same_as)| match (dropped, same_as) {
            (false, _) => Some(item),
            (true, Some(first)) => {
                item.verdict = Verdict::Same(at[first]);
                Some(item)
            }
            (true, None) => None,
        })
        .collect();
    check_files_are_not_folders(&kept)?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classified(text: &str) -> Result<String, String> {
        classify(OsStr::new(text)).map(|arg| match arg {
            Arg::Ids(a, b) => format!("ids {a}-{b}"),
            Arg::Stdin => "stdin".into(),
            Arg::Path(p) => format!("path {}", p.display()),
        })
    }

    #[test]
    fn digits_are_ids_ranges_are_ids_and_the_rest_are_paths() {
        assert_eq!(classified("7").unwrap(), "ids 7-7");
        assert_eq!(classified("3-9").unwrap(), "ids 3-9");
        assert_eq!(classified("-").unwrap(), "stdin");
        assert_eq!(classified("./7").unwrap(), "path ./7");
        assert_eq!(classified("3-x").unwrap(), "path 3-x");
        assert_eq!(classified("-3").unwrap(), "path -3");
        assert!(classified("9-3").unwrap_err().contains("3-9"));
        assert!(classified("99999999999999999999999").unwrap_err().contains("too large"));
    }

    #[test]
    fn a_path_never_reads_as_an_id_or_standard_input() {
        for (name, arg) in
            [("2024", "./2024"), ("1-3", "./1-3"), ("-", "./-"), ("a/7", "a/7"), ("/abs/7", "/abs/7")]
        {
            assert_eq!(path_arg(Path::new(name)), OsString::from(arg));
            assert!(classified(arg).unwrap().starts_with("path "), "{arg}");
        }
        assert_eq!(
            path_arg(Path::new("99999999999999999999999")),
            OsString::from("./99999999999999999999999")
        );
    }

    fn item(shown: &str, name: &str) -> Item {
        let mut item = file_item(Origin::Path, PathBuf::from(shown), Ok(name.to_owned()), false);
        item.shown = shown.to_owned();
        item
    }

    #[test]
    fn two_sources_for_one_name_refuse_the_run_and_a_repeat_is_sent_once() {
        let err = dedupe(vec![item("a/x", "x"), item("b/x", "x")]).unwrap_err();
        assert!(err.contains("a/x") && err.contains("b/x"), "{err}");
        assert_eq!(dedupe(vec![item("a/x", "x"), item("a/x", "x")]).unwrap().len(), 1);
    }

    #[test]
    fn a_path_past_the_system_limit_is_named_by_its_ends() {
        let long = Path::new("top").join("d".repeat(250)).join("e".repeat(250)).join("last.txt");
        let message = read_error(&long, &std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        assert!(message.starts_with("cannot read top/ddd"), "{message}");
        assert!(message.contains("eee/last.txt: its path is 514 bytes"), "{message}");
        assert!(message.contains("(4,096)") && message.len() < 300, "{message}");
        let other = read_error(&long, &std::io::Error::from_raw_os_error(libc::ENOENT));
        assert!(other.contains(&"e".repeat(250)), "{other}");
        let named =
            read_error(Path::new(&"a".repeat(300)), &std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        assert!(named.ends_with("a name in it is 300 bytes, longer than the system takes (255)"), "{named}");
        // Cut before escaping: an escape is whole or absent.
        let escapes = Path::new("top").join("\u{1b}".repeat(300)).join("x".repeat(250));
        let cut = read_error(&escapes, &std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        assert!(
            cut.contains("\\u{1b}\\u{1b}") && !cut.contains("\\u{1b...") && !cut.contains("\\u..."),
            "{cut}"
        );
    }

    #[test]
    fn a_source_that_is_not_there_still_says_where_it_would_arrive() {
        let args = [OsString::from("no/such/file.txt")];
        let request = Request {
            args: &args,
            all: false,
            files_from: None,
            from0: false,
            as_name: None,
            follow_symlinks: false,
            config: Path::new("options.xml"),
            sizes: false,
        };
        let items = plan(&request, |_| {}).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].name, "file.txt");
        assert!(matches!(&items[0].verdict, Verdict::Refuse(why) if why.contains("no/such/file.txt")));
    }

    #[test]
    fn a_file_and_a_path_inside_its_name_refuse_the_run() {
        let err = dedupe(vec![item("k", "k"), item("other/z", "k/z")]).unwrap_err();
        assert!(err.contains("would arrive inside it as k/z"), "{err}");
        assert!(dedupe(vec![item("k", "kk"), item("other/z", "k/z")]).is_ok());
    }

    #[test]
    fn as_name_needs_exactly_one_file() {
        let mut two = vec![item("a", "a"), item("b", "b")];
        assert!(apply_as_name(&mut two, Some("c"), true).unwrap_err().contains("exactly one"));
        let mut one = vec![item("a", "a")];
        apply_as_name(&mut one, Some("new/name.txt"), true).unwrap();
        assert_eq!(one[0].name, "new/name.txt");
        let mut stdin = vec![Item { source: Source::Stdin, ..item("-", "") }];
        assert!(apply_as_name(&mut stdin, None, true).unwrap_err().contains("--as"));
        // A reserved name is blamed on --as, not on the source.
        let mut one = vec![item("a", "a")];
        let refused = apply_as_name(&mut one, Some("d/.sharedxfer-x"), true).unwrap_err();
        assert!(refused.starts_with("--as d/.sharedxfer-x: names starting with"), "{refused}");
    }

    #[test]
    fn as_name_renames_one_folder_and_everything_in_it() {
        let folder = |shown: &str, name: &str| Item { kind: Kind::Dir { mode: 0o755 }, ..item(shown, name) };
        let mut tree = vec![
            folder("src", "src"),
            folder("src/sub", "src/sub"),
            item("src/sub/a", "src/sub/a"),
            item("src/b", "src/b"),
        ];
        apply_as_name(&mut tree, Some("copy/of"), true).unwrap();
        let names: Vec<&str> = tree.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["copy/of", "copy/of/sub", "copy/of/sub/a", "copy/of/b"]);
        // Two folders, or a folder and a file whose name only starts alike: refused.
        let mut two = vec![folder("a", "a"), item("a/x", "a/x"), folder("b", "b")];
        assert!(apply_as_name(&mut two, Some("c"), true).unwrap_err().contains("exactly one file, folder"));
        let mut alike = vec![folder("a", "a"), item("ab", "ab")];
        assert!(apply_as_name(&mut alike, Some("c"), true).unwrap_err().contains("exactly one file, folder"));
        let mut bad = vec![folder("a", "a")];
        assert!(apply_as_name(&mut bad, Some("../up"), true).unwrap_err().starts_with("--as ../up"));
    }
}
