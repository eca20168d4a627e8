//! One stream as a worker serves it: commands, the ring, one file at a time into
//! the sink, and its teardown (failed, closed, dropped for idleness, client gone).

use super::offer::Offer;
use super::*;

/// One file being received beneath the output folder, not yet under its name.
pub(super) struct Transfer {
    /// The relative path the client asked for (validated).
    pub(super) name: String,
    pub(super) file: Box<dyn SinkFile>,
    pub(super) meta: FileMeta,
    /// The announced size: exact, or only a hint (`meta.size_is_hint`).
    pub(super) size: u64,
    pub(super) written: u64,
    /// The running checksum; `None`: the bytes were checked whole before they were
    /// written (a batch entry).
    pub(super) hasher: Option<Checksum>,
    pub(super) started: Instant,
}

/// Where a stream stands; `Stream::poll` is one `match` on it.
pub(super) enum State {
    /// Waiting for a command (open, put, mkdir, ping).
    Idle,
    /// A file was opened but the segment has no room for its ring yet: the stream
    /// waits (backpressure) and is never dropped as idle meanwhile.
    WaitingForSpace(Box<Transfer>),
    /// Receiving a file through its ring.
    Receiving(Box<Transfer>),
    /// Batch mode asked for, but the segment has no room for its ring yet.
    BatchWaitingForSpace,
    /// Batch mode: every slot handed over holds a batch (see `super::batch`).
    Batching,
    /// Dropped for idleness while its client still lives: the buffers are freed, but
    /// the record is kept (and ignored) until the client exits, so a client that
    /// wakes up later reads its own error and can never touch a record the server
    /// has given to someone else.
    Dropped,
    /// The record can be freed.
    Closed,
}

/// A name beneath a folder this stream's client has staged (see
/// `crate::batch::KIND_STAGE`).
pub(super) struct Staged {
    /// The name with the top folder replaced by its hidden name.
    pub(super) real: String,
    /// The stage: hold it (`live`) while making anything beneath it.
    stage: Arc<Stage>,
    /// The length of the top folder's name at the start of the client's name.
    root_len: usize,
}

impl Staged {
    /// Holds the stage for a file or folder made beneath it now; `false` inside: it
    /// was published meanwhile, make the client's name as it is.
    pub(super) fn live(&self) -> std::sync::RwLockReadGuard<'_, bool> {
        self.stage.live.read().expect("stage lock")
    }

    /// The stage the name lies beneath.
    pub(super) fn stage(&self) -> &Arc<Stage> {
        &self.stage
    }

    /// `failure` of the client's `name` with the hidden name put back as the
    /// user's folder.
    pub(super) fn unhide(&self, mut failure: Failure, name: &str) -> Failure {
        failure.message = failure.message.replace(&self.stage.hidden, &escaped(&name[..self.root_len]));
        failure
    }
}

/// Why a stream ended badly, and whether to tell the client.
pub(super) struct Failure {
    pub(super) code: ErrorCode,
    pub(super) message: String,
}

pub(super) fn failure(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure { code, message: message.into() }
}

/// A live stream, owned by one worker.
pub(super) struct Stream {
    pub(super) offset: u64,
    pub(super) guid: Uuid,
    pub(super) lock: NamedLock,
    pub(super) client_pid: u32,
    pub(super) c2s_seen: u32,
    pub(super) s2c_seq: u32,
    pub(super) state: State,
    pub(super) last_activity: Instant,
    pub(super) last_liveness: Instant,
    /// What reports call this stream: the file name once one was asked for.
    pub(super) label: String,
    /// Private copies of the ring's (offset, capacity). Kept from one file to the
    /// next on the same stream, so small files need no new buffers.
    pub(super) ring: Consumer,
    /// This stream's way into the sink.
    pub(super) sink: Box<dyn SinkSession>,
    /// The record's `client_beat` when last seen.
    pub(super) client_beat: u32,
    /// `--sync batch`: a published file whose `Done` waits for the flush.
    pub(super) pending_done: Option<u64>,
    /// The last transfer failed and the client has not spoken since: its Finish,
    /// posted before it read the failure, is not answered again.
    pub(super) failed_transfer: bool,
    /// Its client holds more streams than `--max-streams-per-client`: every
    /// command but giving the stream back is refused.
    pub(super) over_quota: bool,
    /// What this stream published and failed, for its client's summary.
    pub(super) tally: Tally,
    /// This client's staged folders (shared by its streams).
    pub(super) stages: ClientStages,
    /// Files (and bytes) published beneath a stage not yet added to its counters:
    /// added once a batch, not once a file (both workers would fight over them).
    stage_counts: Option<(Arc<Stage>, u64, u64)>,
    /// The stage (or none) of the last top folder looked up, as of a generation of
    /// the client's stage map.
    stage_cache: Option<(u64, String, Option<Arc<Stage>>)>,
}

impl Stream {
    pub(super) fn activate(shared: &Shared, offer: Offer, pid: u32) -> Stream {
        if let Ok(record) = shared.segment.record(offer.ticket.record_offset) {
            record.client_pid.store(pid, Ordering::Relaxed);
            // SYNC POINT (record state): the client pid is visible to `status`.
            record.state.store(RECORD_ACTIVE, Ordering::Release);
        }
        let now = Instant::now();
        Stream {
            offset: offer.ticket.record_offset,
            guid: offer.ticket.guid,
            lock: offer.lock,
            client_pid: pid,
            c2s_seen: 0,
            s2c_seq: 0,
            state: State::Idle,
            last_activity: now,
            last_liveness: now,
            label: format!("stream {}", offer.ticket.guid.simple()),
            ring: Consumer::default(),
            sink: shared.sink.session(offer.ticket.guid.as_u128()),
            client_beat: 0,
            pending_done: None,
            over_quota: false,
            failed_transfer: false,
            tally: Tally::default(),
            stages: ClientStages::default(),
            stage_counts: None,
            stage_cache: None,
        }
    }

    pub(super) fn record<'a>(&self, shared: &'a Shared) -> &'a Record {
        shared.segment.record(self.offset).expect("the server's own record offset is in bounds")
    }

    /// One pass over the stream; returns whether anything happened.
    pub(super) fn poll(&mut self, shared: &Shared) -> bool {
        let progressed = match &self.state {
            State::Closed => return false,
            State::Dropped => self.handle_dropped_command(shared),
            State::WaitingForSpace(_) => self.handle_command(shared) | self.try_start_ring(shared),
            State::BatchWaitingForSpace => self.handle_command(shared) | self.try_start_batch(shared),
            State::Idle | State::Receiving(_) | State::Batching => {
                let drained = match self.drain(shared) {
                    Ok(progressed) => progressed,
                    Err(failure) => {
                        self.fail(shared, failure);
                        true
                    }
                };
                drained | self.handle_command(shared)
            }
        };
        self.check_health(shared);
        progressed
    }

    /// Whether the record can be freed.
    pub(super) fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether a file is open (receiving, or waiting for buffer space).
    pub(super) fn has_transfer(&self) -> bool {
        matches!(self.state, State::Receiving(_) | State::WaitingForSpace(_))
    }

    /// Takes the open file out of the state (which becomes `Idle`); other states stay.
    fn take_transfer(&mut self) -> Option<Box<Transfer>> {
        if !self.has_transfer() {
            return None;
        }
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Receiving(transfer) | State::WaitingForSpace(transfer) => Some(transfer),
            _ => unreachable!("checked above"),
        }
    }

    /// Moves every full slot, in ring order, into the output file.
    pub(super) fn drain(&mut self, shared: &Shared) -> Result<bool, Failure> {
        if matches!(self.state, State::Batching) {
            return self.drain_batches(shared);
        }
        let State::Receiving(transfer) = &mut self.state else { return Ok(false) };
        let record = shared.segment.record(self.offset).expect("own record");
        let mut moved = false;
        for _ in 0..self.ring.buffers().len() {
            let Some(FullSlot { offset, capacity, len, .. }) = self.ring.next_full(record) else { break };
            let past_size =
                !transfer.meta.size_is_hint && transfer.written.saturating_add(len) > transfer.size;
            if len == 0 || len > capacity || past_size {
                return Err(failure(
                    ErrorCode::BadRequest,
                    format!(
                        "bad chunk length {len} (slot capacity {capacity}, {} of {} bytes written)",
                        transfer.written, transfer.size
                    ),
                ));
            }
            if let Some(max) = shared.options.max_file_size {
                if transfer.written.saturating_add(len) > max {
                    return Err(too_big(&transfer.name, max));
                }
            }
            let buffer = shared
                .segment
                .buffer(offset, len)
                .map_err(|e| failure(ErrorCode::BadRequest, e.to_string()))?;
            transfer.file.write(buffer.bytes(len as usize)).map_err(sink_failure)?;
            // Hashed after the write: a byte a stray write changed in the slot before
            // the write took it is still there for the hash, which then fails the file.
            if let Some(hasher) = transfer.hasher.as_mut() {
                hasher.update(buffer.bytes(len as usize));
            }
            transfer.written += len;
            // Relaxed: progress for status only.
            record.bytes_done.store(transfer.written, Ordering::Relaxed);
            self.ring.release(record);
            moved = true;
        }
        if moved {
            self.last_activity = Instant::now();
        }
        Ok(moved)
    }

    /// The next complete command the client posted, if any (copied out, decoded).
    pub(super) fn next_command(
        &mut self,
        shared: &Shared,
    ) -> Option<Result<ClientCommand, protocol::ProtocolError>> {
        let record = self.record(shared);
        protocol::pending(&record.c2s, self.c2s_seen)?;
        // A write in progress (or left half-done by a dead client): next pass.
        let raw = protocol::take(&record.c2s)?;
        self.c2s_seen = raw.seq;
        Some(ClientCommand::decode(&raw))
    }

    /// Takes and answers one pending command, if any.
    pub(super) fn handle_command(&mut self, shared: &Shared) -> bool {
        let Some(command) = self.next_command(shared) else { return false };
        self.last_activity = Instant::now();
        match command {
            // Over its quota a client may only give the stream back.
            Ok(command @ (ClientCommand::Abort { .. } | ClientCommand::Close)) => {
                self.execute(shared, command)
            }
            Ok(command) if self.over_quota && self.within_quota_now(shared) => {
                // A stream the client gave back just before may have been released
                // since this one was handed out: counted again at its first command.
                self.over_quota = false;
                self.execute(shared, command)
            }
            Ok(_) if self.over_quota => {
                let limit = shared.options.max_streams_per_client;
                let message = format!(
                    "this client already has {limit} streams open (--max-streams-per-client): use fewer --jobs"
                );
                self.fail(shared, failure(ErrorCode::BadRequest, message));
            }
            Ok(command) => self.execute(shared, command),
            Err(e) => self.fail(shared, failure(ErrorCode::BadRequest, format!("malformed command: {e}"))),
        }
        true
    }

    /// Whether the client holds no more streams than its quota now, this one counted.
    fn within_quota_now(&self, shared: &Shared) -> bool {
        let clients = shared.clients.lock().expect("client count lock");
        clients
            .get(&self.client_pid)
            .is_none_or(|client| client.held <= shared.options.max_streams_per_client)
    }

    /// A dropped stream listens only for its client giving the record back.
    pub(super) fn handle_dropped_command(&mut self, shared: &Shared) -> bool {
        let Some(command) = self.next_command(shared) else { return false };
        if matches!(command, Ok(ClientCommand::Abort { .. } | ClientCommand::Close)) {
            self.drop_transfer(shared);
            self.state = State::Closed;
        }
        true
    }

    pub(super) fn execute(&mut self, shared: &Shared, command: ClientCommand) {
        // A Finish the client posted before it read that its transfer failed: the
        // failure is the answer (a second error would overwrite it in the mailbox).
        if self.failed_transfer && matches!(command, ClientCommand::Finish { .. }) {
            self.failed_transfer = false;
            return;
        }
        self.failed_transfer = false;
        // Batch mode ends with any other command (the client waited for every slot).
        if matches!(self.state, State::Batching) && !matches!(command, ClientCommand::Batch) {
            self.state = State::Idle;
        }
        match (command, &self.state) {
            (ClientCommand::Batch, State::Idle | State::Batching) => self.start_batch(shared),
            (ClientCommand::Open { name, size, meta }, State::Idle) => self.open(shared, name, size, meta),
            (ClientCommand::Put { name, size, checksum, meta }, State::Idle) => {
                self.put(shared, name, size, checksum, meta)
            }
            (ClientCommand::Mkdir { name, mode }, State::Idle) => self.mkdir(shared, name, mode),
            (ClientCommand::Release, State::Idle) => {
                self.free_ring(shared);
                self.reply(shared, ServerReply::Done { bytes: 0 })
            }
            (ClientCommand::Finish { size, checksum }, State::Receiving(_) | State::WaitingForSpace(_)) => {
                self.finish(shared, size, checksum)
            }
            (ClientCommand::Ping { seq, sent_nanos }, State::Idle) => {
                self.reply(shared, ServerReply::Pong { seq, sent_nanos })
            }
            (ClientCommand::Abort { reason }, _) => {
                self.close(shared, Some(format!("client aborted: {reason}")))
            }
            (ClientCommand::Close, _) => self.close(shared, None),
            (command, _) => {
                let message = format!("command {command:?} is not valid in this state");
                self.fail(shared, failure(ErrorCode::BadRequest, message));
            }
        }
    }

    /// Checks the name and creates the file to receive into: the common start of
    /// Open and Put. `Ok(false)`: the file exists and the client asked to skip it.
    pub(super) fn begin(
        &mut self,
        shared: &Shared,
        name: String,
        size: u64,
        meta: FileMeta,
        early_exists_check: bool,
    ) -> Result<bool, Failure> {
        self.label.clone_from(&name);
        refuse_reserved(&name)?;
        if let Some(max) = shared.options.max_file_size.filter(|&max| !meta.size_is_hint && size > max) {
            return Err(too_big(&name, max));
        }
        // Fail a big transfer before it starts; a small one (`early == false`) is
        // refused just as surely by the no-clobber publish.
        let check_now = early_exists_check || meta.skip_existing;
        let found = self.staged(&name);
        let live = found.as_ref().map(Staged::live);
        let staged = found.as_ref().filter(|_| live.as_ref().is_some_and(|live| **live));
        let real = staged.map_or(name.as_str(), |s| s.real.as_str());
        // The client's --skip-existing wins over the server's --overwrite.
        if check_now && self.sink.is_folder(real) {
            let message = crate::sink::folder_in_the_way(&self.sink.shown(&name));
            return Err(failure(ErrorCode::Io, message));
        }
        if check_now && (meta.skip_existing || !shared.options.overwrite) && self.sink.exists(real) {
            if meta.skip_existing {
                return Ok(false);
            }
            let message = crate::sink::already_exists(&self.sink.shown(&name));
            return Err(failure(ErrorCode::Exists, message));
        }
        // Made unnamed (or under a temporary name) in its folder: published into it
        // whole even if the stage is published first.
        let file =
            self.sink.create(real, meta.mode.unwrap_or(shared.default_mode)).map_err(|e| match staged {
                Some(s) => s.unhide(sink_failure(e), &name),
                None => sink_failure(e),
            })?;
        drop(live);
        let record = self.record(shared);
        record.file_size.store(size, Ordering::Relaxed);
        record.size_is_hint.store(u32::from(meta.size_is_hint), Ordering::Relaxed);
        record.bytes_done.store(0, Ordering::Relaxed);
        let name_len = segment::store_bytes(&record.name, name.as_bytes());
        record.name_len.store(name_len as u32, Ordering::Relaxed);
        record.phase.store(PHASE_RECEIVING, Ordering::Relaxed);
        // Every file starts at slot 0 on both sides.
        self.ring.restart();
        self.state = State::Receiving(Box::new(Transfer {
            name,
            file,
            meta,
            size,
            written: 0,
            hasher: Some(Checksum::new()),
            started: Instant::now(),
        }));
        Ok(true)
    }

    pub(super) fn open(&mut self, shared: &Shared, name: String, size: u64, meta: FileMeta) {
        match self.begin(shared, name, size, meta, true) {
            Err(failure) => self.fail(shared, failure),
            Ok(false) => self.skip(shared),
            Ok(true) if size == 0 && !meta.size_is_hint => {
                self.reply(shared, ServerReply::Opened { slots: 0, chunk: 0 })
            }
            Ok(true) => {
                self.try_start_ring(shared);
            }
        }
    }

    /// A small file already in slot 0 of the ring the stream kept: one round trip.
    pub(super) fn put(&mut self, shared: &Shared, name: String, size: u64, checksum: u64, meta: FileMeta) {
        let fits = size == 0 || (!self.ring.is_empty() && size <= self.ring.chunk());
        if !fits {
            let message = format!("put of {size} bytes does not fit the stream's ring");
            return self.fail(shared, failure(ErrorCode::BadRequest, message));
        }
        // A put's size is exact: its bytes are already in the slot.
        let meta = FileMeta { size_is_hint: false, ..meta };
        match self.begin(shared, name, size, meta, false) {
            Ok(true) => self.finish(shared, size, checksum),
            Ok(false) => {
                // Nothing will read slot 0: hand it back for the next file.
                let record = shared.segment.record(self.offset).expect("own record");
                self.ring.release_first(record);
                self.skip(shared)
            }
            Err(failure) => self.fail(shared, failure),
        }
    }

    /// Creates a folder (and its parents) beneath the output folder.
    pub(super) fn mkdir(&mut self, shared: &Shared, name: String, mode: u32) {
        self.label.clone_from(&name);
        if let Err(refused) = refuse_reserved(&name) {
            return self.fail(shared, refused);
        }
        let found = self.staged(&name);
        let live = found.as_ref().map(Staged::live);
        let staged = found.as_ref().filter(|_| live.as_ref().is_some_and(|live| **live));
        let real = staged.map_or(name.as_str(), |s| s.real.as_str());
        let made = self.sink.make_dir(real, mode | 0o700);
        drop(live);
        match made {
            Ok(()) => self.reply(shared, ServerReply::Done { bytes: 0 }),
            Err(e) => {
                let failure = match staged {
                    Some(s) => s.unhide(sink_failure(e), &name),
                    None => sink_failure(e),
                };
                self.fail(shared, failure)
            }
        }
    }

    /// The file exists and the client asked to skip it: the stream stays ready.
    pub(super) fn skip(&mut self, shared: &Shared) {
        self.tally.skipped += 1;
        self.remove_transfer();
        self.record(shared).phase.store(PHASE_IDLE, Ordering::Relaxed);
        self.last_activity = Instant::now();
        self.reply(shared, ServerReply::Skipped);
    }

    pub(super) fn waiting_for_space(&self) -> bool {
        matches!(self.state, State::WaitingForSpace(_) | State::BatchWaitingForSpace)
    }

    /// Allocates the stream's buffers if there is room; otherwise the stream waits
    /// (backpressure) and this is tried again on the next pass.
    pub(super) fn try_start_ring(&mut self, shared: &Shared) -> bool {
        let (State::Receiving(transfer) | State::WaitingForSpace(transfer)) = &self.state else {
            return false;
        };
        let area = shared.segment.layout().area_end - shared.segment.layout().area_start;
        // A size that is only a hint (a pipe, /proc) still sizes the ring; the data
        // may run past it, so such a ring has at least one slot.
        let chunk = ring::chunk_size(transfer.size, area);
        let wanted = ring::wanted_slots(transfer.size, chunk);
        if !self.arm_ring(shared, chunk, wanted) {
            if let Some(transfer) = self.take_transfer() {
                self.state = State::WaitingForSpace(transfer);
            }
            return false;
        }
        let record = shared.segment.record(self.offset).expect("own record");
        if let Some(transfer) = self.take_transfer() {
            self.state = State::Receiving(transfer);
        }
        // Relaxed: status only.
        record.phase.store(PHASE_RECEIVING, Ordering::Relaxed);
        let slots = self.ring.buffers().len() as u32;
        let reply = ServerReply::Opened { slots, chunk: self.ring.chunk() };
        self.last_activity = Instant::now();
        // The reply's Release publishes the slot fields above.
        self.reply(shared, reply);
        true
    }

    /// Gives the client a ring of at least `wanted` slots of `chunk` bytes: the
    /// kept one if it is large enough, else new buffers. `false`: no room yet (the
    /// stream waits for space; the caller sets its state).
    pub(super) fn arm_ring(&mut self, shared: &Shared, chunk: u64, wanted: usize) -> bool {
        let reusable = self.ring.chunk() >= chunk && self.ring.buffers().len() >= wanted;
        let record = shared.segment.record(self.offset).expect("own record");
        if reusable {
            // Hand every kept slot back to the client (a failure may have revoked them).
            self.ring.rearm(record);
            return true;
        }
        self.free_ring(shared);
        let buffers = allocate_ring(shared, chunk, wanted);
        if buffers.is_empty() {
            // Relaxed: status only.
            record.phase.store(PHASE_WAITING_FOR_SPACE, Ordering::Relaxed);
            return false;
        }
        self.ring.install(record, buffers);
        true
    }

    pub(super) fn finish(&mut self, shared: &Shared, size: u64, checksum: u64) {
        // The client filled its last slots before posting Finish (Release on seq):
        // one pass drains them all (a ring's worth at most) before the file is
        // judged. A slot handed over after that is a client still writing past its
        // own end: refused, not drained on (that would hold this worker, and every
        // stream it serves, for as long as the client kept writing).
        let drained = self.drain(shared).and_then(|_| match self.drain(shared)? {
            false => Ok(()),
            true => Err(failure(
                ErrorCode::BadRequest,
                "the client handed over data after its finish command".to_owned(),
            )),
        });
        if let Err(failure) = drained {
            return self.fail(shared, failure);
        }
        let Some(transfer) = self.take_transfer() else { return };
        match publish(shared, *transfer, size, checksum) {
            Ok(None) => self.skip(shared),
            Ok(Some(done)) => {
                // The ring stays with the stream for its next file.
                self.record(shared).phase.store(PHASE_IDLE, Ordering::Relaxed);
                shared.segment.header().streams_done.fetch_add(1, Ordering::Relaxed);
                let bytes = match &done {
                    ServerEvent::Published { bytes, .. } => *bytes,
                    _ => size,
                };
                if let ServerEvent::Published { name, .. } = &done {
                    if let Some(stage) = self.stage_of(name) {
                        self.count_staged(&stage, bytes);
                        self.flush_stage_counts();
                    }
                }
                self.event(shared, &done);
                if shared.options.sync == SyncMode::Batch {
                    // Confirmed once the worker has flushed this pass's files.
                    self.pending_done = Some(bytes);
                } else {
                    self.reply(shared, ServerReply::Done { bytes });
                }
            }
            Err(failure) => self.fail(shared, failure),
        }
    }

    /// Where `name` is made: beneath its top folder's hidden name if this client
    /// staged that folder (hold `Staged::live` meanwhile).
    pub(super) fn staged(&mut self, name: &str) -> Option<Staged> {
        let (root, rest) = name.split_once('/')?;
        // Acquire: pairs with the Release of `StageMap::changed`.
        let generation = self.stages.generation.load(Ordering::Acquire);
        let fresh = matches!(&self.stage_cache, Some((g, r, _)) if *g == generation && r == root);
        if !fresh {
            let stage = self.stages.lock().get(root).cloned();
            self.stage_cache = Some((generation, root.to_owned(), stage));
        }
        let stage = Arc::clone(self.stage_cache.as_ref()?.2.as_ref()?);
        let mut real = String::with_capacity(stage.hidden.len() + 1 + rest.len());
        real.push_str(&stage.hidden);
        real.push('/');
        real.push_str(rest);
        Some(Staged { real, stage, root_len: root.len() })
    }

    /// Counts a file of `bytes` published beneath `stage` (see `stage_counts`).
    pub(super) fn count_staged(&mut self, stage: &Arc<Stage>, bytes: u64) {
        match &mut self.stage_counts {
            Some((counted, files, total)) if Arc::ptr_eq(counted, stage) => {
                *files += 1;
                *total += bytes;
            }
            _ => {
                self.flush_stage_counts();
                self.stage_counts = Some((Arc::clone(stage), 1, bytes));
            }
        }
    }

    /// Adds the files counted beneath a stage to its counters.
    pub(super) fn flush_stage_counts(&mut self) {
        if let Some((stage, files, bytes)) = self.stage_counts.take() {
            // Relaxed: counters, read under the stage's write lock after the commit's
            // own stream flushed (the others flushed at the end of each batch).
            stage.files.fetch_add(files, Ordering::Relaxed);
            stage.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// The stage `name` lies beneath, if any.
    fn stage_of(&self, name: &str) -> Option<Arc<Stage>> {
        let (root, _) = name.split_once('/')?;
        self.stages.lock().get(root).cloned()
    }

    /// `message` with the hidden name of each folder this client staged put back
    /// as the user's folder.
    fn unhide_message(&self, message: String) -> String {
        let stages = self.stages.lock();
        stages.iter().fold(message, |message, (root, stage)| match message.contains(&stage.hidden) {
            true => message.replace(&stage.hidden, &escaped(root)),
            false => message,
        })
    }

    /// Tells the server's owner about a file, and counts it for the client's summary.
    pub(super) fn event(&mut self, shared: &Shared, event: &ServerEvent) {
        match event {
            ServerEvent::Published { bytes, .. } => {
                self.tally.files += 1;
                self.tally.bytes += bytes;
            }
            ServerEvent::Failed { .. } => self.tally.failed += 1,
            _ => {}
        }
        (shared.events)(event);
    }

    pub(super) fn reply(&mut self, shared: &Shared, reply: ServerReply) {
        let record = self.record(shared);
        let (code, args, text) = reply.encode();
        self.s2c_seq = self.s2c_seq.wrapping_add(1);
        // A client stopped while holding the lock must not stall this worker: the
        // seq-last protocol keeps the post safe even without it.
        let _guard = self.lock.try_lock().ok();
        protocol::post(&record.s2c, self.s2c_seq, code, args, &text);
        drop(_guard);
        record.client_event.notify();
    }

    /// Fails the current transfer: tells the client, removes the temporary file,
    /// frees the buffers. The record stays, for another file or the client's Close.
    ///
    /// The ring is NOT freed here: a slot the client owns (EMPTY) may be in the middle
    /// of a `read(2)` into it, and handing that buffer to another stream could slip
    /// foreign bytes into that stream's file. The slots are revoked (the client sees
    /// them leave EMPTY and reads the error), and the buffers go when the client
    /// answers with Abort or Close, or exits.
    pub(super) fn fail(&mut self, shared: &Shared, mut failure: Failure) {
        failure.message = self.unhide_message(failure.message);
        self.failed_transfer = self.has_transfer();
        self.remove_transfer();
        if matches!(self.state, State::Batching | State::BatchWaitingForSpace) {
            self.state = State::Idle;
        }
        self.revoke_ring(shared);
        shared.segment.header().streams_failed.fetch_add(1, Ordering::Relaxed);
        self.event(
            shared,
            &ServerEvent::Failed { name: self.label.clone(), reason: failure.message.clone() },
        );
        self.reply(shared, ServerReply::Error { code: failure.code, message: failure.message });
        self.last_activity = Instant::now();
    }

    /// The client is done with the record (Close) or gave up (Abort): no reply, the
    /// record is freed; an unfinished transfer is dropped and reported.
    pub(super) fn close(&mut self, shared: &Shared, reason: Option<String>) {
        if let Some(name) = self.transfer_name() {
            let reason = reason.unwrap_or_else(|| "client closed the stream before finishing".into());
            shared.segment.header().streams_failed.fetch_add(1, Ordering::Relaxed);
            self.event(shared, &ServerEvent::Failed { name, reason });
        }
        self.drop_transfer(shared);
        self.state = State::Closed;
    }

    /// Removes the temporary file of an unfinished transfer and frees the ring (the
    /// client gave the record back, or is gone).
    pub(super) fn drop_transfer(&mut self, shared: &Shared) {
        self.remove_transfer();
        self.free_ring(shared);
    }

    pub(super) fn remove_transfer(&mut self) {
        if let Some(transfer) = self.take_transfer() {
            transfer.file.discard();
        }
    }

    /// Takes every slot away from the client without freeing the buffers.
    pub(super) fn revoke_ring(&self, shared: &Shared) {
        let record = self.record(shared);
        // Relaxed: status only.
        record.phase.store(PHASE_IDLE, Ordering::Relaxed);
        self.ring.revoke_all(record);
    }

    pub(super) fn free_ring(&mut self, shared: &Shared) {
        let record = shared.segment.record(self.offset).expect("own record");
        // Relaxed: status only.
        record.phase.store(PHASE_IDLE, Ordering::Relaxed);
        let ring = self.ring.clear(record);
        for &(offset, _) in &ring {
            shared.free_block(offset);
        }
        if !ring.is_empty() {
            // Streams waiting for space retry on the next wake.
            shared.ring_all_workers();
        }
    }

    /// Drops streams whose client died or went idle too long.
    pub(super) fn check_health(&mut self, shared: &Shared) {
        let now = Instant::now();
        // Relaxed: a liveness hint from the client (a pipe with nothing to read yet);
        // nothing is published with it.
        let beat = self.record(shared).client_beat.load(Ordering::Relaxed);
        if beat != self.client_beat {
            self.client_beat = beat;
            self.last_activity = now;
        }
        if now.duration_since(self.last_liveness) >= LIVENESS_PERIOD {
            self.last_liveness = now;
            match sys::process_state(self.client_pid) {
                sys::ProcessState::Gone => {
                    let reason = format!("client (pid {}) died", self.client_pid);
                    self.close(shared, Some(reason));
                    return;
                }
                // A stopped client holds no buffers: a dropped stream's ring goes at
                // once unless the client has a slot open to write into (it would go
                // on writing when resumed). SYNC POINT (filling handshake): pairs
                // with the client's SeqCst store and load in `Producer::buffer`;
                // RECORD_DROPPED was stored (SeqCst) before this load.
                sys::ProcessState::Stopped
                    if matches!(self.state, State::Dropped)
                        && self.record(shared).filling.load(Ordering::SeqCst) == 0 =>
                {
                    self.free_ring(shared)
                }
                _ => {}
            }
        }
        if matches!(self.state, State::Dropped | State::Closed) {
            return;
        }
        if !self.waiting_for_space() && now.duration_since(self.last_activity) >= shared.options.idle_timeout
        {
            let message =
                format!("no activity for {} s: stream dropped", seconds(shared.options.idle_timeout));
            if matches!(self.state, State::Idle) {
                // Between files: the label may still name the last file, published.
                self.label = format!("stream {} (idle, client pid {})", self.guid.simple(), self.client_pid);
            }
            self.fail(shared, failure(ErrorCode::IdleTimeout, message));
            if self.over_quota && self.ring.buffers().is_empty() && self.release_unserved(shared) {
                return;
            }
            self.state = State::Dropped;
            // SYNC POINT (record state): pairs with the Acquire in `status::stream_at`,
            // and (filling handshake) with the client's SeqCst load in
            // `Producer::buffer`: SeqCst, before `filling` is read.
            self.record(shared).state.store(RECORD_DROPPED, Ordering::SeqCst);
            // Reclaim at once if the client is stopped; else on its Abort, or exit.
            self.last_liveness = now.checked_sub(LIVENESS_PERIOD).unwrap_or(now);
        }
    }

    /// A stream over its client's quota, dropped for idleness, never served: its
    /// client was told to give it back at its first command and an honest one does
    /// at once, so its record is freed now, not kept until the client exits (a
    /// process taking every GUID on offer would hold every record). Only if its
    /// record lock is free: a client posts only under it, after checking the
    /// record is still its own (`Session::post`), so it can never write into the
    /// record once reused. `false`: the lock is held, the stream is kept dropped.
    fn release_unserved(&mut self, shared: &Shared) -> bool {
        let Ok(_guard) = self.lock.try_lock() else { return false };
        // SYNC POINT (record released): pairs with the client's Acquire load in
        // `Session::post`, under the same record lock.
        self.record(shared).state.store(segment::RECORD_FREE, Ordering::Release);
        self.state = State::Closed;
        true
    }

    /// Serving this stream panicked (`panic` says what): it fails, and is dropped
    /// as an idle stream is (its record kept until its client gives it back or
    /// exits), whatever state the panic left it in.
    pub(super) fn panicked(&mut self, shared: &Shared, panic: String) {
        let message = format!("internal error on the server: {panic}");
        // Failing touches the sink and the event callback again: a second panic
        // only skips the reply.
        let failing = std::panic::AssertUnwindSafe(|| self.fail(shared, failure(ErrorCode::Io, message)));
        let _ = std::panic::catch_unwind(failing);
        self.state = State::Dropped;
        // SYNC POINT (record state): as in `check_health`'s idle drop.
        self.record(shared).state.store(RECORD_DROPPED, Ordering::SeqCst);
        self.last_liveness = Instant::now().checked_sub(LIVENESS_PERIOD).unwrap_or_else(Instant::now);
    }

    pub(super) fn transfer_name(&self) -> Option<String> {
        match &self.state {
            State::Receiving(transfer) | State::WaitingForSpace(transfer) => Some(transfer.name.clone()),
            _ => None,
        }
    }

    /// Frees the record and its lock file; the stream is gone.
    pub(super) fn release(mut self, shared: &Shared) {
        self.drop_transfer(shared);
        let mut clients = shared.clients.lock().expect("client count lock");
        let mut last = false;
        if let Some(client) = clients.get_mut(&self.client_pid) {
            client.held -= 1;
            client.tally.add(self.tally);
            if client.held == 0 {
                // Departed while the clients lock is held: a stream of this pid handed
                // out meanwhile finds the tally there (lock order: clients, departed).
                let client = clients.remove(&self.client_pid).expect("found above");
                shared.depart(self.client_pid, client);
                last = true;
            }
        }
        drop(clients);
        self.flush_stage_counts();
        if last {
            // A client gone without committing (killed, or its streams dropped), or the
            // server stopping: what it staged is published as far as it got, as each
            // file would have been without staging. Every file in it is whole: one in
            // progress went with its stream (`drop_transfer`).
            let mut stages = self.stages.lock();
            let staged: Vec<(String, Arc<Stage>)> = stages.drain().collect();
            self.stages.changed();
            drop(stages);
            for (root, stage) in staged {
                let mut live = stage.live.write().expect("stage lock");
                if !std::mem::replace(&mut *live, false) {
                    continue; // committed already
                }
                if let Err(e) = shared.sink.abandon_staged(&stage.hidden, &root) {
                    shared.adjust_tally(self.client_pid, |tally| {
                        tally.drop_staged(&stage);
                        tally.failed += 1;
                    });
                    (shared.events)(&ServerEvent::Failed { name: root, reason: e.message });
                }
            }
            shared.settle(self.client_pid);
        }
        if let Ok(record) = shared.segment.record(self.offset) {
            // SYNC POINT (record state): pairs with the Acquire in `status::stream_at`.
            record.state.store(segment::RECORD_FREE, Ordering::Release);
        }
        shared.free_block(self.offset);
        shared.locks.remove_stream_lock(self.guid);
    }
}

/// Up to `wanted` buffers of `chunk` bytes from the high end; fewer if space is short.
/// Buffers never take the last record's worth of the middle gap: the server can
/// always put a GUID on offer, so a new client gets a stream and waits for buffer
/// space in plain view (`--status`) instead of waiting for a handout.
pub(super) fn allocate_ring(shared: &Shared, chunk: u64, wanted: usize) -> Vec<(u64, u64)> {
    let mut alloc = shared.alloc.lock().expect("allocator lock");
    let gap = |alloc: &crate::alloc::TwoEndedAllocator| {
        let stats = alloc.stats();
        stats.high_mark.saturating_sub(stats.low_mark)
    };
    let mut ring = Vec::with_capacity(wanted);
    while ring.len() < wanted {
        let before = gap(&alloc);
        let Some(offset) = alloc.alloc_high(chunk, BUFFER_ALIGN) else { break };
        // A buffer placed in a hole among the others leaves the gap as it was: only
        // one that takes from the gap may not take the last record's worth.
        let after = gap(&alloc);
        if after < before && after < RECORD_SIZE + RECORD_ALIGN {
            // Our own fresh allocation: freeing it cannot fail.
            let _ = alloc.free(offset);
            break;
        }
        ring.push((offset, chunk));
    }
    shared.publish_stats(&alloc);
    ring
}

/// Refuses a client's path any part of which starts with `TEMP_MARK` (temporary
/// files and staged folders: a client may not name them, nor anything beneath).
pub(super) fn refuse_reserved(name: &str) -> Result<(), Failure> {
    if !name.split('/').any(|part| part.starts_with(TEMP_MARK)) {
        return Ok(());
    }
    let message = format!(
        "{}: names starting with {TEMP_MARK} are reserved for the server's temporary files",
        escaped(name)
    );
    Err(failure(ErrorCode::BadRequest, message))
}

/// A file past `--max-file-size`, named.
pub(super) fn too_big(name: &str, max: u64) -> Failure {
    let limit = crate::segment::human_bytes(max);
    failure(
        ErrorCode::BadRequest,
        format!("{} is larger than this server takes (--max-file-size {limit})", escaped(name)),
    )
}

/// A sink's refusal as the client will hear it.
pub(super) fn sink_failure(e: SinkError) -> Failure {
    let code = match e.kind {
        SinkErrorKind::Exists => ErrorCode::Exists,
        SinkErrorKind::Refused => ErrorCode::BadRequest,
        SinkErrorKind::Io => ErrorCode::Io,
    };
    failure(code, e.message)
}

/// Whether a file replaces one already under its name: the server's `--overwrite`,
/// unless the client asked to skip existing files (checked again when it is
/// published, so one that appeared meanwhile is skipped, not replaced).
pub(super) fn overwrites(shared: &Shared, meta: &FileMeta) -> bool {
    shared.options.overwrite && !meta.skip_existing
}

/// A file whose bytes do not match the client's checksum.
pub(super) fn checksum_mismatch(name: &str) -> Failure {
    let message = format!("{}: checksum mismatch: the data was corrupted in transit", escaped(name));
    failure(ErrorCode::Checksum, message)
}

/// Verifies size and checksum, then has the sink give the file its mode, time and
/// final name (never over an existing file unless `--overwrite`). `Ok(None)`: the
/// name was taken and the client asked to skip such files.
pub(super) fn publish(
    shared: &Shared,
    transfer: Transfer,
    size: u64,
    checksum: u64,
) -> Result<Option<ServerEvent>, Failure> {
    let shown = || escaped(&transfer.name).into_owned();
    let size_ok = if transfer.meta.size_is_hint { true } else { size == transfer.size };
    if !size_ok || transfer.written != size {
        let message = format!(
            "{}: size mismatch: announced {}, finished with {}, received {}",
            shown(),
            transfer.size,
            size,
            transfer.written
        );
        transfer.file.discard();
        return Err(failure(ErrorCode::Checksum, message));
    }
    if transfer.hasher.as_ref().is_some_and(|hasher| hasher.digest() != checksum) {
        transfer.file.discard();
        return Err(checksum_mismatch(&transfer.name));
    }
    let mode = transfer.meta.mode.unwrap_or(shared.default_mode);
    match transfer.file.publish(mode, transfer.meta.mtime, overwrites(shared, &transfer.meta)) {
        Err(e) if e.kind == SinkErrorKind::Exists && transfer.meta.skip_existing => Ok(None),
        Err(e) => Err(sink_failure(e)),
        Ok(()) => Ok(Some(ServerEvent::Published {
            name: transfer.name,
            bytes: transfer.written,
            seconds: transfer.started.elapsed().as_secs_f64(),
        })),
    }
}

/// A duration in seconds as people write it: `30`, `1.5`, `0.3`.
fn seconds(duration: std::time::Duration) -> String {
    let secs = duration.as_secs_f64();
    match duration.subsec_nanos() {
        0 => duration.as_secs().to_string(),
        _ => format!("{}", (secs * 1000.0).round() / 1000.0),
    }
}
