//! A stream's buffer ring: the slot protocol both sides speak, and its geometry.
//!
//! Each record has up to `MAX_SLOTS` slots. A slot names one buffer (offset and
//! capacity, written by the server) and says who owns it:
//!
//! ```text
//!            server installs             client fills, hands over (Release)
//!   Unused ---------------> Empty(client) ---------------------------------> Full(server)
//!      ^                       ^                                                 |
//!      |  server revokes       +-------------------------------------------------+
//!      +-- (any state)               server drains, hands back (Release)
//! ```
//!
//! Ownership moves with one store of the state word; the other side Acquire-loads it
//! before it touches the buffer or `len`. Nothing outside this module reads or
//! writes slot words. The server never trusts a slot's offset or capacity as the
//! client may have rewritten them: the `Consumer` keeps private copies.

use std::sync::atomic::Ordering;

use crate::segment::{Buffer, LayoutError, Record, Segment, BUFFER_ALIGN, MAX_SLOTS, RECORD_DROPPED};

/// Why the client may not fill its next slot.
#[derive(Debug)]
pub enum SlotError {
    /// The slot's offset or capacity lies outside the segment.
    Bad(LayoutError),
    /// The server dropped the stream (its reply says why): the ring may be gone.
    Dropped,
}

impl std::fmt::Display for SlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotError::Bad(e) => write!(f, "the server gave a bad buffer: {e}"),
            SlotError::Dropped => write!(f, "the server dropped the stream"),
        }
    }
}

/// Largest chunk a ring slot carries.
pub const MAX_CHUNK: u64 = 1 << 20;
/// Ring slots a stream asks for (fewer if the file is small or space is short).
pub const WANTED_SLOTS: usize = 4;
const _: () = assert!(WANTED_SLOTS <= MAX_SLOTS);

/// Who owns a slot's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SlotState {
    /// No buffer (none installed, or revoked by the server).
    Unused = 0,
    /// The client owns the buffer and may fill it.
    Empty = 1,
    /// The server owns the buffer and must drain `len` bytes.
    Full = 2,
}

impl TryFrom<u32> for SlotState {
    type Error = u32;

    /// A peer can write any value: anything but the three states is an error.
    fn try_from(word: u32) -> Result<Self, u32> {
        match word {
            0 => Ok(Self::Unused),
            1 => Ok(Self::Empty),
            2 => Ok(Self::Full),
            other => Err(other),
        }
    }
}

/// Chunk size for a file: the whole file if small, at most `MAX_CHUNK`, and small
/// enough that the buffer area holds many streams' rings at once.
pub fn chunk_size(file_size: u64, area: u64) -> u64 {
    let fair_share = (area / (WANTED_SLOTS as u64 * 8)).max(BUFFER_ALIGN);
    let chunk = file_size.min(MAX_CHUNK).min(fair_share).max(1);
    chunk.div_ceil(BUFFER_ALIGN) * BUFFER_ALIGN
}

/// Slots for a file of `file_size` bytes in chunks of `chunk`: enough to pipeline,
/// at least one (a size that is only a hint may run past it).
pub fn wanted_slots(file_size: u64, chunk: u64) -> usize {
    file_size.div_ceil(chunk.max(1)).clamp(1, WANTED_SLOTS as u64) as usize
}

/// The state of slot `index` as its owner-to-be must see it.
fn state(record: &Record, index: usize) -> Result<SlotState, u32> {
    // SYNC POINT (slot hand-over): pairs with the Release store of the other side in
    // `Producer::hand_over` (FULL) or `Consumer::release` / `install` (EMPTY).
    SlotState::try_from(record.slots[index].state.load(Ordering::Acquire))
}

/// The client's end: fills slots in order and hands each over with a length.
pub struct Producer<'a> {
    segment: &'a Segment,
    record: &'a Record,
    slots: usize,
    next: usize,
}

impl<'a> Producer<'a> {
    /// The ring of `slots` slots the server announced (checked by the caller against
    /// `MAX_SLOTS`).
    pub fn new(segment: &'a Segment, record: &'a Record, slots: usize) -> Producer<'a> {
        Producer { segment, record, slots: slots.clamp(1, MAX_SLOTS), next: 0 }
    }

    /// The slot the next chunk goes into.
    pub fn next_index(&self) -> usize {
        self.next
    }

    /// Whether the next slot is ours (EMPTY).
    pub fn ready(&self) -> bool {
        state(self.record, self.next) == Ok(SlotState::Empty)
    }

    /// The next slot's capacity, as the server wrote it (checked by `buffer`).
    pub fn capacity(&self) -> u64 {
        // Relaxed: published by the Release that made the slot EMPTY, which
        // `ready` Acquire-loaded.
        self.record.slots[self.next].capacity.load(Ordering::Relaxed)
    }

    /// The first `len` bytes of the next slot's buffer, bounds-checked against the
    /// segment (the server could have written any offset there), open to write
    /// until the slot is handed over (or skipped).
    ///
    /// The server frees the ring of a stream it dropped while its client was
    /// stopped, so that a stopped client holds no buffers; but a stopped thread
    /// resumes where it was (mid-copy, or about to read into the slot). Hence the
    /// handshake on `Record::filling`: the client raises it and then checks the
    /// record is not dropped; the server marks the record dropped and then frees
    /// early only if `filling` is down. Both sides SeqCst: at least one of them
    /// sees the other's store, so either the client never writes into the slot or
    /// the server keeps the ring until the client answers or exits.
    pub fn buffer(&self, len: u64) -> Result<Buffer<'a>, SlotError> {
        // SYNC POINT (filling handshake): pairs with the server's SeqCst store of
        // RECORD_DROPPED and load of `filling` in `Stream::check_health`.
        self.record.filling.store(1, Ordering::SeqCst);
        if self.record.state.load(Ordering::SeqCst) == RECORD_DROPPED {
            self.record.filling.store(0, Ordering::Release);
            return Err(SlotError::Dropped);
        }
        // Relaxed: as in `capacity`.
        let offset = self.record.slots[self.next].offset.load(Ordering::Relaxed);
        self.segment.buffer(offset, len).map_err(SlotError::Bad)
    }

    /// Hands the next slot to the server with `len` bytes in it, rings the
    /// server, and moves on.
    pub fn hand_over(&mut self, len: u64) {
        self.hand_over_quietly(len);
        self.segment.doorbell(self.record).notify();
    }

    /// Moves on to the next slot without handing this one over (batch mode: a
    /// slot that came back with results and is not refilled).
    pub fn skip(&mut self) {
        self.done_filling();
        self.next = (self.next + 1) % self.slots;
    }

    /// No slot is open to write any more (called by `hand_over` and `skip`; by the
    /// client itself when it leaves a slot unfilled, at the end of a source). SYNC
    /// POINT (filling handshake): Release, so the server that reads 0 (SeqCst) sees
    /// every write into the slot done.
    pub fn done_filling(&self) {
        self.record.filling.store(0, Ordering::Release);
    }

    /// As `hand_over`, without ringing: a command posted right after rings anyway.
    pub fn hand_over_quietly(&mut self, len: u64) {
        let slot = &self.record.slots[self.next];
        // Relaxed: published by the Release store below.
        slot.len.store(len, Ordering::Relaxed);
        // SYNC POINT (slot hand-over): FULL; pairs with the Acquire in `state`.
        slot.state.store(SlotState::Full as u32, Ordering::Release);
        self.done_filling();
        self.next = (self.next + 1) % self.slots;
    }
}

/// A full slot the consumer may drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullSlot {
    /// The slot's index in the record's ring.
    pub index: usize,
    /// The server's own copy of the buffer's place, never the record's.
    pub offset: u64,
    /// The server's own copy of the buffer's size in bytes.
    pub capacity: u64,
    /// The length the client wrote: unchecked.
    pub len: u64,
}

/// The server's end: installs buffers, drains full slots in order, revokes.
#[derive(Debug, Default)]
pub struct Consumer {
    /// Private copies of each slot's (offset, capacity).
    buffers: Vec<(u64, u64)>,
    next: usize,
}

impl Consumer {
    /// The buffers this ring holds, as (offset, capacity).
    pub fn buffers(&self) -> &[(u64, u64)] {
        &self.buffers
    }

    /// Whether the stream has no ring (no buffers installed).
    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    /// Capacity of slot 0 (all slots of a ring have the same), 0 without a ring.
    pub fn chunk(&self) -> u64 {
        self.buffers.first().map_or(0, |&(_, capacity)| capacity)
    }

    /// Publishes `buffers` in the record, every slot EMPTY (the client's). The
    /// caller's reply (a Release on the mailbox) publishes these stores.
    pub fn install(&mut self, record: &Record, buffers: Vec<(u64, u64)>) {
        for (slot, &(offset, capacity)) in record.slots.iter().zip(&buffers) {
            // Relaxed: published by the Release of the reply that announces the ring.
            slot.offset.store(offset, Ordering::Relaxed);
            slot.capacity.store(capacity, Ordering::Relaxed);
            slot.len.store(0, Ordering::Relaxed);
            slot.state.store(SlotState::Empty as u32, Ordering::Relaxed);
        }
        // Relaxed: as above.
        record.nslots.store(buffers.len() as u32, Ordering::Relaxed);
        self.buffers = buffers;
        self.next = 0;
    }

    /// Gives every kept slot back to the client for the next file (rewriting the
    /// offsets from the private copies, whatever the record says now).
    pub fn rearm(&mut self, record: &Record) {
        let buffers = std::mem::take(&mut self.buffers);
        self.install(record, buffers);
    }

    /// The next slot in ring order if the client handed it over.
    pub fn next_full(&self, record: &Record) -> Option<FullSlot> {
        if self.buffers.is_empty() || state(record, self.next) != Ok(SlotState::Full) {
            return None;
        }
        let (offset, capacity) = self.buffers[self.next];
        // Relaxed: published by the client's Release store of FULL (Acquired above).
        let len = record.slots[self.next].len.load(Ordering::Relaxed);
        Some(FullSlot { index: self.next, offset, capacity, len })
    }

    /// Hands the slot `next_full` returned back to the client, and moves on.
    pub fn release(&mut self, record: &Record) {
        // SYNC POINT (slot hand-over): EMPTY; pairs with the Acquire in `state`.
        record.slots[self.next].state.store(SlotState::Empty as u32, Ordering::Release);
        record.client_event.notify();
        self.next = (self.next + 1) % self.buffers.len().max(1);
    }

    /// Starts the next file at slot 0, as the client does.
    pub fn restart(&mut self) {
        self.next = 0;
    }

    /// Hands slot 0 back without draining it (a put the server skipped).
    pub fn release_first(&mut self, record: &Record) {
        if !self.buffers.is_empty() {
            // SYNC POINT (slot hand-over): EMPTY; pairs with the Acquire in `state`.
            record.slots[0].state.store(SlotState::Empty as u32, Ordering::Release);
            self.next = 0;
        }
    }

    /// Takes every slot away from the client (it sees them leave EMPTY), keeping
    /// the buffers: the client may be inside a `read(2)` into one.
    pub fn revoke_all(&self, record: &Record) {
        for slot in &record.slots {
            // SYNC POINT (slot hand-over): UNUSED; pairs with the Acquire in `state`.
            slot.state.store(SlotState::Unused as u32, Ordering::Release);
        }
    }

    /// Forgets the ring (the caller frees the buffers it returns).
    pub fn clear(&mut self, record: &Record) -> Vec<(u64, u64)> {
        // Relaxed: nobody may use a cleared ring; status only displays it.
        record.nslots.store(0, Ordering::Relaxed);
        for slot in &record.slots {
            slot.state.store(SlotState::Unused as u32, Ordering::Relaxed);
        }
        self.next = 0;
        std::mem::take(&mut self.buffers)
    }
}

/// The buffers a record shows (for status): (offset, capacity) of its first
/// `nslots` slots, however a peer left them.
pub fn shown_buffers(record: &Record) -> Vec<(u64, u64)> {
    // Relaxed: status is a snapshot for display; nothing is published with it.
    let nslots = (record.nslots.load(Ordering::Relaxed) as usize).min(MAX_SLOTS);
    record.slots[..nslots]
        .iter()
        .map(|slot| (slot.offset.load(Ordering::Relaxed), slot.capacity.load(Ordering::Relaxed)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_states_decode() {
        assert_eq!(SlotState::try_from(0), Ok(SlotState::Unused));
        assert_eq!(SlotState::try_from(1), Ok(SlotState::Empty));
        assert_eq!(SlotState::try_from(2), Ok(SlotState::Full));
        assert_eq!(SlotState::try_from(3), Err(3));
        assert_eq!(SlotState::try_from(u32::MAX), Err(u32::MAX));
    }

    #[test]
    fn chunks_are_page_multiples_and_leave_room_for_many_streams() {
        let area = 64 << 20;
        assert_eq!(chunk_size(1, area), BUFFER_ALIGN);
        assert_eq!(chunk_size(1 << 30, area), MAX_CHUNK);
        assert!(chunk_size(1 << 30, 1 << 20) * (WANTED_SLOTS as u64) * 8 <= 1 << 20);
    }

    #[test]
    fn a_ring_has_one_slot_at_least_and_wanted_slots_at_most() {
        assert_eq!(wanted_slots(0, 4096), 1);
        assert_eq!(wanted_slots(4096, 4096), 1);
        assert_eq!(wanted_slots(3 * 4096, 4096), 3);
        assert_eq!(wanted_slots(u64::MAX, 4096), WANTED_SLOTS);
    }
}
