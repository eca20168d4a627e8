//! Cross-process wait and wake: a sequence word plus a waiter count, living in the
//! segment. The waker bumps the sequence after changing shared state and makes the
//! futex call only when someone sleeps; the waiter spins briefly (wakeups cost tens
//! of microseconds on a VM), then sleeps on the sequence word with a timeout so a
//! dead peer or a lost wake never hangs it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::sys;

/// A doorbell in shared memory. `#[repr(C)]`, 8 bytes, all atomics: any bit pattern
/// a peer writes is a valid value, at worst a spurious or missed wake, which the
/// waiter's timeout absorbs.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Event {
    seq: AtomicU32,
    waiters: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<Event>() == 8);

/// How long a waiter spins before it sleeps: longer than a round trip between two
/// awake processes (a few microseconds), far shorter than a futex wakeup on a VM.
pub const SPIN: Duration = Duration::from_micros(20);

/// `Instant::now() + wait`, or a century from now for a wait too long to add (a
/// `--timeout` of 2^63 seconds means "forever", not a panic).
pub fn deadline_after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait.min(FOREVER)).unwrap_or(now)
}

/// What `deadline_after` makes of a wait longer than any transfer.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Whether some thread of this process is spinning right now.
static SPINNING: AtomicBool = AtomicBool::new(false);

/// Spins until `ready()` holds or `limit` passes; returns whether it held. At most
/// one thread per process spins at a time: with more waiters than cores (a client
/// running eight streams on two cores), spinners would only steal the CPU the peer
/// needs to answer; the others go straight to sleep.
///
/// Spinning is also adaptive per thread: after two spins in a row that ran out
/// (bulk transfers, where the peer takes far longer than a spin), a thread tries
/// only one wait in sixteen, until a spin pays off again (ping-pong).
pub fn spin_until(mut ready: impl FnMut() -> bool, limit: Duration) -> bool {
    if limit.is_zero() || !SPIN_HISTORY.with(|h| h.worth_trying()) {
        return ready();
    }
    // Relaxed: a courtesy flag; a wrong guess only costs a spin or a sleep.
    if SPINNING.swap(true, Ordering::Relaxed) {
        return ready();
    }
    let held = spin_for(&mut ready, limit);
    SPINNING.store(false, Ordering::Relaxed);
    SPIN_HISTORY.with(|h| h.record(held));
    held
}

/// Recent spin outcomes of one thread.
struct SpinHistory {
    misses: Cell<u32>,
    skipped: Cell<u32>,
}

thread_local! {
    static SPIN_HISTORY: SpinHistory = const { SpinHistory { misses: Cell::new(0), skipped: Cell::new(0) } };
}

impl SpinHistory {
    fn worth_trying(&self) -> bool {
        if self.misses.get() < 2 {
            return true;
        }
        let skipped = self.skipped.get().wrapping_add(1);
        self.skipped.set(skipped);
        skipped.is_multiple_of(16)
    }

    fn record(&self, held: bool) {
        self.misses.set(if held { 0 } else { self.misses.get().saturating_add(1) });
    }
}

fn spin_for(ready: &mut impl FnMut() -> bool, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..32 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= limit {
            return ready();
        }
    }
}

impl Event {
    /// Call after publishing the state the waiter is looking for.
    pub fn notify(&self) {
        // SYNC POINT (event wake): the SeqCst bump orders the caller's state change before the
        // waiter-count read, pairing with `wait_once` (count up, then re-check).
        self.seq.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            sys::futex_wake_all(&self.seq);
        }
    }

    /// Waits until `ready()` holds or `deadline` passes, spinning `spin` first, then
    /// sleeping in slices of at most `slice` (so callers can check liveness between
    /// calls). Returns whether `ready()` held.
    pub fn wait_until(&self, mut ready: impl FnMut() -> bool, deadline: Instant, spin: Duration) -> bool {
        if spin_until(&mut ready, spin) {
            return true;
        }
        loop {
            if ready() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.sleep_unless(&mut ready, deadline - now);
        }
    }

    /// One sleep of at most `timeout`, skipped if `ready()` already holds.
    pub fn sleep_unless(&self, ready: &mut impl FnMut() -> bool, timeout: Duration) {
        let seen = self.seq.load(Ordering::SeqCst);
        // SYNC POINT (event wake): announce the sleeper before the last check, pairing with
        // `notify`: a state change after this check bumps `seq`, so the futex call
        // below returns at once; a change before it is seen by `ready()`.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        if !ready() {
            sys::futex_wait(&self.seq, seen, timeout);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// The current sequence value, for callers that wait on "anything happened".
    pub fn seq(&self) -> u32 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Sleeps until the sequence moves past `seen` or `timeout` passes.
    pub fn wait_past(&self, seen: u32, timeout: Duration) {
        self.sleep_unless(&mut || self.seq.load(Ordering::SeqCst) != seen, timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn a_notify_wakes_a_sleeping_waiter_before_its_deadline() {
        let event = Arc::new(Event::default());
        let flag = Arc::new(AtomicBool::new(false));
        let (e2, f2) = (event.clone(), flag.clone());
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            f2.store(true, Ordering::SeqCst);
            e2.notify();
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        assert!(event.wait_until(|| flag.load(Ordering::SeqCst), deadline, Duration::ZERO));
        waker.join().unwrap();
    }

    #[test]
    fn a_thread_whose_spins_keep_missing_mostly_stops_spinning() {
        let history = SpinHistory { misses: Cell::new(0), skipped: Cell::new(0) };
        assert!(history.worth_trying());
        history.record(false);
        assert!(history.worth_trying(), "one miss is not a pattern");
        history.record(false);
        let tries = (0..32).filter(|_| history.worth_trying()).count();
        assert_eq!(tries, 2, "one wait in sixteen still spins");
        history.record(true);
        assert!(history.worth_trying(), "a spin that paid off turns spinning back on");
    }

    #[test]
    fn waiting_for_something_that_never_happens_times_out() {
        let event = Event::default();
        let deadline = Instant::now() + Duration::from_millis(30);
        assert!(!event.wait_until(|| false, deadline, SPIN));
        assert!(Instant::now() >= deadline);
    }
}
