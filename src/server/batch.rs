//! A stream in batch mode: each slot the client hands over holds a batch of small
//! files and folders (see `crate::batch`); every entry is checked and published on
//! its own, and the results go back in the same slot. A batch whose framing is
//! wrong fails the stream and publishes nothing.

use super::stream::{
    checksum_mismatch, failure, overwrites, publish, refuse_reserved, sink_failure, Failure, Staged, State,
    Stream, Transfer,
};
use super::*;
use crate::batch::{self, Entry, EntryKind, Outcome, BATCH_CHUNK};

/// Folders one client may have staged and not committed at once; more are made in
/// place (each costs a few hundred bytes and a rename when the client ends).
pub(super) const MAX_STAGES: usize = 4096;

impl Stream {
    /// `Batch`: a ring for batches (kept if the stream has a large enough one), then
    /// `Opened`; without space the stream waits, as a file does.
    pub(super) fn start_batch(&mut self, shared: &Shared) {
        // What a failure of the stream itself is reported under ("failed LABEL: ...").
        self.label = format!("batch stream of client pid {}", self.client_pid);
        self.state = State::BatchWaitingForSpace;
        self.try_start_batch(shared);
    }

    /// Arms the batch ring if there is room; else tried again on the next pass.
    pub(super) fn try_start_batch(&mut self, shared: &Shared) -> bool {
        if !matches!(self.state, State::BatchWaitingForSpace) {
            return false;
        }
        let area = shared.segment.layout().area_end - shared.segment.layout().area_start;
        let chunk = ring::chunk_size(BATCH_CHUNK, area);
        if !self.arm_ring(shared, chunk, ring::WANTED_SLOTS) {
            return false;
        }
        self.state = State::Batching;
        let reply = ServerReply::Opened { slots: self.ring.buffers().len() as u32, chunk: self.ring.chunk() };
        self.last_activity = Instant::now();
        // The reply's Release publishes the slot fields `arm_ring` wrote.
        self.reply(shared, reply);
        true
    }

    /// Publishes every batch the client handed over, in ring order, and hands each
    /// slot back with its results.
    pub(super) fn drain_batches(&mut self, shared: &Shared) -> Result<bool, Failure> {
        let record = shared.segment.record(self.offset).expect("own record");
        let mut moved = false;
        for _ in 0..self.ring.buffers().len() {
            let Some(FullSlot { offset, capacity, len, .. }) = self.ring.next_full(record) else { break };
            if len == 0 || len > capacity {
                let message = format!("bad batch length {len} (slot capacity {capacity})");
                return Err(failure(ErrorCode::BadRequest, message));
            }
            let buffer = shared
                .segment
                .buffer(offset, capacity)
                .map_err(|e| failure(ErrorCode::BadRequest, e.to_string()))?;
            let results = self.run_batch(shared, buffer.bytes(len as usize), capacity as usize)?;
            buffer.copy_from(&results);
            // SYNC POINT (slot hand-over): the results above go with the slot's
            // Release store of EMPTY in `release`.
            self.ring.release(record);
            moved = true;
        }
        if moved {
            self.last_activity = Instant::now();
        }
        Ok(moved)
    }

    /// Checks and publishes one batch; returns the results to write back.
    fn run_batch(&mut self, shared: &Shared, bytes: &[u8], capacity: usize) -> Result<Vec<u8>, Failure> {
        let (seq, entries) =
            batch::decode_batch(bytes).map_err(|e| failure(ErrorCode::BadRequest, e.to_string()))?;
        let mut outcomes: Vec<Outcome> =
            entries.iter().map(|entry| self.batch_entry(shared, entry, bytes)).collect();
        self.flush_stage_counts();
        if shared.options.sync == SyncMode::Batch && outcomes.iter().any(|o| matches!(o, Outcome::Done(_))) {
            if let Err(e) = shared.sink.flush() {
                for (outcome, entry) in outcomes.iter_mut().zip(&entries) {
                    let Outcome::Done(bytes) = *outcome else { continue };
                    let reason = format!("published, but not flushed: {e}");
                    // Counted once, as a failure, and said (a published file has no
                    // line of its own by default).
                    if matches!(entry.kind, Ok(EntryKind::File { .. })) {
                        self.tally.unpublish(bytes);
                    }
                    let name = entry.name.clone().unwrap_or_else(|_| "(a batch entry)".to_owned());
                    self.event(shared, &ServerEvent::Failed { name, reason: reason.clone() });
                    *outcome = Outcome::Failed(ErrorCode::Io, reason);
                }
            }
        }
        Ok(batch::encode_results(seq, &outcomes, capacity))
    }

    /// One entry, on its own: a bad one fails alone and is reported.
    fn batch_entry(&mut self, shared: &Shared, entry: &Entry, bytes: &[u8]) -> Outcome {
        let header = shared.segment.header();
        let result = self.publish_entry(shared, entry, bytes);
        match result {
            Ok(outcome) => {
                // Relaxed: counters for status only.
                header.streams_done.fetch_add(1, Ordering::Relaxed);
                if outcome == Outcome::Skipped {
                    self.tally.skipped += 1;
                }
                outcome
            }
            Err(Failure { code, message }) => {
                header.streams_failed.fetch_add(1, Ordering::Relaxed);
                let name = match &entry.name {
                    Ok(name) => name.clone(),
                    Err(_) => "(a batch entry)".to_owned(),
                };
                self.event(shared, &ServerEvent::Failed { name, reason: message.clone() });
                Outcome::Failed(code, message)
            }
        }
    }

    fn publish_entry(&mut self, shared: &Shared, entry: &Entry, bytes: &[u8]) -> Result<Outcome, Failure> {
        let (name, kind) = entry.check().map_err(|e| failure(ErrorCode::BadRequest, e.0))?;
        refuse_reserved(name)?;
        let found = self.staged(name);
        let live = found.as_ref().map(Staged::live);
        let staged = found.as_ref().filter(|_| live.as_ref().is_some_and(|live| **live));
        let is_file = matches!(kind, EntryKind::File { .. });
        match self.publish_checked(shared, name, kind, staged, entry, bytes) {
            Ok(Outcome::Done(written)) if is_file => {
                if let Some(s) = staged {
                    self.count_staged(s.stage(), written);
                }
                Ok(Outcome::Done(written))
            }
            Ok(outcome) => Ok(outcome),
            Err(failure) => Err(match staged {
                Some(s) => s.unhide(failure, name),
                None => failure,
            }),
        }
    }

    /// `publish_entry` for a checked entry; beneath a staged folder (`staged`), made
    /// under the folder's hidden name, with no temporary name.
    fn publish_checked(
        &mut self,
        shared: &Shared,
        name: &str,
        kind: EntryKind,
        staged: Option<&Staged>,
        entry: &Entry,
        bytes: &[u8],
    ) -> Result<Outcome, Failure> {
        let real = staged.map_or(name, |s| s.real.as_str());
        let (size, checksum, meta) = match kind {
            EntryKind::Dir { mode } => {
                self.sink.make_dir(real, mode | 0o700).map_err(sink_failure)?;
                return Ok(Outcome::Done(0));
            }
            EntryKind::Stage { mode } => return self.stage(shared, name, mode),
            EntryKind::Commit { token } => return self.commit(name, token),
            EntryKind::File { size, checksum, meta } => (size, checksum, meta),
        };
        if let Some(max) = shared.options.max_file_size.filter(|&max| size > max) {
            return Err(super::stream::too_big(name, max));
        }
        // The client's --skip-existing wins over the server's --overwrite.
        if meta.skip_existing && self.sink.exists(real) {
            return Ok(Outcome::Skipped);
        }
        let mode = meta.mode.unwrap_or(shared.default_mode);
        if size == 0 && entry.data.is_empty() {
            return self.publish_empty(shared, (name, real), checksum, mode, meta);
        }
        // Written straight from the slot, then checked, as a large file's chunks are:
        // no private copy (a third pass over every byte), and a byte changed in the
        // slot before the write took it (a stray write into the segment) is still in
        // the slot for the check, which fails the file. A client that writes into a
        // slot it handed over can only spoil its own file, as it could by sending
        // other bytes.
        let data = &bytes[entry.data.clone()];
        let mut file = match staged {
            Some(_) => self.sink.create_private(real, mode),
            None => self.sink.create(real, mode),
        }
        .map_err(sink_failure)?;
        if !data.is_empty() {
            if let Err(e) = file.write(data) {
                file.discard();
                return Err(sink_failure(e));
            }
        }
        if crate::checksum::of(data) != checksum {
            file.discard();
            return Err(checksum_mismatch(name));
        }
        let transfer = Transfer {
            name: name.to_owned(),
            file,
            meta,
            size,
            written: size,
            hasher: None,
            started: Instant::now(),
        };
        match publish(shared, transfer, size, checksum)? {
            None => Ok(Outcome::Skipped),
            Some(event) => {
                self.event(shared, &event);
                Ok(Outcome::Done(size))
            }
        }
    }

    /// An empty file: checked as any other, then published in one step by the sink
    /// under `real` (`name` is the client's, for reports).
    fn publish_empty(
        &mut self,
        shared: &Shared,
        (name, real): (&str, &str),
        checksum: u64,
        mode: u32,
        meta: FileMeta,
    ) -> Result<Outcome, Failure> {
        let started = Instant::now();
        if crate::checksum::of(&[]) != checksum {
            return Err(checksum_mismatch(name));
        }
        match self.sink.publish_empty(real, mode, meta.mtime, overwrites(shared, &meta)) {
            Err(e) if e.kind == SinkErrorKind::Exists && meta.skip_existing => Ok(Outcome::Skipped),
            Err(e) => Err(sink_failure(e)),
            Ok(()) => {
                let event = ServerEvent::Published {
                    name: name.to_owned(),
                    bytes: 0,
                    seconds: started.elapsed().as_secs_f64(),
                };
                self.event(shared, &event);
                Ok(Outcome::Done(0))
            }
        }
    }

    /// `KIND_STAGE`: the new top-level folder `root` is made under a hidden name
    /// (at most `MAX_STAGES` uncommitted at once per client)
    /// (`Done(token)`, the token its commit must carry, never 0), or, if it exists
    /// or the sink does not stage, as a folder (`Done(0)`).
    fn stage(&mut self, shared: &Shared, root: &str, mode: u32) -> Result<Outcome, Failure> {
        if root.contains('/') {
            let message = format!("{}: only a top-level folder can be staged", escaped(root));
            return Err(failure(ErrorCode::BadRequest, message));
        }
        // A resend right after a client was killed, before its streams were dropped:
        // made in place and filled file by file (the dead client's stage, published
        // later, finds the name taken and is dropped, saying so), rather than staged
        // and then refused at its commit.
        let in_place = shared.staged_by_the_dead(root, self.client_pid);
        let mut stages = self.stages.lock();
        if stages.contains_key(root) {
            let message = format!("{}: already staged", escaped(root));
            return Err(failure(ErrorCode::BadRequest, message));
        }
        if in_place || stages.len() >= MAX_STAGES {
            // Each costs memory and a rename when the client ends, on this worker:
            // past the bound, a folder is made in place, as an unstaged sink does.
            drop(stages);
            self.sink.make_dir(root, mode | 0o700).map_err(sink_failure)?;
            return Ok(Outcome::Done(0));
        }
        let hidden = format!("{}{}.stage", temp_prefix(&shared.options.name), Uuid::new_v4().simple());
        let staged = self.sink.stage(root, &hidden, mode | 0o700).map_err(|e| {
            let mut failure = sink_failure(e);
            failure.message = failure.message.replace(&hidden, &escaped(root));
            failure
        })?;
        if !staged {
            drop(stages);
            self.sink.make_dir(root, mode | 0o700).map_err(sink_failure)?;
            return Ok(Outcome::Done(0));
        }
        let token = Uuid::new_v4().as_u64_pair().0.max(1);
        let stage =
            Stage { hidden, token, live: std::sync::RwLock::new(true), files: 0.into(), bytes: 0.into() };
        stages.insert(root.to_owned(), Arc::new(stage));
        self.stages.changed();
        Ok(Outcome::Done(token))
    }

    /// `KIND_COMMIT`: the staged folder `root` gets its name, whole, once no file
    /// is being made in it; only with the token its stage answered.
    fn commit(&mut self, root: &str, token: u64) -> Result<Outcome, Failure> {
        self.flush_stage_counts();
        let stage = self.stages.lock().get(root).filter(|s| s.token == token).cloned();
        let Some(stage) = stage else {
            let message = format!("{}: nothing of this client's is staged under that name", escaped(root));
            return Err(failure(ErrorCode::BadRequest, message));
        };
        // Once no file is being made beneath it; it stays in the map until renamed,
        // so a name beneath it that comes meanwhile waits for the lock, then is made
        // as any other (never as a folder of that name made before the rename).
        let mut live = stage.live.write().expect("stage lock");
        if !*live {
            let message = format!("{}: already committed", escaped(root));
            return Err(failure(ErrorCode::BadRequest, message));
        }
        *live = false;
        let committed = self.sink.commit(&stage.hidden, root);
        let mut stages = self.stages.lock();
        stages.remove(root);
        self.stages.changed();
        drop(stages);
        drop(live);
        committed.map_err(|e| {
            self.tally.drop_staged(&stage);
            sink_failure(e)
        })?;
        Ok(Outcome::Done(0))
    }
}
