//! The worker pool: each worker serves many streams, drains their rings and
//! answers their commands, and sleeps on its doorbell when nothing happens.

use super::stream::{failure, Stream};
use super::*;

pub(super) type Workers = (Vec<Sender<Stream>>, Vec<thread::JoinHandle<()>>);

pub(super) fn spawn_workers(shared: &Arc<Shared>) -> io::Result<Workers> {
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for index in 0..shared.loads.len() {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::clone(shared);
        let handle = thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || Worker { shared, index, incoming: rx, streams: Vec::new() }.run())?;
        senders.push(tx);
        handles.push(handle);
    }
    Ok((senders, handles))
}

pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) index: usize,
    pub(super) incoming: Receiver<Stream>,
    pub(super) streams: Vec<Stream>,
}

impl Worker {
    pub(super) fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let doorbell = &shared.segment.header().doorbells[self.index];
        loop {
            let seen = doorbell.seq();
            while let Ok(stream) = self.incoming.try_recv() {
                self.streams.push(stream);
            }
            if self.shared.stopping.load(Ordering::SeqCst) {
                self.shut_down();
                return;
            }
            let progressed = self.poll_all();
            if !progressed {
                // Spin only while we have streams whose next step may come any moment;
                // wake at least every liveness period to check their clients.
                let (spin, slice) = if self.streams.is_empty() {
                    (Duration::ZERO, EMPTY_WORKER_SLICE)
                } else {
                    (SPIN, LIVENESS_PERIOD)
                };
                if !spin_until(|| doorbell.seq() != seen, spin) {
                    doorbell.wait_past(seen, slice);
                }
            }
        }
    }

    pub(super) fn poll_all(&mut self) -> bool {
        let mut progressed = false;
        for stream in &mut self.streams {
            // A panic (in a sink or an event callback of the program's own, or a
            // bug here) fails its stream, not the worker and every stream on it.
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stream.poll(&self.shared)));
            progressed |= polled.unwrap_or_else(|panic| {
                stream.panicked(&self.shared, panic_message(panic.as_ref()));
                true
            });
        }
        self.confirm_flushed();
        let mut index = 0;
        while index < self.streams.len() {
            if self.streams[index].is_closed() {
                self.streams.swap_remove(index).release(&self.shared);
                self.shared.loads[self.index].fetch_sub(1, Ordering::Relaxed);
                progressed = true;
            } else {
                index += 1;
            }
        }
        progressed
    }

    /// `--sync batch`: one flush for every file this pass published, then their
    /// confirmations. A failed flush fails them (their files stay published).
    fn confirm_flushed(&mut self) {
        if !self.streams.iter().any(|s| s.pending_done.is_some()) {
            return;
        }
        let flushed = self.shared.sink.flush();
        for stream in &mut self.streams {
            let Some(bytes) = stream.pending_done.take() else { continue };
            match &flushed {
                Ok(()) => stream.reply(&self.shared, ServerReply::Done { bytes }),
                Err(e) => {
                    let message = format!("published, but not flushed: {e}");
                    // Counted once, as a failure.
                    stream.tally.unpublish(bytes);
                    stream.fail(&self.shared, failure(ErrorCode::Io, message));
                }
            }
        }
    }

    /// Tells every client the server is going away and cleans up their streams.
    pub(super) fn shut_down(&mut self) {
        for mut stream in std::mem::take(&mut self.streams) {
            let message = "the server is shutting down".to_string();
            if stream.has_transfer() {
                stream.fail(&self.shared, failure(ErrorCode::Shutdown, message));
            } else {
                stream.reply(&self.shared, ServerReply::Error { code: ErrorCode::Shutdown, message });
            }
            stream.release(&self.shared);
        }
    }
}

/// What a panic said, if it said it in words.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (_, Some(text)) => text.clone(),
        _ => "a panic".to_owned(),
    }
}
