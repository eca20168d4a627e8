//! End-to-end tests of "send anything": `sharedclient` given paths (files, folders,
//! `-`, FIFOs, /proc files, --files-from lists) besides stream ids. Real binaries,
//! one server and unique temp folders per test; each test asserts exit codes,
//! messages and the trees that arrive.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;

// ---------------------------------------------------------------------------------
// Fixture: a server, its output folder, a source folder (the client's current dir)
// and a config folder kept apart from both.
// ---------------------------------------------------------------------------------

struct Fx {
    server: Server,
    config: PathBuf,
    src: tempfile::TempDir,
    out: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Fx {
    /// A server and an options.xml without streams (paths need none).
    fn new(tag: &str) -> Fx {
        Fx::with_streams(tag, &[])
    }

    /// A server and an options.xml whose streams 1, 2, ... are `src/<name>` of the
    /// given sizes (the files are written).
    fn with_streams(tag: &str, files: &[(&str, usize)]) -> Fx {
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .map(|(i, (name, len))| write_file(src.path(), name, *len, 500 + i as u64))
            .collect();
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        let config = write_config(work.path(), &refs);
        let server = Server::start(&unique_name(tag), out.path(), &[]);
        Fx { server, config, src, out, work }
    }

    fn src(&self) -> &Path {
        self.src.path()
    }

    fn out(&self) -> &Path {
        self.out.path()
    }

    /// A client of this server, run from the source folder.
    fn cmd(&self) -> Command {
        let mut command = self.server.client(&self.config);
        command.current_dir(self.src());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = self.cmd();
        command.args(args);
        run(command)
    }
}

// ---------------------------------------------------------------------------------
// Trees: snapshot a folder, state what a copy of it must look like, compare.
// ---------------------------------------------------------------------------------

#[derive(Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Link { target: PathBuf },
    Special { mode: u32 },
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Dir { mode } => write!(f, "dir {mode:04o}"),
            Entry::File { mode, data } => write!(f, "file {mode:04o}, {} bytes", data.len()),
            Entry::Link { target } => write!(f, "symlink -> {target:?}"),
            Entry::Special { mode } => write!(f, "special {mode:o}"),
        }
    }
}

fn entry(path: &Path) -> Entry {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mode = meta.permissions().mode() & 0o7777;
    let kind = meta.file_type();
    if kind.is_symlink() {
        Entry::Link { target: fs::read_link(path).unwrap() }
    } else if kind.is_dir() {
        Entry::Dir { mode }
    } else if kind.is_file() {
        Entry::File { mode, data: fs::read(path).unwrap() }
    } else {
        Entry::Special { mode: meta.permissions().mode() }
    }
}

/// Everything under `root` (not `root` itself), by path relative to `root`.
fn tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    walk_tree(root, entry, |e| matches!(e, Entry::Dir { .. }))
}

/// What a sent entry must look like on arrival: permission bits kept (never
/// setuid/setgid/sticky); folders get u+rwx on top.
fn as_sent(e: &Entry) -> Entry {
    match e {
        Entry::Dir { mode } => Entry::Dir { mode: (mode & 0o777) | 0o700 },
        Entry::File { mode, data } => Entry::File { mode: mode & 0o777, data: data.clone() },
        other => other.clone(),
    }
}

/// Lists the differences between two snapshots; empty when equal.
fn diff(want: &BTreeMap<PathBuf, Entry>, got: &BTreeMap<PathBuf, Entry>) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, w) in want {
        match got.get(path) {
            None => problems.push(format!("missing: {path:?} ({w:?})")),
            Some(g) if g != w => {
                let detail = match (w, g) {
                    (Entry::File { data: a, .. }, Entry::File { data: b, .. })
                        if a.len() == b.len() && a != b =>
                    {
                        " (same size, different content)"
                    }
                    _ => "",
                };
                problems.push(format!("differs: {path:?}: want {w:?}, got {g:?}{detail}"));
            }
            Some(_) => {}
        }
    }
    for (path, g) in got {
        if !want.contains_key(path) {
            problems.push(format!("unexpected: {path:?} ({g:?})"));
        }
    }
    problems
}

/// `dst` is a sent copy of folder `src`: same names, kinds, contents and modes
/// (folders with u+rwx added), the folder itself included. Symlinks in `src` are
/// not expected in `dst` (they are skipped without -L).
fn assert_sent_tree(src: &Path, dst: &Path, output: &Output) {
    let want: BTreeMap<_, _> = tree(src)
        .iter()
        .filter(|(_, e)| !matches!(e, Entry::Link { .. }))
        .map(|(p, e)| (p.clone(), as_sent(e)))
        .collect();
    let got = tree(dst);
    let mut problems = diff(&want, &got);
    let (root_want, root_got) = (as_sent(&entry(src)), entry(dst));
    if root_want != root_got {
        problems.push(format!("the folder itself: want {root_want:?}, got {root_got:?}"));
    }
    assert!(
        problems.is_empty(),
        "{dst:?} is not a copy of {src:?}:\n{}\n{}",
        problems.join("\n"),
        show(output)
    );
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(path: &Path, unix_secs: u64) {
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(unix_secs);
    fs::File::options().write(true).open(path).unwrap().set_modified(when).unwrap();
}

fn mkdirs(path: &Path) -> &Path {
    fs::create_dir_all(path).unwrap();
    path
}

/// Writes `len` pattern bytes to `dir/rel` (parents created) and returns the path.
fn put(dir: &Path, rel: &str, len: usize, seed: u64) -> PathBuf {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, pattern(len, seed)).unwrap();
    path
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().next().is_none()
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {path:?} failed");
}

// ---------------------------------------------------------------------------------
// Output: the summary line, per-file lines, failure lines.
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct Summary {
    files: u64,
    bytes: u64,
    skipped: u64,
    failed: u64,
}

/// Parses the one final summary line:
/// `sharedclient: {N} files, {B} bytes in {S} s ({R} MB/s), {K} skipped, {F} failed`
/// (`1 file,` for one).
fn summary(output: &Output) -> Summary {
    let text = stdout_of(output);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let summaries: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("sharedclient: ")).collect();
    assert_eq!(summaries.len(), 1, "want exactly one summary line\n{}", show(output));
    assert_eq!(lines.last(), summaries.first(), "the summary is not the last line\n{}", show(output));
    let line = summaries[0];
    let t: Vec<&str> = line["sharedclient: ".len()..].split_whitespace().collect();
    fn fail<T>(line: &str, output: &Output) -> T {
        panic!("summary line not in the documented form: {line:?}\n{}", show(output))
    }
    // `1 file,`, `2 files,`; after Ctrl-C `, N interrupted` follows (not in these tests).
    let unit = if t.first() == Some(&"1") { "file," } else { "files," };
    if t.len() != 13
        || t[1] != unit
        || t[3] != "bytes"
        || t[4] != "in"
        || t[6] != "s"
        || !t[7].starts_with('(')
        || t[8] != "MB/s),"
        || t[10] != "skipped,"
        || t[12] != "failed"
    {
        fail::<()>(line, output);
    }
    let int = |s: &str| s.parse::<u64>().unwrap_or_else(|_| fail(line, output));
    let seconds: f64 = t[5].parse().unwrap_or_else(|_| fail(line, output));
    let rate: f64 = t[7][1..].parse().unwrap_or_else(|_| fail(line, output));
    assert!(seconds >= 0.0 && rate >= 0.0, "{line:?}");
    Summary { files: int(t[0]), bytes: int(t[2]), skipped: int(t[9]), failed: int(t[11]) }
}

fn assert_summary(output: &Output, files: u64, bytes: Option<u64>, skipped: u64, failed: u64) {
    let s = summary(output);
    assert!(
        s.files == files && bytes.is_none_or(|b| s.bytes == b) && s.skipped == skipped && s.failed == failed,
        "want {files} files, {bytes:?} bytes, {skipped} skipped, {failed} failed; got {s:?}\n{}",
        show(output)
    );
}

/// Stdout lines of the form `sent {name} ({bytes} bytes)`.
fn sent_lines(output: &Output) -> Vec<String> {
    stdout_of(output).lines().filter(|l| l.starts_with("sent ")).map(str::to_owned).collect()
}

/// The `sent` lines that are about files: a line naming a folder of `out` (an
/// implementation may report the folders it creates) is left out.
fn file_sent_lines(output: &Output, out: &Path) -> Vec<String> {
    sent_lines(output)
        .into_iter()
        .filter(|l| {
            let name = l["sent ".len()..l.rfind(" (").unwrap_or(l.len())].to_owned();
            !fs::symlink_metadata(out.join(name)).is_ok_and(|m| m.is_dir())
        })
        .collect()
}

/// Stderr lines of the form `failed: {source}: {reason}`.
fn failed_lines(output: &Output) -> Vec<String> {
    stderr_of(output).lines().filter(|l| l.starts_with("failed: ")).map(str::to_owned).collect()
}

fn parse_json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e})\n{}", show(output)))
}

/// The `files` entries about files: an entry naming a folder of `out` (an
/// implementation may list the folders it creates) is left out, after checking it
/// claims no bytes and no failure.
fn json_file_entries<'a>(
    doc: &'a serde_json::Value,
    out: &Path,
    output: &Output,
) -> Vec<&'a serde_json::Value> {
    let files = doc["files"].as_array().unwrap_or_else(|| panic!("no files array\n{}", show(output)));
    files
        .iter()
        .filter(|f| {
            let name =
                f["name"].as_str().unwrap_or_else(|| panic!("an entry without a name\n{}", show(output)));
            let folder = fs::symlink_metadata(out.join(name)).is_ok_and(|m| m.is_dir());
            if folder {
                assert!(f["error"].is_null() && f["bytes"] == 0, "folder entry {f}\n{}", show(output));
            }
            !folder
        })
        .collect()
}

/// The `files` entry whose `name` is `name`.
fn json_file<'a>(doc: &'a serde_json::Value, name: &str, output: &Output) -> &'a serde_json::Value {
    let files = doc["files"].as_array().unwrap_or_else(|| panic!("no files array\n{}", show(output)));
    let matching: Vec<_> = files.iter().filter(|f| f["name"] == name).collect();
    assert_eq!(matching.len(), 1, "want one entry named {name:?}\n{}", show(output));
    matching[0]
}

// ---------------------------------------------------------------------------------
// Running a client with a fed stdin, watching its peak memory.
// ---------------------------------------------------------------------------------

/// Peak resident set (VmHWM) of `pid` in KiB, if it is still readable.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `command` with `feed` writing its stdin from a thread (stdin is closed when
/// `feed` returns). Returns the output and the highest VmHWM seen while it ran.
fn run_fed(mut command: Command, feed: impl FnOnce(&mut ChildStdin) + Send + 'static) -> (Output, u64) {
    let what = format!("{command:?}");
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let writer = std::thread::spawn(move || feed(&mut stdin));
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let pid = child.id();
    let start = Instant::now();
    let mut peak = 0;
    let status = loop {
        if !has_exited(pid) {
            peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    let output = Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() };
    (output, peak)
}

// ---------------------------------------------------------------------------------
// Folders
// ---------------------------------------------------------------------------------

#[test]
fn a_folder_arrives_whole_with_odd_names_and_empty_folders() {
    let fx = Fx::new("tree");
    let root = mkdirs(&fx.src().join("My Folder")).to_path_buf();
    put(&root, "with space.txt", 1000, 1);
    put(&root, "ünïcødé/日本語 ファイル.bin", 70_000, 2);
    put(&root, "new\nline.txt", 123, 3);
    put(&root, "deep/a/b/c/leaf.bin", (1 << 20) + 7, 4);
    put(&root, "zero.bin", 0, 5);
    put(&root, ".hidden", 10, 6);
    mkdirs(&root.join("empty"));
    mkdirs(&root.join("deep/also empty/inner empty"));
    let files = 6u64;
    let bytes = (1000 + 70_000 + 123 + (1 << 20) + 7 + 10) as u64;

    let output = fx.run(&["-v", "My Folder"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_sent_tree(&root, &fx.out().join("My Folder"), &output);
    assert_eq!(fs::read_dir(fx.out()).unwrap().count(), 1, "only the folder arrives at the top");
    assert_summary(&output, files, Some(bytes), 0, 0);
    let sent = file_sent_lines(&output, fx.out());
    assert_eq!(sent.len(), files as usize, "one `sent` line per file with -v\n{}", show(&output));
    for line in &sent {
        assert!(line.ends_with(" bytes)") && line.contains(" ("), "bad -v line {line:?}");
    }
    assert!(
        sent.iter().any(|l| l.contains("leaf.bin") && l.contains(&format!("({} bytes)", (1 << 20) + 7))),
        "{}",
        show(&output)
    );
    assert!(server_is_clean(&fx), "temporary files left: {:?}", fx.server.temp_files());
}

fn server_is_clean(fx: &Fx) -> bool {
    files_under(fx.out()).iter().all(|p| !p.to_string_lossy().ends_with(".part"))
}

#[test]
fn without_verbose_only_the_summary_is_printed() {
    let fx = Fx::new("quietpaths");
    let root = mkdirs(&fx.src().join("t")).to_path_buf();
    put(&root, "a.bin", 5000, 1);
    put(&root, "b/c.bin", 6000, 2);
    let output = fx.run(&["t"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(sent_lines(&output).is_empty(), "per-file lines without -v\n{}", show(&output));
    assert_eq!(stdout_of(&output).lines().filter(|l| !l.trim().is_empty()).count(), 1, "{}", show(&output));
    assert_summary(&output, 2, Some(11_000), 0, 0);
    assert_sent_tree(&root, &fx.out().join("t"), &output);
}

#[test]
fn control_characters_are_escaped_in_lines_and_exact_in_json() {
    let fx = Fx::new("ctrl");
    let root = mkdirs(&fx.src().join("tree")).to_path_buf();
    put(&root, "new\nline.txt", 10, 1);
    put(&root, "esc\x1b[1mbold.txt", 20, 2);
    put(&root, "plain.txt", 30, 3);

    let output = fx.run(&["-v", root.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_sent_tree(&root, &fx.out().join("tree"), &output);
    assert!(!output.stdout.contains(&0x1b), "a raw ESC on stdout\n{}", show(&output));
    let text = stdout_of(&output);
    for line in text.lines() {
        assert!(
            (line.starts_with("sent ") && line.ends_with(" bytes)"))
                || (line.starts_with("made ") && line.ends_with('/'))
                || line.starts_with("sharedclient: "),
            "a stdout line that is neither `sent` nor the summary (a raw newline in a name?): {line:?}\n{}",
            show(&output)
        );
    }
    assert_eq!(file_sent_lines(&output, fx.out()).len(), 3, "{}", show(&output));
    assert!(text.contains("new\\nline.txt"), "the newline is not shown as \\n\n{}", show(&output));
    assert!(
        sent_lines(&output).iter().any(|l| l.contains("esc") && l.contains("bold.txt")),
        "{}",
        show(&output)
    );
    assert_summary(&output, 3, Some(60), 0, 0);

    // A resend fails every file: the failure lines escape too.
    let output = fx.run(&[root.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(!output.stderr.contains(&0x1b), "a raw ESC on stderr\n{}", show(&output));
    assert!(!output.stdout.contains(&0x1b), "a raw ESC on stdout\n{}", show(&output));
    let failed = failed_lines(&output);
    assert_eq!(failed.len(), 3, "{}", show(&output));
    assert!(failed.iter().any(|l| l.contains("new\\nline.txt")), "{}", show(&output));
    assert!(!stderr_of(&output).lines().any(|l| l.starts_with("line.txt")), "{}", show(&output));
    assert_summary(&output, 0, None, 0, 3);

    // JSON carries the names exactly.
    let output = fx.run(&["--json", "--skip-existing", root.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let doc = parse_json(&output);
    for name in ["new\nline.txt", "esc\x1b[1mbold.txt", "plain.txt"] {
        let file = json_file(&doc, &format!("tree/{name}"), &output);
        assert_eq!(file["status"], "skipped", "{}", show(&output));
        let source = file["source"].as_str().unwrap_or_else(|| panic!("no source\n{}", show(&output)));
        assert!(source.ends_with(&format!("tree/{name}")), "source {source:?}\n{}", show(&output));
    }
    assert_eq!(json_file_entries(&doc, fx.out(), &output).len(), 3, "{}", show(&output));
    assert_eq!(doc["skipped"], 3, "{}", show(&output));
}

// ---------------------------------------------------------------------------------
// Symbolic links
// ---------------------------------------------------------------------------------

/// src/outside.txt, src/outdir/inner.txt, src/tree/{plain.txt, link_file, link_dir},
/// src/cl_link -> outside.txt. Returns (tree, outside content, inner content).
fn link_fixture(src: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let outside = put(src, "outside.txt", 3000, 11);
    let inner = put(src, "outdir/inner.txt", 4000, 12);
    let root = mkdirs(&src.join("tree")).to_path_buf();
    put(&root, "plain.txt", 100, 13);
    symlink("../outside.txt", root.join("link_file")).unwrap();
    symlink(src.join("outdir"), root.join("link_dir")).unwrap();
    symlink("outside.txt", src.join("cl_link")).unwrap();
    (root, fs::read(outside).unwrap(), fs::read(inner).unwrap())
}

#[test]
fn links_inside_folders_are_skipped_and_reported_and_a_named_link_is_followed() {
    let fx = Fx::new("links");
    let (_root, outside, _) = link_fixture(fx.src());
    let output = fx.run(&["tree", "cl_link"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let got = tree(&fx.out().join("tree"));
    assert_eq!(got.keys().collect::<Vec<_>>(), [Path::new("plain.txt")], "{got:?}\n{}", show(&output));
    let err = stderr_of(&output);
    for link in ["tree/link_file", "tree/link_dir"] {
        assert!(
            err.lines().any(|l| l.contains("skipped") && l.contains(link) && l.contains("-L")),
            "no `skipped ... {link} ... -L` line\n{}",
            show(&output)
        );
    }
    assert!(!err.lines().any(|l| l.contains("skipped") && l.contains("cl_link")), "{}", show(&output));
    let named = fs::symlink_metadata(fx.out().join("cl_link")).unwrap();
    assert!(named.is_file(), "the link named on the command line arrives as a file: {named:?}");
    assert!(
        fs::read(fx.out().join("cl_link")).unwrap() == outside,
        "cl_link does not hold its target's bytes"
    );
    // Whether skipped links count in `{K} skipped` is left open; files and bytes are not.
    let s = summary(&output);
    assert_eq!((s.files, s.bytes, s.failed), (2, 3100, 0), "{}", show(&output));
    // With --json, each skipped link says why.
    let output = fx.run(&["--json", "--skip-existing", "tree"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();
    let skipped: Vec<&serde_json::Value> = doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["source"].as_str().unwrap().contains("link_"))
        .collect();
    assert_eq!(skipped.len(), 2, "{doc}");
    for file in skipped {
        assert!(file["status"] == "skipped" && file["error"].as_str().unwrap().contains("-L"), "{file}");
        // Where it would have arrived: the source's path beneath the folder sent.
        let source = file["source"].as_str().unwrap();
        let name = file["name"].as_str().unwrap();
        assert!(name.starts_with("tree/") && source.ends_with(name), "{file}");
    }
}

#[test]
fn follow_symlinks_sends_what_links_inside_folders_point_to() {
    let fx = Fx::new("linksL");
    let (_root, outside, inner) = link_fixture(fx.src());
    let output = fx.run(&["-L", "tree"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(!stderr_of(&output).contains("skipped"), "{}", show(&output));
    let got = tree(&fx.out().join("tree"));
    let kinds: Vec<(String, &str)> = got
        .iter()
        .map(|(p, e)| {
            let kind = match e {
                Entry::Dir { .. } => "dir",
                Entry::File { .. } => "file",
                Entry::Link { .. } => "link",
                Entry::Special { .. } => "special",
            };
            (p.to_string_lossy().into_owned(), kind)
        })
        .collect();
    let want: Vec<(String, &str)> =
        [("link_dir", "dir"), ("link_dir/inner.txt", "file"), ("link_file", "file"), ("plain.txt", "file")]
            .iter()
            .map(|(p, k)| (p.to_string(), *k))
            .collect();
    assert_eq!(kinds, want, "{}", show(&output));
    assert!(fs::read(fx.out().join("tree/link_file")).unwrap() == outside);
    assert!(fs::read(fx.out().join("tree/link_dir/inner.txt")).unwrap() == inner);
    assert_summary(&output, 3, Some(100 + 3000 + 4000), 0, 0);
}

// ---------------------------------------------------------------------------------
// Modes and times
// ---------------------------------------------------------------------------------

#[test]
fn permission_bits_and_old_mtimes_are_kept() {
    let fx = Fx::new("modes");
    let root = mkdirs(&fx.src().join("m")).to_path_buf();
    let files = [
        ("secret.key", 0o600),
        ("run.sh", 0o755),
        ("shared.txt", 0o644),
        ("readonly.txt", 0o400),
        ("group/data.bin", 0o640),
        ("private/inner.txt", 0o600),
        ("ro/inside.txt", 0o444),
        ("suid", 0o4755),
    ];
    const Y2001: u64 = 978_307_200; // 2001-01-01 00:00:00 UTC
    for (i, (rel, mode)) in files.iter().enumerate() {
        let path = put(&root, rel, 100 + i * 37, 40 + i as u64);
        set_mtime(&path, Y2001 + i as u64 * 86_461);
        set_mode(&path, *mode);
    }
    set_mode(&root.join("group"), 0o750);
    set_mode(&root.join("private"), 0o700);
    set_mode(&root.join("ro"), 0o555);
    set_mode(&root, 0o751);

    // Whatever happens, make the read-only source folder removable again.
    struct Writable(PathBuf);
    impl Drop for Writable {
        fn drop(&mut self) {
            let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755));
        }
    }
    let _writable = Writable(root.join("ro"));

    let output = fx.run(&["m"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let dst = fx.out().join("m");
    assert_sent_tree(&root, &dst, &output);
    // Spelled out, whatever the helper does.
    let mode = |p: &str| fs::symlink_metadata(dst.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("secret.key"), 0o600);
    assert_eq!(mode("run.sh"), 0o755);
    assert_eq!(mode("readonly.txt"), 0o400);
    assert_eq!(mode("suid"), 0o755, "setuid must never be carried");
    assert_eq!(mode("ro"), 0o755, "folders get u+rwx on top of the source's bits");
    assert_eq!(mode("group"), 0o750);
    assert_eq!(mode(""), 0o751);
    for (i, (rel, _)) in files.iter().enumerate() {
        let want = (Y2001 + i as u64 * 86_461) as i64;
        let got = fs::symlink_metadata(dst.join(rel)).unwrap().mtime();
        assert_eq!(got, want, "{rel}: mtime {got}, want {want}\n{}", show(&output));
    }
    assert_summary(&output, files.len() as u64, None, 0, 0);
}

// ---------------------------------------------------------------------------------
// --files-from
// ---------------------------------------------------------------------------------

#[test]
fn files_from_stdin_keeps_relative_paths() {
    let fx = Fx::new("fromstdin");
    let src = fx.src();
    put(src, "a.txt", 111, 1);
    put(src, "sub/b.txt", 222, 2);
    put(src, "sub/deeper/c bin", 333, 3);
    put(src, "sub/not-listed.txt", 444, 4);
    let mut command = fx.cmd();
    command.args(["--files-from", "-"]);
    let (output, _) = run_fed(command, |stdin| {
        let _ = stdin.write_all(b"a.txt\nsub/b.txt\nsub/deeper/c bin\n");
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let got: Vec<PathBuf> =
        tree(fx.out()).into_iter().filter(|(_, e)| matches!(e, Entry::File { .. })).map(|(p, _)| p).collect();
    let want: Vec<PathBuf> = ["a.txt", "sub/b.txt", "sub/deeper/c bin"].iter().map(PathBuf::from).collect();
    assert_eq!(got, want, "{}", show(&output));
    for rel in &want {
        assert!(fs::read(fx.out().join(rel)).unwrap() == fs::read(src.join(rel)).unwrap(), "{rel:?} differs");
    }
    assert_summary(&output, 3, Some(666), 0, 0);
}

/// A folder named with digits reads as a stream id; when the options file cannot
/// be read, the message says how to send the path instead (`./2024`).
#[test]
fn a_digits_path_with_no_options_file_is_told_to_write_dot_slash() {
    let fx = Fx::new("digits");
    put(fx.src(), "2024/jan.txt", 100, 1);
    let mut command = Command::new(CLIENT);
    command.args(["--name", &fx.server.name, "--config", "missing.xml", "2024"]).current_dir(fx.src());
    let output = run(command);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("to send the path, write ./2024"), "{}", show(&output));
    let mut command = Command::new(CLIENT);
    command.args(["--name", &fx.server.name, "--config", "missing.xml", "./2024"]).current_dir(fx.src());
    let output = run(command);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(fx.out().join("2024/jan.txt").exists(), "{}", show(&output));
}

/// The folders above a listed file arrive with their own modes, as `rsync -a
/// --files-from` makes them, not with the server's default: a private folder stays
/// private. A folder listed after it was made for an earlier entry is made once.
#[test]
fn files_from_makes_the_folders_above_each_entry_with_their_modes() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fx::new("fromparents");
    let src = fx.src();
    put(src, "private/logs/a.log", 10, 1);
    put(src, "private/logs/b.log", 20, 2);
    put(src, "open/c.log", 30, 3);
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(src.join("private/logs"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(src.join("open"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = fx.cmd();
    command.args(["--files-from", "-"]);
    let (output, _) = run_fed(command, |stdin| {
        let _ = stdin.write_all(b"private/logs/a.log\n./private/logs/b.log\nprivate\nopen/c.log\n");
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(mode(&fx.out().join("private")), 0o700, "{}", show(&output));
    assert_eq!(mode(&fx.out().join("private/logs")), 0o750, "{}", show(&output));
    assert_eq!(mode(&fx.out().join("open")), 0o755, "{}", show(&output));
    for rel in ["private/logs/a.log", "private/logs/b.log", "open/c.log"] {
        assert!(fs::read(fx.out().join(rel)).unwrap() == fs::read(src.join(rel)).unwrap(), "{rel} differs");
    }
    assert_summary(&output, 3, Some(60), 0, 0);

    // One entry and --as: the file is renamed, no folder above it is made.
    fs::write(src.join("one.list"), "private/logs/a.log\n").unwrap();
    let output = fx.run(&["--files-from", "one.list", "--as", "renamed.log"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(fs::metadata(fx.out().join("renamed.log")).unwrap().is_file(), "{}", show(&output));

    // Two lists filling one new folder at once: the folder is made in place, not
    // staged for one of them, and both arrive whole.
    let names = |tag: &str| (0..150).map(|i| format!("shared/{tag}{i:03}.txt")).collect::<Vec<_>>();
    let mut children = Vec::new();
    for tag in ["a", "b"] {
        for (i, name) in names(tag).iter().enumerate() {
            put(src, name, 100 + i, 5);
        }
        fs::write(src.join(format!("{tag}.list")), names(tag).join("\n")).unwrap();
        let mut command = fx.cmd();
        command.args(["-q", "--files-from", &format!("{tag}.list")]);
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        children.push(command.spawn().unwrap());
    }
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    }
    for name in names("a").iter().chain(&names("b")) {
        assert!(
            fs::read(fx.out().join(name)).unwrap() == fs::read(src.join(name)).unwrap(),
            "{name} differs"
        );
    }
}

/// An empty list sends nothing, successfully, and still says so in its final line.
#[test]
fn an_empty_files_from_list_still_prints_the_final_line() {
    let fx = Fx::new("fromempty");
    let output = fx.run(&["--files-from", "/dev/null"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_summary(&output, 0, Some(0), 0, 0);
}

#[test]
fn files_from_with_nul_separators_takes_newlines_in_names() {
    let fx = Fx::new("from0");
    let src = fx.src();
    put(src, "name with\nnewline.txt", 500, 1);
    put(src, "sub/x y.bin", 600, 2);
    put(src, "sub/other.bin", 700, 3);
    fs::write(fx.work.path().join("list0"), b"name with\nnewline.txt\0sub/x y.bin\0").unwrap();
    let list = fx.work.path().join("list0");
    let mut command = fx.cmd();
    command.arg("-0").arg("--files-from").arg(&list);
    let output = run(command);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let got: Vec<PathBuf> =
        tree(fx.out()).into_iter().filter(|(_, e)| matches!(e, Entry::File { .. })).map(|(p, _)| p).collect();
    let want: Vec<PathBuf> = ["name with\nnewline.txt", "sub/x y.bin"].iter().map(PathBuf::from).collect();
    assert_eq!(got, want, "{}", show(&output));
    for rel in &want {
        assert!(fs::read(fx.out().join(rel)).unwrap() == fs::read(src.join(rel)).unwrap(), "{rel:?} differs");
    }
    assert_summary(&output, 2, Some(1100), 0, 0);

    // The long spelling, from standard input.
    let fx = Fx::new("from0stdin");
    put(fx.src(), "name with\nnewline.txt", 50, 4);
    let mut command = fx.cmd();
    command.args(["--from0", "--files-from", "-"]);
    let (output, _) = run_fed(command, |stdin| {
        let _ = stdin.write_all(b"name with\nnewline.txt\0");
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(
        fs::read(fx.out().join("name with\nnewline.txt")).unwrap() == pattern(50, 4),
        "{}",
        show(&output)
    );
}

#[test]
fn files_from_refuses_absolute_dotdot_and_nul_entries_naming_the_line() {
    let fx = Fx::new("frombad");
    let base = fx.src().join("base");
    let cwd = mkdirs(&base).to_path_buf();
    let a = put(&cwd, "a.txt", 10, 1);
    put(&cwd, "sub/b.txt", 20, 2);
    put(fx.src(), "x", 30, 3); // ../x exists: the refusal is about the form, not a missing file
    let abs = a.to_str().unwrap().to_owned();
    let cases = [
        ("a.txt\n../x\n".to_owned(), "list.txt:2:"),
        (format!("a.txt\nsub/b.txt\n{abs}\n"), "list.txt:3:"),
        ("sub/../a.txt\na.txt\n".to_owned(), "list.txt:1:"),
        // A NUL-ended list read as newline-ended.
        ("a.txt\0sub/b.txt\n".to_owned(), "list.txt:1: a.txt\\u{0}sub/b.txt holds a NUL byte"),
    ];
    for (list, line) in cases {
        fs::write(cwd.join("list.txt"), &list).unwrap();
        let mut command = fx.cmd();
        command.current_dir(&cwd).args(["--files-from", "list.txt"]);
        let output = run(command);
        assert_eq!(output.status.code(), Some(2), "{list:?}\n{}", show(&output));
        assert!(stderr_of(&output).contains(line), "{list:?}: no {line:?}\n{}", show(&output));
        assert!(is_empty_dir(fx.out()), "{list:?}: something was sent: {:?}", tree(fx.out()));
    }
}

// ---------------------------------------------------------------------------------
// Standard input, FIFOs, /proc
// ---------------------------------------------------------------------------------

#[test]
fn stdin_of_100_mib_arrives_whole_without_being_held_in_memory() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 100;
    let fx = Fx::new("stdin");
    let mut command = fx.cmd();
    command.args(["-", "--as", "from stdin.bin"]);
    let (output, peak_kib) = run_fed(command, |stdin| {
        for i in 0..CHUNKS {
            if stdin.write_all(&pattern(CHUNK, 7000 + i as u64)).is_err() {
                return; // the client gave up; its output says why
            }
        }
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_summary(&output, 1, Some((CHUNK * CHUNKS) as u64), 0, 0);
    let path = fx.out().join("from stdin.bin");
    let mut file = fs::File::open(&path).unwrap_or_else(|e| panic!("{path:?}: {e}\n{}", show(&output)));
    assert_eq!(file.metadata().unwrap().len(), (CHUNK * CHUNKS) as u64, "{}", show(&output));
    let mut buf = vec![0u8; CHUNK];
    for i in 0..CHUNKS {
        file.read_exact(&mut buf).unwrap();
        assert!(buf == pattern(CHUNK, 7000 + i as u64), "MiB {i} differs");
    }
    assert!(
        peak_kib < 64 * 1024,
        "the client's peak resident set reached {peak_kib} KiB for a 100 MiB stdin on an 8 MiB segment"
    );
}

#[test]
fn a_slow_pipe_is_never_dropped_as_idle_and_its_data_flows_as_it_comes() {
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("slowpipe"), out.path(), &["--idle-timeout", "2"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &[]);
    let mut command = server.client(&config);
    command.args(["-", "--as", "slow.log"]);
    let name = server.name.clone();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    // Silences longer than the server's --idle-timeout between the lines; after each
    // silence, what the server has received so far.
    let (output, _) = run_fed(command, move |stdin| {
        for line in 0..3 {
            let _ = writeln!(stdin, "line {line}");
            let _ = stdin.flush();
            std::thread::sleep(Duration::from_millis(3000));
            let status = Command::new(CLIENT).args(["--status", "--json", "--name", &name]).output().unwrap();
            let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
            let done = doc["streams"]
                .as_array()
                .and_then(|streams| streams.iter().find_map(|s| s["bytes_done"].as_u64().filter(|&b| b > 0)))
                .unwrap_or(0);
            record.lock().unwrap().push(done);
        }
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(fs::read_to_string(out.path().join("slow.log")).unwrap(), "line 0\nline 1\nline 2\n");
    assert_eq!(*seen.lock().unwrap(), vec![7, 14, 21], "each line reached the server as it was written");
}

/// A client stopped (Ctrl-Z) past the server's --idle-timeout while it waits for a
/// pipe, then resumed, reports its dropped file within a second or so, although the
/// pipe stays open and silent (it reported it only when the pipe ended: never, for
/// a FIFO whose writer waits).
#[test]
fn a_resumed_pipe_client_reports_its_drop_without_waiting_for_the_pipe() {
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("stoppipe"), out.path(), &["--idle-timeout", "2"]);
    let (reader, mut writer) = std::io::pipe().unwrap();
    let mut command = Command::new(CLIENT);
    command.args(["--name", &server.name, "-", "--as", "stopped.log"]).stdin(reader);
    let client = Running::spawn(command);
    writer.write_all(b"first line\n").unwrap();
    server.wait_for_line("the stream", |_| !server.temp_files().is_empty());
    freeze(client.pid());
    server.wait_for_line("the drop", |l| l.contains("no activity"));
    thaw(client.pid());
    let resumed = Instant::now();
    wait_until("the resumed client to exit", || {
        client.has_exited() || resumed.elapsed() > Duration::from_secs(20)
    });
    assert!(client.has_exited(), "the client waited for its pipe after its stream was dropped");
    drop(writer);
    let output = client.finish();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("no activity"), "{}", show(&output));
    assert!(!out.path().join("stopped.log").exists());
}

#[test]
fn standard_input_is_read_from_where_it_stands() {
    let fx = Fx::new("stdinoffset");
    let source = put(fx.src(), "three.txt", 3000, 77);
    let mut command = fx.cmd();
    command.args(["-", "--as", "rest.bin"]);
    let mut file = fs::File::open(&source).unwrap();
    let mut head = [0u8; 1000];
    file.read_exact(&mut head).unwrap();
    command.stdin(Stdio::from(file));
    let output = run(command);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(fs::read(fx.out().join("rest.bin")).unwrap() == pattern(3000, 77)[1000..], "{}", show(&output));
}

#[test]
fn a_fifo_fed_by_a_writer_is_read_until_eof() {
    let fx = Fx::new("fifo");
    let fifo = fx.src().join("pipe in");
    mkfifo(&fifo);
    let len = (3 << 20) + 17;
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        // Blocks until the client opens the FIFO; written in pieces, with pauses.
        let mut f = fs::OpenOptions::new().write(true).open(&writer_path).unwrap();
        let data = pattern(len, 77);
        for piece in data.chunks(1 << 20) {
            f.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let output = fx.run(&["pipe in"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    writer.join().unwrap(); // the client read to EOF, so the writer is done
    let got = fs::read(fx.out().join("pipe in")).unwrap_or_else(|e| panic!("{e}\n{}", show(&output)));
    assert_eq!(got.len(), len, "{}", show(&output));
    assert!(got == pattern(len, 77), "content differs");
    assert_summary(&output, 1, Some(len as u64), 0, 0);
}

/// A writer that writes a line and closes at once (`echo late > fifo`) must not be
/// lost: the FIFO is opened once and read from that open (it was opened, closed
/// with the line unread, and opened again to wait forever for another writer).
#[test]
fn a_short_write_to_a_fifo_arrives_and_the_client_ends() {
    let fx = Fx::new("fifoshort");
    let fifo = fx.src().join("short");
    mkfifo(&fifo);
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        // Waits until the client has the FIFO open, then writes and closes at once.
        assert!(write_fifo(&writer_path, b"late\n"), "no reader opened the FIFO within 60 s");
    });
    let mut command = fx.cmd();
    command.args(["--timeout", "20", "short", "--as", "x"]);
    let client = Running::spawn(command);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.has_exited() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let hung = !client.has_exited();
    if hung {
        signal(client.pid(), "KILL");
        // A writer still waiting for a reader is let go.
        let _ = fs::read(&fifo);
    }
    let output = client.finish();
    writer.join().unwrap();
    assert!(!hung, "the client still waited for the FIFO 60 s later\n{}", show(&output));
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(fs::read(fx.out().join("x")).unwrap(), b"late\n", "{}", show(&output));
}

#[test]
fn sigint_while_waiting_on_a_fifo_without_writer_exits_130() {
    let fx = Fx::new("fifoint");
    let fifo = fx.src().join("nobody writes");
    mkfifo(&fifo);
    let mut command = fx.cmd();
    command.arg("nobody writes");
    let client = Running::spawn(command);
    // Let it get to the FIFO and settle (never a tight timing: 1 s, then asleep).
    std::thread::sleep(Duration::from_secs(1));
    wait_until("the client to block", || {
        assert!(!client.has_exited(), "the client exited before it was signalled");
        let states = thread_states(client.pid());
        !states.is_empty() && states.iter().all(|s| matches!(s, 'S' | 'D'))
    });
    signal(client.pid(), "INT");
    let signalled = Instant::now();
    let output = client.finish();
    let took = signalled.elapsed();
    assert_eq!(output.status.code(), Some(130), "{}", show(&output));
    assert!(
        took < Duration::from_secs(10),
        "the client took {took:?} to exit after SIGINT\n{}",
        show(&output)
    );
    assert!(!fx.out().join("nobody writes").exists(), "a file was published for an interrupted FIFO");
    assert!(server_is_clean(&fx), "temporary files left");
}

/// Ctrl-C while a folder's FIFO has no writer: the client still commits what the
/// server has of the (staged) folder, so its other files are published and
/// reported sent, the FIFO not; if the folder's name was taken meanwhile, nothing
/// is published over it and its files are reported failed, saying so.
fn sigint_mid_folder(tag: &str, taken: bool) {
    let fx = Fx::new(tag);
    let root = mkdirs(&fx.src().join("t")).to_path_buf();
    put(&root, "a.bin", 5000, 1);
    put(&root, "sub/b.bin", 0, 2);
    mkfifo(&root.join("zz nobody writes"));
    let mut command = fx.cmd();
    command.args(["--json", "t"]);
    let client = Running::spawn(command);
    wait_until("the server to have the folder's files", || {
        let staged = files_under(fx.out());
        ["a.bin", "b.bin"].iter().all(|f| staged.iter().any(|p| p.ends_with(f)))
    });
    wait_until("the client to block", || {
        assert!(!client.has_exited(), "the client exited before it was signalled");
        let states = thread_states(client.pid());
        !states.is_empty() && states.iter().all(|s| matches!(s, 'S' | 'D'))
    });
    if taken {
        fs::write(fx.out().join("t"), b"intruder").unwrap();
    }
    signal(client.pid(), "INT");
    let output = client.finish();
    assert_eq!(output.status.code(), Some(130), "{}", show(&output));
    let doc: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();
    let status = |name: &str| {
        let files = doc["files"].as_array().unwrap();
        let file = files.iter().find(|f| f["name"] == name).unwrap_or_else(|| panic!("{name}: {doc}"));
        (file["status"].as_str().unwrap().to_owned(), file["error"].as_str().unwrap_or_default().to_owned())
    };
    if taken {
        assert_eq!(fs::read(fx.out().join("t")).unwrap(), b"intruder");
        let (status, error) = status("t/a.bin");
        assert!(status == "failed" && error.contains("appeared"), "{status} {error}\n{}", show(&output));
        wait_until("nothing staged left", || fs::read_dir(fx.out()).unwrap().count() == 1);
        return;
    }
    // Published by the client's commit, before it exited.
    assert!(fs::read(fx.out().join("t/a.bin")).unwrap() == pattern(5000, 1), "{}", show(&output));
    assert_eq!(fs::read(fx.out().join("t/sub/b.bin")).unwrap(), b"", "{}", show(&output));
    assert!(!fx.out().join("t/zz nobody writes").exists(), "a file was published for an interrupted FIFO");
    assert_eq!((status("t/a.bin").0, status("t/sub/b.bin").0), ("sent".to_owned(), "sent".to_owned()));
    let inside: Vec<_> = fs::read_dir(fx.out()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(inside, vec![std::ffi::OsString::from("t")], "nothing staged is left");
}

#[test]
fn sigint_mid_folder_publishes_what_the_server_has() {
    sigint_mid_folder("folderint", false);
}

#[test]
fn sigint_mid_folder_whose_name_was_taken_publishes_nothing_and_says_so() {
    sigint_mid_folder("folderinttaken", true);
}

#[test]
fn proc_version_arrives_whole_despite_its_zero_size() {
    let fx = Fx::new("procver");
    let want = fs::read("/proc/version").unwrap();
    assert_eq!(fs::metadata("/proc/version").unwrap().len(), 0, "the premise: stat says 0 bytes");
    let output = fx.run(&["/proc/version", "--as", "version.txt"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let got = fs::read(fx.out().join("version.txt")).unwrap_or_else(|e| panic!("{e}\n{}", show(&output)));
    assert!(!want.is_empty());
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
    assert!(!fx.out().join("version").exists());
    assert_summary(&output, 1, Some(want.len() as u64), 0, 0);
}

// ---------------------------------------------------------------------------------
// --as
// ---------------------------------------------------------------------------------

#[test]
fn as_names_exactly_one_file_and_stdin_needs_it() {
    let fx = Fx::new("as");
    let a = put(fx.src(), "a.txt", 1234, 1);
    put(fx.src(), "b.txt", 99, 2);

    let output = fx.run(&["a.txt", "b.txt", "--as", "one.bin"]);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("--as"), "{}", show(&output));
    assert!(is_empty_dir(fx.out()), "sent despite the usage error: {:?}", tree(fx.out()));

    let mut command = fx.cmd();
    command.arg("-");
    let (output, _) = run_fed(command, |stdin| {
        let _ = stdin.write_all(b"hello");
    });
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("--as"), "{}", show(&output));
    assert!(is_empty_dir(fx.out()), "sent despite the usage error: {:?}", tree(fx.out()));

    // A folder and a list entry inside it are two sources, not one folder.
    put(fx.src(), "photos/sub/b.jpg", 50, 3);
    fs::write(fx.src().join("list"), "photos/sub/b.jpg\n").unwrap();
    let output = fx.run(&["--files-from", "list", "photos", "--as", "ff3"]);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(
        stderr_of(&output).contains("--as needs exactly one file, folder or `-` to send; 2 were given"),
        "{}",
        show(&output)
    );
    assert!(is_empty_dir(fx.out()), "sent despite the usage error: {:?}", tree(fx.out()));

    let output = fx.run(&["--as", "renamed.bin", "a.txt"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(fs::read(fx.out().join("renamed.bin")).unwrap() == fs::read(&a).unwrap(), "{}", show(&output));
    assert!(!fx.out().join("a.txt").exists());
    assert_summary(&output, 1, Some(1234), 0, 0);
}

// ---------------------------------------------------------------------------------
// Collisions, resends, JSON
// ---------------------------------------------------------------------------------

#[test]
fn two_sources_on_one_output_path_are_refused_naming_both() {
    let fx = Fx::new("dups");
    put(fx.src(), "a/x/one.txt", 10, 1);
    put(fx.src(), "b/x/two.txt", 20, 2);
    put(fx.src(), "a/f.txt", 30, 3);
    put(fx.src(), "b/f.txt", 40, 4);

    for args in [["a/x", "b/x"], ["a/f.txt", "b/f.txt"]] {
        let output = fx.run(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}\n{}", show(&output));
        let err = stderr_of(&output);
        assert!(
            err.contains(args[0]) && err.contains(args[1]),
            "{args:?}: not both named\n{}",
            show(&output)
        );
        assert!(is_empty_dir(fx.out()), "{args:?}: something was sent: {:?}", tree(fx.out()));
    }
}

#[test]
fn skip_existing_counts_files_already_there_and_leaves_them_alone() {
    let fx = Fx::new("skip");
    let root = mkdirs(&fx.src().join("tree")).to_path_buf();
    put(&root, "a.txt", 1000, 1);
    put(&root, "b.txt", 2000, 2);
    put(&root, "sub/c.txt", 3000, 3);
    let output = fx.run(&["tree"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_summary(&output, 3, Some(6000), 0, 0);
    fs::write(fx.out().join("tree/b.txt"), b"precious").unwrap();

    // Without --skip-existing: every file fails, nothing is touched.
    let output = fx.run(&["tree"]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert_summary(&output, 0, None, 0, 3);
    let failed = failed_lines(&output);
    assert_eq!(failed.len(), 3, "{}", show(&output));
    for name in ["tree/a.txt", "tree/b.txt", "tree/sub/c.txt"] {
        assert!(
            failed.iter().any(|l| l.starts_with(&format!("failed: {name}: "))),
            "no `failed: {name}: ...` line\n{}",
            show(&output)
        );
    }
    assert!(failed.iter().all(|l| l.contains("already exists")), "{}", show(&output));
    assert_eq!(fs::read(fx.out().join("tree/b.txt")).unwrap(), b"precious");
    assert!(server_is_clean(&fx));

    // With it: skipped, exit 0, still untouched; a new file goes.
    put(&root, "sub/new.txt", 400, 4);
    let output = fx.run(&["--skip-existing", "tree"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_summary(&output, 1, Some(400), 3, 0);
    assert!(failed_lines(&output).is_empty(), "{}", show(&output));
    assert_eq!(fs::read(fx.out().join("tree/b.txt")).unwrap(), b"precious");
    assert!(fs::read(fx.out().join("tree/sub/new.txt")).unwrap() == pattern(400, 4));
    assert!(fs::read(fx.out().join("tree/a.txt")).unwrap() == pattern(1000, 1));
}

#[test]
fn json_is_the_only_stdout_and_describes_every_file() {
    let fx = Fx::new("json");
    let root = mkdirs(&fx.src().join("tree")).to_path_buf();
    put(&root, "a.txt", 100, 1);
    put(&root, "b.txt", 2000, 2);
    put(&root, "sub/c.txt", 30_000, 3);
    mkdirs(&fx.out().join("tree"));
    fs::write(fx.out().join("tree/b.txt"), b"precious").unwrap();

    let output = fx.run(&["--json", "-v", "tree"]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let doc = parse_json(&output);
    assert_eq!(json_file_entries(&doc, fx.out(), &output).len(), 3, "{}", show(&output));
    for (name, bytes) in [("tree/a.txt", 100), ("tree/sub/c.txt", 30_000)] {
        let file = json_file(&doc, name, &output);
        assert_eq!(file["status"], "sent", "{name}\n{}", show(&output));
        assert_eq!(file["bytes"], bytes, "{name}\n{}", show(&output));
        assert!(file["error"].is_null(), "{name}\n{}", show(&output));
        let source = file["source"].as_str().unwrap_or_default();
        assert!(source.ends_with(name), "{name}: source {source:?}\n{}", show(&output));
    }
    let b = json_file(&doc, "tree/b.txt", &output);
    assert_eq!(b["status"], "failed", "{}", show(&output));
    assert!(b["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", show(&output));
    assert_eq!(doc["sent"], 2, "{}", show(&output));
    assert_eq!(doc["skipped"], 0, "{}", show(&output));
    assert_eq!(doc["failed"], 1, "{}", show(&output));
    assert_eq!(doc["bytes"], 30_100, "{}", show(&output));
    assert!(doc["seconds"].as_f64().is_some_and(|s| s >= 0.0), "{}", show(&output));
    assert_eq!(fs::read(fx.out().join("tree/b.txt")).unwrap(), b"precious");

    let output = fx.run(&["--json", "--skip-existing", "tree"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let doc = parse_json(&output);
    assert_eq!(json_file_entries(&doc, fx.out(), &output).len(), 3, "{}", show(&output));
    for name in ["tree/a.txt", "tree/b.txt", "tree/sub/c.txt"] {
        let file = json_file(&doc, name, &output);
        assert_eq!(file["status"], "skipped", "{name}\n{}", show(&output));
        assert!(file["error"].is_null(), "{name}\n{}", show(&output));
    }
    assert_eq!(doc["sent"], 0, "{}", show(&output));
    assert_eq!(doc["skipped"], 3, "{}", show(&output));
    assert_eq!(doc["failed"], 0, "{}", show(&output));
    assert_eq!(doc["bytes"], 0, "{}", show(&output));
}

// ---------------------------------------------------------------------------------
// Ids: ranges, --all, repeats, mixed with paths
// ---------------------------------------------------------------------------------

const FOUR: [(&str, usize); 4] = [("f1.bin", 1000), ("f2.bin", 2000), ("f3.bin", 3000), ("f4.bin", 4000)];

fn top_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn an_id_range_sends_both_ends_and_between() {
    let fx = Fx::with_streams("range", &FOUR);
    let output = fx.run(&["2-3"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(top_names(fx.out()), ["f2.bin", "f3.bin"], "{}", show(&output));
    for (id, name) in [(2, "f2.bin"), (3, "f3.bin")] {
        assert!(stdout_of(&output).contains(&format!("stream {id}: sent {name}")), "{}", show(&output));
        assert!(fs::read(fx.out().join(name)).unwrap() == fs::read(fx.src().join(name)).unwrap());
    }
}

/// A range names the ids options.xml defines in it: `3-9` with ids 1-4 sends 3 and
/// 4, and a range as wide as ids go is planned in no time (it once made an item
/// for each of four billion ids). A range with none of them is the user's to fix.
#[test]
fn an_id_range_sends_the_ids_defined_in_it_however_wide() {
    let fx = Fx::with_streams("widerange", &FOUR);
    let output = fx.run(&["3-9", "0-4294967295"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(top_names(fx.out()), ["f1.bin", "f2.bin", "f3.bin", "f4.bin"], "{}", show(&output));
    let output = fx.run(&["7-4000000000"]);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("no stream id from 7 to 4000000000"), "{}", show(&output));
}

#[test]
fn all_sends_every_stream_in_the_config() {
    let fx = Fx::with_streams("all", &FOUR);
    let output = fx.run(&["--all"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(top_names(fx.out()), ["f1.bin", "f2.bin", "f3.bin", "f4.bin"], "{}", show(&output));
    for (i, (name, _)) in FOUR.iter().enumerate() {
        assert!(stdout_of(&output).contains(&format!("stream {}: sent {name}", i + 1)), "{}", show(&output));
        assert!(fs::read(fx.out().join(name)).unwrap() == fs::read(fx.src().join(name)).unwrap());
    }
}

#[test]
fn quiet_ids_print_one_summary_but_still_every_failure() {
    let fx = Fx::with_streams("quietids", &FOUR);
    let output = fx.run(&["-q", "1-3", "9"]);
    // An unknown id is the user's to fix: exit 2.
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let (out, err) = (stdout_of(&output), stderr_of(&output));
    assert!(!out.contains("stream 1: sent"), "-q still printed a line per id: {}", show(&output));
    assert!(out.contains("sharedclient: 3 files"), "{}", show(&output));
    assert!(err.contains("stream 9: failed") && err.contains("unknown stream id 9"), "{}", show(&output));
    assert_eq!(top_names(fx.out()), ["f1.bin", "f2.bin", "f3.bin"], "{}", show(&output));
}

/// With -v an id's file is named once, on its `stream N:` line; a path's gets the
/// verbose `sent` line (it has no other).
#[test]
fn verbose_names_each_file_once() {
    let fx = Fx::with_streams("verboseids", &FOUR);
    fs::write(fx.src().join("loose.txt"), b"loose").unwrap();
    let loose = fx.src().join("loose.txt");
    let output = fx.run(&["-v", "1", loose.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let out = stdout_of(&output);
    let name = FOUR[0].0;
    assert_eq!(out.matches(name).count(), 1, "{name} named more than once: {}", show(&output));
    assert!(out.contains(&format!("stream 1: sent {name}")), "{}", show(&output));
    assert!(out.contains("sent loose.txt (5 bytes)"), "{}", show(&output));
}

#[test]
fn a_repeated_id_is_sent_once() {
    let fx = Fx::with_streams("repeat", &FOUR);
    let output = fx.run(&["1", "1", "1-2", "2"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let text = stdout_of(&output);
    assert_eq!(text.matches("stream 1: sent").count(), 1, "{}", show(&output));
    assert_eq!(text.matches("stream 2: sent").count(), 1, "{}", show(&output));
    assert!(!stderr_of(&output).contains("failed"), "{}", show(&output));
    assert_eq!(top_names(fx.out()), ["f1.bin", "f2.bin"], "{}", show(&output));
}

#[test]
fn ids_and_paths_mix_and_dot_slash_names_a_file_called_like_an_id() {
    let fx = Fx::with_streams("mixed", &FOUR);
    let seven = put(fx.src(), "7", 777, 7);
    let dir = mkdirs(&fx.src().join("dir")).to_path_buf();
    put(&dir, "in dir.txt", 321, 8);
    let output = fx.run(&["1", "./7", "dir", "3"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(top_names(fx.out()), ["7", "dir", "f1.bin", "f3.bin"], "{}", show(&output));
    assert!(fs::read(fx.out().join("7")).unwrap() == fs::read(&seven).unwrap());
    assert_sent_tree(&dir, &fx.out().join("dir"), &output);
    assert!(fs::read(fx.out().join("f1.bin")).unwrap() == fs::read(fx.src().join("f1.bin")).unwrap());

    // Bare `7` is an id, and there is no stream 7.
    let fx = Fx::with_streams("mixed7", &FOUR);
    put(fx.src(), "7", 777, 7);
    let output = fx.run(&["7"]);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("unknown stream id 7"), "{}", show(&output));
    assert!(is_empty_dir(fx.out()), "{:?}", tree(fx.out()));
}

// ---------------------------------------------------------------------------------
// The server side: names with `/`, symlinks planted in OUTPUT_DIR
// ---------------------------------------------------------------------------------

#[test]
fn a_symlink_planted_in_the_output_folder_is_never_followed() {
    let fx = Fx::new("planted");
    let outside = tempfile::tempdir().unwrap();
    let root = mkdirs(&fx.src().join("tree")).to_path_buf();
    put(&root, "a.txt", 100, 1);
    put(&root, "sub/b.txt", 200, 2);
    symlink(outside.path(), fx.out().join("tree")).unwrap();

    let output = fx.run(&["tree"]);
    assert!(output.status.code().is_some_and(|c| c != 0), "{}", show(&output));
    assert!(is_empty_dir(outside.path()), "written through the link: {:?}", tree(outside.path()));
    assert!(fs::symlink_metadata(fx.out().join("tree")).unwrap().file_type().is_symlink());

    // Deeper: a real folder holding a planted link.
    let outside2 = tempfile::tempdir().unwrap();
    let deep = mkdirs(&fx.src().join("deep")).to_path_buf();
    put(&deep, "top.txt", 10, 3);
    put(&deep, "sub/b.txt", 20, 4);
    mkdirs(&fx.out().join("deep"));
    symlink(outside2.path(), fx.out().join("deep/sub")).unwrap();
    let output = fx.run(&["deep"]);
    assert!(output.status.code().is_some_and(|c| c != 0), "{}", show(&output));
    assert!(is_empty_dir(outside2.path()), "written through the link: {:?}", tree(outside2.path()));
    assert!(
        stderr_of(&output).contains("deep/sub is a symbolic link: refusing to write through it"),
        "{}",
        show(&output)
    );

    // A dangling link where a file would go: its target is never created.
    put(fx.src(), "f.txt", 30, 5);
    symlink(outside.path().join("f.txt"), fx.out().join("f.txt")).unwrap();
    let output = fx.run(&["f.txt"]);
    assert!(!outside.path().join("f.txt").exists(), "written through the link\n{}", show(&output));

    // The server keeps serving.
    put(fx.src(), "ok.txt", 40, 6);
    let output = fx.run(&["ok.txt"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(fs::read(fx.out().join("ok.txt")).unwrap() == pattern(40, 6));
    assert!(server_is_clean(&fx));
}

/// A file whose name is not UTF-8 is refused, naming it (the server only takes
/// UTF-8 names), unless `--as` gives it one: then it arrives under that name.
#[test]
fn a_name_that_is_not_utf8_is_refused_unless_as_renames_it() {
    use std::os::unix::ffi::OsStrExt;
    let fx = Fx::new("notutf8");
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(fx.src().join(name), b"latin-1 name").unwrap();
    let output = run({
        let mut c = fx.cmd();
        c.arg(name);
        c
    });
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("caf\\xe9.txt: the name is not valid UTF-8"), "{}", show(&output));
    let output = run({
        let mut c = fx.cmd();
        c.arg(name).args(["--as", "cafe.txt"]);
        c
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(fs::read(fx.out().join("cafe.txt")).unwrap(), b"latin-1 name");
    assert_eq!(top_names(fx.out()), ["cafe.txt"]);
}

/// `--json` carries a source path that is not UTF-8 exactly (`source_bytes`, base64),
/// besides the lossy `source`; a UTF-8 one has no `source_bytes`.
#[test]
fn json_gives_a_source_that_is_not_utf8_exactly() {
    use std::os::unix::ffi::OsStrExt;
    let fx = Fx::new("jsonbytes");
    let root = mkdirs(&fx.src().join("mixed")).to_path_buf();
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")), b"latin-1").unwrap();
    put(&root, "plain.txt", 10, 1);
    let output = run({
        let mut c = fx.cmd();
        c.args(["--json", "mixed"]);
        c
    });
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let doc = parse_json(&output);
    let files = doc["files"].as_array().unwrap_or_else(|| panic!("no files array\n{}", show(&output)));
    let bad: Vec<_> = files.iter().filter(|f| f["status"] == "failed").collect();
    assert_eq!(bad.len(), 1, "{}", show(&output));
    // The client runs in the source folder: the path is as named there.
    let want = sharedxfer::escape::base64(b"mixed/caf\xe9.txt");
    assert_eq!(bad[0]["source_bytes"], want.as_str(), "{}", show(&output));
    assert_eq!(bad[0]["source"], "mixed/caf\u{fffd}.txt", "{}", show(&output));
    let plain = json_file(&doc, "mixed/plain.txt", &output);
    assert_eq!(plain["status"], "sent", "{}", show(&output));
    assert!(plain.get("source_bytes").is_none(), "{}", show(&output));
    assert_eq!(fs::read(fx.out().join("mixed/plain.txt")).unwrap(), pattern(10, 1));
}

/// A sticky folder others may write (`/tmp`-like) arrives without their write bits:
/// the sticky bit is not sent, and without it the folder would let anyone delete
/// anyone's files. A plain folder keeps its bits.
#[test]
fn a_sticky_world_writable_folder_arrives_without_the_write_bits_of_others() {
    let fx = Fx::new("sticky");
    let root = mkdirs(&fx.src().join("top/shared")).to_path_buf();
    mkdirs(&fx.src().join("top/open"));
    fs::set_permissions(&root, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(fx.src().join("top/open"), fs::Permissions::from_mode(0o777)).unwrap();
    let output = fx.run(&["top"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let mode = |p: &str| fs::metadata(fx.out().join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("top/shared"), 0o755, "{}", show(&output));
    assert_eq!(mode("top/open"), 0o777, "{}", show(&output));
}

/// Empty files are made under their name at once (an empty file has no
/// half-written state): with their mode (even bits the umask would take) and mtime,
/// never over a file already there; the server's `--overwrite` replaces one.
#[test]
fn empty_files_arrive_with_their_mode_and_time_and_never_clobber_a_file() {
    let fx = Fx::new("empties");
    let root = mkdirs(&fx.src().join("e")).to_path_buf();
    let wanted = [("a", 0o640, 1_000_000_000u64), ("b", 0o755, 1_200_000_000), ("c", 0o664, 1_400_000_000)];
    for (name, mode, secs) in wanted {
        let path = put(&root, name, 0, 0);
        set_mtime(&path, secs);
        set_mode(&path, mode);
    }
    mkdirs(&fx.out().join("e"));
    fs::write(fx.out().join("e/b"), b"keep me").unwrap();
    let output = fx.run(&["e"]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert_summary(&output, 2, Some(0), 0, 1);
    assert!(show(&output).contains("already exists"), "{}", show(&output));
    assert_eq!(fs::read(fx.out().join("e/b")).unwrap(), b"keep me", "an existing file was clobbered");
    let check = |name: &str, mode: u32, secs: u64| {
        let meta = fs::metadata(fx.out().join("e").join(name)).unwrap();
        assert_eq!(meta.len(), 0, "{name}");
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{name}: mode");
        assert_eq!(meta.mtime() as u64, secs, "{name}: mtime");
    };
    for (name, mode, secs) in [wanted[0], wanted[2]] {
        check(name, mode, secs);
    }

    let replacing = Server::start(&unique_name("emptiesow"), fx.out(), &["--overwrite"]);
    let output = run({
        let mut c = replacing.client(&fx.config);
        c.current_dir(fx.src()).arg("e");
        c
    });
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    for (name, mode, secs) in wanted {
        check(name, mode, secs);
    }
    assert!(server_is_clean(&fx), "temporary files left: {:?}", fx.server.temp_files());
}

/// A folder where a file is to go: never "skipped" (the file is not there) and never
/// "remove it or --overwrite" (no flag replaces a folder): each way a file travels
/// (a stream from standard input, a small file in a batch, an empty file) fails
/// saying a folder is in the way, with or without --skip-existing, and the folder
/// and what it holds are untouched; with the server's --overwrite too.
#[test]
fn a_folder_in_the_way_of_a_file_fails_the_file_and_is_not_skipped() {
    let check = |fx: &Fx, label: &str| {
        for name in ["piped", "small.txt", "empty.txt"] {
            mkdirs(&fx.out().join(name));
            fs::write(fx.out().join(name).join("inside"), b"kept").unwrap();
        }
        put(fx.src(), "small.txt", 300, 1);
        put(fx.src(), "empty.txt", 0, 2);
        for skip in [false, true] {
            let mut args = vec!["-", "--as", "piped"];
            args.extend(skip.then_some("--skip-existing"));
            let mut command = fx.cmd();
            command.args(&args);
            let (output, _) = run_fed(command, |stdin| {
                let _ = stdin.write_all(b"bytes for a folder's name");
            });
            assert_eq!(output.status.code(), Some(1), "{label} {args:?}: {}", show(&output));
            assert!(stderr_of(&output).contains("piped is a folder"), "{label} {args:?}: {}", show(&output));
            assert!(!stderr_of(&output).contains("--overwrite"), "{label} {args:?}: {}", show(&output));

            let mut args = vec!["small.txt", "empty.txt"];
            args.extend(skip.then_some("--skip-existing"));
            let output = fx.run(&args);
            assert_eq!(output.status.code(), Some(1), "{label} {args:?}: {}", show(&output));
            assert_summary(&output, 0, None, 0, 2);
            for name in ["small.txt", "empty.txt"] {
                assert!(
                    failed_lines(&output)
                        .iter()
                        .any(|l| l.starts_with(&format!("failed: {name}: ")) && l.contains("is a folder")),
                    "{label} {args:?}: {}",
                    show(&output)
                );
            }
        }
        for name in ["piped", "small.txt", "empty.txt"] {
            assert!(fx.out().join(name).is_dir(), "{label}: {name}");
            assert_eq!(fs::read(fx.out().join(name).join("inside")).unwrap(), b"kept", "{label}: {name}");
        }
        assert!(server_is_clean(fx), "{label}");
    };
    check(&Fx::new("folderway"), "default");
    let fx = Fx::new("folderwayow");
    let (src, out, work) = (fx.src, fx.out, fx.work);
    drop(fx.server);
    let server = Server::start(&unique_name("folderwayow"), out.path(), &["--overwrite"]);
    let config = write_config(work.path(), &[]);
    check(&Fx { server, config, src, out, work }, "--overwrite");
}

/// A folder sent twice: each file fails as already there, and the client says so
/// three times and then counts the rest, not a line per file (a tree of 10,000
/// printed 10,000); -v and --json still name every file.
#[test]
fn files_already_there_are_counted_after_three_lines() {
    let fx = Fx::new("existsmany");
    let root = mkdirs(&fx.src().join("tree")).to_path_buf();
    for i in 0..8 {
        put(&root, &format!("f{i}.txt"), 100 + i, i as u64);
    }
    assert_eq!(fx.run(&["tree"]).status.code(), Some(0));
    let output = fx.run(&["tree"]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert_summary(&output, 0, None, 0, 8);
    let failed = failed_lines(&output);
    assert_eq!(failed.len(), 4, "{}", show(&output));
    assert!(failed[..3].iter().all(|l| l.contains("tree/f") && l.contains("already exists")), "{failed:?}");
    assert!(failed[3].starts_with("failed: 5 more: … already exists: "), "{failed:?}");

    let output = fx.run(&["-v", "tree"]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert_eq!(failed_lines(&output).len(), 8, "{}", show(&output));
    let output = fx.run(&["--json", "tree"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();
    let failures = doc["files"].as_array().unwrap().iter().filter(|f| f["status"] == "failed").count();
    assert_eq!(failures, 8, "{doc}");
}

/// `--as` renames one folder sent, and everything in it moves with it (as
/// `cp -r src NAME`), staged like any folder sent whole, or made beneath new
/// parents; with two sources it is refused.
#[test]
fn as_renames_one_folder_sent_whole() {
    use std::os::unix::fs::PermissionsExt;

    let fx = Fx::new("asfolder");
    let a = put(fx.src(), "src/sub/a.bin", 3000, 1);
    let b = put(fx.src(), "src/b.bin", 10, 2);
    fs::set_permissions(fx.src().join("src/sub"), fs::Permissions::from_mode(0o750)).unwrap();
    for name in ["copy", "deep/er/copy"] {
        let output = fx.run(&["src", "--as", name]);
        assert_eq!(output.status.code(), Some(0), "{}", show(&output));
        let out = fx.out().join(name);
        assert!(fs::read(out.join("sub/a.bin")).unwrap() == fs::read(&a).unwrap(), "{name}");
        assert!(fs::read(out.join("b.bin")).unwrap() == fs::read(&b).unwrap(), "{name}");
        assert_eq!(fs::metadata(out.join("sub")).unwrap().permissions().mode() & 0o777, 0o750, "{name}");
    }
    assert!(!fx.out().join("src").exists(), "the folder arrived under its own name too");
    put(fx.src(), "other/c.bin", 10, 3);
    let output = fx.run(&["src", "other", "--as", "both"]);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("--as needs exactly one file, folder or `-`"), "{}", show(&output));
    assert!(!fx.out().join("both").exists());
    // What the walk refuses inside it (a socket) fails alone (exit 2, as a socket
    // named without --as), and the rest goes.
    let _socket = std::os::unix::net::UnixListener::bind(fx.src().join("src/sock")).unwrap();
    let output = fx.run(&["src", "--as", "third"]);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("is a socket"), "{}", show(&output));
    assert!(stderr_of(&output).contains("src/sock"), "{}", show(&output));
    assert!(fs::read(fx.out().join("third/sub/a.bin")).unwrap() == fs::read(&a).unwrap());
    assert!(!fx.out().join("third/sock").exists());
    // The socket named as a second source is another source: --as is refused.
    let output = fx.run(&["src", "src/sock", "--as", "fourth"]);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr_of(&output).contains("--as needs exactly one file, folder or `-`"), "{}", show(&output));
    assert!(!fx.out().join("fourth").exists());
}
