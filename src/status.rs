//! A read-only view of a running server's segment for `sharedclient --status`: sizes,
//! watermarks, free bytes and holes, every live stream, and a one-line map with
//! records growing up and buffers growing down. It takes no lock and writes nothing,
//! so it never disturbs the transfers it watches; everything it reads is advisory and
//! bounds-checked like any other peer data.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::handout::load_guid;
use crate::lock::LockDir;
use crate::segment::{self, Segment, NAME_WORDS, RECORD_SIZE};
use crate::segment::{PHASE_IDLE, PHASE_RECEIVING, PHASE_WAITING_FOR_SPACE, SERVER_RUNNING, SERVER_STOPPING};
use crate::segment::{RECORD_ACTIVE, RECORD_DROPPED, RECORD_OFFERED};
use crate::sys;

/// Cells of the segment map.
pub const MAP_WIDTH: usize = 64;

/// One live record as `--status` shows it. Everything here is what the segment
/// said when it was read: advisory, and possibly written by a misbehaving peer.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    /// The stream's GUID, as 32 hex digits.
    pub guid: String,
    /// Where the record lies in the segment.
    pub record_offset: u64,
    /// "offered" (GUID on offer, not yet taken), "active" or "dropped" (idle, kept
    /// until its client exits).
    pub state: &'static str,
    /// "idle", "waiting for space" or "receiving"; "on offer" or "dropped (idle)"
    /// by `state`; "unknown" for a value no server writes.
    pub phase: &'static str,
    /// The options.xml id of the item being sent (0 for a path).
    pub stream_id: u64,
    /// The file being (or last) received, as the server stored it.
    pub file: String,
    /// Bytes of that file the server has written so far.
    pub bytes_done: u64,
    /// The file's size in bytes; `None` (`null`, `?`) for a pipe, whose length is
    /// not known until its end.
    pub file_size: Option<u64>,
    /// The size is not known (a pipe).
    pub size_is_hint: bool,
    /// The pid of the client that took the record (0 while on offer).
    pub client_pid: u32,
    /// (offset, capacity) of each ring buffer.
    pub buffers: Vec<(u64, u64)>,
}

/// One read of a running server's segment: what `--status` prints (or gives as
/// JSON). Offsets are bytes from the segment's start; areas are `[start, end)`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The segment name.
    pub segment: String,
    /// The segment size in bytes.
    pub size: u64,
    /// The server's pid, from the header.
    pub server_pid: u32,
    /// "starting", "running" or "stopping".
    pub server_state: &'static str,
    /// The server's heartbeat counter: it moves while the server lives.
    pub heartbeat: u64,
    /// How long ago the last heartbeat was, in milliseconds (None if never).
    pub heartbeat_age_ms: Option<u64>,
    /// Where records may lie: from the area start up to `low_mark`.
    pub records_area: (u64, u64),
    /// Where buffers may lie: from `high_mark` up to the area end.
    pub buffers_area: (u64, u64),
    /// First byte above the records region (clamped to the area).
    pub low_mark: u64,
    /// First byte of the buffers region (clamped, never below `low_mark`).
    pub high_mark: u64,
    /// Bytes of the area in no live block, holes included.
    pub free_bytes: u64,
    /// Free ranges in the area, the middle gap included.
    pub holes: u64,
    /// Live records listed in `streams`.
    pub records: usize,
    /// Bytes in the ring buffers of those streams.
    pub buffer_bytes: u64,
    /// Files published since the server started.
    pub streams_done: u64,
    /// Transfers failed or given up since the server started.
    pub streams_failed: u64,
    /// Stream lock files in the lock folder (0 when it was not read).
    pub stream_lock_files: usize,
    /// The one-line map of the area (see `render_map`).
    pub map: String,
    /// Every live record, in offset order.
    pub streams: Vec<StreamStatus>,
}

/// What is true of the server: the state it wrote, unless its process is gone
/// (killed, or its pid now belongs to another process) or stopped.
fn server_liveness(header: &crate::segment::Header) -> &'static str {
    let pid = header.server_pid.load(Ordering::Relaxed);
    let started = header.server_started.load(Ordering::Relaxed);
    let same_process = sys::process_start_ticks(pid).is_some_and(|now| started == 0 || now == started);
    match sys::process_state(pid) {
        sys::ProcessState::Gone => "gone",
        _ if !same_process => "gone (its pid now belongs to another process)",
        sys::ProcessState::Stopped => "stopped (SIGSTOP)",
        sys::ProcessState::Running => server_state_name(header.server_state.load(Ordering::Relaxed)),
    }
}

fn server_state_name(state: u32) -> &'static str {
    match state {
        SERVER_RUNNING => "running",
        SERVER_STOPPING => "stopping",
        _ => "starting",
    }
}

fn phase_name(phase: u32) -> &'static str {
    match phase {
        PHASE_IDLE => "idle",
        PHASE_WAITING_FOR_SPACE => "waiting for space",
        PHASE_RECEIVING => "receiving",
        _ => "unknown",
    }
}

/// Reads the segment once. `locks` adds the count of stream lock files.
pub fn snapshot(segment: &Segment, locks: Option<&LockDir>) -> Snapshot {
    let layout = segment.layout();
    let header = segment.header();
    // Relaxed throughout: a display, not a synchronisation; values are clamped.
    let clamp = |v: u64| v.clamp(layout.area_start, layout.area_end);
    let low_mark = clamp(header.low_mark.load(Ordering::Relaxed));
    let high_mark = clamp(header.high_mark.load(Ordering::Relaxed)).max(low_mark);
    let streams = live_streams(segment, low_mark);
    let records = streams.len();
    let buffer_bytes = streams.iter().flat_map(|s| &s.buffers).map(|(_, len)| len).sum();
    Snapshot {
        segment: segment.name().to_owned(),
        size: layout.size,
        server_pid: header.server_pid.load(Ordering::Relaxed),
        server_state: server_liveness(header),
        heartbeat: header.heartbeat.load(Ordering::Relaxed),
        heartbeat_age_ms: match header.heartbeat_at_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(sys::now_ms().saturating_sub(at)),
        },
        records_area: (layout.area_start, low_mark),
        buffers_area: (high_mark, layout.area_end),
        low_mark,
        high_mark,
        free_bytes: header.free_bytes.load(Ordering::Relaxed).min(layout.size),
        holes: header.hole_count.load(Ordering::Relaxed),
        records,
        buffer_bytes,
        streams_done: header.streams_done.load(Ordering::Relaxed),
        streams_failed: header.streams_failed.load(Ordering::Relaxed),
        stream_lock_files: locks.map(|l| l.stream_lock_files().len()).unwrap_or(0),
        map: render_map(layout.area_start, layout.area_end, &streams),
        streams,
    }
}

/// Records sit at fixed RECORD_SIZE steps from the area start up to the low watermark.
fn live_streams(segment: &Segment, low_mark: u64) -> Vec<StreamStatus> {
    let start = segment.layout().area_start;
    let count = (low_mark - start) / RECORD_SIZE;
    (0..count).filter_map(|k| stream_at(segment, start + k * RECORD_SIZE)).collect()
}

fn stream_at(segment: &Segment, offset: u64) -> Option<StreamStatus> {
    let record = segment.record(offset).ok()?;
    // SYNC POINT (record state): pairs with the server's Release stores of OFFERED,
    // ACTIVE, DROPPED and FREE.
    let state = match record.state.load(Ordering::Acquire) {
        RECORD_OFFERED => "offered",
        RECORD_ACTIVE => "active",
        RECORD_DROPPED => "dropped",
        _ => return None,
    };
    let buffers = crate::ring::shown_buffers(record)
        .into_iter()
        .filter(|&(offset, len)| segment.buffer(offset, len).is_ok())
        .collect();
    let name_len = (record.name_len.load(Ordering::Relaxed) as usize).min(NAME_WORDS * 8);
    let phase = record.phase.load(Ordering::Relaxed);
    let size_is_hint = record.size_is_hint.load(Ordering::Relaxed) != 0;
    Some(StreamStatus {
        guid: load_guid(&record.guid).simple().to_string(),
        record_offset: offset,
        state,
        phase: match state {
            "offered" => "on offer",
            "dropped" => "dropped (idle)",
            _ => phase_name(phase),
        },
        stream_id: record.stream_id.load(Ordering::Relaxed),
        file: String::from_utf8_lossy(&segment::load_bytes(&record.name, name_len)).into_owned(),
        bytes_done: record.bytes_done.load(Ordering::Relaxed),
        file_size: Some(record.file_size.load(Ordering::Relaxed)).filter(|_| !size_is_hint),
        size_is_hint,
        client_pid: record.client_pid.load(Ordering::Relaxed),
        buffers,
    })
}

/// `[RR......BBB..BBBB]`: R a cell holding a record, B a buffer, `.` free.
pub fn render_map(area_start: u64, area_end: u64, streams: &[StreamStatus]) -> String {
    let span = (area_end - area_start).max(1);
    let cell_of = |offset: u64| {
        (((offset - area_start) as u128 * MAP_WIDTH as u128 / span as u128) as usize).min(MAP_WIDTH - 1)
    };
    let mut cells = vec!['.'; MAP_WIDTH];
    let mut mark = |offset: u64, len: u64, c: char| {
        if len == 0 || offset < area_start || offset >= area_end {
            return;
        }
        let last = offset.saturating_add(len - 1).min(area_end - 1);
        for cell in &mut cells[cell_of(offset)..=cell_of(last)] {
            *cell = c;
        }
    };
    for stream in streams {
        for &(offset, len) in &stream.buffers {
            mark(offset, len, 'B');
        }
        mark(stream.record_offset, RECORD_SIZE, 'R');
    }
    format!("[{}]", cells.into_iter().collect::<String>())
}

/// The human view.
pub fn render_text(s: &Snapshot) -> String {
    use segment::human_bytes as hb;
    let mut out = String::new();
    out.push_str(&format!(
        "segment '{}': {}, server pid {} ({}), heartbeat {}{}\n",
        s.segment,
        hb(s.size),
        s.server_pid,
        s.server_state,
        s.heartbeat,
        s.heartbeat_age_ms.map(|ms| format!(", {:.1} s ago", ms as f64 / 1000.0)).unwrap_or_default()
    ));
    out.push_str(&format!(
        "records area {}..{} ({} live record(s)), buffers area {}..{} ({} in buffers)\n",
        s.records_area.0,
        s.records_area.1,
        s.records,
        s.buffers_area.0,
        s.buffers_area.1,
        hb(s.buffer_bytes)
    ));
    out.push_str(&format!(
        "free {} in {} hole(s); streams done {}, failed {}; stream lock files {}\n",
        hb(s.free_bytes),
        s.holes,
        s.streams_done,
        s.streams_failed,
        s.stream_lock_files
    ));
    out.push_str(&format!("{}\n", s.map));
    if !s.streams.is_empty() {
        out.push_str(&format!(
            "{:<32} {:>6} {:>8} {:<18} {:>23}  file\n",
            "guid", "id", "pid", "state", "done/total"
        ));
    }
    for st in &s.streams {
        let total = st.file_size.map_or_else(|| "?".to_owned(), hb);
        let done = format!("{}/{total}", hb(st.bytes_done));
        out.push_str(&format!(
            "{:<32} {:>6} {:>8} {:<18} {:>23}  {}\n",
            st.guid,
            st.stream_id,
            st.client_pid,
            st.phase,
            done,
            crate::escape::escaped(&st.file)
        ));
    }
    out
}

/// The JSON view (pretty-printed), for `--status --json`.
pub fn render_json(s: &Snapshot) -> String {
    serde_json::to_string_pretty(s).expect("a snapshot always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(record_offset: u64, buffers: Vec<(u64, u64)>) -> StreamStatus {
        StreamStatus {
            guid: String::new(),
            record_offset,
            state: "active",
            phase: "receiving",
            stream_id: 1,
            file: "a".into(),
            bytes_done: 0,
            file_size: Some(0),
            size_is_hint: false,
            client_pid: 1,
            buffers,
        }
    }

    #[test]
    fn the_map_shows_records_low_and_buffers_high() {
        let start = 4096;
        let end = start + 64 * 4096;
        let map = render_map(start, end, &[stream(start, vec![(end - 8192, 8192)])]);
        assert_eq!(map.len(), MAP_WIDTH + 2);
        assert!(map.starts_with("[R") && map.contains("R."), "{map}");
        assert!(map.ends_with(".BB]"), "{map}");
    }

    #[test]
    fn an_empty_segment_maps_to_dots() {
        assert_eq!(render_map(4096, 8192, &[]), format!("[{}]", ".".repeat(MAP_WIDTH)));
    }

    #[test]
    fn a_live_segment_snapshot_lists_offered_records() {
        let name = format!("sxf-unit-status-{}", std::process::id());
        let seg = Segment::create(&name, 1 << 20).unwrap();
        let record = seg.record(segment::AREA_START).unwrap();
        record.state.store(RECORD_OFFERED, Ordering::Release);
        seg.header().low_mark.store(segment::AREA_START + RECORD_SIZE, Ordering::Relaxed);
        let snap = snapshot(&seg, None);
        assert_eq!(snap.records, 1);
        assert_eq!(snap.streams[0].phase, "on offer");
        assert!(snap.map.starts_with("[R"));
        assert!(render_json(&snap).contains("\"records\": 1"));
        assert!(render_text(&snap).contains("1 live record(s)"));
    }
}
