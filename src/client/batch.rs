//! Batch mode on one stream (see `crate::batch`): small files and folders are packed
//! into ring slots, a whole slot is handed over at once, and the next slot is filled
//! while the server publishes the previous one. An item counts as sent only when its
//! slot came back with the server's result for it.

use std::sync::Mutex;
use std::time::Instant;

use super::send::{open_source_reading, slot_error, wait_for_slot, Input, Opened, Reads};
use super::session::{Connection, Session};
use super::{commit_unsent, failed, Delivered, ItemResult, Progress, SendError, SendOptions};
use crate::batch::{
    self, max_entries, EntryKind, Outcome, BATCH_FILE_MAX, ENTRY_LEN, HEADER_LEN, MAX_ENTRIES,
};
use crate::protocol::{ClientCommand, FileMeta, ServerReply};
use crate::ring::Producer;
use crate::segment::{Buffer, MAX_SLOTS};
use crate::sources::{Item, Kind, Source};
use crate::sys;

/// Hears the end of an item: its index, result and when it was taken up.
pub(super) type Report<'r> = &'r dyn Fn(usize, ItemResult, Instant);

/// An item in a batch, waiting for its result.
struct Packed {
    index: usize,
    bytes: u64,
    started: Instant,
    /// A `KIND_STAGE` entry: `Done(token)` (staged) or `Done(0)` both succeed.
    stage: bool,
    /// A file the client asked to skip if it exists: only then is `Skipped` an answer.
    skippable: bool,
}

/// A batch handed over, by slot.
struct InFlight {
    seq: u64,
    entries: Vec<Packed>,
}

/// The slot being filled.
struct Packing<'a> {
    buffer: Buffer<'a>,
    used: usize,
    entries: Vec<Packed>,
}

/// One stream in batch mode.
pub(super) struct Batcher<'a> {
    session: Session<'a>,
    ring: Producer<'a>,
    chunk: usize,
    in_flight: Vec<Option<InFlight>>,
    packing: Option<Packing<'a>>,
    next_seq: u64,
    /// Entries after which the slot is handed over: small at first, so the server
    /// starts at once, doubling up to `MAX_ENTRIES` while the pipeline fills.
    limit: usize,
    /// Slots not filled yet by this process, by bit: their pages are mapped in
    /// (`Buffer::prefault`) before the first fill.
    fresh: u64,
}

/// Entries in a stream's first batch.
const FIRST_LIMIT: usize = 8;

/// Whether `item` goes into a batch: a folder, or a file not known to be too large
/// when planned (its size is checked when it is opened).
pub(super) fn batchable(item: &Item) -> bool {
    match item.kind {
        Kind::Dir { .. } => true,
        Kind::File => {
            matches!(item.source, Source::Path { .. })
                && item.size_hint.is_none_or(|size| size <= BATCH_FILE_MAX)
        }
    }
}

/// Commits staged folders, `(name, token)` each, in one batch on `session` (the
/// stream held aside for them; `None`: none is left, for the reason `no_stream`),
/// and gives each its result, in order: the server's answer, or, where it was not
/// answered (the stream failed first), why it was not sent (`commit_unsent`).
pub(super) fn commit_all(
    connection: &Connection,
    session: Option<Session<'_>>,
    staged: &[(&str, u64)],
    progress: &dyn Progress,
    no_stream: &str,
) -> Vec<ItemResult> {
    if staged.is_empty() {
        return Vec::new();
    }
    let commits: Vec<Mutex<Option<ItemResult>>> = staged.iter().map(|_| Mutex::new(None)).collect();
    let record = |at: usize, result: ItemResult, _: Instant| {
        *commits[at].lock().expect("commit lock") = Some(result);
    };
    let unsent = |at: usize, why: &dyn std::fmt::Display| commit_unsent(connection, staged[at].0, why);
    let answered = match session.map(Batcher::start) {
        None => false,
        Some(Ok(mut batcher)) => {
            let mut broken = None;
            for (at, &(name, token)) in staged.iter().enumerate() {
                match batcher.add(at, name, Prepared::commit(token, Instant::now()), progress, &record) {
                    Ok(None) => {}
                    // Not for a batch (a name longer than a slot holds).
                    Ok(Some(_)) => record(at, Err(unsent(at, &"it does not fit a batch")), Instant::now()),
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            match broken {
                Some(e) => {
                    batcher.fail_all(&e, &record);
                    false
                }
                None => batcher.finish(&record).is_some(),
            }
        }
        Some(Err(e)) => {
            (0..staged.len()).for_each(|at| record(at, Err(e.clone()), Instant::now()));
            false
        }
    };
    commits
        .into_iter()
        .enumerate()
        .map(|(at, commit)| match commit.into_inner().expect("commit lock") {
            Some(Ok(done)) => Ok(done),
            // The stream failed: a commit's error is the stream's, not the server's
            // answer about the folder.
            Some(Err(e)) if !answered => Err(unsent(at, &e)),
            Some(Err(e)) => Err(e),
            None if !answered => Err(unsent(at, &no_stream)),
            None => Err(failed("the folder's commit was not answered")),
        })
        .collect()
}

/// An item opened and found small enough for a batch.
pub(super) struct Prepared {
    what: Content,
    /// Bytes to read: one more than the file should hold, to see it grew.
    want: usize,
    started: Instant,
}

/// What a batch entry holds.
enum Content {
    Dir {
        mode: u32,
    },
    /// A new top-level folder to stage (`crate::batch::KIND_STAGE`).
    Stage {
        mode: u32,
    },
    /// Publish a staged folder (`crate::batch::KIND_COMMIT`) with its stage's token.
    Commit {
        token: u64,
    },
    /// A file to read into the slot.
    File(Box<Opened<'static>>),
    /// Bytes already here (a relay's file), with their metadata.
    Memory(Vec<u8>, FileMeta),
}

impl Prepared {
    /// A file whose bytes are already in memory (at most `BATCH_FILE_MAX`).
    pub(super) fn memory(data: Vec<u8>, meta: FileMeta, started: Instant) -> Prepared {
        let want = data.len();
        Prepared { what: Content::Memory(data, meta), want, started }
    }

    /// A folder with permission bits `mode`.
    pub(super) fn dir(mode: u32, started: Instant) -> Prepared {
        Prepared { what: Content::Dir { mode }, want: 0, started }
    }

    /// A new top-level folder, made under a hidden name until `commit` (the result's
    /// `Delivered::Sent { bytes: token }` says it was staged, with the token its
    /// commit must carry; `0` that it was made as a plain folder).
    pub(super) fn stage(mode: u32, started: Instant) -> Prepared {
        Prepared { what: Content::Stage { mode }, want: 0, started }
    }

    /// Publishes the staged folder sent as this entry's name.
    pub(super) fn commit(token: u64, started: Instant) -> Prepared {
        Prepared { what: Content::Commit { token }, want: 0, started }
    }

    /// The bytes of a file prepared from memory.
    pub(super) fn into_memory(self) -> Option<Vec<u8>> {
        match self.what {
            Content::Memory(data, _) => Some(data),
            _ => None,
        }
    }
}

/// What `prepare` found an item to be.
pub(super) enum Prepare {
    /// It goes into a batch.
    Batch(Prepared),
    /// It goes on its own: too large for a batch (reopened when its turn comes,
    /// so that a folder of large files does not hold a descriptor each), or not a
    /// regular file (a FIFO: kept open, its writer may have written and gone).
    Alone(Option<std::fs::File>),
}

/// Opens `item` and says whether it goes into a batch or on its own; `Err`: it
/// failed here.
pub(super) fn prepare(item: &Item, options: &SendOptions) -> Result<Prepare, SendError> {
    let started = Instant::now();
    let opened = match item.kind {
        Kind::Dir { mode } => return Ok(Prepare::Batch(Prepared::dir(mode, started))),
        Kind::File => open_source_reading(item, options, Reads::MayWouldBlock)?,
    };
    let want = match (&opened.input, opened.regular.is_some(), opened.exact) {
        (Input::File(_), true, Some(size)) if size <= BATCH_FILE_MAX => size as usize + 1,
        // Empty, or a /proc file: read to its end, up to what a batch takes.
        (Input::File(_), true, None) if opened.hint <= BATCH_FILE_MAX => BATCH_FILE_MAX as usize + 1,
        (Input::File(_), true, _) => return Ok(Prepare::Alone(None)),
        _ => {
            let (Input::File(file) | Input::Pipe(file)) = opened.input else {
                return Ok(Prepare::Alone(None));
            };
            return Ok(Prepare::Alone(Some(file)));
        }
    };
    Ok(Prepare::Batch(Prepared { what: Content::File(Box::new(opened)), want, started }))
}

impl<'a> Batcher<'a> {
    /// Puts `session` in batch mode: the server answers with a ring.
    pub(super) fn start(mut session: Session<'a>) -> Result<Batcher<'a>, SendError> {
        session.post(&ClientCommand::Batch)?;
        let (slots, chunk) = match session.wait_reply()? {
            ServerReply::Opened { slots, chunk } => (slots as usize, chunk),
            other => return Err(super::send::reply_error(other)),
        };
        let least = (HEADER_LEN + ENTRY_LEN) as u64;
        if slots == 0 || slots > MAX_SLOTS || chunk < least || chunk > 1 << 30 {
            return Err(failed(format!("the server offered a batch ring of {slots} slots of {chunk} bytes")));
        }
        // No one-step put into slot 0 after the batches: the server reads a slot
        // handed over in batch mode as a batch until the next command, and a put's
        // bytes go into the slot before its command (they failed as a malformed
        // batch, and the put then found its slot empty). The next file opens the
        // ring again (`Open` ends batch mode).
        session.kept_slot = None;
        let ring = Producer::new(&session.connection.segment, session.record, slots);
        Ok(Batcher {
            session,
            ring,
            chunk: chunk as usize,
            in_flight: (0..slots).map(|_| None).collect(),
            packing: None,
            next_seq: 1,
            limit: FIRST_LIMIT,
            fresh: u64::MAX,
        })
    }

    /// Packs item `index`, prepared by `prepare` (or `Prepared::memory`/`dir`).
    /// `Ok(None)`: packed (its result comes with its slot), or already reported (it
    /// failed on this side: a source that cannot be read). `Ok(Some)`: not for a
    /// batch after all (larger than planned, or than a slot): send it on its own.
    /// `Err`: the stream failed; the caller ends the batcher with `fail_all`.
    pub(super) fn add(
        &mut self,
        index: usize,
        name: &str,
        prepared: Prepared,
        progress: &dyn Progress,
        report: Report<'_>,
    ) -> Result<Option<Prepared>, SendError> {
        let need = batch::entry_space(name.len(), prepared.want);
        if HEADER_LEN + need > self.chunk {
            return Ok(Some(prepared));
        }
        let Prepared { what, want, started } = prepared;
        let name = name.as_bytes();
        let full = self.packing.as_ref().is_some_and(|p| {
            p.used + need > self.chunk || p.entries.len() >= self.limit.min(max_entries(self.chunk))
        });
        if full {
            self.hand_over()?;
        }
        if self.packing.is_none() {
            self.take_slot(report)?;
        }
        let packing = self.packing.as_mut().expect("a slot to pack into");
        let at = packing.used;
        let data_at = at + ENTRY_LEN + name.len();
        let kind = match &what {
            Content::Dir { mode } => EntryKind::Dir { mode: *mode },
            Content::Stage { mode } => EntryKind::Stage { mode: *mode },
            Content::Commit { token } => EntryKind::Commit { token: *token },
            Content::Memory(data, meta) => {
                packing.buffer.write_at(data_at, data);
                EntryKind::File { size: data.len() as u64, checksum: crate::checksum::of(data), meta: *meta }
            }
            Content::File(opened) => {
                let Input::File(file) = &opened.input else { unreachable!("only files are read here") };
                let got = match read_into(&packing.buffer, file, data_at, want, opened.exact) {
                    Ok(got) => got,
                    Err(e) => {
                        report(index, Err(e.into()), started);
                        return Ok(None);
                    }
                };
                let problem = match opened.exact {
                    Some(size) if got as u64 > size => Some("the source file grew while it was being sent"),
                    Some(size) if (got as u64) < size => {
                        Some("the source file shrank while it was being sent")
                    }
                    // Read to its end (/proc, or empty when planned): larger than a batch takes.
                    None if got == want => return Ok(Some(Prepared { what, want, started })),
                    _ => None,
                };
                if let Some(problem) = problem {
                    report(index, Err(failed(problem)), started);
                    return Ok(None);
                }
                let checksum = crate::checksum::of(packing.buffer.bytes_at(data_at, got));
                EntryKind::File { size: got as u64, checksum, meta: opened.meta }
            }
        };
        let (bytes, stage, skippable) = match kind {
            EntryKind::File { size, meta, .. } => (size, false, meta.skip_existing),
            EntryKind::Stage { .. } => (0, true, false),
            EntryKind::Dir { .. } | EntryKind::Commit { .. } => (0, false, false),
        };
        packing.buffer.write_at(at, &batch::entry_header(&kind, name.len()));
        packing.buffer.write_at(at + ENTRY_LEN, name);
        packing.used = batch::align(data_at + bytes as usize);
        packing.entries.push(Packed { index, bytes, started, stage, skippable });
        if bytes > 0 {
            progress.bytes(bytes);
        }
        Ok(None)
    }

    /// Waits for the next slot; if it carries the results of an earlier batch,
    /// reports them. Then it is ours to fill.
    fn take_slot(&mut self, report: Report<'_>) -> Result<(), SendError> {
        self.collect(report)?;
        let buffer = self.ring.buffer(self.chunk as u64).map_err(|e| slot_error(&mut self.session, e))?;
        let slot = self.ring.next_index();
        if self.fresh & (1 << slot) != 0 {
            self.fresh &= !(1 << slot);
            buffer.prefault();
        }
        self.packing = Some(Packing { buffer, used: HEADER_LEN, entries: Vec::new() });
        Ok(())
    }

    /// Waits until the next slot is back and reports the results it holds, if any.
    fn collect(&mut self, report: Report<'_>) -> Result<(), SendError> {
        wait_for_slot(&mut self.session, &self.ring)?;
        let slot = self.ring.next_index();
        let Some(sent) = self.in_flight[slot].take() else { return Ok(()) };
        if self.ring.capacity() != self.chunk as u64 {
            self.in_flight[slot] = Some(sent);
            return Err(failed("the server changed a batch slot's size"));
        }
        let buffer = match self.ring.buffer(self.chunk as u64) {
            Ok(buffer) => buffer,
            Err(e) => {
                self.in_flight[slot] = Some(sent);
                return Err(slot_error(&mut self.session, e));
            }
        };
        let outcomes = match batch::decode_results(buffer.bytes(self.chunk), sent.seq, sent.entries.len()) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                self.in_flight[slot] = Some(sent);
                return Err(failed(e.to_string()));
            }
        };
        for (packed, outcome) in sent.entries.into_iter().zip(outcomes) {
            let result = match outcome {
                Outcome::Done(bytes) if bytes == packed.bytes => Ok(Delivered::Sent { bytes }),
                Outcome::Done(token) if packed.stage => Ok(Delivered::Sent { bytes: token }),
                Outcome::Done(bytes) => {
                    Err(failed(format!("server stored {bytes} bytes, expected {}", packed.bytes)))
                }
                Outcome::Skipped if packed.skippable => Ok(Delivered::Skipped),
                Outcome::Skipped => Err(failed("the server skipped a file it was not asked to skip")),
                Outcome::Failed(code, message) => {
                    Err(super::send::reply_error(ServerReply::Error { code, message }))
                }
            };
            report(packed.index, result, packed.started);
        }
        Ok(())
    }

    /// Hands the slot being filled to the server.
    pub(super) fn hand_over(&mut self) -> Result<(), SendError> {
        let Some(packing) = self.packing.take() else { return Ok(()) };
        if packing.entries.is_empty() {
            // Nothing packed: the slot stays ours and is filled next.
            self.packing = Some(packing);
            return Ok(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.limit = (self.limit * 2).min(MAX_ENTRIES);
        packing.buffer.write_at(0, &batch::batch_header(packing.entries.len() as u32, seq));
        let slot = self.ring.next_index();
        self.in_flight[slot] = Some(InFlight { seq, entries: packing.entries });
        self.ring.hand_over(packing.used as u64);
        Ok(())
    }

    /// Hands over what is packed, waits for every result, and gives the stream back
    /// (still with its ring) for items sent on their own; `None` if the stream
    /// failed meanwhile (every item it held is then reported failed).
    pub(super) fn finish(mut self, report: Report<'_>) -> Option<Session<'a>> {
        match self.drain(report) {
            Ok(()) => Some(self.session),
            Err(e) => {
                self.fail_all(&e, report);
                None
            }
        }
    }

    fn drain(&mut self, report: Report<'_>) -> Result<(), SendError> {
        if sys::stop_signal().is_some() && !self.session.watchdog.outlast_stop {
            // Ctrl-C: what is packed is not handed over; what is in flight is heard.
            for packed in self.packing.take().map(|p| p.entries).unwrap_or_default() {
                report(packed.index, Err(SendError::Interrupted), packed.started);
            }
        }
        self.hand_over()?;
        self.packing = None;
        for _ in 0..self.in_flight.len() {
            if self.in_flight[self.ring.next_index()].is_some() {
                self.collect(report)?;
            }
            self.ring.skip();
        }
        Ok(())
    }

    /// The stream failed: every item packed or in flight fails with `error`, and the
    /// stream is given up.
    pub(super) fn fail_all(mut self, error: &SendError, report: Report<'_>) {
        let packing = self.packing.take().map(|p| p.entries).unwrap_or_default();
        let in_flight = self.in_flight.iter_mut().filter_map(Option::take).flat_map(|sent| sent.entries);
        for packed in packing.into_iter().chain(in_flight) {
            report(packed.index, Err(error.clone()), packed.started);
        }
        self.session.abort(&error.to_string());
    }
}

/// Reads up to `want` bytes of `file` into `buffer` at `at`, to its end or `want`.
/// A regular file of `exact` bytes ends at the first short read that reaches its
/// size (Linux reads a regular file short only at its end): no second `read` to
/// see the end, as `cp` makes. A file read to its end (`None`) stops at 0. A file
/// still non-blocking that has nothing yet is made blocking and read again.
fn read_into(
    buffer: &Buffer<'_>,
    file: &std::fs::File,
    at: usize,
    want: usize,
    exact: Option<u64>,
) -> std::io::Result<usize> {
    let mut got = 0;
    let mut blocking = false;
    while got < want {
        let n = match buffer.read_at(file, at + got, want - got) {
            // Opened with `Reads::MayWouldBlock`: block from now on, as `cat` would.
            // Once only: a file that says EAGAIN to a blocking read (a FUSE daemon, a
            // driver's attribute) fails as it did before, rather than spin.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !blocking => {
                sys::clear_nonblocking(std::os::fd::AsFd::as_fd(file))?;
                blocking = true;
                continue;
            }
            read => read?,
        };
        if n == 0 {
            break;
        }
        got += n;
        if got < want && exact == Some(got as u64) {
            break;
        }
    }
    Ok(got)
}
