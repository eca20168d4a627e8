//! The GUID handout: the server keeps one fresh GUID on offer, naming a record it
//! has already allocated; a client takes it under the handout lock, and the server
//! puts a new one on offer. It can go on forever. Both sides wait on the header's
//! `handout_event`.
//!
//! Neither side ever blocks on the handout lock: a peer stopped (SIGSTOP) inside its
//! critical section must not hang the server's main loop or other clients. The
//! server retries on its next pass; a client gives up after its busy limit.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use named_lock::NamedLock;
use uuid::Uuid;

use crate::segment::{Segment, HANDOUT_EMPTY, HANDOUT_OFFERED, HANDOUT_TAKEN};

/// What a client got from the handout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The stream's GUID: it names the record's lock file.
    pub guid: Uuid,
    /// Where the stream's record lies in the segment (unchecked until used).
    pub record_offset: u64,
}

fn store_guid(slot: &[std::sync::atomic::AtomicU64; 2], guid: Uuid) {
    let (hi, lo) = guid.as_u64_pair();
    slot[0].store(hi, Ordering::Relaxed);
    slot[1].store(lo, Ordering::Relaxed);
}

/// Reads a GUID stored as (high, low) halves, as in `Handout::guid` and
/// `Record::guid`. Relaxed: the caller must have Acquire-loaded the state word that
/// publishes it.
pub fn load_guid(slot: &[std::sync::atomic::AtomicU64; 2]) -> Uuid {
    Uuid::from_u64_pair(slot[0].load(Ordering::Relaxed), slot[1].load(Ordering::Relaxed))
}

/// Takes the lock if it is free: `Ok(None)` while someone else holds it.
fn try_acquire(lock: &NamedLock) -> io::Result<Option<named_lock::NamedLockGuard>> {
    match lock.try_lock() {
        Ok(guard) => Ok(Some(guard)),
        Err(named_lock::Error::WouldBlock) => Ok(None),
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

/// Server: puts `ticket` on offer and wakes clients waiting for one. `false` if the
/// lock is busy (try again later).
pub fn offer(segment: &Segment, lock: &NamedLock, ticket: Ticket) -> io::Result<bool> {
    {
        let Some(_guard) = try_acquire(lock)? else { return Ok(false) };
        store_offer(segment, ticket);
    }
    segment.header().handout_event.notify();
    Ok(true)
}

/// Puts `ticket` on offer; the caller holds the handout lock.
fn store_offer(segment: &Segment, ticket: Ticket) {
    let handout = segment.handout();
    store_guid(&handout.guid, ticket.guid);
    handout.record_offset.store(ticket.record_offset, Ordering::Relaxed);
    handout.taker_pid.store(0, Ordering::Relaxed);
    handout.generation.fetch_add(1, Ordering::Relaxed);
    // SYNC POINT (handout offered): the fields above are visible to a client that
    // sees OFFERED (`try_take`).
    handout.state.store(HANDOUT_OFFERED, Ordering::Release);
}

/// Server: if a client took the offer, returns the taker's pid (as the client wrote
/// it: advisory, used only for liveness checks) and empties the handout. `None`
/// also while the lock is busy.
pub fn collect(segment: &Segment, lock: &NamedLock) -> io::Result<Option<u32>> {
    let handout = segment.handout();
    // SYNC POINT (handout taken): pairs with the client's Release in `try_take`;
    // its pid is visible.
    if handout.state.load(Ordering::Acquire) != HANDOUT_TAKEN {
        return Ok(None);
    }
    let Some(_guard) = try_acquire(lock)? else { return Ok(None) };
    let pid = handout.taker_pid.load(Ordering::Relaxed);
    handout.state.store(HANDOUT_EMPTY, Ordering::Relaxed);
    Ok(Some(pid))
}

/// Server: takes the offer back if no client took it yet; returns whether it did.
pub fn withdraw(segment: &Segment, lock: &NamedLock) -> io::Result<bool> {
    let handout = segment.handout();
    let Some(_guard) = try_acquire(lock)? else { return Ok(false) };
    // Under the handout lock, which every writer of `state` holds: the orderings
    // only keep `state` in step with the lock-protected fields.
    // SYNC POINT (handout taken): pairs with the client's Release in `try_take`.
    if handout.state.load(Ordering::Acquire) != HANDOUT_OFFERED {
        return Ok(false);
    }
    // SYNC POINT (handout offered): EMPTY retracts the offer; pairs with the
    // Acquire loads in `try_take`.
    handout.state.store(HANDOUT_EMPTY, Ordering::Release);
    Ok(true)
}

/// Server: whether the handout still shows `ticket` on offer, or taken. A stray
/// write into the segment can change it; clients would then wait for an offer that
/// never comes (see `offer_again`).
pub fn intact(segment: &Segment, ticket: Ticket) -> bool {
    let handout = segment.handout();
    // Relaxed: nothing is read on the strength of it; the GUID and offset are the
    // server's own stores.
    match handout.state.load(Ordering::Relaxed) {
        HANDOUT_TAKEN => true,
        HANDOUT_OFFERED => {
            load_guid(&handout.guid) == ticket.guid
                && handout.record_offset.load(Ordering::Relaxed) == ticket.record_offset
        }
        _ => false,
    }
}

/// Server: puts `ticket` on offer again if the handout no longer shows it (not
/// `intact`), checked under the handout lock, so a client taking it meanwhile
/// (TAKEN) is never overwritten. `true` if it did; `false` also while the lock is
/// busy (the next round looks again).
pub fn offer_again(segment: &Segment, lock: &NamedLock, ticket: Ticket) -> io::Result<bool> {
    {
        let Some(_guard) = try_acquire(lock)? else { return Ok(false) };
        if intact(segment, ticket) {
            return Ok(false);
        }
        store_offer(segment, ticket);
    }
    segment.header().handout_event.notify();
    Ok(true)
}

/// Whether a client has taken the current offer (the server's wake condition).
pub fn is_taken(segment: &Segment) -> bool {
    // SYNC POINT (handout taken): pairs with the client's Release in `try_take`.
    segment.handout().state.load(Ordering::Acquire) == HANDOUT_TAKEN
}

/// Client: takes the GUID on offer, waiting for one until `deadline`. Between
/// sleeps it calls `still_ok` so the caller can give up on a dead server.
pub fn take<E: From<io::Error>>(
    segment: &Segment,
    lock: &NamedLock,
    deadline: Instant,
    still_ok: impl FnMut() -> Result<(), E>,
) -> Result<Option<Ticket>, E> {
    take_within(segment, lock, deadline, Duration::MAX, still_ok)
}

/// `take`, failing with `TimedOut` once an offer has been in sight but the lock held
/// by someone else for `busy_limit` (a peer stopped inside the handout). Having no
/// offer at all is not a failure: the server offers again when records free up.
pub fn take_within<E: From<io::Error>>(
    segment: &Segment,
    lock: &NamedLock,
    deadline: Instant,
    busy_limit: Duration,
    mut still_ok: impl FnMut() -> Result<(), E>,
) -> Result<Option<Ticket>, E> {
    let handout = segment.handout();
    let event = &segment.header().handout_event;
    let mut busy_since: Option<Instant> = None;
    loop {
        match try_take(segment, lock)? {
            Attempt::Taken(ticket) => {
                event.notify(); // the server sleeps on the same event
                return Ok(Some(ticket));
            }
            Attempt::Busy => {
                let since = *busy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= busy_limit {
                    let message = format!(
                        "the GUID handout has been locked by another process for {} s: is a client stopped?",
                        busy_limit.as_secs()
                    );
                    return Err(io::Error::new(io::ErrorKind::TimedOut, message).into());
                }
            }
            Attempt::NothingOffered => busy_since = None,
        }
        still_ok()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        // A busy lock is normally another client's few stores: look again soon.
        let slice = if busy_since.is_some() { Duration::from_millis(2) } else { Duration::from_millis(250) };
        // SYNC POINT (handout offered): pairs with the server's Release in `offer`.
        let offered = || handout.state.load(Ordering::Acquire) == HANDOUT_OFFERED;
        let busy = busy_since.is_some();
        event.sleep_unless(&mut || !busy && offered(), (deadline - now).min(slice));
    }
}

enum Attempt {
    Taken(Ticket),
    /// An offer is there but another process holds the lock.
    Busy,
    NothingOffered,
}

fn try_take(segment: &Segment, lock: &NamedLock) -> io::Result<Attempt> {
    let handout = segment.handout();
    // SYNC POINT (handout offered): a first look without the lock; pairs with the
    // server's Release in `offer`.
    if handout.state.load(Ordering::Acquire) != HANDOUT_OFFERED {
        return Ok(Attempt::NothingOffered);
    }
    let Some(_guard) = try_acquire(lock)? else { return Ok(Attempt::Busy) };
    // SYNC POINT (handout offered): pairs with the server's Release in `offer`; the
    // GUID and record offset are visible.
    if handout.state.load(Ordering::Acquire) != HANDOUT_OFFERED {
        return Ok(Attempt::NothingOffered);
    }
    let ticket = Ticket {
        guid: load_guid(&handout.guid),
        record_offset: handout.record_offset.load(Ordering::Relaxed),
    };
    handout.taker_pid.store(std::process::id(), Ordering::Relaxed);
    // SYNC POINT (handout taken): the pid is visible to the server that sees TAKEN
    // (`collect`, `is_taken`, `withdraw`; `intact` only looks at the state).
    handout.state.store(HANDOUT_TAKEN, Ordering::Release);
    Ok(Attempt::Taken(ticket))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockDir;

    /// A fresh segment and lock folder with the handout lock, unique to this test.
    fn fixture(tag: &str) -> (Segment, LockDir, NamedLock) {
        let name = format!("{tag}-{}", std::process::id());
        let segment = Segment::create(&name, 1 << 20).unwrap();
        let dir = LockDir::create(&name).unwrap();
        let lock = dir.lock(crate::lock::HANDOUT_LOCK).unwrap();
        (segment, dir, lock)
    }

    #[test]
    fn offers_can_be_taken_one_after_another_forever() {
        let (segment, dir, lock) = fixture("sxf-unit-handout");
        let deadline = || Instant::now() + Duration::from_secs(5);
        for round in 0..50u64 {
            let ticket = Ticket { guid: Uuid::new_v4(), record_offset: 4096 + round * 2048 };
            assert!(offer(&segment, &lock, ticket).unwrap());
            let taken = take::<io::Error>(&segment, &lock, deadline(), || Ok(())).unwrap();
            assert_eq!(taken, Some(ticket));
            assert_eq!(collect(&segment, &lock).unwrap(), Some(std::process::id()));
            assert_eq!(collect(&segment, &lock).unwrap(), None, "a take is collected once");
        }
        let ticket = Ticket { guid: Uuid::new_v4(), record_offset: 4096 };
        assert!(offer(&segment, &lock, ticket).unwrap());
        assert!(withdraw(&segment, &lock).unwrap(), "an untaken offer can be withdrawn");
        let deadline = Instant::now() + Duration::from_millis(50);
        assert_eq!(take::<io::Error>(&segment, &lock, deadline, || Ok(())).unwrap(), None);
        dir.remove();
    }

    #[test]
    fn a_handout_lock_held_by_a_stopped_peer_is_a_timeout_not_a_hang() {
        let (segment, dir, lock) = fixture("sxf-unit-handout-held");
        let ticket = Ticket { guid: Uuid::new_v4(), record_offset: 4096 };
        assert!(offer(&segment, &lock, ticket).unwrap());
        // A holder that never lets go (a stopped peer), from another thread.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let other = dir.lock(crate::lock::HANDOUT_LOCK).unwrap();
        let holder = std::thread::spawn(move || {
            let _guard = other.lock().unwrap();
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        });
        held_rx.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let result =
            take_within::<io::Error>(&segment, &lock, deadline, Duration::from_millis(200), || Ok(()));
        assert!(!offer(&segment, &lock, ticket).unwrap(), "the server does not block either");
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("locked by another process"), "{err}");
        dir.remove();
    }

    #[test]
    fn nothing_on_offer_times_out_instead_of_hanging() {
        let (segment, dir, lock) = fixture("sxf-unit-handout-empty");
        let deadline = Instant::now() + Duration::from_millis(200);
        let taken = take::<io::Error>(&segment, &lock, deadline, || Ok(())).unwrap();
        assert_eq!(taken, None);
        dir.remove();
    }
}
