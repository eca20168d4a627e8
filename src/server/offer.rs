//! The handout loop: keep a GUID on offer, hand taken streams to the least loaded
//! worker, beat the heartbeat; and the allocator bookkeeping the loop and workers share.

use super::stream::Stream;
use super::*;

/// The main thread: keep a GUID on offer, hand taken streams to workers, beat.
pub(super) fn handout_loop(
    shared: &Shared,
    handout_lock: &NamedLock,
    workers: &[Sender<Stream>],
) -> Result<(), ServerError> {
    let header = shared.segment.header();
    let mut offered: Option<Offer> = None;
    let mut busy_backoff = Duration::from_micros(100);
    let mut last_report = Instant::now();
    // As the server wrote them before this loop: put back if a stray write changes them.
    let kept = shared.segment.keep_header();
    while !shared.stop.load(Ordering::SeqCst) && sys::stop_signal().is_none() {
        header.heartbeat.fetch_add(1, Ordering::Relaxed);
        let restored = shared.segment.restore_header(&kept);
        if !restored.is_empty() {
            (shared.events)(&ServerEvent::Notice(format!(
                "the segment's header was overwritten (a stray write by a process that maps it): put back its {}",
                restored.join(", ")
            )));
        }
        if last_report.elapsed() >= REPORT_PERIOD {
            last_report = Instant::now();
            shared.report_departed(false);
        }
        // Relaxed: status only.
        header.heartbeat_at_ms.store(sys::now_ms(), Ordering::Relaxed);
        shared.publish_stats(&shared.alloc.lock().expect("allocator lock"));
        if offered.is_some() {
            let pid = handout::collect(&shared.segment, handout_lock).map_err(ServerError::io(HANDOUT))?;
            if pid.is_none() && handout::is_taken(&shared.segment) {
                // Taken, but the taker still holds the lock (for a few stores, or
                // stopped inside): back off instead of spinning on "taken".
                std::thread::sleep(busy_backoff);
                busy_backoff = (busy_backoff * 2).min(RETRY_SLICE);
                continue;
            }
            busy_backoff = Duration::from_micros(100);
            if let Some(offer) = offered
                .as_ref()
                .filter(|offer| pid.is_none() && !handout::intact(&shared.segment, offer.ticket))
            {
                if handout::offer_again(&shared.segment, handout_lock, offer.ticket)
                    .map_err(ServerError::io(HANDOUT))?
                {
                    (shared.events)(&ServerEvent::Notice(
                        "the GUID handout was overwritten (a stray write into the segment by a process that maps it): offered again".into(),
                    ));
                }
            }
            if let Some(pid) = pid {
                let offer = offered.take().expect("checked above");
                let worker = offer.worker;
                let mut stream = Stream::activate(shared, offer, pid);
                let held = {
                    let mut clients = shared.clients.lock().expect("client count lock");
                    let client = clients.entry(pid).or_insert_with(|| shared.arrive(pid));
                    client.held += 1;
                    stream.stages = Arc::clone(&client.stages);
                    client.held
                };
                stream.over_quota = held > shared.options.max_streams_per_client;
                shared.loads[worker].fetch_add(1, Ordering::Relaxed);
                workers[worker].send(stream).map_err(|_| internal("a worker thread died"))?;
                header.doorbells[worker].notify();
            }
        }
        if offered.as_ref().is_some_and(|offer| shared.offer_is_misplaced(offer))
            && handout::withdraw(&shared.segment, handout_lock).map_err(ServerError::io(HANDOUT))?
        {
            let offer = offered.take().expect("checked above");
            shared.free_block(offer.ticket.record_offset);
            shared.locks.remove_stream_lock(offer.ticket.guid);
        }
        if offered.is_none() {
            offered = shared.make_offer(handout_lock)?;
        }
        let wait_for = if offered.is_some() { HEARTBEAT_PERIOD } else { RETRY_SLICE };
        let mut taken = || handout::is_taken(&shared.segment) || sys::stop_signal().is_some();
        header.handout_event.sleep_unless(&mut taken, wait_for);
    }
    Ok(())
}

/// How often departed clients are looked at for their line (a /proc read each).
const REPORT_PERIOD: Duration = Duration::from_millis(50);

/// A record the server allocated and put on offer, with its private facts.
pub(super) struct Offer {
    pub(super) ticket: Ticket,
    pub(super) lock: NamedLock,
    /// The worker that will serve the stream (its doorbell is in the record).
    pub(super) worker: usize,
}

impl Shared {
    /// Allocates and offers a fresh record; `None` while the records area is full.
    /// Records never take the room of one ring (and the gap `allocate_ring` keeps):
    /// streams waiting for space each hold a record, and on a small segment enough
    /// of them would leave no room for any ring, so none would ever start. Past
    /// that, a new stream waits for its record in the handout.
    pub(super) fn make_offer(&self, handout_lock: &NamedLock) -> Result<Option<Offer>, ServerError> {
        let offset = {
            let mut alloc = self.alloc.lock().expect("allocator lock");
            let Some(offset) = alloc.alloc_low(RECORD_SIZE, RECORD_ALIGN) else { return Ok(None) };
            let layout = self.segment.layout();
            let one_ring = crate::ring::chunk_size(u64::MAX, layout.area_end - layout.area_start);
            let stats = alloc.stats();
            if stats.low_blocks > 1
                && stats.low_mark + one_ring + RECORD_SIZE + RECORD_ALIGN > layout.area_end
            {
                // Our own fresh allocation: freeing it cannot fail.
                let _ = alloc.free(offset);
                return Ok(None);
            }
            self.publish_stats(&alloc);
            offset
        };
        let guid = Uuid::new_v4();
        // Offsets come from our own allocator: a failure here is a server bug.
        self.segment.clear_record(offset).map_err(internal)?;
        let record = self.segment.record(offset).map_err(internal)?;
        // Relaxed: a placement hint; the least loaded worker when the offer is made.
        let worker =
            (0..self.loads.len()).min_by_key(|&i| self.loads[i].load(Ordering::Relaxed)).unwrap_or(0);
        record.doorbell.store(worker as u32, Ordering::Relaxed);
        let (hi, lo) = guid.as_u64_pair();
        record.guid[0].store(hi, Ordering::Relaxed);
        record.guid[1].store(lo, Ordering::Relaxed);
        // SYNC POINT (record state): the GUID and doorbell above are visible to a
        // reader that Acquire-loads `state` (`status::stream_at`).
        record.state.store(RECORD_OFFERED, Ordering::Release);
        let lock = match self.locks.stream_lock(guid) {
            Ok(lock) => lock,
            Err(e) => {
                // Out of descriptors, say: not a reason to stop serving everyone.
                (self.events)(&ServerEvent::Notice(format!("cannot create a stream lock ({e}); retrying")));
                self.free_block(offset);
                return Ok(None);
            }
        };
        let ticket = Ticket { guid, record_offset: offset };
        if !handout::offer(&self.segment, handout_lock, ticket).map_err(ServerError::io(HANDOUT))? {
            // A peer holds the handout lock (stopped inside it?): undo, retry later.
            self.free_block(offset);
            self.locks.remove_stream_lock(guid);
            return Ok(None);
        }
        Ok(Some(Offer { ticket, lock, worker }))
    }

    /// At rest (no stream, no buffer), an offer above the area's first record
    /// splits the free space in two: move it down so the segment is one hole again.
    pub(super) fn offer_is_misplaced(&self, offer: &Offer) -> bool {
        let alloc = self.alloc.lock().expect("allocator lock");
        let stats = alloc.stats();
        stats.low_blocks == 1 && stats.high_blocks == 0 && offer.ticket.record_offset != stats.start
    }

    /// Wakes every worker: space was freed (streams anywhere may be waiting for
    /// it) or the server is stopping.
    pub(super) fn ring_all_workers(&self) {
        for doorbell in &self.segment.header().doorbells[..self.loads.len()] {
            doorbell.notify();
        }
    }

    pub(super) fn free_block(&self, offset: u64) {
        let mut alloc = self.alloc.lock().expect("allocator lock");
        // Offsets come from our own allocations; a failure here is a server bug.
        if let Err(e) = alloc.free(offset) {
            (self.events)(&ServerEvent::Notice(format!("internal error freeing {offset}: {e}")));
        }
        // At once, not at the handout loop's next pass: `--status` agrees with itself.
        self.publish_stats(&alloc);
    }

    /// Mirrors the allocator into the header for `--status` (advisory).
    pub(super) fn publish_stats(&self, alloc: &TwoEndedAllocator) {
        let stats = alloc.stats();
        let header = self.segment.header();
        // Relaxed: status readers only display these numbers.
        header.low_mark.store(stats.low_mark, Ordering::Relaxed);
        header.high_mark.store(stats.high_mark, Ordering::Relaxed);
        header.free_bytes.store(stats.free_bytes, Ordering::Relaxed);
        header.hole_count.store(stats.holes.len() as u64, Ordering::Relaxed);
        header.live_streams.store(stats.low_blocks as u64, Ordering::Relaxed);
    }
}
