//! One connection to a server (the mapped segment and its lock folder) and one
//! stream on it (a record taken from the handout): commands out, replies in, and a
//! watchdog that ends every wait within seconds if the server is gone, stopping or
//! silent, or Ctrl-C came.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use named_lock::NamedLock;

use super::send::reply_error;
use super::{failed, SendError};
use crate::handout::{self, load_guid, Ticket};
use crate::lock::{self, LockDir};
use crate::protocol::{self, ClientCommand, ServerReply};
use crate::segment::{Record, Segment, SegmentError, RECORD_DROPPED, RECORD_FREE, SERVER_STOPPING};
use crate::sys;
use crate::wait::SPIN;

/// How long one sleep lasts between liveness checks.
pub(super) const CHECK_SLICE: Duration = Duration::from_millis(250);

/// A connection to one server: the mapped segment and the lock folder.
pub struct Connection {
    pub(super) segment: Segment,
    pub(super) locks: LockDir,
    pub(super) handout_lock: NamedLock,
    pub(super) server_pid: u32,
    pub(super) timeout: Duration,
    /// The records this process's sessions hold (GUID, offset), for `beat_held`.
    held: Mutex<Vec<(uuid::Uuid, u64)>>,
    /// The segment's name (the key of `CLAIMS`).
    pub(super) name: String,
    /// The server's heartbeat as last seen by any stream of this connection, and
    /// when it last moved (ms after `opened`): a server that stopped answering is
    /// given one `--timeout` in all, not one per stream the jobs open after it.
    last_beat: AtomicU64,
    beat_seen_ms: AtomicU64,
    opened: Instant,
    /// The segment file's inode when mapped: a server that stopped and a new one
    /// on the name (in this very process, for an embedded server) tell apart.
    inode: Option<u64>,
}

/// Top-level names the sends of this process are sending to, by segment name: a
/// folder a `send_items` sends whole (staged) is claimed `whole`, every other root
/// a send writes beneath is claimed shared. The server takes any name beneath a
/// staged folder from this process (any `Sender` of it) into its hidden folder,
/// so while one is claimed whole no other send of this process may send beneath
/// it; and a folder is staged only if no other send of this process is writing
/// beneath it (its files would land in place, and the commit then find the name
/// taken). Checked and claimed under this one lock, so the two cannot cross.
pub(super) static CLAIMS: Mutex<Option<ClaimTable>> = Mutex::new(None);

/// Segment name -> top-level name -> how many sends claim it, whole and shared.
pub(super) type ClaimTable = std::collections::HashMap<String, std::collections::HashMap<String, Claimed>>;

/// The claims on one top-level name.
#[derive(Clone, Copy, Default, Debug)]
pub(super) struct Claimed {
    pub(super) whole: usize,
    pub(super) shared: usize,
}

/// `CLAIMS` of segment `segment`, locked, for `use_table`.
pub(super) fn with_claims<T>(
    segment: &str,
    use_table: impl FnOnce(&mut std::collections::HashMap<String, Claimed>) -> T,
) -> T {
    let mut claims = CLAIMS.lock().unwrap_or_else(|e| e.into_inner());
    let table = claims.get_or_insert_with(Default::default).entry(segment.to_owned()).or_default();
    use_table(table)
}

/// How long a client looks again for a segment that is not there, before it says
/// there is no server (a server just started takes a millisecond or two to take its
/// lock, then reserves the segment: see `lock::server_lock_held`).
const STARTING_GRACE: Duration = Duration::from_millis(200);

impl Connection {
    /// Maps the segment of server `name` and checks the server is alive.
    pub fn open(name: &str, timeout: Duration) -> Result<Connection, SendError> {
        lock::validate_segment_name(name).map_err(SendError::Usage)?;
        let deadline = crate::wait::deadline_after(timeout);
        // A server started a moment ago (`sharedserver ... & sharedclient ...`) may
        // not have taken its lock yet: "no server" is said after this much.
        let grace = Instant::now() + STARTING_GRACE.min(timeout);
        let segment = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match Segment::open(name, left) {
                // A server that holds its lock but has not made its segment yet (it
                // reserves the segment's pages first): wait for it, within the timeout.
                Err(SegmentError::NotFound { .. })
                    if Instant::now() < deadline
                        && (Instant::now() < grace || lock::server_lock_held(name)) =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                opened => break opened.map_err(|e| SendError::Connect(Arc::new(e)))?,
            }
        };
        let server_pid = segment.header().server_pid.load(Ordering::Relaxed);
        // Relaxed: written before the magic, which `Segment::open` Acquire-loaded.
        let started = segment.header().server_started.load(Ordering::Relaxed);
        let reused = started != 0 && sys::process_start_ticks(server_pid).is_some_and(|now| now != started);
        if !sys::process_alive(server_pid) || reused {
            return Err(failed(format!(
                "the server of segment '{name}' (pid {server_pid}) is gone: start `sharedserver --name {name}`"
            )));
        }
        let locks =
            LockDir::open(name).map_err(|e| failed(format!("lock folder of segment '{name}': {e}")))?;
        let handout_lock = locks.lock(lock::HANDOUT_LOCK)?;
        let (held, name) = (Mutex::default(), name.to_owned());
        // Relaxed: a liveness hint, nothing is published with it.
        let last_beat = AtomicU64::new(segment.header().heartbeat.load(Ordering::Relaxed));
        let (beat_seen_ms, opened, inode) = (AtomicU64::new(0), Instant::now(), segment_inode(&name));
        Ok(Connection {
            segment,
            locks,
            handout_lock,
            server_pid,
            timeout,
            held,
            name,
            last_beat,
            beat_seen_ms,
            opened,
            inode,
        })
    }

    /// Tells the server every stream this process holds is alive (a relay whose
    /// client is alive but sends too little to move the streams): none is dropped
    /// for idleness meanwhile. Returns the streams the server already dropped (the
    /// client was stopped, or its link hung, past `--idle-timeout`), and how many
    /// are held.
    pub(crate) fn beat_held(&self) -> (Vec<uuid::Uuid>, usize) {
        let mut dropped = Vec::new();
        let held = self.held.lock().expect("held lock");
        for &(guid, offset) in held.iter() {
            let Ok(record) = self.segment.record(offset) else { continue };
            if load_guid(&record.guid) == guid {
                // Relaxed: a liveness hint the server compares, like its own heartbeat.
                record.client_beat.fetch_add(1, Ordering::Relaxed);
                // SYNC POINT (record state): pairs with the server's SeqCst store in
                // `Stream::check_health`.
                if record.state.load(Ordering::Acquire) == RECORD_DROPPED {
                    dropped.push(guid);
                }
            }
        }
        (dropped, held.len())
    }

    /// The server's mapped segment.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }
}

/// The inode of segment `name`'s file now, if there is one.
fn segment_inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(std::path::Path::new(sys::SHM_DIR).join(name)).ok().map(|meta| meta.ino())
}

/// Tracks the server between sleeps: gone, stopping, silent (by the connection's
/// heartbeat record, shared by its streams), or us interrupted.
pub(super) struct Watchdog<'a> {
    pub(super) connection: &'a Connection,
    /// SIGINT/SIGTERM/SIGHUP do not end this stream's waits (see `Session::outlast_stop`).
    pub(super) outlast_stop: bool,
}

impl<'a> Watchdog<'a> {
    fn new(connection: &'a Connection) -> Self {
        Watchdog { connection, outlast_stop: false }
    }

    pub(super) fn check(&mut self) -> Result<(), SendError> {
        if !self.outlast_stop && sys::stop_signal().is_some() {
            return Err(SendError::Interrupted);
        }
        let header = self.connection.segment.header();
        // SYNC POINT (server state): pairs with the server's Release in `serve`.
        let stopping = header.server_state.load(Ordering::Acquire) == SERVER_STOPPING;
        let pid = self.connection.server_pid;
        // Still stopping (the segment is the one under its name), or stopped and
        // gone (a process of an embedded server lives on, and may start another).
        if stopping
            && sys::process_alive(pid)
            && segment_inode(&self.connection.name) == self.connection.inode
        {
            return Err(failed("the server is shutting down"));
        }
        if stopping {
            // A connection kept past its server's end (a library `Sender` across a
            // restart): a new server, if any, has a new segment.
            return Err(failed(format!("the server (pid {pid}) has stopped: send again once a server runs")));
        }
        if !sys::process_alive(pid) {
            return Err(failed(format!("the server (pid {pid}) exited")));
        }
        // Relaxed: the heartbeat is a liveness hint, nothing is published with it.
        let beat = header.heartbeat.load(Ordering::Relaxed);
        let connection = self.connection;
        let now_ms = connection.opened.elapsed().as_millis() as u64;
        // The time is stored before the beat: a thread that sees the new beat
        // (SYNC POINT: Acquire here, pairs with the Release store below) sees a
        // time at least as new, never the old time beside the new beat.
        if connection.last_beat.load(Ordering::Acquire) != beat {
            connection.beat_seen_ms.store(now_ms, Ordering::Relaxed);
            connection.last_beat.store(beat, Ordering::Release);
        } else if now_ms.saturating_sub(connection.beat_seen_ms.load(Ordering::Relaxed))
            >= u64::try_from(connection.timeout.as_millis()).unwrap_or(u64::MAX)
        {
            return Err(failed(format!(
                "the server (pid {pid}) has not answered for {} s (see --timeout)",
                connection.timeout.as_secs()
            )));
        }
        Ok(())
    }
}

/// Streams this process holds open, by segment name (every `Sender` of it): the
/// server refuses a client process's streams past `--max-streams-per-client`, so
/// threads sharing a `Sender` (or several `Sender`s) wait here for one of theirs
/// to close instead of having their files refused.
static OPEN_STREAMS: Mutex<Vec<OpenStreams>> = Mutex::new(Vec::new());
/// Signalled when a stream of `OPEN_STREAMS` closes.
static STREAM_CLOSED: Condvar = Condvar::new();

/// The streams of one segment in `OPEN_STREAMS`.
struct OpenStreams {
    segment: String,
    /// Streams open (past the quota too, see `full_since`).
    open: usize,
    /// Sends waiting for one to close.
    waiting: usize,
    /// Since when the quota has been full with nothing closing: one `--timeout`
    /// after it, sends stop waiting and go on (the server decides), until a stream
    /// within the quota closes. Sends of this process that each hold streams while
    /// they want more could otherwise wait on each other for ever, and each file
    /// would wait its own timeout.
    full_since: Option<Instant>,
}

/// One stream counted in `OPEN_STREAMS`, given back on drop.
struct Permit {
    segment: String,
    /// Taken past the quota (after the wait gave up): its close frees no place.
    extra: bool,
}

impl Permit {
    /// Counts one more stream of `connection`'s segment, waiting while the process
    /// holds the server's quota already: until one closes, `deadline` (then
    /// `Ok(None)`), or the quota has been full for the connection's timeout.
    fn acquire(
        connection: &Connection,
        deadline: Instant,
        watchdog: &mut Watchdog<'_>,
    ) -> Result<Option<Permit>, SendError> {
        // Relaxed: a setting the server wrote at start.
        let limit = connection.segment.header().max_streams_per_client.load(Ordering::Relaxed) as usize;
        let name = &connection.name;
        let mut all = OPEN_STREAMS.lock().unwrap_or_else(|e| e.into_inner());
        let at = match all.iter().position(|entry| entry.segment == *name) {
            Some(at) => at,
            None => {
                all.push(OpenStreams { segment: name.clone(), open: 0, waiting: 0, full_since: None });
                all.len() - 1
            }
        };
        let mut waited = false;
        loop {
            let entry = &mut all[at];
            let now = Instant::now();
            let full_since = *entry.full_since.get_or_insert(now);
            let extra = entry.open >= limit && limit > 0;
            if !extra || now.duration_since(full_since) >= connection.timeout {
                entry.open += 1;
                entry.waiting -= usize::from(waited);
                if !extra {
                    entry.full_since = None;
                }
                return Ok(Some(Permit { segment: name.clone(), extra }));
            }
            if !waited {
                waited = true;
                entry.waiting += 1;
            }
            let stop = |all: &mut Vec<OpenStreams>| all[at].waiting -= 1;
            if let Err(e) = watchdog.check() {
                stop(&mut all);
                return Err(e);
            }
            if now >= deadline {
                stop(&mut all);
                return Ok(None);
            }
            let slice = CHECK_SLICE.min(deadline.saturating_duration_since(now));
            all = STREAM_CLOSED.wait_timeout(all, slice).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Whether another send of this process waits for a stream of this segment.
    fn awaited(&self) -> bool {
        let all = OPEN_STREAMS.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().any(|entry| entry.segment == self.segment && entry.waiting > 0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut all = OPEN_STREAMS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = all.iter_mut().find(|entry| entry.segment == self.segment) {
            entry.open -= 1;
            if !self.extra {
                // A place within the quota: the waits start again.
                entry.full_since = None;
            }
        }
        drop(all);
        STREAM_CLOSED.notify_all();
    }
}

/// One stream: a record taken from the handout, used for commands and the ring.
pub struct Session<'a> {
    pub(super) connection: &'a Connection,
    pub(super) record: &'a Record,
    pub(super) lock: NamedLock,
    pub(super) c2s_seq: u32,
    pub(super) s2c_seen: u32,
    pub(super) watchdog: Watchdog<'a>,
    pub(super) closed: bool,
    /// Capacity of ring slot 0 once the server gave this stream a ring; the ring is
    /// kept between files, so a file that fits goes in one step (`Put`).
    pub(super) kept_slot: Option<u64>,
    /// The stream's GUID, to tell the record from a later stream's in the same place.
    guid: uuid::Uuid,
    /// This stream counted among the process's (given back once it is closed).
    permit: Option<Permit>,
}

impl<'a> Session<'a> {
    /// Takes a GUID from the handout and opens the record and lock it names.
    pub fn open(connection: &'a Connection) -> Result<Session<'a>, SendError> {
        // No deadline of its own: the watchdog ends the wait if the server is gone.
        let deadline = crate::wait::deadline_after(Duration::MAX);
        Self::open_until(connection, deadline)?.ok_or_else(|| failed("no stream was handed out"))
    }

    /// As `open`, but `Ok(None)` if nothing was handed out by `deadline`.
    pub(super) fn open_until(
        connection: &'a Connection,
        deadline: Instant,
    ) -> Result<Option<Session<'a>>, SendError> {
        let mut watchdog = Watchdog::new(connection);
        let (segment, lock, busy_limit) = (&connection.segment, &connection.handout_lock, connection.timeout);
        // A server that stopped says so first (its lock folder is gone with it: the
        // handout lock's own error would only name a missing file).
        watchdog.check()?;
        let Some(permit) = Permit::acquire(connection, deadline, &mut watchdog)? else { return Ok(None) };
        let taken: Option<Ticket> =
            match handout::take_within(segment, lock, deadline, busy_limit, || watchdog.check()) {
                Ok(taken) => taken,
                Err(e) => {
                    watchdog.check()?;
                    return Err(e);
                }
            };
        let Some(ticket) = taken else { return Ok(None) };
        let record = connection
            .segment
            .record(ticket.record_offset)
            .map_err(|e| failed(format!("the handout named a bad record: {e}")))?;
        if load_guid(&record.guid) != ticket.guid {
            return Err(failed("the handout and the record disagree on the stream's GUID"));
        }
        let lock = connection.locks.stream_lock(ticket.guid)?;
        // SYNC POINT (mailbox published): pairs with the Release in `protocol::post`.
        let s2c_seen = record.s2c.seq.load(Ordering::Acquire);
        connection.held.lock().expect("held lock").push((ticket.guid, ticket.record_offset));
        Ok(Some(Session {
            connection,
            record,
            lock,
            c2s_seq: 0,
            s2c_seen,
            watchdog,
            closed: false,
            kept_slot: None,
            guid: ticket.guid,
            permit: Some(permit),
        }))
    }

    /// Posts a command under the record's lock and rings the server.
    pub fn post(&mut self, command: &ClientCommand) -> Result<(), SendError> {
        let (code, args, text) = command.encode();
        self.c2s_seq = self.c2s_seq.wrapping_add(1);
        {
            let _guard = self.lock_record()?;
            // The server frees a record its client still holds only under this lock
            // (a stream over the quota, silent past --idle-timeout): once freed it
            // may be another stream's. SYNC POINT (record released): pairs with the
            // server's Release store in `Stream::release_unserved` and
            // `Stream::release`.
            if self.record.state.load(Ordering::Acquire) == RECORD_FREE
                || load_guid(&self.record.guid) != self.guid
            {
                // What the server said last (a server stopping says so, then
                // releases every stream), else why it may have.
                if let Ok(Some(reply)) = self.poll_reply() {
                    return Err(reply_error(reply));
                }
                self.watchdog.check()?;
                return Err(failed("the server has released this stream (silent past its --idle-timeout)"));
            }
            protocol::post(&self.record.c2s, self.c2s_seq, code, args, &text);
        }
        self.connection.segment.doorbell(self.record).notify();
        Ok(())
    }

    /// The record's named lock, without ever blocking for good: the holder is the
    /// server for a few stores, unless it was stopped right there, which the
    /// watchdog (heartbeat, pid, SIGINT) turns into an error.
    fn lock_record(&mut self) -> Result<named_lock::NamedLockGuard, SendError> {
        loop {
            match self.lock.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(named_lock::Error::WouldBlock) => {
                    self.watchdog.check()?;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => return Err(failed(format!("cannot lock the stream's record: {e}"))),
            }
        }
    }

    /// A reply the server posted since we last looked, if any.
    pub(super) fn poll_reply(&mut self) -> Result<Option<ServerReply>, SendError> {
        if protocol::pending(&self.record.s2c, self.s2c_seen).is_none() {
            return Ok(None);
        }
        // The server frees a record only once its client gave it back or exited: one
        // that holds another GUID now was never ours to read (a peer rewrote it).
        if load_guid(&self.record.guid) != self.guid {
            return Err(failed("the stream's record was given to another stream"));
        }
        let Some(raw) = protocol::take(&self.record.s2c) else { return Ok(None) };
        self.s2c_seen = raw.seq;
        ServerReply::decode(&raw).map(Some).map_err(|e| failed(format!("bad reply from the server: {e}")))
    }

    /// Waits for the next reply, checking the server between sleeps.
    pub fn wait_reply(&mut self) -> Result<ServerReply, SendError> {
        let event = &self.record.client_event;
        let mut spin = SPIN;
        loop {
            if let Some(reply) = self.poll_reply()? {
                return Ok(reply);
            }
            let (record, seen) = (self.record, self.s2c_seen);
            let deadline = Instant::now() + CHECK_SLICE;
            if !event.wait_until(|| protocol::pending(&record.s2c, seen).is_some(), deadline, spin) {
                self.watchdog.check()?;
            }
            spin = Duration::ZERO;
        }
    }

    /// Tells the server the stream is alive while no data moves (a pipe with nothing
    /// to read yet), and ends the wait if the server is gone or Ctrl-C came.
    pub(super) fn keep_alive(&mut self) -> Result<(), SendError> {
        // Relaxed: a liveness hint the server compares, like its own heartbeat.
        self.record.client_beat.fetch_add(1, Ordering::Relaxed);
        // No reply is due while the stream waits for its source or for the other
        // jobs: one now is the server giving up on it (dropped while this process
        // was stopped, say), to report at once rather than when the source ends.
        if let Some(reply) = self.poll_reply()? {
            return Err(reply_error(reply));
        }
        self.watchdog.check()
    }

    /// Gives the stream's ring back to the server while the stream is held idle (the
    /// stream kept for a commit): buffers held by a stream that waits for the others
    /// are what they may be waiting for, on a small segment for good. The next file
    /// gets a new ring.
    pub(super) fn release_ring(&mut self) -> Result<(), SendError> {
        self.kept_slot = None;
        self.post(&ClientCommand::Release)?;
        match self.wait_reply()? {
            ServerReply::Done { .. } => Ok(()),
            other => Err(reply_error(other)),
        }
    }

    /// Keeps this stream going after SIGINT/SIGTERM/SIGHUP: the stream held for the commit
    /// of staged folders, which is sent even then (one round trip), so what the
    /// client reports is what the server published. A server that does not answer
    /// is still noticed (gone, stopping, silent for `--timeout`); `sharedclient`
    /// itself exits about a second after the signal whatever is in flight.
    pub(super) fn outlast_stop(&mut self) {
        self.watchdog.outlast_stop = true;
    }

    /// Tells the server we are done with the record (best effort).
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.unhold();
            let _ = self.post(&ClientCommand::Close);
            self.give_back_permit();
        }
    }

    /// After the Close or Abort: no longer counted among the process's streams. A
    /// send of this process waiting for this place is counted by the server at its
    /// first command, so when one waits, the server has released this record first.
    fn give_back_permit(&mut self) {
        if self.permit.as_ref().is_some_and(Permit::awaited) {
            self.wait_released(Duration::from_secs(1));
        }
        self.permit = None;
    }

    /// No longer among the streams `Connection::beat_held` keeps alive.
    fn unhold(&self) {
        self.connection.held.lock().expect("held lock").retain(|&(guid, _)| guid != self.guid);
    }

    /// After `abort`: waits (at most `most`) until the server has released the
    /// record, so that a stream opened next is not counted against the client's
    /// quota (`--max-streams-per-client`) together with this one.
    pub(super) fn wait_released(&mut self, most: Duration) {
        let deadline = crate::wait::deadline_after(most);
        loop {
            // SYNC POINT (record state): pairs with the Release in the server's
            // `Stream::release`. A record already reused holds another GUID.
            let released = self.record.state.load(Ordering::Acquire) == RECORD_FREE
                || load_guid(&self.record.guid) != self.guid;
            if released || Instant::now() >= deadline || self.watchdog.check().is_err() {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Gives up the stream, telling the server why.
    pub fn abort(&mut self, reason: &str) {
        if !self.closed {
            self.closed = true;
            self.unhold();
            let _ = self.post(&ClientCommand::Abort { reason: reason.to_owned() });
            self.give_back_permit();
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs COUNT ping-pong round trips on one stream; returns the round-trip times.
pub fn ping(connection: &Connection, count: u64) -> Result<Vec<Duration>, SendError> {
    let mut session = Session::open(connection)?;
    let origin = Instant::now();
    let mut times = Vec::with_capacity(count.min(1 << 24) as usize);
    for seq in 0..count {
        let start = Instant::now();
        let sent_nanos = start.duration_since(origin).as_nanos() as u64;
        session.post(&ClientCommand::Ping { seq, sent_nanos })?;
        match session.wait_reply()? {
            ServerReply::Pong { seq: echoed, .. } if echoed == seq => times.push(start.elapsed()),
            other => return Err(reply_error(other)),
        }
    }
    session.close();
    Ok(times)
}

/// min, median and p99 of a set of durations.
pub fn percentiles(times: &mut [Duration]) -> Option<(Duration, Duration, Duration)> {
    if times.is_empty() {
        return None;
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Some((times[0], at(0.5), at(0.99)))
}
