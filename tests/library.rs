//! The library as a program uses it: an embedded server (folder sink and a sink of
//! the program's own), stopped by its handle, and a `Sender` sending a folder, a
//! reader and a resend; typed errors with their exit statuses and sources.

mod common;

use std::error::Error as _;
use std::fs;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sharedxfer::client::{Delivered, Progress, SendError, SendOptions, Sender};
use sharedxfer::server::{Server, ServerError, ServerEvent};
use sharedxfer::sink::{Sink, SinkError, SinkErrorKind, SinkFile, SinkSession};
use sharedxfer::sources::Item;
use sharedxfer::ExitStatus;

const TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn an_embedded_server_receives_a_folder_and_a_reader_and_stops_by_handle() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    fs::create_dir_all(tree.join("sub/empty")).unwrap();
    write_file(&tree, "a.bin", 70_000, 1);
    write_file(&tree.join("sub"), "b.bin", 3 << 20, 2);
    let name = unique_name("libfolder");
    let events = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&events);
    let server = Server::builder(&name)
        .size(4 << 20)
        .output_dir(out.path())
        .on_event(move |event| heard.lock().unwrap().push(event.clone()))
        .start()
        .unwrap();
    assert!(shm_path(&name).exists(), "the segment exists once start() returns");

    let sender = Sender::connect(&name, TIMEOUT).unwrap();
    let results = sender.send_path(&tree).unwrap();
    assert_eq!(results.len(), 5, "3 folders and 2 files: {results:?}");
    for (item, result) in &results {
        assert!(result.is_ok(), "{}: {result:?}", item.name);
    }
    assert_eq!(
        sender.send_reader("notes/from-memory.txt", &b"hello"[..]).unwrap(),
        Delivered::Sent { bytes: 5 }
    );
    assert!(fs::read(out.path().join("tree/sub/b.bin")).unwrap() == pattern(3 << 20, 2));
    assert!(out.path().join("tree/sub/empty").is_dir());
    assert_eq!(fs::read(out.path().join("notes/from-memory.txt")).unwrap(), b"hello");

    // A file sent twice: the second time it is refused (the server has it), or with
    // skip_existing skipped.
    assert!(sender.send_path(tree.join("a.bin")).unwrap()[0].1.is_ok());
    let again = sender.send_path(tree.join("a.bin")).unwrap();
    let err = again[0].1.as_ref().unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(err.exit_status(), ExitStatus::Failure);
    let skipping = Sender::connect(&name, TIMEOUT)
        .unwrap()
        .with_options(SendOptions { skip_existing: true, ..SendOptions::default() });
    assert_eq!(skipping.send_path(tree.join("a.bin")).unwrap()[0].1.as_ref().unwrap(), &Delivered::Skipped);

    drop((sender, skipping));
    server.shutdown().unwrap();
    assert!(!shm_path(&name).exists(), "shutdown removes the segment");
    assert!(!lock_dir(&name).exists(), "shutdown removes the lock folder");
    let events = events.lock().unwrap();
    assert!(matches!(events.first(), Some(ServerEvent::Ready { .. })), "{events:?}");
    let published = events.iter().filter(|e| matches!(e, ServerEvent::Published { .. })).count();
    assert_eq!(published, 4, "{events:?}");
    assert!(
        events.iter().any(|e| matches!(e, ServerEvent::Failed { name, .. } if name == "a.bin")),
        "{events:?}"
    );
}

/// A sink of the program's own: the library's memory sink, except that it refuses
/// names ending in `.refused`.
#[derive(Clone, Default)]
struct MemorySink {
    inner: sharedxfer::sink::MemorySink,
}

impl Sink for MemorySink {
    fn session(&self, stream: u128) -> Box<dyn SinkSession> {
        Box::new(Refusing { inner: self.inner.session(stream) })
    }
}

struct Refusing {
    inner: Box<dyn SinkSession>,
}

impl SinkSession for Refusing {
    fn exists(&mut self, name: &str) -> bool {
        self.inner.exists(name)
    }

    fn create(&mut self, name: &str, mode: u32) -> Result<Box<dyn SinkFile>, SinkError> {
        assert!(!name.ends_with(".panic"), "a sink with a bug");
        if name.ends_with(".refused") {
            return Err(SinkError::new(SinkErrorKind::Refused, format!("{name}: not here")));
        }
        self.inner.create(name, mode)
    }

    fn make_dir(&mut self, name: &str, mode: u32) -> Result<(), SinkError> {
        self.inner.make_dir(name, mode)
    }
}

/// Counts bytes and finished items, as a progress bar would.
#[derive(Default)]
struct Counter {
    bytes: std::sync::atomic::AtomicU64,
    finished: std::sync::atomic::AtomicUsize,
}

impl Progress for Counter {
    fn bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn finished(
        &self,
        _index: usize,
        _item: &Item,
        _result: &Result<Delivered, SendError>,
        _elapsed: Duration,
    ) {
        self.finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_sink_of_the_programs_own_gets_only_whole_checked_files() {
    let src = tempfile::tempdir().unwrap();
    let files: Vec<_> =
        (0..5).map(|i| write_file(src.path(), &format!("m{i}.bin"), 10_000 * i + 1, i as u64)).collect();
    let refused = write_file(src.path(), "x.refused", 10, 9);
    let name = unique_name("libmemory");
    let sink = MemorySink::default();
    let server = Server::builder(&name).size(2 << 20).sink(sink.clone()).start().unwrap();
    let sender = Sender::connect(&name, TIMEOUT).unwrap();
    let mut items = Vec::new();
    for path in files.iter().chain([&refused]) {
        items.extend(sender.send_path(path).unwrap().into_iter().map(|(item, _)| item));
    }
    // Already sent once above; send the planned items again through send_items.
    let counter = Counter::default();
    let results = sender.send_items(&items, &counter);
    assert_eq!(counter.finished.load(std::sync::atomic::Ordering::Relaxed), items.len());
    // Small files go in batches, read before the server finds the names taken: at
    // most each file's bytes once.
    let total: u64 = files.iter().chain([&refused]).map(|p| fs::metadata(p).unwrap().len()).sum();
    assert!(counter.bytes.load(std::sync::atomic::Ordering::Relaxed) <= total, "bytes counted twice");
    for (item, result) in items.iter().zip(&results) {
        let err = result.as_ref().unwrap_err();
        assert!(err.to_string().contains(if item.name == "x.refused" {
            "not here"
        } else {
            "already exists"
        }));
    }
    drop(sender);
    server.shutdown().unwrap();
    let kept = sink.inner.files();
    let stored = kept.lock().unwrap();
    assert_eq!(stored.len(), 5, "{:?}", stored.keys());
    for (i, path) in files.iter().enumerate() {
        assert!(stored[&format!("m{i}.bin")] == fs::read(path).unwrap());
    }
}

#[test]
fn errors_are_typed_say_their_exit_status_and_never_repeat_their_source() {
    let err = Sender::connect(&unique_name("libnone"), Duration::from_secs(1)).err().expect("no server");
    assert!(matches!(&err, SendError::Connect(segment) if segment.to_string() == err.to_string()), "{err:?}");
    // Transparent: a chain printed whole never repeats a message.
    let mut said = vec![err.to_string()];
    let mut next = err.source();
    while let Some(cause) = next {
        assert_ne!(said.last(), Some(&cause.to_string()), "the chain repeats itself: {said:?}");
        said.push(cause.to_string());
        next = cause.source();
    }
    let io = SendError::from(std::io::Error::other("disk on fire"));
    assert_eq!(format!("{:#}", anyhow::Error::new(io)), "disk on fire");
    assert!(err.to_string().contains("start one with `sharedserver --name"), "{err}");
    assert_eq!(err.exit_status(), ExitStatus::Failure);
    let bad = Sender::connect("no/slashes", Duration::from_secs(1)).err().expect("a bad name");
    assert_eq!(bad.exit_status(), ExitStatus::Usage);

    let name = unique_name("libbusy");
    let out = tempfile::tempdir().unwrap();
    let first = Server::builder(&name).size(1 << 20).output_dir(out.path()).start().unwrap();
    let second = Server::builder(&name).size(1 << 20).output_dir(out.path()).start().err().expect("busy");
    assert!(matches!(second, ServerError::Start(_)), "{second:?}");
    assert!(second.to_string().contains("already running"), "{second}");
    assert_eq!(second.exit_status(), ExitStatus::Usage);
    drop(first);
    assert!(!shm_path(&name).exists(), "dropping the handle stops the server");

    // What sharedserver refuses as usage, the builder refuses too, starting nothing.
    let none = Server::builder(&name).max_streams_per_client(0).output_dir(out.path()).start();
    let none = none.err().expect("a quota of 0 streams");
    assert!(
        matches!(none, ServerError::Start(_)) && none.to_string().contains("max_streams_per_client"),
        "{none}"
    );
    let zero = Server::builder(&name).idle_timeout(Duration::ZERO).output_dir(out.path()).start();
    let zero = zero.err().expect("an idle timeout of 0");
    assert!(zero.to_string().contains("idle_timeout is 0"), "{zero}");
    let idle = Server::builder(&name).workers(0).output_dir(out.path()).start().err().expect("0 workers");
    assert!(idle.to_string().contains("workers is 0: give 1 to 16"), "{idle}");
    let many = Server::builder(&name).workers(100).output_dir(out.path()).start().err().expect("100 workers");
    assert!(many.to_string().contains("workers is 100: give 1 to 16"), "{many}");
    assert!(!shm_path(&name).exists(), "nothing was started");
}

#[test]
fn one_stream_sends_files_and_folders_in_order_with_their_metadata() {
    use sharedxfer::protocol::FileMeta;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let out = tempfile::tempdir().unwrap();
    let name = unique_name("libstream");
    let server = Server::builder(&name).size(4 << 20).output_dir(out.path()).start().unwrap();
    let sender = Sender::connect(&name, TIMEOUT).unwrap();
    let mut stream = sender.stream();
    assert_eq!(stream.make_dir("made", 0o750).unwrap(), Delivered::Sent { bytes: 0 });
    let when = std::time::UNIX_EPOCH + Duration::new(1_500_000_000, 42);
    let meta = FileMeta { mode: Some(0o640), mtime: Some(when), ..FileMeta::default() };
    let data = pattern(300_000, 4);
    for i in 0..3 {
        let sent =
            stream.send_reader(&format!("made/f{i}.bin"), meta, Some(data.len() as u64), &data[..], &());
        assert_eq!(sent.unwrap(), Delivered::Sent { bytes: data.len() as u64 });
    }
    // A reader that gives fewer bytes than announced fails, and nothing is published;
    // the stream goes on with the next file.
    let short = stream.send_reader("made/short.bin", meta, Some(10), &b"only5"[..], &());
    assert!(short.is_err(), "{short:?}");
    let tiny = stream.send_reader("made/tiny.txt", FileMeta::default(), None, &b"tiny"[..], &());
    assert_eq!(tiny.unwrap(), Delivered::Sent { bytes: 4 });
    assert!(stream.send_reader("../escape", meta, None, &b"x"[..], &()).is_err());
    drop(stream);
    drop(sender);
    server.shutdown().unwrap();
    let made = out.path().join("made");
    assert_eq!(fs::metadata(&made).unwrap().permissions().mode() & 0o777, 0o750);
    for i in 0..3 {
        let path = made.join(format!("f{i}.bin"));
        assert!(fs::read(&path).unwrap() == data);
        let stat = fs::metadata(&path).unwrap();
        assert_eq!((stat.mode() & 0o777, stat.mtime(), stat.mtime_nsec()), (0o640, 1_500_000_000, 42));
    }
    assert!(!made.join("short.bin").exists());
    assert_eq!(fs::read(made.join("tiny.txt")).unwrap(), b"tiny");
    assert!(!out.path().parent().unwrap().join("escape").exists());
}

/// A sender whose server has stopped says so, not which lock file is missing.
#[test]
fn a_send_after_the_server_stopped_says_the_server_stopped() {
    let out = tempfile::tempdir().unwrap();
    let name = unique_name("libstopped");
    let server = Server::builder(&name).size(4 << 20).output_dir(out.path()).start().unwrap();
    let sender = Sender::connect(&name, TIMEOUT).unwrap();
    server.shutdown().unwrap();
    let err = sender.send_reader("late.txt", &b"x"[..]).unwrap_err();
    assert!(err.to_string().contains("server"), "{err}");
    assert!(!err.to_string().contains("named lock"), "{err}");
    assert!(!out.path().join("late.txt").exists());
}

/// A `Sender` kept across a restart of the server binary says its server has
/// stopped and to connect again (not that it is "shutting down", for good), and a
/// new `Sender::connect` reaches the new server.
#[test]
fn a_sender_kept_across_a_server_restart_says_to_connect_again() {
    let out = tempfile::tempdir().unwrap();
    let name = unique_name("librestart");
    let mut first = common::Server::start(&name, out.path(), &["--size", "4M"]);
    let sender = Sender::connect(&name, TIMEOUT).unwrap();
    assert_eq!(sender.send_reader("one.txt", &b"1"[..]).unwrap(), Delivered::Sent { bytes: 1 });
    first.stop("TERM");
    let _second = common::Server::start(&name, out.path(), &["--size", "4M"]);
    let err = sender.send_reader("two.txt", &b"2"[..]).unwrap_err();
    assert!(err.to_string().contains("has stopped: send again"), "{err}");
    assert!(!out.path().join("two.txt").exists());
    let again = Sender::connect(&name, TIMEOUT).unwrap();
    assert_eq!(again.send_reader("two.txt", &b"2"[..]).unwrap(), Delivered::Sent { bytes: 1 });
    assert_eq!(fs::read(out.path().join("two.txt")).unwrap(), b"2");

    // An embedded server stopped and started again in this process (its pid lives
    // on): the same, not "shutting down".
    let embedded = unique_name("librestart2");
    let first = Server::builder(&embedded).size(1 << 20).output_dir(out.path()).start().unwrap();
    let sender = Sender::connect(&embedded, TIMEOUT).unwrap();
    first.shutdown().unwrap();
    let second = Server::builder(&embedded).size(1 << 20).output_dir(out.path()).start().unwrap();
    let err = sender.send_reader("three.txt", &b"3"[..]).unwrap_err();
    assert!(err.to_string().contains("has stopped: send again"), "{err}");
    drop(sender);
    second.shutdown().unwrap();
}

/// While a `send_path` of this process sends folder `d` whole (staged, published
/// by its commit), a `send_reader("d/...")` of the same process is refused: the
/// server would put it in the hidden copy, to be published (or dropped) with that
/// commit, and Ok would not mean published.
#[test]
fn a_name_beneath_a_folder_being_sent_whole_is_refused_meanwhile() {
    let out = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let folder = src.path().join("d");
    fs::create_dir(&folder).unwrap();
    for i in 0..3000 {
        fs::write(folder.join(format!("f{i:04}")), pattern(4096, i)).unwrap();
    }
    let name = unique_name("libwhole");
    let server = Server::builder(&name).size(1 << 20).output_dir(out.path()).start().unwrap();
    let sender = Sender::connect(&name, TIMEOUT).unwrap();
    let staged = || {
        fs::read_dir(out.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".stage"))
    };
    std::thread::scope(|scope| {
        let whole = scope.spawn(|| sender.send_path(&folder));
        wait_until("the folder staged", || staged() || whole.is_finished());
        if whole.is_finished() {
            eprintln!("note: the folder was sent before it could be probed");
        } else {
            // Through the same Sender, or another of the same process.
            let other = Sender::connect(&name, TIMEOUT).unwrap();
            for probe in [&sender, &other] {
                let err = probe.send_reader("d/probe.txt", &b"late"[..]).unwrap_err();
                assert_eq!(err.exit_status(), ExitStatus::Usage, "{err}");
                assert!(err.to_string().contains("being sent whole"), "{err}");
            }
        }
        let results = whole.join().unwrap().unwrap();
        assert!(results.iter().all(|(_, result)| result.is_ok()), "the folder itself was sent");
    });
    assert!(!out.path().join("d/probe.txt").exists());
    assert_eq!(fs::read_dir(out.path().join("d")).unwrap().count(), 3000);
    // Once that send has returned, the name is free.
    assert!(sender.send_reader("d/probe.txt", &b"late"[..]).is_ok());
    drop(sender);
    server.shutdown().unwrap();
}

/// The other way round: while a `send_reader("d/...")` of this process is under
/// way, a `send_path` of folder `d` (which it would send whole, staged) is refused
/// with everything beneath it: its files could otherwise land in place while `d`
/// is staged, and its commit find the name taken. Once the reader's send has
/// returned, the folder goes.
#[test]
fn a_folder_is_not_sent_whole_while_another_send_writes_beneath_it() {
    /// A reader that says when it is first read (the send's claim is taken by
    /// then), then gives one byte once the test lets it go.
    struct Gate {
        reading: std::sync::mpsc::Sender<()>,
        go: std::sync::mpsc::Receiver<()>,
        done: bool,
    }
    impl std::io::Read for Gate {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.done {
                return Ok(0);
            }
            let _ = self.reading.send(());
            let _ = self.go.recv(); // until the test lets it go (or drops the sender)
            self.done = true;
            buf[0] = b'x';
            Ok(1)
        }
    }
    let out = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let folder = src.path().join("d");
    fs::create_dir(&folder).unwrap();
    fs::write(folder.join("a.txt"), b"a").unwrap();
    let name = unique_name("libshared");
    let server = Server::builder(&name).size(1 << 20).output_dir(out.path()).start().unwrap();
    let sender = Sender::connect(&name, TIMEOUT).unwrap();
    let (go_tx, go) = std::sync::mpsc::channel();
    let (reading, started) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let go_tx = go_tx; // moved in: a failed assertion drops it and frees the reader
        let reader = scope.spawn(|| sender.send_reader("d/late.txt", Gate { reading, go, done: false }));
        started.recv().expect("the reader is read");
        // Through the same Sender, or another of the same process.
        let other = Sender::connect(&name, TIMEOUT).unwrap();
        for probe in [&sender, &other] {
            let results = probe.send_path(&folder).unwrap();
            assert_eq!(results.len(), 2, "{results:?}");
            for (item, result) in &results {
                let err = result.as_ref().expect_err(&item.name);
                assert_eq!(err.exit_status(), ExitStatus::Usage, "{err}");
                assert!(err.to_string().contains("being sent by another send"), "{err}");
            }
        }
        assert!(!out.path().join("d/a.txt").exists(), "nothing of the refused folder arrived");
        go_tx.send(()).unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), Delivered::Sent { bytes: 1 });
    });
    assert_eq!(fs::read(out.path().join("d/late.txt")).unwrap(), b"x");
    // Once the reader's send has returned, the folder goes (into the existing d).
    let results = sender.send_path(&folder).unwrap();
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    assert_eq!(fs::read(out.path().join("d/a.txt")).unwrap(), b"a");
    drop(sender);
    server.shutdown().unwrap();
}

/// Threads sharing a `Sender` past the server's `--max-streams-per-client` wait for
/// a stream of theirs to close instead of having their files refused.
#[test]
fn threads_past_the_stream_quota_wait_for_a_stream() {
    struct Slow(Option<Vec<u8>>);
    impl std::io::Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some(data) = self.0.take() else { return Ok(0) };
            std::thread::sleep(Duration::from_millis(400));
            buf[..data.len()].copy_from_slice(&data);
            Ok(data.len())
        }
    }
    let out = tempfile::tempdir().unwrap();
    let name = unique_name("libquota");
    let server = Server::builder(&name)
        .size(4 << 20)
        .output_dir(out.path())
        .max_streams_per_client(2)
        .start()
        .unwrap();
    let sender = Sender::connect(&name, TIMEOUT).unwrap();
    let results: Vec<_> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..5)
            .map(|i| {
                let sender = &sender;
                scope.spawn(move || {
                    sender.send_reader(&format!("t{i}.txt"), Slow(Some(format!("data{i}").into_bytes())))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.as_ref().unwrap(), &Delivered::Sent { bytes: 5 }, "thread {i}");
        assert_eq!(fs::read(out.path().join(format!("t{i}.txt"))).unwrap(), format!("data{i}").as_bytes());
    }
    drop(sender);
    server.shutdown().unwrap();
}

/// While other streams of the process hold the whole quota and none closes, a
/// send waits one timeout in all, not one per file, then lets the server refuse.
#[test]
fn a_quota_held_by_other_streams_costs_one_timeout_not_one_per_file() {
    let out = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let folder = src.path().join("d");
    fs::create_dir(&folder).unwrap();
    for i in 0..8 {
        fs::write(folder.join(format!("f{i}")), pattern(100, i)).unwrap();
    }
    let name = unique_name("libheld");
    let server = Server::builder(&name)
        .size(4 << 20)
        .output_dir(out.path())
        .max_streams_per_client(2)
        .start()
        .unwrap();
    let sender = Sender::connect(&name, Duration::from_secs(1)).unwrap();
    let mut holders: Vec<_> = (0..2).map(|_| sender.stream()).collect();
    for (i, holder) in holders.iter_mut().enumerate() {
        let sent = holder.send_reader(&format!("held{i}"), Default::default(), None, &b"x"[..], &()).unwrap();
        assert_eq!(sent, Delivered::Sent { bytes: 1 });
    }
    let started = std::time::Instant::now();
    let results = sender.send_path(&folder).unwrap();
    let took = started.elapsed();
    assert!(results.iter().all(|(_, r)| r.is_err()), "{results:?}");
    // One timeout per file would be 9 s and more.
    assert!(took < Duration::from_secs(6), "took {took:?}");
    drop(holders);
    // Once the server has released them (only the record on offer is left), the
    // folder goes.
    let header = sender.connection().segment().header();
    wait_until("the held streams released", || {
        header.live_streams.load(std::sync::atomic::Ordering::Relaxed) <= 1
    });
    let results = sender.send_path(&folder).unwrap();
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    drop(sender);
    server.shutdown().unwrap();
}

/// A reader that gives a little at a time, for longer than the server's idle
/// timeout in all (a log, a terminal), keeps its stream alive while it gives; its
/// end is read once.
#[test]
fn a_reader_giving_a_little_at_a_time_is_not_dropped_as_idle() {
    /// Lines left, and reads asked for after the end.
    struct Trickle(u32, u32);
    impl std::io::Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                self.1 += 1;
                return Ok(0);
            }
            self.0 -= 1;
            std::thread::sleep(Duration::from_millis(300));
            buf[..10].copy_from_slice(b"log line\n\n");
            Ok(10)
        }
    }
    let out = tempfile::tempdir().unwrap();
    let name = unique_name("libtrickle");
    let server = Server::builder(&name)
        .size(4 << 20)
        .output_dir(out.path())
        .idle_timeout(Duration::from_secs(1))
        .start()
        .unwrap();
    let sender = Sender::connect(&name, TIMEOUT).unwrap();
    let mut trickle = Trickle(10, 0);
    assert_eq!(sender.send_reader("logs/today.txt", &mut trickle).unwrap(), Delivered::Sent { bytes: 100 });
    // Its end is read once (a terminal's user presses Ctrl-D once).
    assert_eq!(trickle.1, 1);
    assert_eq!(fs::read(out.path().join("logs/today.txt")).unwrap(), b"log line\n\n".repeat(10));
    drop(sender);
    server.shutdown().unwrap();
}

/// A sink of the program's own that panics fails that file, not the server's
/// worker: the sender is answered at once, and the next file (on the same worker)
/// is published.
#[test]
fn a_sink_that_panics_fails_its_file_and_the_server_goes_on() {
    let name = unique_name("libpanic");
    let sink = MemorySink::default();
    let server = Server::builder(&name).size(2 << 20).sink(sink.clone()).workers(1).start().unwrap();
    let sender = Sender::connect(&name, Duration::from_secs(5)).unwrap();
    let started = std::time::Instant::now();
    let err = sender.send_reader("bug.panic", &b"boom"[..]).unwrap_err();
    assert!(err.to_string().contains("internal error on the server: a sink with a bug"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered at once, not at a timeout");
    assert_eq!(sender.send_reader("fine.txt", &b"ok"[..]).unwrap(), Delivered::Sent { bytes: 2 });
    drop(sender);
    server.shutdown().unwrap();
    assert_eq!(sink.inner.files().lock().unwrap()["fine.txt"], b"ok");
}

/// A stream dropped for idleness between files is reported as an idle stream, not
/// under the name of the last file it sent (which was published).
#[test]
fn a_stream_dropped_between_files_is_not_reported_as_its_last_file() {
    let out = tempfile::tempdir().unwrap();
    let name = unique_name("libidle");
    let heard = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::clone(&heard);
    let server = Server::builder(&name)
        .size(4 << 20)
        .output_dir(out.path())
        .idle_timeout(Duration::from_secs(1))
        .on_event(move |event| events.lock().unwrap().push(event.clone()))
        .start()
        .unwrap();
    let sender = Sender::connect(&name, TIMEOUT).unwrap();
    let mut stream = sender.stream();
    let meta = sharedxfer::protocol::FileMeta::default();
    assert!(stream.send_reader("last.txt", meta, Some(4), &b"last"[..], &()).is_ok());
    let failed = || {
        heard.lock().unwrap().iter().find_map(|event| match event {
            ServerEvent::Failed { name, .. } => Some(name.clone()),
            _ => None,
        })
    };
    wait_until("the idle stream dropped", || failed().is_some());
    let label = failed().unwrap();
    assert!(label.starts_with("stream ") && label.contains("(idle, client pid "), "{label}");
    assert_eq!(fs::read(out.path().join("last.txt")).unwrap(), b"last");
    drop(stream);
    drop(sender);
    server.shutdown().unwrap();
}

/// A reader shorter than the size it was sent with fails the file, saying so (not
/// that a "source file" changed: there is none).
#[test]
fn a_reader_shorter_than_its_size_fails_saying_so() {
    let out = tempfile::tempdir().unwrap();
    let name = unique_name("libshort");
    let server = Server::builder(&name).size(4 << 20).output_dir(out.path()).start().unwrap();
    let sender = Sender::connect(&name, TIMEOUT).unwrap();
    let mut stream = sender.stream();
    let meta = sharedxfer::protocol::FileMeta::default();
    let err = stream.send_reader("short.txt", meta, Some(10), &b"ok"[..], &()).unwrap_err();
    assert!(err.to_string().contains("gave 2 bytes, fewer than the 10"), "{err}");
    assert!(!out.path().join("short.txt").exists());
    drop(stream);
    drop(sender);
    server.shutdown().unwrap();
}

/// A name reserved for the server's temporary files is refused by the library as a
/// usage error before anything is sent, as the command line refuses it.
#[test]
fn a_reserved_name_is_a_usage_error_in_the_library_too() {
    let out = tempfile::tempdir().unwrap();
    let name = unique_name("libreserved");
    let _server = Server::builder(&name).size(4 << 20).output_dir(out.path()).start().unwrap();
    let sender = Sender::connect(&name, TIMEOUT).unwrap();
    for bad in [".sharedxfer-x", "sub/.sharedxfer-y"] {
        let err = sender.send_reader(bad, &b"x"[..]).unwrap_err();
        assert_eq!(err.exit_status(), ExitStatus::Usage, "{bad}: {err}");
        assert!(err.to_string().contains("reserved"), "{err}");
        let err = sender.stream().make_dir(bad, 0o755).unwrap_err();
        assert_eq!(err.exit_status(), ExitStatus::Usage, "{bad}: {err}");
    }
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0, "nothing was made");
}
