//! Hostile and corrupted segment contents: a test process plays a misbehaving client
//! through the library (its own record, mailbox, ring slots and buffers) while real
//! clients transfer beside it. The server must fail only the hostile stream, never
//! write outside OUTPUT_DIR, publish nothing for it, and keep serving everyone else.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use named_lock::NamedLock;
use sharedxfer::batch::{self, EntryKind, Outcome};
use sharedxfer::checksum::of as xxh3_64;
use sharedxfer::handout::{self, load_guid};
use sharedxfer::lock::{acquire, LockDir, HANDOUT_LOCK};
use sharedxfer::protocol::{self, ClientCommand, ErrorCode, FileMeta, ServerReply};
use sharedxfer::protocol::{S2C_DONE, S2C_ERROR, S2C_OPENED, S2C_PONG, S2C_SKIPPED};
use sharedxfer::ring::SlotState;
use sharedxfer::segment::{Mailbox, Record, Segment, Slot, HANDOUT_OFFERED, HANDOUT_TAKEN, MAX_SLOTS};
use sharedxfer::segment::{PHASE_WAITING_FOR_SPACE, RECORD_DROPPED, RECORD_FREE, TEXT_CAPACITY};
use uuid::Uuid;

use common::*;

/// How long a test gives the server to notice something (idle drops and the like).
const NOTICE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------
// The hostile client: the library's own building blocks, used without its manners.
// ---------------------------------------------------------------------------------

/// A connection made the way a client makes one (segment, lock folder, handout lock).
struct Rogue {
    segment: Segment,
    locks: LockDir,
    handout_lock: NamedLock,
}

impl Rogue {
    fn connect(name: &str) -> Rogue {
        let segment = Segment::open(name, DEADLINE).unwrap();
        let locks = LockDir::open(name).unwrap();
        let handout_lock = locks.lock(HANDOUT_LOCK).unwrap();
        Rogue { segment, locks, handout_lock }
    }

    /// Takes the GUID on offer, exactly as `Session::open` does.
    fn take(&self) -> RogueStream<'_> {
        let deadline = Instant::now() + DEADLINE;
        let ticket = handout::take::<std::io::Error>(&self.segment, &self.handout_lock, deadline, || Ok(()))
            .unwrap()
            .expect("a GUID on offer within the deadline");
        let record = self.segment.record(ticket.record_offset).unwrap();
        assert_eq!(load_guid(&record.guid), ticket.guid, "the handout and the record disagree");
        let lock = self.locks.stream_lock(ticket.guid).unwrap();
        let seen = record.s2c.seq.load(Ordering::Acquire);
        RogueStream {
            segment: &self.segment,
            guid: ticket.guid,
            offset: ticket.record_offset,
            record,
            lock,
            number: 0,
            published: 0,
            seen,
        }
    }

    fn heartbeat(&self) -> u64 {
        self.segment.header().heartbeat.load(Ordering::Relaxed)
    }

    /// Waits until the server's main loop has gone round `beats` more times: an
    /// observable window in which a server that meant to act on something has had
    /// every chance to (never a correctness condition on its own).
    fn wait_beats(&self, beats: u64) {
        let start = self.heartbeat();
        wait_until("server heartbeats", || self.heartbeat() >= start + beats);
    }
}

/// A mailbox outside the segment, to see what `protocol::post` writes.
fn scratch_mailbox() -> Box<Mailbox> {
    Box::default()
}

/// One stream of the rogue: its record, its lock, its private counters.
struct RogueStream<'a> {
    segment: &'a Segment,
    guid: Uuid,
    offset: u64,
    record: &'a Record,
    lock: NamedLock,
    /// Commands posted so far (the writer's private counter).
    number: u32,
    /// The mailbox `seq` of the last command posted, as the protocol published it.
    published: u32,
    seen: u32,
}

impl RogueStream<'_> {
    /// Writes every field of a client command exactly as given (any code, any
    /// text_len, any bytes) without publishing it.
    fn write_fields(&self, code: u32, args: [u64; 4], text: &[u8], text_len: u32) {
        let mailbox = &self.record.c2s;
        mailbox.code.store(code, Ordering::Relaxed);
        for (slot, value) in mailbox.args.iter().zip(args) {
            slot.store(value, Ordering::Relaxed);
        }
        let mut bytes = [0u8; TEXT_CAPACITY];
        let n = text.len().min(TEXT_CAPACITY);
        bytes[..n].copy_from_slice(&text[..n]);
        for (slot, chunk) in mailbox.text.iter().zip(bytes.chunks_exact(8)) {
            slot.store(u64::from_le_bytes(chunk.try_into().unwrap()), Ordering::Relaxed);
        }
        mailbox.text_len.store(text_len, Ordering::Relaxed);
    }

    /// Posts a command with every field exactly as given (any code, any text_len,
    /// any bytes). A well-formed one goes through `protocol::post`; one whose
    /// `text_len` lies is written field by field and then published with the `seq`
    /// value `protocol::post` gives that message number (learned on a scratch
    /// mailbox), so the test does not depend on how `seq` is encoded.
    fn post_raw(&mut self, code: u32, args: [u64; 4], text: &[u8], text_len: u32) {
        self.number = self.number.wrapping_add(1);
        let mailbox = &self.record.c2s;
        {
            let _guard = acquire(&self.lock).unwrap();
            if text_len as usize == text.len() && text.len() <= TEXT_CAPACITY {
                protocol::post(mailbox, self.number, code, args, text);
            } else {
                let scratch = scratch_mailbox();
                protocol::post(&scratch, self.number, code, args, text);
                let published = scratch.seq.load(Ordering::Relaxed);
                self.write_fields(code, args, text, text_len);
                mailbox.seq.store(published, Ordering::Release);
            }
            self.published = mailbox.seq.load(Ordering::Relaxed);
        }
        self.ring();
    }

    /// Rings the doorbell of the server worker that serves this record, as a client
    /// does after posting anything.
    fn ring(&self) {
        self.segment.doorbell(self.record).notify();
    }

    fn post(&mut self, command: &ClientCommand) {
        let (code, args, text) = command.encode();
        self.post_raw(code, args, &text, text.len() as u32);
    }

    fn try_reply(&mut self) -> Option<ServerReply> {
        protocol::pending(&self.record.s2c, self.seen)?;
        let raw = protocol::take(&self.record.s2c)?;
        self.seen = raw.seq;
        Some(ServerReply::decode(&raw).unwrap_or_else(|e| panic!("undecodable reply: {e}")))
    }

    fn reply_within(&mut self, limit: Duration) -> ServerReply {
        let start = Instant::now();
        loop {
            if let Some(reply) = self.try_reply() {
                return reply;
            }
            assert!(start.elapsed() < limit, "no reply for stream {} within {limit:?}", self.guid.simple());
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn reply(&mut self) -> ServerReply {
        self.reply_within(DEADLINE)
    }

    fn expect_error(&mut self) -> (ErrorCode, String) {
        match self.reply() {
            ServerReply::Error { code, message } => (code, message),
            other => panic!("stream {}: expected an error, got {other:?}", self.guid.simple()),
        }
    }

    fn ping(&mut self, seq: u64) {
        self.post(&ClientCommand::Ping { seq, sent_nanos: 7 });
        assert_eq!(self.reply(), ServerReply::Pong { seq, sent_nanos: 7 }, "{}", self.label());
    }

    /// Opens a file; returns (slots, chunk) from the Opened reply.
    fn open(&mut self, name: &str, size: u64) -> (u32, u64) {
        self.post(&ClientCommand::Open { name: name.into(), size, meta: FileMeta::default() });
        match self.reply() {
            ServerReply::Opened { slots, chunk } => (slots, chunk),
            other => panic!("opening {name}: expected Opened, got {other:?}"),
        }
    }

    fn slot(&self, index: usize) -> &Slot {
        &self.record.slots[index]
    }

    /// Copies `data` into slot `index`'s buffer at the offset the record names now.
    fn write_buffer(&self, index: usize, data: &[u8]) {
        let slot = self.slot(index);
        wait_until("our slot to be empty", || slot.state.load(Ordering::Acquire) == SlotState::Empty as u32);
        let offset = slot.offset.load(Ordering::Relaxed);
        let capacity = slot.capacity.load(Ordering::Relaxed);
        let buffer = self.segment.buffer(offset, capacity).unwrap();
        assert_eq!(buffer.copy_from(data), data.len(), "test data larger than the slot");
    }

    /// Hands slot `index` to the server claiming `len` bytes.
    fn hand_over(&self, index: usize, len: u64) {
        let slot = self.slot(index);
        slot.len.store(len, Ordering::Relaxed);
        slot.state.store(SlotState::Full as u32, Ordering::Release);
        self.ring();
    }

    fn send_chunk(&self, index: usize, data: &[u8], len: u64) {
        self.write_buffer(index, data);
        self.hand_over(index, len);
    }

    fn close(mut self) {
        self.post(&ClientCommand::Close);
    }

    /// Whether the server is receiving a file on this stream (it sets the phase
    /// when it creates the file and clears it when the file is published or dropped).
    fn receiving(&self) -> bool {
        self.record.phase.load(Ordering::Relaxed) == sharedxfer::segment::PHASE_RECEIVING
    }

    fn label(&self) -> String {
        format!("stream {}", self.guid.simple())
    }
}

// ---------------------------------------------------------------------------------
// Real transfers beside the hostile streams, and the "nothing escaped" checks.
// ---------------------------------------------------------------------------------

/// Rounds of real transfers (the real client binary) that keep going until the test
/// says stop, then run one more round; every file is checked byte for byte.
struct Traffic {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<(PathBuf, String)>>,
}

fn start_traffic(server: &Server, src: &Path) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let (name, src, flag) = (server.name.clone(), src.to_path_buf(), Arc::clone(&stop));
    let handle = std::thread::spawn(move || {
        let mut sent = Vec::new();
        for round in 0usize.. {
            let last = flag.load(Ordering::SeqCst);
            let dir = src.join(format!("round{round}"));
            fs::create_dir_all(&dir).unwrap();
            let files = [
                write_file(&dir, &format!("r{round}-a.bin"), (1 << 20) + round, round as u64),
                write_file(&dir, &format!("r{round}-b.bin"), 700_000, 1000 + round as u64),
                write_file(&dir, &format!("r{round}-c.bin"), 65_537, 2000 + round as u64),
            ];
            let refs: Vec<_> = files.iter().map(|p| p.as_path()).collect();
            let config = write_config(&dir, &refs);
            let mut command = Command::new(CLIENT);
            command.args(["--name", &name, "--config"]).arg(&config).args(["1", "2", "3"]);
            let output = run(command);
            assert!(
                output.status.success(),
                "a real transfer beside hostile streams failed: {}",
                show(&output)
            );
            for file in files {
                let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
                sent.push((file, file_name));
            }
            if last && round >= 1 {
                break;
            }
        }
        sent
    });
    Traffic { stop, handle }
}

impl Traffic {
    /// Stops the rounds and checks every real file arrived whole; returns their names.
    fn finish(self, out: &Path) -> BTreeSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        let sent = match self.handle.join() {
            Ok(sent) => sent,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        for (source, name) in &sent {
            let got = fs::read(out.join(name)).unwrap_or_else(|e| panic!("{name} was not published: {e}"));
            assert!(got == fs::read(source).unwrap(), "{name} differs from its source");
        }
        sent.into_iter().map(|(_, name)| name).collect()
    }
}

/// A temp tree `root` with sources in `root/src` and the output folder two levels
/// down (`root/a/out`), so "../escape" and "../../escape" would land inside `root`.
struct Tree {
    root: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let tree = Tree { root: tempfile::tempdir().unwrap() };
        fs::create_dir_all(tree.src()).unwrap();
        fs::create_dir_all(tree.out()).unwrap();
        tree
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn src(&self) -> PathBuf {
        self.root().join("src")
    }

    fn out(&self) -> PathBuf {
        self.root().join("a").join("out")
    }

    /// Everything the server wrote is inside OUTPUT_DIR and is exactly `published`;
    /// nothing named like an escape attempt exists anywhere in the tree.
    fn assert_only_published(&self, published: &BTreeSet<String>) {
        let src = self.src();
        let out = self.out();
        let mut in_out = BTreeSet::new();
        for file in files_under(self.root()) {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.contains("escape"), "an escape attempt created {}", file.display());
            if file.starts_with(&src) {
                continue;
            }
            assert_eq!(
                file.parent(),
                Some(out.as_path()),
                "the server wrote outside OUTPUT_DIR: {}",
                file.display()
            );
            in_out.insert(name);
        }
        assert_eq!(&in_out, published, "OUTPUT_DIR holds other files than the real transfers'");
    }
}

impl Tree {
    /// As `assert_only_published`, for names that may lie in folders beneath
    /// OUTPUT_DIR: `published` holds paths relative to it ('/'-separated).
    fn assert_only_published_paths(&self, published: &BTreeSet<String>) {
        let (src, out) = (self.src(), self.out());
        let mut in_out = BTreeSet::new();
        for file in files_under(self.root()) {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.contains("escape"), "an escape attempt created {}", file.display());
            if file.starts_with(&src) {
                continue;
            }
            let rel = file
                .strip_prefix(&out)
                .unwrap_or_else(|_| panic!("the server wrote outside OUTPUT_DIR: {}", file.display()));
            in_out.insert(rel.to_string_lossy().into_owned());
        }
        assert_eq!(&in_out, published, "OUTPUT_DIR holds other files than those published");
    }
}

fn assert_alive(server: &Server) {
    assert!(!has_exited(server.pid()), "the server died\nstderr: {:#?}", server.stderr());
}

// ---------------------------------------------------------------------------------
// Malformed commands.
// ---------------------------------------------------------------------------------

/// One malformed command and the words its refusal must contain.
struct BadCommand {
    what: String,
    code: u32,
    args: [u64; 4],
    text: Vec<u8>,
    text_len: u32,
    expect: String,
}

fn bad(what: &str, code: u32, text: &[u8], text_len: u32, expect: &str) -> BadCommand {
    let what = what.to_owned();
    BadCommand { what, code, args: [10, 0, 0, 0], text: text.to_vec(), text_len, expect: expect.to_owned() }
}

fn bad_open(what: &str, name: &[u8], expect: &str) -> BadCommand {
    bad(what, protocol::C2S_OPEN, name, name.len() as u32, expect)
}

fn malformed_commands(root: &Path) -> Vec<BadCommand> {
    let mut cases = Vec::new();
    for code in [0, 1, 0x100, 0x10a, 0x1ff, 0x301, 0xdead_beef, u32::MAX] {
        cases.push(bad(
            &format!("unknown code {code:#x}"),
            code,
            b"escape",
            6,
            "unknown client command code",
        ));
    }
    for code in [S2C_OPENED, S2C_DONE, S2C_ERROR, S2C_PONG, protocol::S2C_SKIPPED] {
        let expect = format!("unknown client command code {code:#x}");
        cases.push(bad(&format!("server code {code:#x}"), code, b"escape", 6, &expect));
    }
    let absolute = format!("{}/abs-escape", root.display());
    cases.extend([
        bad_open("parent escape", b"../escape", "'..' is not a file"),
        bad_open("double parent escape", b"../../escape", "'..' is not a file"),
        bad_open("parent escape inside", b"sub/../../escape", "'..' is not a file"),
        bad_open("absolute path", absolute.as_bytes(), "is absolute"),
        bad_open("absolute /etc path", b"/etc/x-escape", "is absolute"),
        bad_open("doubled slash", b"sub//escape", "empty component"),
        bad_open("trailing slash", b"escape/", "empty component"),
        bad_open("path past PATH_MAX", &[b'e'; 4097], "exceeds the 4096-byte field"),
        bad_open("empty name", b"", "file name is empty"),
        bad_open("dot", b".", "is not a file"),
        bad_open("dot dot", b"..", "is not a file"),
        bad_open("300-byte name", &[b'e'; 300], "300 bytes long, the limit is 255"),
        bad_open("256-byte name", &[b'e'; 256], "256 bytes long"),
        bad_open("NUL in name", b"esc\0ape", "contains '/' or NUL"),
        bad_open("trailing NUL", b"escape\0", "contains '/' or NUL"),
        bad_open("invalid UTF-8", &[0xff, 0xfe, b'e', b's', b'c'], "not valid UTF-8"),
        bad_open("truncated UTF-8", "escapé".as_bytes().split_last().unwrap().1, "not valid UTF-8"),
        bad("text_len past the field", protocol::C2S_OPEN, b"escape", TEXT_CAPACITY as u32 + 1, "exceeds"),
        bad("text_len 5000", protocol::C2S_OPEN, b"escape", 5000, "exceeds the 4096-byte field"),
        bad("text_len u32::MAX", protocol::C2S_OPEN, b"escape", u32::MAX, "exceeds"),
        bad("abort with invalid UTF-8", protocol::C2S_ABORT, &[0xc3, 0x28], 2, "not valid UTF-8"),
        bad("finish before open", protocol::C2S_FINISH, b"", 0, "not valid in this state"),
        bad("put to a parent folder", protocol::C2S_PUT, b"../escape", 9, "'..' is not a file"),
        bad(
            "put with an absolute name",
            protocol::C2S_PUT,
            absolute.as_bytes(),
            absolute.len() as u32,
            "is absolute",
        ),
        bad(
            "put with text_len past the field",
            protocol::C2S_PUT,
            b"escape",
            TEXT_CAPACITY as u32 + 1,
            "exceeds",
        ),
        bad("put without a ring", protocol::C2S_PUT, b"noring-escape", 13, "does not fit the stream's ring"),
    ]);
    cases
}

#[test]
fn malformed_commands_fail_only_their_stream_while_real_transfers_complete() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("badcmd"), &tree.out(), &["-v"]);
    let rogue = Rogue::connect(&server.name);
    let traffic = start_traffic(&server, &tree.src());
    let mut guids = Vec::new();
    for case in malformed_commands(tree.root()) {
        let mut stream = rogue.take();
        stream.post_raw(case.code, case.args, &case.text, case.text_len);
        let (code, message) = stream.expect_error();
        assert_eq!(code, ErrorCode::BadRequest, "{}: {message}", case.what);
        assert!(message.contains(&case.expect), "{}: the refusal says {message:?}", case.what);
        let label = stream.label();
        let line = server.wait_for_line(&format!("the failure of {}", case.what), |l| {
            l.starts_with(&format!("failed {label}: ")) && l.contains(&case.expect)
        });
        assert!(!line.contains("done"), "{line}");
        assert!(!stream.receiving(), "{}: the server holds a file for it", case.what);
        // Only that command failed: the stream still answers and can be closed.
        stream.ping(1);
        guids.push(stream.guid);
        stream.close();
    }
    let published = traffic.finish(&tree.out());
    for guid in &guids {
        assert_eq!(server.lines_with(&guid.simple().to_string()).len(), 1, "one line per hostile stream");
    }
    // The only files published are the real transfers'.
    for line in server.stdout().iter().filter(|l| l.starts_with("done ")) {
        let name = line.split(' ').nth(1).unwrap_or_default();
        assert!(published.contains(name), "published for a hostile stream: {line}");
    }
    assert!(!Path::new("/etc/x-escape").exists(), "an absolute name was honoured");
    wait_until("hostile streams' lock files removed", || server.stream_locks().len() <= 1);
    assert!(server.temp_files().is_empty(), "temporary files left: {:?}", server.temp_files());
    tree.assert_only_published(&published);
    assert_alive(&server);
}

// ---------------------------------------------------------------------------------
// Hostile data: sizes, chunk lengths, checksums.
// ---------------------------------------------------------------------------------

/// Checks a failed data stream: the refusal, the server's line, no temporary file,
/// nothing published; then the stream still answers and is closed.
fn assert_failed(server: &Server, stream: RogueStream<'_>, name: &str, code: ErrorCode, expect: &str) {
    assert_failed_as(server, stream, name, name, code, expect);
}

/// As `assert_failed`, for failures the server reports under `label` (a stream that
/// never got as far as naming its file is reported as "stream <guid>").
fn assert_failed_as(
    server: &Server,
    mut stream: RogueStream<'_>,
    label: &str,
    name: &str,
    code: ErrorCode,
    expect: &str,
) {
    let (got, message) = stream.expect_error();
    assert_eq!(got, code, "{name}: {message}");
    assert!(message.contains(expect), "{name}: the refusal says {message:?}, expected {expect:?}");
    server.wait_for_line(&format!("the failure of {name}"), |l| {
        l.starts_with(&format!("failed {label}: ")) && l.contains(expect)
    });
    assert!(!stream.receiving(), "{name}: the file in progress was kept");
    assert!(!server.out.join(name).exists(), "{name} was published");
    stream.ping(9);
    stream.close();
}

/// A stream that sent `name` (one chunk) properly, so it keeps its ring for a Put.
fn with_ring<'a>(rogue: &'a Rogue, name: &str, data: &[u8]) -> RogueStream<'a> {
    let mut stream = rogue.take();
    stream.open(name, data.len() as u64);
    stream.send_chunk(0, data, data.len() as u64);
    stream.post(&ClientCommand::Finish { size: data.len() as u64, checksum: xxh3_64(data) });
    assert_eq!(stream.reply(), ServerReply::Done { bytes: data.len() as u64 }, "{name}");
    stream
}

#[test]
fn hostile_sizes_lengths_and_checksums_fail_only_their_stream() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("baddata"), &tree.out(), &[]);
    let rogue = Rogue::connect(&server.name);
    let traffic = start_traffic(&server, &tree.src());
    let data = pattern(1 << 20, 42);

    // A size no file has: the server opens a ring (or waits for space) but never
    // believes the stream complete.
    let mut s = rogue.take();
    let (slots, chunk) = s.open("huge.bin", u64::MAX);
    assert!((1..=MAX_SLOTS as u32).contains(&slots) && chunk > 0, "Opened {slots} x {chunk}");
    assert!(s.receiving(), "huge.bin has a file in progress while open");
    s.send_chunk(0, &data[..4096], 4096);
    s.post(&ClientCommand::Finish { size: u64::MAX, checksum: xxh3_64(&data[..4096]) });
    assert_failed(
        &server,
        s,
        "huge.bin",
        ErrorCode::Checksum,
        "size mismatch: announced 18446744073709551615",
    );

    // Chunk lengths the slot cannot hold, zero, or past the announced size.
    let mut s = rogue.take();
    let (_, chunk) = s.open("overcap.bin", 1 << 20);
    s.send_chunk(0, &data[..chunk as usize], chunk + 1);
    assert_failed(
        &server,
        s,
        "overcap.bin",
        ErrorCode::BadRequest,
        &format!("bad chunk length {}", chunk + 1),
    );

    let mut s = rogue.take();
    s.open("maxlen.bin", 1 << 20);
    s.send_chunk(0, &data[..10], u64::MAX);
    assert_failed(&server, s, "maxlen.bin", ErrorCode::BadRequest, "bad chunk length 18446744073709551615");

    let mut s = rogue.take();
    s.open("zerolen.bin", 1000);
    s.send_chunk(0, &data[..10], 0);
    assert_failed(&server, s, "zerolen.bin", ErrorCode::BadRequest, "bad chunk length 0");

    let mut s = rogue.take();
    s.open("pastsize.bin", 10);
    s.send_chunk(0, &data[..11], 11);
    assert_failed(&server, s, "pastsize.bin", ErrorCode::BadRequest, "bad chunk length 11");

    let mut s = rogue.take();
    let (slots, chunk) = s.open("secondpast.bin", 3 * (1 << 20));
    assert!(slots >= 2, "a 3 MiB file gets several slots");
    s.send_chunk(0, &data[..chunk as usize], chunk);
    s.send_chunk(1, &data[..10], 3 * (1 << 20) - chunk + 1);
    assert_failed(&server, s, "secondpast.bin", ErrorCode::BadRequest, "bad chunk length");

    // Finish that lies about the checksum or the size, or comes early.
    let mut s = rogue.take();
    s.open("badsum.bin", 1000);
    s.send_chunk(0, &data[..1000], 1000);
    s.post(&ClientCommand::Finish { size: 1000, checksum: xxh3_64(&data[..1000]) ^ 1 });
    assert_failed(&server, s, "badsum.bin", ErrorCode::Checksum, "checksum mismatch");

    let mut s = rogue.take();
    s.open("badsize.bin", 1000);
    s.send_chunk(0, &data[..1000], 1000);
    s.post(&ClientCommand::Finish { size: 999, checksum: xxh3_64(&data[..1000]) });
    assert_failed(&server, s, "badsize.bin", ErrorCode::Checksum, "announced 1000, finished with 999");

    let mut s = rogue.take();
    s.open("short.bin", 2000);
    s.send_chunk(0, &data[..1000], 1000);
    s.post(&ClientCommand::Finish { size: 2000, checksum: xxh3_64(&data[..1000]) });
    assert_failed(&server, s, "short.bin", ErrorCode::Checksum, "received 1000");

    // Commands that are well formed but not valid mid-transfer.
    let mut s = rogue.take();
    s.open("twice.bin", 1000);
    s.post(&ClientCommand::Open { name: "twice-escape".into(), size: 5, meta: FileMeta::default() });
    assert_failed(&server, s, "twice.bin", ErrorCode::BadRequest, "not valid in this state");

    let mut s = rogue.take();
    s.open("pingmid.bin", 1000);
    s.post(&ClientCommand::Ping { seq: 1, sent_nanos: 1 });
    assert_failed(&server, s, "pingmid.bin", ErrorCode::BadRequest, "not valid in this state");

    // A malformed command mid-transfer drops the transfer too.
    let mut s = rogue.take();
    s.open("garbled.bin", 1000);
    s.post_raw(0x1ff, [0; 4], b"", 0);
    assert_failed(&server, s, "garbled.bin", ErrorCode::BadRequest, "unknown client command code 0x1ff");

    // Closing mid-transfer drops the file (reported, nothing published).
    let mut s = rogue.take();
    s.open("closed.bin", 1000);
    s.send_chunk(0, &data[..500], 500);
    s.close();
    server.wait_for_line("the dropped closed.bin", |l| l.starts_with("failed closed.bin: client closed"));

    // Put: a small file in slot 0 of the ring the stream kept from its last file.
    let small = &data[..100];
    let s = with_ring(&rogue, "ring1.bin", small);
    let chunk = s.slot(0).capacity.load(Ordering::Relaxed);
    let mut s = s;
    s.post(&ClientCommand::Put {
        name: "put-big.bin".into(),
        size: chunk + 1,
        checksum: 0,
        meta: FileMeta::default(),
    });
    assert_failed_as(
        &server,
        s,
        "ring1.bin",
        "put-big.bin",
        ErrorCode::BadRequest,
        "does not fit the stream's ring",
    );

    let mut s = with_ring(&rogue, "ring2.bin", small);
    s.post(&ClientCommand::Put {
        name: "put-unfilled.bin".into(),
        size: 100,
        checksum: xxh3_64(small),
        meta: FileMeta::default(),
    });
    assert_failed(&server, s, "put-unfilled.bin", ErrorCode::Checksum, "received 0");

    let mut s = with_ring(&rogue, "ring3.bin", small);
    s.send_chunk(0, &data[..200], 200);
    s.post(&ClientCommand::Put {
        name: "put-long.bin".into(),
        size: 100,
        checksum: xxh3_64(small),
        meta: FileMeta::default(),
    });
    assert_failed(&server, s, "put-long.bin", ErrorCode::BadRequest, "bad chunk length 200");

    let mut s = with_ring(&rogue, "ring4.bin", small);
    s.send_chunk(0, small, 100);
    s.post(&ClientCommand::Put {
        name: "put-badsum.bin".into(),
        size: 100,
        checksum: xxh3_64(small) ^ 1,
        meta: FileMeta::default(),
    });
    assert_failed(&server, s, "put-badsum.bin", ErrorCode::Checksum, "checksum mismatch");

    let mut s = with_ring(&rogue, "ring5.bin", small);
    s.send_chunk(0, &data[500..600], 100);
    s.post(&ClientCommand::Put {
        name: "ring5.bin".into(),
        size: 100,
        checksum: xxh3_64(&data[500..600]),
        meta: FileMeta::default(),
    });
    let (code, message) = s.expect_error();
    assert_eq!(code, ErrorCode::Exists, "{message}");
    assert!(message.contains("already exists"), "{message}");
    assert!(!s.receiving());
    s.close();

    let mut s = with_ring(&rogue, "ring6.bin", small);
    s.open("receiving.bin", 1000);
    s.post(&ClientCommand::Put {
        name: "put-mid.bin".into(),
        size: 10,
        checksum: 0,
        meta: FileMeta::default(),
    });
    assert_failed_as(
        &server,
        s,
        "receiving.bin",
        "put-mid.bin",
        ErrorCode::BadRequest,
        "not valid in this state",
    );

    let mut published = traffic.finish(&tree.out());
    for i in 1..=6 {
        let name = format!("ring{i}.bin");
        assert_eq!(fs::read(tree.out().join(&name)).unwrap(), small, "{name} was changed");
        published.insert(name);
    }
    wait_until("hostile streams' lock files removed", || server.stream_locks().len() <= 1);
    assert!(server.temp_files().is_empty(), "temporary files left: {:?}", server.temp_files());
    tree.assert_only_published(&published);
    assert_alive(&server);
}

#[test]
fn huge_sizes_can_fill_the_segment_but_the_server_waits_and_recovers() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("hog"), &tree.out(), &["--size", "1M"]);
    let rogue = Rogue::connect(&server.name);
    // Streams announcing u64::MAX bytes, each given a ring, until one has to wait.
    let mut hogs = Vec::new();
    let waiting = loop {
        assert!(hogs.len() < 64, "the segment never ran out of buffer space");
        let mut hog = rogue.take();
        hog.post(&ClientCommand::Open {
            name: format!("hog{}.bin", hogs.len()),
            size: u64::MAX,
            meta: FileMeta::default(),
        });
        let record = hog.record;
        wait_until("a ring or a wait for space", || {
            protocol::pending(&record.s2c, hog.seen).is_some()
                || record.phase.load(Ordering::Relaxed) == PHASE_WAITING_FOR_SPACE
        });
        if record.phase.load(Ordering::Relaxed) == PHASE_WAITING_FOR_SPACE {
            break hog;
        }
        assert!(matches!(hog.reply(), ServerReply::Opened { .. }));
        hogs.push(hog);
    };
    // A real client now waits for space too (it does not fail).
    let source = write_file(&tree.src(), "patient.bin", 1 << 20, 21);
    let config = write_config(&tree.src(), &[&source]);
    let probe = Probe::open(&server.name);
    let offered = probe.record(probe.wait_offer());
    let client = Running::spawn({
        let mut c = server.client(&config);
        c.arg("1");
        c
    });
    wait_until("the real client to wait for space", || {
        offered.phase.load(Ordering::Relaxed) == PHASE_WAITING_FOR_SPACE
    });
    assert!(!client.has_exited());
    // The hogs give up: everyone gets space, the real file arrives whole.
    for hog in hogs {
        hog.close();
    }
    let output = client.finish();
    assert!(output.status.success(), "{}", show(&output));
    assert!(fs::read(tree.out().join("patient.bin")).unwrap() == fs::read(&source).unwrap());
    waiting.close();
    wait_until("every hog's temporary file removed", || server.temp_files().is_empty());
    tree.assert_only_published(&BTreeSet::from(["patient.bin".to_owned()]));
    assert_alive(&server);
}

// ---------------------------------------------------------------------------------
// Lies in the fields the server owns: it must use its private copies.
// ---------------------------------------------------------------------------------

#[test]
fn rewritten_slot_offsets_and_garbage_in_server_fields_are_ignored() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("redirect"), &tree.out(), &[]);
    let rogue = Rogue::connect(&server.name);
    let traffic = start_traffic(&server, &tree.src());
    let size = 3000usize;
    let (da, db) = (pattern(size, 1), pattern(size, 2));
    let mut a = rogue.take();
    let mut b = rogue.take();
    assert_eq!(a.open("redirect-a.bin", size as u64).0, 1);
    assert_eq!(b.open("redirect-b.bin", size as u64).0, 1);
    a.write_buffer(0, &da);
    b.write_buffer(0, &db);
    let b_buffer = b.slot(0).offset.load(Ordering::Relaxed);
    let segment_size = rogue.segment.layout().size;

    // A's slot now names B's buffer, B's names the header, both claim huge capacity.
    a.slot(0).offset.store(b_buffer, Ordering::Relaxed);
    a.slot(0).capacity.store(u64::MAX, Ordering::Relaxed);
    b.slot(0).offset.store(0, Ordering::Relaxed);
    b.slot(0).capacity.store(segment_size, Ordering::Relaxed);
    // C sends one file properly (so it keeps a ring), then Puts a second one after
    // pointing slot 0 at the header.
    let dc = pattern(size, 3);
    let c = with_ring(&rogue, "redirect-c-first.bin", &pattern(size, 4));
    c.write_buffer(0, &dc);
    c.slot(0).offset.store(0, Ordering::Relaxed);
    c.slot(0).capacity.store(u64::MAX, Ordering::Relaxed);
    let mut c = c;
    for stream in [&a, &b, &c] {
        let record = stream.record;
        // C's record stays "active" so that `--status` reads its garbage below.
        if stream.offset != c.offset {
            record.state.store(0xdead_beef, Ordering::Relaxed);
        }
        record.guid[0].store(0x0bad_0bad, Ordering::Relaxed);
        record.guid[1].store(u64::MAX, Ordering::Relaxed);
        record.client_pid.store(0x7fff_fff0, Ordering::Relaxed); // no such process
        record.nslots.store(u32::MAX, Ordering::Relaxed);
        record.doorbell.store(u32::MAX, Ordering::Relaxed); // we now ring a wrong worker
        record.file_size.store(1, Ordering::Relaxed);
        record.bytes_done.store(u64::MAX, Ordering::Relaxed);
        record.stream_id.store(u64::MAX, Ordering::Relaxed);
        record.phase.store(u32::MAX, Ordering::Relaxed);
        record.name_len.store(u32::MAX, Ordering::Relaxed);
        for (i, word) in record.name.iter().enumerate() {
            word.store(0xfffe_fdfc_0000_2f2e ^ i as u64, Ordering::Relaxed); // "../" and invalid UTF-8
        }
        for slot in &record.slots[1..] {
            slot.offset.store(segment_size - 8, Ordering::Relaxed);
            slot.capacity.store(u64::MAX, Ordering::Relaxed);
            slot.len.store(u64::MAX, Ordering::Relaxed);
            slot.state.store(SlotState::Full as u32, Ordering::Release);
        }
    }
    // Long enough for liveness checks to have run on the lying client_pid.
    rogue.wait_beats(8);
    // The read-only status view copes with the garbage too.
    for json in [false, true] {
        let text = server.status(json);
        if json {
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            let streams = parsed["streams"].as_array().unwrap_or_else(|| panic!("no streams: {text}"));
            let entry = streams.iter().find(|s| s["record_offset"] == c.offset).expect("C is listed");
            assert_eq!(entry["phase"], "unknown", "{text}");
            assert_eq!(entry["buffers"].as_array().map(Vec::len), Some(0), "bogus buffers listed: {text}");
        } else {
            assert!(text.contains("live record(s)"), "{text}");
        }
    }
    a.hand_over(0, size as u64);
    b.hand_over(0, size as u64);
    c.hand_over(0, size as u64);
    a.post(&ClientCommand::Finish { size: size as u64, checksum: xxh3_64(&da) });
    b.post(&ClientCommand::Finish { size: size as u64, checksum: xxh3_64(&db) });
    c.post(&ClientCommand::Put {
        name: "redirect-c.bin".into(),
        size: size as u64,
        checksum: xxh3_64(&dc),
        meta: FileMeta::default(),
    });
    assert_eq!(a.reply(), ServerReply::Done { bytes: size as u64 });
    assert_eq!(b.reply(), ServerReply::Done { bytes: size as u64 });
    assert_eq!(c.reply(), ServerReply::Done { bytes: size as u64 });
    assert!(fs::read(tree.out().join("redirect-a.bin")).unwrap() == da, "A's file is not A's bytes");
    assert!(fs::read(tree.out().join("redirect-b.bin")).unwrap() == db, "B's file is not B's bytes");
    assert!(fs::read(tree.out().join("redirect-c.bin")).unwrap() == dc, "C's file is not C's bytes");
    c.close();
    a.close();
    b.close();

    let mut published = traffic.finish(&tree.out());
    published.extend(
        ["redirect-a.bin", "redirect-b.bin", "redirect-c.bin", "redirect-c-first.bin"].map(String::from),
    );
    wait_until("lock files removed", || server.stream_locks().len() <= 1);
    tree.assert_only_published(&published);
    assert_alive(&server);
}

// ---------------------------------------------------------------------------------
// A command its writer never published.
// ---------------------------------------------------------------------------------

#[test]
fn a_half_written_command_is_never_acted_on() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("halfwritten"), &tree.out(), &[]);
    let rogue = Rogue::connect(&server.name);
    let mut stream = rogue.take();
    let c2s = &stream.record.c2s;
    let unpublished = |stream: &RogueStream<'_>, what: &str| {
        stream.ring();
        rogue.wait_beats(5);
        assert!(!stream.receiving(), "{what}: the server opened a file");
        assert!(server.lines_with("half.bin").is_empty(), "{what}: {:#?}", server.stdout());
        assert!(
            server.lines_with(&stream.guid.simple().to_string()).is_empty(),
            "{what}: {:#?}",
            server.stdout()
        );
        assert_eq!(stream.record.c2s.ack.load(Ordering::Relaxed), stream.published, "{what}: taken");
    };
    // Every field of an Open, but seq never touched: a peer that died mid-write.
    stream.write_fields(protocol::C2S_OPEN, [100, 0, 0, 0], b"half.bin", 8);
    unpublished(&stream, "fields without seq");
    // Publishing a Ping gets a Pong: the stream was idle, so the Open was never run.
    stream.ping(1);
    // A writer that died after marking its next message in progress (seq odd, as
    // `protocol::post` leaves it while it writes) and writing the fields.
    let in_progress = c2s.seq.load(Ordering::Relaxed).wrapping_add(1);
    assert_eq!(in_progress % 2, 1);
    c2s.seq.store(in_progress, Ordering::Relaxed);
    stream.write_fields(protocol::C2S_OPEN, [100, 0, 0, 0], b"half.bin", 8);
    unpublished(&stream, "seq left odd");
    // The next complete message is taken, and the stream is still idle.
    stream.ping(2);
    assert!(!stream.receiving());
    assert!(server.lines_with("half.bin").is_empty(), "{:#?}", server.stdout());
    assert!(!tree.out().join("half.bin").exists());
    stream.close();
    assert_alive(&server);
}

// ---------------------------------------------------------------------------------
// Idle streams: a GUID never used, a client SIGSTOPped mid-transfer.
// ---------------------------------------------------------------------------------

#[test]
fn a_guid_taken_and_never_used_is_dropped_while_other_transfers_complete() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("idleguid"), &tree.out(), &["--idle-timeout", "2"]);
    let rogue = Rogue::connect(&server.name);
    let idle = rogue.take();
    let label = idle.label();
    let lock_file = lock_dir(&server.name).join(LockDir::stream_lock_name(idle.guid));
    assert!(lock_file.exists());
    let files: Vec<_> = (0..3)
        .map(|i| write_file(&tree.src(), &format!("busy{i}.bin"), (2 << 20) + i, 300 + i as u64))
        .collect();
    let refs: Vec<_> = files.iter().map(|p| p.as_path()).collect();
    let config = write_config(&tree.src(), &refs);
    let busy = Running::spawn({
        let mut c = server.client(&config);
        c.args(["1", "2", "3"]);
        c
    });
    let line = server.wait_for_line_within("the idle stream's drop", NOTICE, |l| {
        l.starts_with(&format!("failed {label}"))
    });
    assert!(line.contains("no activity for 2 s"), "{line}");
    // The idle client (this process) still lives: its record is kept, marked dropped
    // and ignored, so nobody else can be handed a record it may still write to.
    let record = rogue.segment.record(idle.offset).unwrap();
    wait_until("the idle record marked dropped", || record.state.load(Ordering::Acquire) == RECORD_DROPPED);
    assert_eq!(record.nslots.load(Ordering::Relaxed), 0);
    assert!(lock_file.exists(), "the lock file goes with the record, once its client exits");
    let output = busy.finish();
    assert!(output.status.success(), "{}", show(&output));
    for file in &files {
        assert!(fs::read(tree.out().join(file.file_name().unwrap())).unwrap() == fs::read(file).unwrap());
    }
    let header = rogue.segment.header();
    wait_until("every record but the offer and the dropped one freed", || {
        header.live_streams.load(Ordering::Relaxed) == 2
    });
    assert_eq!(record.state.load(Ordering::Acquire), RECORD_DROPPED);
    assert!(server.temp_files().is_empty());
    assert_alive(&server);
}

/// One process taking every GUID on offer, far past `--max-streams-per-client`,
/// and never using them: the streams within its quota are kept (dropped) while it
/// lives, but those past it are freed once silent past `--idle-timeout`, so a
/// real client then gets a stream and sends.
#[test]
fn a_process_taking_every_guid_past_its_quota_holds_them_only_until_idle() {
    let tree = Tree::new();
    let server = Server::start(
        &unique_name("hoard"),
        &tree.out(),
        &["--size", "256K", "--max-streams-per-client", "2", "--idle-timeout", "1"],
    );
    let rogue = Rogue::connect(&server.name);
    let mut held = Vec::new();
    loop {
        let deadline = Instant::now() + Duration::from_millis(500);
        let taken = handout::take::<std::io::Error>(&rogue.segment, &rogue.handout_lock, deadline, || Ok(()))
            .unwrap();
        let Some(ticket) = taken else { break };
        held.push(ticket);
        assert!(held.len() < 10_000, "the handout never runs dry");
    }
    assert!(held.len() > 4, "the segment's records were all taken ({})", held.len());
    let record_of = |i: usize| rogue.segment.record(held[i].record_offset).unwrap();
    let ours = |i: usize| load_guid(&record_of(i).guid) == held[i].guid;
    // The streams past the quota go, once silent past the idle timeout.
    wait_until("the streams past the quota freed", || {
        (2..held.len()).all(|i| !ours(i) || record_of(i).state.load(Ordering::Acquire) == RECORD_FREE)
    });
    // The two within it are kept while this process lives: it may still write to them.
    for i in 0..2 {
        wait_until("a stream within the quota dropped", || {
            record_of(i).state.load(Ordering::Acquire) == RECORD_DROPPED
        });
        assert!(ours(i));
    }
    let file = write_file(&tree.src(), "honest.bin", 4096, 7);
    let config = write_config(&tree.src(), &[file.as_path()]);
    let mut honest = server.client(&config);
    honest.args(["--timeout", "20", "1"]);
    let output = honest.output().unwrap();
    assert!(output.status.success(), "{}", show(&output));
    assert_eq!(fs::read(tree.out().join("honest.bin")).unwrap(), fs::read(&file).unwrap());
    assert_alive(&server);
}

/// Freezes a client mid-transfer (`stalled.bin`, id 1) on a server started with
/// `--idle-timeout 2`, runs another client (`meanwhile.bin`, id 2) to completion
/// while it is stopped, and waits for the server to drop the stalled stream. The
/// other client takes its GUID before the stall starts. Returns the stalled client
/// (still stopped) and the config (id 3 is a small `after.bin`).
fn stall_until_dropped(server: &Server, tree: &Tree) -> (Frozen, PathBuf) {
    let big = write_file(&tree.src(), "stalled.bin", 4 << 20, 11);
    let other = write_file(&tree.src(), "meanwhile.bin", 3 << 20, 12);
    let after = write_file(&tree.src(), "after.bin", 200_000, 13);
    let config = write_config(&tree.src(), &[&big, &other, &after]);
    let stalled = Frozen::start(server, {
        let mut c = server.patient_client(&config);
        c.arg("1");
        c
    });
    assert!(!server.temp_files().is_empty(), "the stalled transfer has a file in progress");
    let stalled_record = stalled.probe.record(stalled.record);
    // The server is stopped: its offer stays put until the other client takes it.
    let offer = stalled.probe.wait_offer();
    let meanwhile = Running::spawn({
        let mut c = server.patient_client(&config);
        c.arg("2");
        c
    });
    let offer_rec = stalled.probe.record(offer);
    wait_until("the other client to post its Open", || {
        stalled.probe.handout_state() == HANDOUT_TAKEN && protocol::pending(&offer_rec.c2s, 0).is_some()
    });
    stalled.probe.freeze_at_rest(stalled.client.pid(), Some(stalled.record), || true);
    thaw(server.pid());

    let line = server
        .wait_for_line_within("the stalled stream's drop", NOTICE, |l| l.starts_with("failed stalled.bin"));
    assert!(line.contains("no activity for 2 s"), "{line}");
    wait_until("the stalled stream's file dropped", || {
        stalled_record.phase.load(Ordering::Relaxed) != sharedxfer::segment::PHASE_RECEIVING
    });
    let output = meanwhile.finish();
    assert!(output.status.success(), "{}", show(&output));
    assert!(fs::read(tree.out().join("meanwhile.bin")).unwrap() == fs::read(&other).unwrap());
    (stalled, config)
}

#[test]
fn a_stopped_client_is_dropped_while_others_transfer_and_fails_once_continued() {
    let tree = Tree::new();
    let server =
        Server::start(&unique_name("idlestop"), &tree.out(), &["--size", "1M", "--idle-timeout", "2"]);
    let (stalled, _) = stall_until_dropped(&server, &tree);
    let lock_file = lock_dir(&server.name).join(LockDir::stream_lock_name(stalled.guid));
    thaw(stalled.client.pid());
    let Frozen { client, probe, .. } = stalled;
    let output = client.finish();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("stream 1: failed: "), "{}", show(&output));
    assert!(!tree.out().join("stalled.bin").exists(), "a stalled, dropped file was published");
    assert!(server.temp_files().is_empty(), "{:?}", server.temp_files());
    // Once the dropped client has exited, its record and lock file go too.
    let header = probe.segment.header();
    wait_until("the dropped record freed", || header.live_streams.load(Ordering::Relaxed) == 1);
    wait_until("the dropped stream's lock file removed", || !lock_file.exists());
    assert_alive(&server);
}

#[test]
fn a_client_resumed_after_its_drop_reports_it_and_harms_no_one() {
    let tree = Tree::new();
    let server =
        Server::start(&unique_name("idleresume"), &tree.out(), &["--size", "1M", "--idle-timeout", "2"]);
    let (stalled, config) = stall_until_dropped(&server, &tree);
    let dropped = stalled.probe.record(stalled.record);
    assert_eq!(dropped.state.load(Ordering::Acquire), RECORD_DROPPED);
    // The client is stopped, so it is not inside a read into its buffers: they are
    // reclaimed at once (only the 2 KiB record waits for the client to exit).
    wait_until("the stopped client's buffers reclaimed", || dropped.nslots.load(Ordering::Relaxed) == 0);
    // While the stalled client lives, its record is never handed to anyone else: a
    // whole transfer by another client goes through another record.
    let output = run({
        let mut c = server.patient_client(&config);
        c.arg("3");
        c
    });
    assert!(output.status.success(), "{}", show(&output));
    assert_eq!(dropped.state.load(Ordering::Acquire), RECORD_DROPPED);
    assert_eq!(load_guid(&dropped.guid), stalled.guid, "the dropped record was reused");
    thaw(stalled.client.pid());
    let Frozen { client, .. } = stalled;
    let output = client.finish();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(
        stderr_of(&output).contains("no activity"),
        "the client should say why it failed: {}",
        show(&output)
    );
    assert!(fs::read(tree.out().join("after.bin")).is_ok());
    assert!(!tree.out().join("stalled.bin").exists());
    assert_alive(&server);
}

/// A client stopped while it has a slot open to write into (here: waiting on its
/// pipe with the slot half filled) would go on writing into it when resumed: the
/// server drops its stream but keeps the ring until the client answers, so no
/// other stream gets those buffers meanwhile.
#[test]
fn a_client_stopped_with_a_slot_open_keeps_its_ring_until_it_answers() {
    let tree = Tree::new();
    let server =
        Server::start(&unique_name("idlefill"), &tree.out(), &["--size", "1M", "--idle-timeout", "2"]);
    let probe = Probe::open(&server.name);
    let offset = probe.wait_offer();
    let (reader, mut writer) = std::io::pipe().unwrap();
    let mut command = Command::new(CLIENT);
    command.args(["--name", &server.name, "-", "--as", "piped.bin"]).stdin(reader);
    let client = Running::spawn(command);
    std::io::Write::write_all(&mut writer, &[7u8; 1000]).unwrap();
    let record = probe.record(offset);
    wait_until("the client to fill its slot from the pipe", || {
        record.filling.load(Ordering::SeqCst) == 1 && record.nslots.load(Ordering::Relaxed) > 0
    });
    freeze(client.pid());
    let line = server.wait_for_line_within("the drop", NOTICE, |l| l.starts_with("failed piped.bin"));
    assert!(line.contains("no activity"), "{line}");
    assert_eq!(record.state.load(Ordering::Acquire), RECORD_DROPPED);
    // Several liveness checks of the stopped client: the ring stays.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(record.nslots.load(Ordering::Relaxed) > 0, "a ring with a slot open to the client was freed");
    thaw(client.pid());
    let output = client.finish();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("no activity"), "{}", show(&output));
    drop(writer);
    wait_until("the ring freed once the client answered", || record.nslots.load(Ordering::Relaxed) == 0);
    assert!(!tree.out().join("piped.bin").exists());
    assert_alive(&server);
}

/// The same hazard through the library, step by step: a dropped client's late
/// command reaches only its own (kept) record, never another stream.
#[test]
fn a_late_abort_from_a_dropped_client_releases_only_its_own_record() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("late"), &tree.out(), &["--idle-timeout", "2", "--workers", "1"]);
    let rogue = Rogue::connect(&server.name);
    let mut stale = rogue.take();
    let stale_record = stale.offset;
    let line = server.wait_for_line_within("the idle drop", NOTICE, |l| {
        l.starts_with(&format!("failed {}", stale.label()))
    });
    assert!(line.contains("no activity"), "{line}");
    let record = rogue.segment.record(stale_record).unwrap();
    wait_until("the record marked dropped", || record.state.load(Ordering::Acquire) == RECORD_DROPPED);
    // The stalled client wakes up and does what `sharedclient` does after a failure:
    // its Abort gives the dropped record back (and nothing else happens with it).
    stale.post(&ClientCommand::Abort { reason: "late".into() });
    wait_until("the dropped record released", || record.state.load(Ordering::Acquire) != RECORD_DROPPED);
    // Another client is served undisturbed, whichever record it gets.
    let mut victim = rogue.take();
    victim.post(&ClientCommand::Ping { seq: 1, sent_nanos: 1 });
    let reply = victim.reply_within(NOTICE);
    assert_eq!(reply, ServerReply::Pong { seq: 1, sent_nanos: 1 }, "the victim's stream was disturbed");
    victim.close();
    assert_alive(&server);
}

// ---------------------------------------------------------------------------------
// Names that are valid but collide with the server's own files; links in OUTPUT_DIR.
// ---------------------------------------------------------------------------------

#[test]
fn reserved_temporary_names_are_refused_whatever_a_client_sends() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("reserved"), &tree.out(), &[]);
    let rogue = Rogue::connect(&server.name);
    // At any depth: nothing may be made inside a staged folder by its hidden name.
    for name in [".sharedxfer-x-escape.part", "sub/.sharedxfer-escape", "sub/.sharedxfer-x-0.stage/f"] {
        let mut s = rogue.take();
        s.post(&ClientCommand::Open { name: name.into(), size: 10, meta: FileMeta::default() });
        assert_failed(&server, s, name, ErrorCode::BadRequest, "reserved for the server");
    }
    assert_alive(&server);
}

#[test]
fn a_published_file_named_like_a_temporary_file_survives_a_restart() {
    let tree = Tree::new();
    let name = unique_name("tempname");
    let file_name = format!(".sharedxfer-{name}-{}.part", "0".repeat(32));
    let source = write_file(&tree.src(), &file_name, 5000, 5);
    let config = write_config(&tree.src(), &[&source]);
    let mut server = Server::start(&name, &tree.out(), &[]);
    let output = run({
        let mut c = server.client(&config);
        c.arg("1");
        c
    });
    let published = tree.out().join(&file_name);
    if output.status.success() {
        assert!(fs::read(&published).unwrap() == fs::read(&source).unwrap());
    } else {
        // Refusing such names is fine too (the client does, before sending: exit 2;
        // the server does for a client that sends one anyway); then nothing may be
        // published.
        assert!(matches!(output.status.code(), Some(1 | 2)), "{}", show(&output));
        assert!(stderr_of(&output).contains("reserved for the server"), "{}", show(&output));
        assert!(!published.exists());
        return;
    }
    assert_eq!(server.stop("INT").code(), Some(0));
    let _restarted = Server::start(&name, &tree.out(), &[]);
    assert!(
        published.exists(),
        "the client was told {file_name} is published (exit 0), and a server restart deleted it"
    );
}

#[test]
fn links_planted_in_output_dir_are_never_written_through() {
    let tree = Tree::new();
    let victim = tree.root().join("victim.txt");
    fs::write(&victim, b"precious").unwrap();
    let source = write_file(&tree.src(), "link.bin", 5000, 6);
    let config = write_config(&tree.src(), &[&source]);
    let link = tree.out().join("link.bin");
    std::os::unix::fs::symlink(&victim, &link).unwrap();

    // Without --overwrite the link counts as an existing file.
    let server = Server::start(&unique_name("link"), &tree.out(), &[]);
    let output = run({
        let mut c = server.client(&config);
        c.arg("1");
        c
    });
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("already exists"), "{}", show(&output));

    drop(server);

    // With --overwrite the server links its unnamed file under a temporary name for
    // the moment of the replacing rename: a link planted at the temporary name of
    // the GUID on offer is neither followed nor replaced. The server is stopped while
    // the client takes that very GUID (it could otherwise move its offer and pick a
    // new GUID).
    let server = Server::start(&unique_name("linkover"), &tree.out(), &["--overwrite"]);
    let probe = Probe::open(&server.name);
    let handout = probe.segment.handout();
    probe.freeze_at_rest(server.pid(), None, || handout.state.load(Ordering::Acquire) == HANDOUT_OFFERED);
    let guid = load_guid(&handout.guid);
    std::os::unix::fs::symlink(&victim, server.temp_path(guid)).unwrap();
    let client = Running::spawn({
        let mut c = server.client(&config);
        c.arg("1");
        c
    });
    wait_until("the client to take the GUID", || handout.state.load(Ordering::Acquire) == HANDOUT_TAKEN);
    thaw(server.pid());
    let output = client.finish();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("temporary name"), "{}", show(&output));
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(fs::symlink_metadata(server.temp_path(guid)).unwrap().file_type().is_symlink());
    fs::remove_file(server.temp_path(guid)).unwrap();

    // The link at the final name itself is replaced, its target untouched.
    let output = run({
        let mut c = server.client(&config);
        c.arg("1");
        c
    });
    assert!(output.status.success(), "{}", show(&output));
    assert_eq!(fs::read(&victim).unwrap(), b"precious", "the link's target was written");
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_file(), "the link was not replaced");
    assert!(fs::read(&link).unwrap() == fs::read(&source).unwrap());
}

// ---------------------------------------------------------------------------------
// A peer frozen while it holds the handout lock.
// ---------------------------------------------------------------------------------

#[test]
fn a_peer_frozen_inside_the_handout_does_not_hang_new_clients() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("handoutheld"), &tree.out(), &[]);
    let rogue = Rogue::connect(&server.name);
    let source = write_file(&tree.src(), "waits.bin", 1000, 7);
    let config = write_config(&tree.src(), &[&source]);
    let probe = Probe::open(&server.name);
    probe.wait_offer();
    // What a client SIGSTOPped inside `handout::take` leaves behind: the lock held.
    let guard = acquire(&rogue.handout_lock).unwrap();
    let client = Running::spawn({
        let mut c = server.client(&config);
        c.args(["--timeout", "3", "1"]);
        c
    });
    let start = Instant::now();
    while !client.has_exited() && start.elapsed() < NOTICE {
        std::thread::sleep(Duration::from_millis(20));
    }
    let exited = client.has_exited();
    drop(guard);
    let output = client.finish();
    assert!(exited, "the client hung for {NOTICE:?} (its --timeout is 3 s): {}", show(&output));
}

#[test]
fn a_peer_frozen_after_taking_a_guid_does_not_block_server_shutdown() {
    let tree = Tree::new();
    let name = unique_name("handouttaken");
    let mut server = Server::start(&name, &tree.out(), &[]);
    let rogue = Rogue::connect(&server.name);
    let probe = Probe::open(&server.name);
    probe.wait_offer();
    // A client SIGSTOPped between marking the offer TAKEN and unlocking.
    let handout = rogue.segment.handout();
    let guard = loop {
        let guard = acquire(&rogue.handout_lock).unwrap();
        if handout.state.load(Ordering::Acquire) == HANDOUT_OFFERED {
            break guard;
        }
        drop(guard);
        probe.wait_offer();
    };
    handout.taker_pid.store(std::process::id(), Ordering::Relaxed);
    handout.state.store(HANDOUT_TAKEN, Ordering::Release);
    rogue.segment.header().handout_event.notify();
    signal(server.pid(), "INT");
    let start = Instant::now();
    while !has_exited(server.pid()) && start.elapsed() < NOTICE {
        std::thread::sleep(Duration::from_millis(20));
    }
    let exited = has_exited(server.pid());
    drop(guard);
    assert!(exited, "the server ignored SIGINT for {NOTICE:?} while a frozen peer held handout.lock");
    let status = wait_with_deadline(&mut server.child, "sharedserver");
    assert_eq!(status.code(), Some(0));
    assert!(!shm_path(&name).exists());
}

// ---------------------------------------------------------------------------------
// Hand-made batches: entries with bad names, checksums or metadata among good ones,
// and batches whose framing is broken.
// ---------------------------------------------------------------------------------

/// Where the fields of an entry's fixed part lie (the layout `src/batch.rs` documents).
const ENTRY_KIND: usize = 0;
const ENTRY_NAME_LEN: usize = 4;
const ENTRY_SIZE: usize = 8;
const ENTRY_CHECKSUM: usize = 16;
const ENTRY_META: usize = 24;
const ENTRY_MTIME: usize = 32;
const ENTRY_RESERVED: usize = 40;

/// One entry of a hand-made batch: its fixed part, name and data, each as given.
struct RawEntry {
    fixed: [u8; batch::ENTRY_LEN],
    name: Vec<u8>,
    data: Vec<u8>,
}

impl RawEntry {
    /// A well-formed file entry: the size and checksum of `data`.
    fn file(name: impl AsRef<[u8]>, data: &[u8], meta: FileMeta) -> RawEntry {
        let kind = EntryKind::File { size: data.len() as u64, checksum: xxh3_64(data), meta };
        RawEntry::with_kind(name.as_ref(), &kind, data)
    }

    /// A well-formed folder entry.
    fn dir(name: &str, mode: u32) -> RawEntry {
        RawEntry::with_kind(name.as_bytes(), &EntryKind::Dir { mode }, b"")
    }

    fn with_kind(name: &[u8], kind: &EntryKind, data: &[u8]) -> RawEntry {
        let fixed = batch::entry_header(kind, name.len());
        RawEntry { fixed, name: name.to_vec(), data: data.to_vec() }
    }

    /// The entry with the word at byte `at` of its fixed part replaced.
    fn set_u64(mut self, at: usize, value: u64) -> RawEntry {
        self.fixed[at..at + 8].copy_from_slice(&value.to_le_bytes());
        self
    }

    fn set_u32(mut self, at: usize, value: u32) -> RawEntry {
        self.fixed[at..at + 4].copy_from_slice(&value.to_le_bytes());
        self
    }
}

/// A batch whose header says `count` entries and number `seq`, holding `entries`
/// (each padded to 8 bytes, as the format wants).
fn pack_batch(count: u32, seq: u64, entries: &[RawEntry]) -> Vec<u8> {
    let mut out = batch::batch_header(count, seq).to_vec();
    for entry in entries {
        out.extend_from_slice(&entry.fixed);
        out.extend_from_slice(&entry.name);
        out.extend_from_slice(&entry.data);
        out.resize(batch::align(out.len()), 0);
    }
    out
}

/// A well-formed batch of `entries`.
fn batch_of(seq: u64, entries: &[RawEntry]) -> Vec<u8> {
    pack_batch(entries.len() as u32, seq, entries)
}

/// The two words `meta` travels as (learned from an encoded Open, so the test does
/// not depend on the bit layout).
fn meta_words(meta: FileMeta) -> (u64, u64) {
    let (_, args, _) = ClientCommand::Open { name: "x".into(), size: 0, meta }.encode();
    (args[1], args[2])
}

fn file_meta(mode: u32, mtime: SystemTime) -> FileMeta {
    FileMeta { mode: Some(mode), mtime: Some(mtime), ..FileMeta::default() }
}

impl RogueStream<'_> {
    /// Enters batch mode; returns (slots, chunk) from the Opened reply.
    fn start_batches(&mut self) -> (usize, u64) {
        self.post(&ClientCommand::Batch);
        match self.reply() {
            ServerReply::Opened { slots, chunk } => {
                assert!((1..=MAX_SLOTS).contains(&(slots as usize)) && chunk > 0, "Opened {slots} x {chunk}");
                (slots as usize, chunk)
            }
            other => panic!("{}: Batch answered with {other:?}", self.label()),
        }
    }

    /// Hands `bytes` over in slot `index` and waits for the slot to come back with
    /// the results of batch `seq` of `count` entries.
    fn run_batch(&mut self, index: usize, bytes: &[u8], seq: u64, count: usize) -> Vec<Outcome> {
        self.send_chunk(index, bytes, bytes.len() as u64);
        let record: &Record = self.record;
        let slot = &record.slots[index];
        let start = Instant::now();
        while slot.state.load(Ordering::Acquire) != SlotState::Empty as u32 {
            if let Some(reply) = self.try_reply() {
                panic!("batch {seq}: the server answered {reply:?} instead of handing the slot back");
            }
            assert!(start.elapsed() < DEADLINE, "batch {seq}: no results within {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
        let capacity = slot.capacity.load(Ordering::Relaxed);
        let buffer = self.segment.buffer(slot.offset.load(Ordering::Relaxed), capacity).unwrap();
        batch::decode_results(buffer.bytes(capacity as usize), seq, count)
            .unwrap_or_else(|e| panic!("batch {seq}: undecodable results: {e}"))
    }

    /// Whether the server took every slot of the ring back (a failed stream's).
    fn ring_revoked(&self, slots: usize) -> bool {
        self.record.slots[..slots].iter().all(|s| s.state.load(Ordering::Acquire) == SlotState::Unused as u32)
    }
}

/// What an entry of the bad-entry batch must come to.
enum Want {
    /// Published under `name` with exactly `data`, `mode` and `mtime`.
    File { name: &'static str, data: Vec<u8>, mode: u32, mtime: SystemTime },
    /// Made, with the mode given (plus u+rwx).
    Dir { name: &'static str, mode: u32 },
    /// Refused with `code`, the message saying `expect`.
    Failed(ErrorCode, &'static str),
}

#[test]
fn a_bad_entry_in_a_batch_fails_alone_and_the_good_ones_are_published_whole() {
    use std::os::unix::fs::PermissionsExt;

    let tree = Tree::new();
    fs::write(tree.out().join("batch-exists.bin"), b"precious").unwrap();
    let server = Server::start(&unique_name("badentry"), &tree.out(), &["-v"]);
    let rogue = Rogue::connect(&server.name);
    let traffic = start_traffic(&server, &tree.src());
    let when = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
    let good = |name: &'static str, len: usize, seed: u64, mode: u32, mtime: SystemTime| {
        let data = pattern(len, seed);
        (RawEntry::file(name, &data, file_meta(mode, mtime)), Want::File { name, data, mode, mtime })
    };
    let bad = |entry: RawEntry, code: ErrorCode, expect: &'static str| (entry, Want::Failed(code, expect));
    let some = pattern(3000, 99);
    let plain = FileMeta::default();
    let t = when(1_500_000_000, 0);
    let (mode_flag, _) = meta_words(FileMeta { mode: Some(0), ..FileMeta::default() });
    let (mode_644, _) = meta_words(FileMeta { mode: Some(0o644), ..FileMeta::default() });
    let (hint_word, hint_secs) = meta_words(FileMeta { size_is_hint: true, ..file_meta(0o644, t) });
    let (dir_time_word, dir_time_secs) = meta_words(file_meta(0o755, t));
    let absolute = format!("{}/abs-escape", tree.root().display());
    let entries = vec![
        good("batch-good-a.bin", 1000, 1, 0o640, when(1_600_000_000, 123_456_789)),
        bad(
            RawEntry::file("../escape-dotdot.bin", &some, plain),
            ErrorCode::BadRequest,
            "'..' is not a file",
        ),
        (RawEntry::dir("batch-dir", 0o750), Want::Dir { name: "batch-dir", mode: 0o750 }),
        good("batch-dir/inner.bin", 5000, 2, 0o600, when(1_234_567_890, 5)),
        bad(
            RawEntry::file("batch-dir/../../escape-nested.bin", &some, plain),
            ErrorCode::BadRequest,
            "'..' is not a file",
        ),
        bad(RawEntry::file(absolute.as_bytes(), &some, plain), ErrorCode::BadRequest, "is absolute"),
        bad(
            RawEntry::file("badsum-escape.bin", &some, plain).set_u64(ENTRY_CHECKSUM, xxh3_64(&some) ^ 1),
            ErrorCode::Checksum,
            "checksum mismatch",
        ),
        good("batch-good-b.bin", 65_536, 3, 0o755, when(1_000_000_000, 999_999_999)),
        bad(
            RawEntry::file(".sharedxfer-x-escape.part", &some, plain),
            ErrorCode::BadRequest,
            "reserved for the server",
        ),
        bad(
            RawEntry::file("batch-dir/.sharedxfer-escape", &some, plain),
            ErrorCode::BadRequest,
            "reserved for the server",
        ),
        bad(
            RawEntry::file([0xff, 0xfe, b'e', b's', b'c'], &some, plain),
            ErrorCode::BadRequest,
            "not valid UTF-8",
        ),
        bad(RawEntry::file("", &some, plain), ErrorCode::BadRequest, "file name is empty"),
        bad(RawEntry::file("esc\0ape", &some, plain), ErrorCode::BadRequest, "contains '/' or NUL"),
        bad(RawEntry::file([b'e'; 256], &some, plain), ErrorCode::BadRequest, "256 bytes long"),
        bad(
            RawEntry::file("hint-escape.bin", &some, plain)
                .set_u64(ENTRY_META, hint_word)
                .set_u64(ENTRY_MTIME, hint_secs),
            ErrorCode::BadRequest,
            "must be exact",
        ),
        bad(
            RawEntry::file("modebits-escape.bin", &some, plain).set_u64(ENTRY_META, mode_644 & !mode_flag),
            ErrorCode::BadRequest,
            "mode bits without the mode flag",
        ),
        // The top bit of the metadata word means nothing (yet).
        bad(
            RawEntry::file("unknownbits-escape.bin", &some, plain).set_u64(ENTRY_META, 1 << 63),
            ErrorCode::BadRequest,
            "unknown metadata bits",
        ),
        bad(
            RawEntry::dir("dirtime-escape", 0o755)
                .set_u64(ENTRY_META, dir_time_word)
                .set_u64(ENTRY_MTIME, dir_time_secs),
            ErrorCode::BadRequest,
            "a folder entry carries only a mode",
        ),
        bad(RawEntry::file("batch-exists.bin", &some, plain), ErrorCode::Exists, "already exists"),
        good("batch-empty.bin", 0, 4, 0o644, when(1_700_000_000, 1)),
        good("batch-good-z.bin", 30_000, 5, 0o444, when(1_650_000_000, 42)),
    ];
    let (raw, wants): (Vec<RawEntry>, Vec<Want>) = entries.into_iter().unzip();
    let bytes = batch_of(1, &raw);

    let mut stream = rogue.take();
    let (slots, chunk) = stream.start_batches();
    assert!(bytes.len() as u64 <= chunk, "the test batch ({} bytes) exceeds the slot ({chunk})", bytes.len());
    let outcomes = stream.run_batch(0, &bytes, 1, raw.len());
    let mut published = BTreeSet::new();
    for (index, (outcome, want)) in outcomes.iter().zip(&wants).enumerate() {
        match want {
            Want::File { name, data, mode, mtime } => {
                assert_eq!(outcome, &Outcome::Done(data.len() as u64), "entry {index} ({name})");
                let path = tree.out().join(name);
                let got = fs::read(&path).unwrap_or_else(|e| panic!("{name} was not published: {e}"));
                assert!(&got == data, "{name} differs from what was sent");
                let meta = fs::metadata(&path).unwrap();
                assert_eq!(meta.permissions().mode() & 0o7777, *mode, "{name}: mode");
                assert_eq!(meta.modified().unwrap(), *mtime, "{name}: mtime");
                server.wait_for_line(&format!("the publication of {name}"), |l| {
                    l.starts_with(&format!("done {name} "))
                });
                published.insert(name.to_string());
            }
            Want::Dir { name, mode } => {
                assert_eq!(outcome, &Outcome::Done(0), "entry {index} ({name})");
                let meta = fs::metadata(tree.out().join(name)).unwrap();
                assert!(meta.is_dir(), "{name} is not a folder");
                assert_eq!(meta.permissions().mode() & 0o777, mode | 0o700, "{name}: mode");
            }
            Want::Failed(code, expect) => match outcome {
                Outcome::Failed(got, message) => {
                    assert_eq!(got, code, "entry {index}: {message}");
                    assert!(
                        message.contains(expect),
                        "entry {index}: the result says {message:?}, expected {expect:?}"
                    );
                }
                other => panic!("entry {index} (expected to fail with {expect:?}) came to {other:?}"),
            },
        }
    }
    for name in ["../escape-dotdot.bin", "badsum-escape.bin", "batch-exists.bin"] {
        server
            .wait_for_line(&format!("the failure of {name}"), |l| l.starts_with(&format!("failed {name}: ")));
    }
    assert_eq!(
        fs::read(tree.out().join("batch-exists.bin")).unwrap(),
        b"precious",
        "an existing file was replaced"
    );
    published.insert("batch-exists.bin".to_owned());

    // The stream goes on: the next batch, in the next slot, is published too.
    let second = pattern(2000, 6);
    let next = RawEntry::file("batch-dir/second.bin", &second, file_meta(0o640, t));
    let outcomes = stream.run_batch(1 % slots, &batch_of(2, &[next]), 2, 1);
    assert_eq!(outcomes, vec![Outcome::Done(2000)]);
    assert!(fs::read(tree.out().join("batch-dir/second.bin")).unwrap() == second);
    published.insert("batch-dir/second.bin".to_owned());
    // Any other command ends batch mode: the stream answers as an idle one.
    stream.ping(3);
    stream.close();

    published.extend(traffic.finish(&tree.out()));
    served_after_hostile_streams(&server, &tree, published, "after-batch.bin", 300_000, 7);
}

/// One client cannot stage folders without bound (each costs the server memory and
/// a rename on a worker when the client ends): past 4,096 uncommitted stages, a
/// folder is made in place, as by a sink that does not stage.
#[test]
fn a_client_cannot_stage_folders_without_bound() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("stagebound"), &tree.out(), &[]);
    let rogue = Rogue::connect(&server.name);
    let mut stream = rogue.take();
    let (slots, _) = stream.start_batches();
    let names: Vec<String> = (0..4100).map(|i| format!("s{i:05}")).collect();
    let mut outcomes = Vec::new();
    for (seq, chunk) in names.chunks(1000).enumerate() {
        let entries: Vec<RawEntry> = chunk
            .iter()
            .map(|name| RawEntry::with_kind(name.as_bytes(), &EntryKind::Stage { mode: 0o750 }, b""))
            .collect();
        let seq = seq as u64 + 1;
        outcomes.extend(stream.run_batch(
            (seq as usize - 1) % slots,
            &batch_of(seq, &entries),
            seq,
            entries.len(),
        ));
    }
    let staged = outcomes.iter().filter(|o| matches!(o, Outcome::Done(token) if *token > 1)).count();
    assert_eq!(staged, 4096, "stages answered with a token");
    assert!(outcomes[4096..].iter().all(|o| *o == Outcome::Done(0)), "{:?}", &outcomes[4096..]);
    assert!(!tree.out().join("s04095").exists(), "a staged folder shows before its commit");
    assert!(tree.out().join("s04096").is_dir(), "a folder past the bound is made in place");
    stream.close();
    drop(rogue);
    wait_until("the staged folders published at the client's end", || tree.out().join("s04095").is_dir());
    assert_alive(&server);
}

/// A staged folder (`KIND_STAGE`) shows nothing under its name until its commit,
/// then appears whole; a commit never goes over a name that appeared meanwhile
/// (the staged folder is dropped and the intruder kept); a commit of a name not
/// staged, or a stage of a nested or already staged name, fails alone; a stage of a
/// name that exists makes nothing hidden.
#[test]
fn a_staged_folder_appears_whole_at_its_commit_and_never_over_a_name_that_appeared() {
    use std::os::unix::fs::PermissionsExt;

    let tree = Tree::new();
    fs::create_dir(tree.out().join("exists")).unwrap();
    let server = Server::start(&unique_name("stage"), &tree.out(), &[]);
    let rogue = Rogue::connect(&server.name);
    let mut stream = rogue.take();
    let (slots, _) = stream.start_batches();
    let t = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    let (one, two) = (pattern(5000, 1), pattern(0, 2));
    let stage = |name: &str| RawEntry::with_kind(name.as_bytes(), &EntryKind::Stage { mode: 0o750 }, b"");
    let commit =
        |name: &str, token: u64| RawEntry::with_kind(name.as_bytes(), &EntryKind::Commit { token }, b"");
    let first = [
        stage("pub"),
        RawEntry::dir("pub/sub", 0o700),
        RawEntry::file("pub/sub/one.bin", &one, file_meta(0o640, t)),
        RawEntry::file("pub/two.bin", &two, file_meta(0o600, t)),
        stage("clash"),
        RawEntry::file("clash/x.bin", &one, file_meta(0o600, t)),
        stage("exists"),
        stage("pub"),
        stage("a/b"),
        commit("never-staged", 1),
        RawEntry::file("pub/.sharedxfer-x.stage/y", &one, file_meta(0o600, t)),
    ];
    let outcomes = stream.run_batch(0, &batch_of(1, &first), 1, first.len());
    let token = |outcome: &Outcome| match outcome {
        Outcome::Done(token) if *token > 1 => *token,
        other => panic!("a stage answers a token: {other:?}"),
    };
    let (pub_token, clash_token) = (token(&outcomes[0]), token(&outcomes[4]));
    assert_ne!(pub_token, clash_token);
    assert_eq!(
        [&outcomes[1..4], &outcomes[5..7]].concat(),
        [Outcome::Done(0), Outcome::Done(5000), Outcome::Done(0), Outcome::Done(5000), Outcome::Done(0)]
    );
    for (outcome, what) in outcomes[7..].iter().zip([
        "already staged",
        "only a top-level folder",
        "nothing of this client",
        "reserved for the server",
    ]) {
        assert!(
            matches!(outcome, Outcome::Failed(ErrorCode::BadRequest, m) if m.contains(what)),
            "{outcome:?}"
        );
    }
    // Nothing under the staged names yet, and no hidden name leaks into the reports.
    assert!(!tree.out().join("pub").exists() && !tree.out().join("clash").exists());
    assert_eq!(server.temp_files().len(), 2, "{:?}", server.temp_files());
    fs::create_dir(tree.out().join("clash")).unwrap();
    fs::write(tree.out().join("clash/mine"), b"intruder").unwrap();

    // A commit without its stage's token (another process claiming this pid) is
    // refused and publishes nothing.
    let outcomes = stream.run_batch(1 % slots, &batch_of(2, &[commit("pub", pub_token ^ 1)]), 2, 1);
    assert!(matches!(&outcomes[0], Outcome::Failed(ErrorCode::BadRequest, _)), "{outcomes:?}");
    assert!(!tree.out().join("pub").exists());

    let both = [commit("pub", pub_token), commit("clash", clash_token)];
    let outcomes = stream.run_batch(2 % slots, &batch_of(3, &both), 3, 2);
    assert_eq!(outcomes[0], Outcome::Done(0));
    match &outcomes[1] {
        Outcome::Failed(ErrorCode::Exists, m) => {
            assert!(m.contains("clash") && m.contains("appeared") && !m.contains(".sharedxfer-"), "{m}")
        }
        other => panic!("a commit over a name that appeared: {other:?}"),
    }
    assert!(fs::read(tree.out().join("pub/sub/one.bin")).unwrap() == one);
    assert_eq!(fs::read(tree.out().join("pub/two.bin")).unwrap(), two);
    let mode = |p: &str| fs::metadata(tree.out().join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!((mode("pub"), mode("pub/sub/one.bin"), mode("pub/two.bin")), (0o750, 0o640, 0o600));
    assert_eq!(fs::metadata(tree.out().join("pub/sub/one.bin")).unwrap().modified().unwrap(), t);
    assert_eq!(fs::read(tree.out().join("clash/mine")).unwrap(), b"intruder");
    assert!(!tree.out().join("clash/x.bin").exists());
    wait_until("the clashing staged folder removed", || server.temp_files().is_empty());

    // After its commit, a name beneath the folder is made as any other (here,
    // never over the file that is there).
    let late = [RawEntry::file("pub/two.bin", &one, file_meta(0o600, t)), RawEntry::dir("pub/late", 0o700)];
    let outcomes = stream.run_batch(3 % slots, &batch_of(4, &late), 4, 2);
    assert!(matches!(&outcomes[0], Outcome::Failed(ErrorCode::Exists, _)), "{outcomes:?}");
    assert_eq!(outcomes[1], Outcome::Done(0));
    assert!(tree.out().join("pub/late").is_dir() && server.temp_files().is_empty());

    // A client gone with folders still staged: each is published as far as it got
    // (every file in it whole), as without staging, unless its name was taken
    // meanwhile (then dropped, the intruder kept).
    let gone = [
        stage("gone"),
        RawEntry::dir("gone/d", 0o700),
        RawEntry::file("gone/d/f.bin", &one, file_meta(0o600, t)),
        stage("taken"),
        RawEntry::file("taken/x.bin", &one, file_meta(0o600, t)),
    ];
    let outcomes = stream.run_batch(4 % slots, &batch_of(5, &gone), 5, gone.len());
    assert!(
        matches!(outcomes[0], Outcome::Done(t) if t > 1) && matches!(outcomes[3], Outcome::Done(t) if t > 1)
    );
    let whole = [Outcome::Done(0), Outcome::Done(5000), Outcome::Done(5000)];
    assert_eq!([outcomes[1].clone(), outcomes[2].clone(), outcomes[4].clone()], whole);
    assert_eq!(server.temp_files().len(), 2);
    assert!(!tree.out().join("gone").exists());
    fs::create_dir(tree.out().join("taken")).unwrap();
    fs::write(tree.out().join("taken/mine"), b"intruder").unwrap();
    stream.close();
    wait_until("the staged folders of a client gone dealt with", || server.temp_files().is_empty());
    assert!(fs::read(tree.out().join("gone/d/f.bin")).unwrap() == one);
    assert_eq!(fs::read(tree.out().join("taken/mine")).unwrap(), b"intruder");
    assert!(!tree.out().join("taken/x.bin").exists());
}

/// A batch whose framing is broken, and what its refusal must say.
struct Malformed {
    what: &'static str,
    /// What goes into the slot.
    bytes: Vec<u8>,
    /// The length handed over with it.
    len: u64,
    expect: String,
}

/// Broken batches for a ring of `chunk`-byte slots. Each holds a good file
/// (`mal-<i>-escape.bin`) before its flaw, which must not be published either.
fn malformed_batches(chunk: u64) -> Vec<Malformed> {
    let data = pattern(1000, 8);
    let first = |i: usize| RawEntry::file(format!("mal-{i}-escape.bin"), &data, FileMeta::default());
    let second = |i: usize| RawEntry::file(format!("mal-{i}-second-escape.bin"), &data, FileMeta::default());
    let case = |what, bytes: Vec<u8>, expect: &str| {
        let len = bytes.len() as u64;
        Malformed { what, bytes, len, expect: expect.to_owned() }
    };
    let mut cases = Vec::new();
    let mut magic = batch_of(1, &[first(0), second(0)]);
    magic[..4].copy_from_slice(b"SXB0");
    cases.push(case("bad magic", magic, "malformed batch: bad magic"));
    let mut results_magic = batch_of(1, &[first(1)]);
    results_magic[..4].copy_from_slice(b"SXR1");
    cases.push(case("results' magic", results_magic, "malformed batch: bad magic"));
    cases.push(case(
        "count past the entries",
        pack_batch(3, 1, &[first(2), second(2)]),
        "malformed batch: entry 2 starts past the end",
    ));
    cases.push(case("count zero", pack_batch(0, 1, &[first(3)]), "malformed batch: 0 entries"));
    cases.push(case(
        "count over the limit",
        pack_batch(1025, 1, &[first(4)]),
        "malformed batch: 1025 entries",
    ));
    let mut reserved = batch_of(1, &[first(5)]);
    reserved[20] = 1;
    cases.push(case("reserved header bytes", reserved, "reserved header bytes are not zero"));
    cases.push(case(
        "reserved entry bytes",
        batch_of(1, &[first(6), second(6).set_u64(ENTRY_RESERVED, 1)]),
        "entry 1: reserved bytes are not zero",
    ));
    // The last entry's data runs past the length handed over (not only its padding).
    let cut = batch_of(1, &[first(7), second(7)]);
    let len = cut.len() as u64 - 100;
    cases.push(Malformed {
        what: "data past the handed-over length",
        bytes: cut,
        len,
        expect: "entry 1: 1000 bytes of data run past the batch".into(),
    });
    cases.push(case(
        "size u64::MAX",
        batch_of(1, &[first(8), second(8).set_u64(ENTRY_SIZE, u64::MAX)]),
        "entry 1: 18446744073709551615 bytes of data run past the batch",
    ));
    cases.push(case(
        "name past the end",
        batch_of(1, &[first(9), second(9).set_u32(ENTRY_NAME_LEN, 4000)]),
        "entry 1: 1000 bytes of data run past the batch",
    ));
    cases.push(case(
        "name longer than a path",
        batch_of(1, &[first(10), second(10).set_u32(ENTRY_NAME_LEN, 5000)]),
        "entry 1: name of 5000 bytes",
    ));
    let mut trailing = batch_of(1, &[first(11), second(11)]);
    trailing.extend_from_slice(&[0; 16]);
    cases.push(case("bytes after the last entry", trailing, "16 bytes after the last entry"));
    cases.push(case(
        "a folder with data",
        batch_of(1, &[first(12), RawEntry::dir("mal-12-dir-escape", 0o755).set_u64(ENTRY_SIZE, 8)]),
        "entry 1: a folder with 8 bytes of data",
    ));
    cases.push(case(
        "unknown kind",
        batch_of(1, &[first(13), second(13).set_u32(ENTRY_KIND, 9)]),
        "entry 1: unknown kind 9",
    ));
    let header_only = batch_of(1, &[first(14)]);
    cases.push(Malformed {
        what: "shorter than the header",
        bytes: header_only,
        len: 16,
        expect: "16 bytes is shorter than the header".into(),
    });
    let whole = batch_of(1, &[first(15)]);
    for (what, len) in
        [("length zero", 0), ("length past the slot", chunk + 1), ("length u64::MAX", u64::MAX)]
    {
        cases.push(Malformed {
            what,
            bytes: whole.clone(),
            len,
            expect: format!("bad batch length {len} (slot capacity {chunk})"),
        });
    }
    cases
}

#[test]
fn a_malformed_batch_fails_its_stream_publishes_nothing_and_others_are_served() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("badbatch"), &tree.out(), &[]);
    let rogue = Rogue::connect(&server.name);
    let traffic = start_traffic(&server, &tree.src());
    let chunk = {
        let mut probe = rogue.take();
        let (_, chunk) = probe.start_batches();
        probe.close();
        chunk
    };
    let mut published = BTreeSet::new();
    let after = pattern(500, 9);
    for (i, case) in malformed_batches(chunk).into_iter().enumerate() {
        let mut stream = rogue.take();
        let (slots, got_chunk) = stream.start_batches();
        assert_eq!(got_chunk, chunk, "{}: every batch ring of this server has the same slots", case.what);
        stream.write_buffer(0, &case.bytes);
        stream.hand_over(0, case.len);
        let (code, message) = stream.expect_error();
        assert_eq!(code, ErrorCode::BadRequest, "{}: {message}", case.what);
        assert!(
            message.contains(&case.expect)
                && (message.contains("malformed batch") || message.contains("bad batch length")),
            "{}: the refusal says {message:?}, expected {:?}",
            case.what,
            case.expect
        );
        server.wait_for_line(&format!("the failure of {}", case.what), |l| {
            l.starts_with("failed ") && l.contains(&case.expect)
        });
        assert!(stream.ring_revoked(slots), "{}: the failed stream kept its slots", case.what);
        for name in [format!("mal-{i}-escape.bin"), format!("mal-{i}-second-escape.bin")] {
            assert!(!tree.out().join(&name).exists(), "{}: {name} was published", case.what);
        }
        // The stream itself may start over: a good batch is published.
        let (_, _) = stream.start_batches();
        let name = format!("mal-{i}-after.bin");
        let outcomes =
            stream.run_batch(0, &batch_of(1, &[RawEntry::file(&name, &after, FileMeta::default())]), 1, 1);
        assert_eq!(outcomes, vec![Outcome::Done(500)], "{}", case.what);
        assert!(fs::read(tree.out().join(&name)).unwrap() == after, "{}", case.what);
        published.insert(name);
        stream.ping(1);
        stream.close();
    }

    // A good batch, then a broken one in the next slot: the first stays published,
    // nothing of the second is.
    let mut stream = rogue.take();
    let (slots, _) = stream.start_batches();
    assert!(slots >= 2, "a batch ring has several slots");
    let first = RawEntry::file("seq-first.bin", &after, FileMeta::default());
    assert_eq!(stream.run_batch(0, &batch_of(1, &[first]), 1, 1), vec![Outcome::Done(500)]);
    published.insert("seq-first.bin".to_owned());
    let mut broken = batch_of(2, &[RawEntry::file("seq-second-escape.bin", &after, FileMeta::default())]);
    broken[..4].copy_from_slice(b"XXXX");
    stream.send_chunk(1, &broken, broken.len() as u64);
    let (code, message) = stream.expect_error();
    assert_eq!(code, ErrorCode::BadRequest, "{message}");
    assert!(message.contains("malformed batch: bad magic"), "{message}");
    assert!(fs::read(tree.out().join("seq-first.bin")).unwrap() == after);
    assert!(!tree.out().join("seq-second-escape.bin").exists());
    stream.ping(2);
    stream.close();

    published.extend(traffic.finish(&tree.out()));
    served_after_hostile_streams(&server, &tree, published, "after-malformed.bin", 200_000, 10);
}

/// After hostile streams: a real client is served as ever (its file `name` arrives
/// whole), no hostile stream's lock or temporary file is left, and the output holds
/// exactly `published` and that file.
fn served_after_hostile_streams(
    server: &Server,
    tree: &Tree,
    mut published: BTreeSet<String>,
    name: &str,
    len: usize,
    seed: u64,
) {
    let after = write_file(&tree.src(), name, len, seed);
    let output = run({
        let mut c = Command::new(CLIENT);
        c.args(["--name", &server.name]).arg(&after);
        c
    });
    assert!(output.status.success(), "{}", show(&output));
    assert!(fs::read(tree.out().join(name)).unwrap() == fs::read(&after).unwrap());
    published.insert(name.to_owned());

    wait_until("hostile streams' lock files removed", || server.stream_locks().len() <= 1);
    assert!(server.temp_files().is_empty(), "temporary files left: {:?}", server.temp_files());
    tree.assert_only_published_paths(&published);
    assert_alive(server);
}

/// `Release` between files frees the stream's ring (the buffers go back to the
/// allocator, the slots are taken away) and the stream goes on: its next file gets
/// a new ring. In the middle of a file it is refused, and only that stream fails.
#[test]
fn release_frees_the_ring_between_files_and_is_refused_mid_file() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("release"), &tree.out(), &[]);
    let rogue = Rogue::connect(&server.name);
    let mut s = rogue.take();
    let (slots, _) = s.start_batches();
    let before = server.status(false);
    assert!(!before.contains("(0 B in buffers)"), "the batch ring is in the buffer area:\n{before}");
    s.post(&ClientCommand::Release);
    assert_eq!(s.reply(), ServerReply::Done { bytes: 0 }, "{}", s.label());
    let after = server.status(false);
    assert!(after.contains("(0 B in buffers)"), "the released ring's buffers went back:\n{after}");
    assert!(s.ring_revoked(slots), "the released slots are no longer the client's");
    assert_eq!(s.record.nslots.load(Ordering::Relaxed), 0);
    // The stream goes on: a file gets a new ring and arrives.
    let data = pattern(5000, 3);
    assert_eq!(s.open("after-release.bin", data.len() as u64).0, 1);
    s.write_buffer(0, &data);
    s.send_chunk(0, &data, data.len() as u64);
    s.post(&ClientCommand::Release);
    let (code, message) = s.expect_error();
    assert_eq!(code, ErrorCode::BadRequest, "{message}");
    assert!(message.contains("not valid in this state"), "{message}");
    assert!(!tree.out().join("after-release.bin").exists(), "a file cut short by a refused command arrived");
    assert!(!has_exited(server.pid()));
}

/// A client that keeps handing over slots after its finish command does not hold the
/// server's worker (and every stream it serves): the server drains what was handed
/// over before the command, then refuses the stream, and a real client on the same
/// single worker is served meanwhile.
#[test]
fn data_handed_over_after_finish_fails_the_stream_instead_of_holding_its_worker() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("pastfinish"), &tree.out(), &["--workers", "1"]);
    let rogue = Rogue::connect(&server.name);
    // Three rounds: a server without the bound can win the race now and then (the
    // feeder falls behind a ring), not three times in a row.
    for _ in 0..3 {
        refused_after_finish(&rogue);
    }
    // The worker serves others again; nothing of the refused files is left.
    wait_until("the refused files' temporary files removed", || server.temp_files().is_empty());
    served_after_hostile_streams(&server, &tree, BTreeSet::new(), "after.bin", 4096, 5);
}

/// One rogue stream that keeps every slot full through its finish command: refused
/// promptly, having drained at most about a ring more.
fn refused_after_finish(rogue: &Rogue) {
    let mut s = rogue.take();
    let meta = FileMeta { size_is_hint: true, ..FileMeta::default() };
    s.post(&ClientCommand::Open { name: "endless.bin".into(), size: 1 << 40, meta });
    let (slots, chunk) = match s.reply() {
        ServerReply::Opened { slots, chunk } => (slots as usize, chunk),
        other => panic!("expected Opened, got {other:?}"),
    };
    let (record, segment) = (s.record, s.segment);
    let (stop, finished) = (AtomicBool::new(false), AtomicBool::new(false));
    let reply = std::thread::scope(|scope| {
        // Every slot handed back is handed over again at once, full, for up to 30 s.
        scope.spawn(|| {
            let until = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                for slot in &record.slots[..slots] {
                    if slot.state.load(Ordering::Acquire) == SlotState::Empty as u32 {
                        slot.len.store(chunk, Ordering::Relaxed);
                        slot.state.store(SlotState::Full as u32, Ordering::Release);
                        if !finished.load(Ordering::Relaxed) {
                            segment.doorbell(record).notify();
                        }
                    }
                }
                std::hint::spin_loop();
            }
        });
        wait_until("a few rings' worth drained", || {
            record.bytes_done.load(Ordering::Relaxed) >= 2 * slots as u64 * chunk
        });
        let before = record.bytes_done.load(Ordering::Relaxed);
        finished.store(true, Ordering::Relaxed);
        s.post(&ClientCommand::Finish { size: 1 << 40, checksum: 0 });
        let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.reply_within(Duration::from_secs(10))
        }));
        stop.store(true, Ordering::Relaxed);
        let after = record.bytes_done.load(Ordering::Relaxed);
        let reply =
            reply.unwrap_or_else(|_| panic!("no reply to the finish command while the client kept writing"));
        // What the worker drained while the command came in, what was handed over
        // before it, and at most one more ring (without the bound: gigabytes).
        let ring = slots as u64 * chunk;
        assert!(after - before <= 4 * ring, "drained {} bytes after the finish command", after - before);
        reply
    });
    match reply {
        // Refused for the slots after the command, or, when the server drained
        // faster than they came, for a file shorter than it said.
        ServerReply::Error { code: ErrorCode::BadRequest, message } => {
            assert!(message.contains("after its finish command"), "{message}")
        }
        ServerReply::Error { code: ErrorCode::Checksum, message } => {
            assert!(message.contains("size mismatch"), "{message}")
        }
        other => panic!("expected the stream refused, got {other:?}"),
    }
    s.close();
}

/// A reply written into a client's record by someone who took the record over (its
/// GUID rewritten) is never taken for the server's answer: the client fails the
/// file instead of believing it (here a forged `Skipped`, which a client that asked
/// to skip existing files would take for a success).
#[test]
fn a_reply_in_a_record_that_changed_hands_is_not_believed() {
    let tree = Tree::new();
    let server = Server::start(&unique_name("forged"), &tree.out(), &[]);
    let source = write_file(&tree.src(), "victim.bin", 300_000, 31);
    let config = write_config(&tree.src(), &[&source]);
    let probe = Probe::open(&server.name);
    let record = probe.record(probe.wait_offer());
    // The server sleeps: the client takes the record on offer and waits for its answer.
    signal(server.pid(), "STOP");
    let client = Running::spawn({
        let mut c = server.patient_client(&config);
        c.args(["--skip-existing", "1"]);
        c
    });
    wait_until("the client's command", || record.c2s.seq.load(Ordering::Acquire) != 0);
    let guid = load_guid(&record.guid);
    let (hi, lo) = Uuid::new_v4().as_u64_pair();
    record.guid[0].store(hi, Ordering::Relaxed);
    record.guid[1].store(lo, Ordering::Relaxed);
    protocol::post(&record.s2c, 1, S2C_SKIPPED, [0; 4], &[]);
    record.client_event.notify();
    let output = client.finish();
    signal(server.pid(), "CONT");
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr_of(&output).contains("given to another stream"), "{}", show(&output));
    assert_ne!(guid, load_guid(&record.guid));
    // The server goes on serving others, and the victim's file was not published.
    served_after_hostile_streams(&server, &tree, BTreeSet::new(), "after.bin", 5_000, 32);
}

// ---------------------------------------------------------------------------------
// Stray writes into the segment's own areas.
// ---------------------------------------------------------------------------------

/// A stray write over the GUID handout (its state, or the GUID on offer) would
/// leave every client waiting for an offer that never comes, and one over the
/// header's magic number would have every client refuse the segment: the server
/// notices both on its next round, puts them back, says so, and goes on serving.
#[test]
fn stray_writes_over_the_handout_and_the_header_are_put_back() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(&unique_name("strayhead"), out.path(), &[]);
    let rogue = Rogue::connect(&server.name);
    let send = |name: &str| {
        let file = write_file(src.path(), name, 5000, 7);
        let mut command = Command::new(CLIENT);
        command.args(["--name", &server.name, "--timeout", "10"]).arg(&file);
        let output = run(command);
        assert_eq!(output.status.code(), Some(0), "{name}: {}", show(&output));
        assert!(fs::read(out.path().join(name)).unwrap() == fs::read(&file).unwrap(), "{name} differs");
    };

    // Notices go to stderr: wait until one holding `text` was said `times` times.
    let said = |text: &str, times: usize| {
        wait_until(text, || server.stderr().iter().filter(|l| l.contains(text)).count() >= times);
        server.stderr().into_iter().rfind(|l| l.contains(text)).unwrap()
    };
    let handout = "the GUID handout was overwritten";
    rogue.wait_beats(2);
    rogue.segment.handout().state.store(0, Ordering::SeqCst);
    said(handout, 1);
    send("after-state.txt");

    rogue.wait_beats(2);
    rogue.segment.handout().guid[0].fetch_add(1, Ordering::SeqCst);
    said(handout, 2);
    send("after-guid.txt");

    rogue.segment.header().magic.store(0x0bad_0bad, Ordering::SeqCst);
    rogue.segment.header().segment_size.store(7, Ordering::SeqCst);
    rogue.segment.header().server_started.fetch_add(1, Ordering::SeqCst);
    rogue.segment.header().server_state.store(0, Ordering::SeqCst);
    // Each put back, in one round or several.
    let header = "the segment's header was overwritten";
    wait_until("every field put back", || {
        let notices: Vec<String> = server.stderr().into_iter().filter(|l| l.contains(header)).collect();
        ["segment size", "magic number", "start time", "state"]
            .iter()
            .all(|field| notices.iter().any(|l| l.contains(field)))
    });
    send("after-magic.txt");
    assert_alive(&server);
}
