//! The shared-memory segment: creation (pages reserved up front), opening (the
//! header handshake), and typed, bounds-checked views of its records and buffers.
//! The wire layout itself is in `layout` (re-exported here). Bounds come from the
//! layout validated once at open, never from the header again. This module and
//! `sys` are the only ones with `unsafe`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shared_memory::{Shmem, ShmemConf, ShmemError};

use crate::sys;
use crate::wait::Event;

pub use crate::layout::*;

/// Layout facts validated once when the segment was created or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Segment size in bytes: the length of the mapping.
    pub size: u64,
    /// First byte of the allocator's area (`AREA_START`).
    pub area_start: u64,
    /// End of the allocator's area, exclusive; never past `size`.
    pub area_end: u64,
}

/// Why a segment could not be created or opened; each message says what to do.
#[derive(Debug)]
pub enum SegmentError {
    /// No segment has that name: no server runs on it.
    NotFound {
        /// The segment name.
        name: String,
    },
    /// Creating: a segment of that name already exists.
    Exists {
        /// The segment name.
        name: String,
    },
    /// `SHM_DIR` has less free space than the segment needs.
    NoSpace {
        /// The segment name.
        name: String,
        /// Bytes the segment needs (rounded up to whole pages).
        size: u64,
        /// Bytes still free in `SHM_DIR`.
        free: u64,
    },
    /// The size asked for lies outside `MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE`.
    BadSize {
        /// The size asked for, in bytes.
        size: u64,
    },
    /// The segment exists but its server did not publish the header in time.
    NotReady {
        /// The segment name.
        name: String,
    },
    /// Something that is not a usable segment has the name (not a regular file,
    /// wrong magic, a header that does not match the mapping).
    Foreign {
        /// The segment name.
        name: String,
        /// What is wrong with it, for people.
        detail: String,
    },
    /// A segment of another layout version: client and server come from different builds.
    VersionMismatch {
        /// The segment name.
        name: String,
        /// The layout version the segment has.
        found: u32,
    },
    /// Another user's segment we may not open.
    Denied {
        /// The segment name.
        name: String,
        /// Its owner, for people ("user NAME (uid N)").
        owner: String,
        /// The group it is shared with (`sharedserver --group`), if it is.
        group: Option<String>,
    },
    /// A system call on the segment failed.
    Os {
        /// The segment name.
        name: String,
        /// What was being done, worded to follow "cannot": "open", "reserve pages for"...
        action: &'static str,
        /// The error the system gave.
        source: io::Error,
    },
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { name } => write!(
                f,
                "no server on segment '{name}': start one with `sharedserver --name {name}`"
            ),
            Self::Exists { name } => write!(f, "segment '{name}' already exists in {SHM_DIR}"),
            Self::NoSpace { name, size, free } => write!(
                f,
                "segment '{name}' needs {} but {SHM_DIR} has only {} free: pass a smaller --size or free space in {SHM_DIR}",
                human_bytes(*size),
                human_bytes(*free)
            ),
            Self::BadSize { size } => write!(
                f,
                "segment size {size} is out of range: use between {} and {}",
                human_bytes(MIN_SEGMENT_SIZE),
                human_bytes(MAX_SEGMENT_SIZE)
            ),
            Self::NotReady { name } => write!(
                f,
                "segment '{name}' exists but its server never finished setting it up: restart `sharedserver --name {name}`"
            ),
            Self::Foreign { name, detail } => {
                write!(f, "{SHM_DIR}/{name} is not a usable sharedxfer segment: {detail}")
            }
            Self::VersionMismatch { name, found } => write!(
                f,
                "segment '{name}' has layout version {found}, this program speaks version {LAYOUT_VERSION}: run client and server from the same build"
            ),
            Self::Denied { name, owner, group: Some(group) } => write!(
                f,
                "cannot open segment '{name}': permission denied: it belongs to {owner}, whose server shares it \
                 with {group}, which you are not in: ask to be added to that group (then log in again)"
            ),
            Self::Denied { name, owner, group: None } => write!(
                f,
                "cannot open segment '{name}': permission denied: it belongs to {owner}, whose server must share \
                 it with a group of yours (sharedserver --group)"
            ),
            Self::Os { name, action, source } if source.kind() == io::ErrorKind::PermissionDenied => write!(
                f,
                "cannot {action} segment '{name}': permission denied: it belongs to another user, whose \
                 server must share it with a group of yours (sharedserver --group)"
            ),
            Self::Os { name, action, source } => write!(f, "cannot {action} segment '{name}': {source}"),
        }
    }
}

impl std::error::Error for SegmentError {}

/// Formats a byte count for people: "64 MiB", "1.5 GiB", "512 B".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Why an offset or length read from the segment was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutError {
    /// What was asked for: "record" or "buffer".
    pub what: &'static str,
    /// Its offset in the segment, as given.
    pub offset: u64,
    /// Its length in bytes, as given.
    pub len: u64,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {} length {} lies outside the segment's area",
            self.what, self.offset, self.len
        )
    }
}

impl std::error::Error for LayoutError {}

/// A mapped segment. The mapping lives as long as this value; views borrow it.
pub struct Segment {
    shmem: Shmem,
    name: String,
    layout: Layout,
}

// SAFETY: the mapping is plain shared memory. All shared structs are atomics, and raw
// byte access to buffers goes through `Buffer`, whose users follow the ring's
// ownership hand-over; nothing in `Shmem` is tied to the creating thread.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only hands out atomics and bounds-checked buffers.
unsafe impl Sync for Segment {}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment").field("name", &self.name).field("layout", &self.layout).finish()
    }
}

/// The file behind a segment name.
pub fn shm_path(name: &str) -> PathBuf {
    PathBuf::from(SHM_DIR).join(name)
}

/// The header fields a server keeps as it wrote them (`Segment::keep_header`).
#[derive(Debug, Clone, Copy)]
pub struct KeptHeader {
    wide: [u64; 4],
    narrow: [u32; 6],
}

/// The 64-bit fields `KeptHeader` keeps, with their names for a notice.
fn header_wide(header: &Header) -> [(&'static str, &std::sync::atomic::AtomicU64); 4] {
    [
        ("segment size", &header.segment_size),
        ("area start", &header.area_start),
        ("area end", &header.area_end),
        ("start time", &header.server_started),
    ]
}

/// The 32-bit fields `KeptHeader` keeps, with their names for a notice.
fn header_narrow(header: &Header) -> [(&'static str, &std::sync::atomic::AtomicU32); 6] {
    [
        ("layout version", &header.version),
        ("record size", &header.record_size),
        ("server pid", &header.server_pid),
        ("state", &header.server_state),
        ("worker count", &header.workers),
        ("stream quota", &header.max_streams_per_client),
    ]
}

impl Segment {
    /// Creates the segment exclusively (mode 0600), reserves every page, fills the
    /// header and publishes it by storing the magic last. Unlinked again on drop.
    pub fn create(name: &str, size: u64) -> Result<Segment, SegmentError> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size) {
            return Err(SegmentError::BadSize { size });
        }
        let size = size.div_ceil(BUFFER_ALIGN) * BUFFER_ALIGN;
        let os = |action, source| SegmentError::Os { name: name.to_owned(), action, source };
        let free =
            sys::free_bytes(std::path::Path::new(SHM_DIR)).map_err(|e| os("check free space for", e))?;
        if size > free {
            return Err(SegmentError::NoSpace { name: name.to_owned(), size, free });
        }
        let shmem = match ShmemConf::new().os_id(name).size(size as usize).create() {
            Ok(shmem) => shmem,
            Err(ShmemError::MappingIdExists) => return Err(SegmentError::Exists { name: name.to_owned() }),
            // A file size limit below the size (`ulimit -f`): say which.
            Err(ShmemError::MapCreateFailed(code) | ShmemError::UnknownOsError(code))
                if code == libc::EFBIG as u32 =>
            {
                let limit = io::Error::other(format!(
                    "{} (the file size limit, `ulimit -f`, is below the segment's size)",
                    io::Error::from_raw_os_error(code as i32)
                ));
                return Err(os("create", limit));
            }
            Err(ShmemError::MapCreateFailed(code) | ShmemError::UnknownOsError(code)) => {
                return Err(os("create", io::Error::from_raw_os_error(code as i32)))
            }
            Err(e) => return Err(os("create", io::Error::other(e.to_string()))),
        };
        // Opened by path without following links: the name is the one we just created.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(shm_path(name))
            .map_err(|e| os("open", e))?;
        if let Err(e) = sys::reserve(&file, size) {
            let free = sys::free_bytes(std::path::Path::new(SHM_DIR)).unwrap_or(0);
            return Err(match e.raw_os_error() {
                Some(libc::ENOSPC) => SegmentError::NoSpace { name: name.to_owned(), size, free },
                _ => os("reserve pages for", e),
            });
        }
        let layout = Layout { size, area_start: AREA_START, area_end: size };
        let segment = Segment { shmem, name: name.to_owned(), layout };
        segment.publish_header();
        Ok(segment)
    }

    /// Server: the header fields clients rely on, as it wrote them (its identity,
    /// start time, state, worker count and stream quota), for `restore_header`.
    pub fn keep_header(&self) -> KeptHeader {
        let header = self.header();
        KeptHeader {
            wide: header_wide(header).map(|(_, field)| field.load(Ordering::Relaxed)),
            narrow: header_narrow(header).map(|(_, field)| field.load(Ordering::Relaxed)),
        }
    }

    /// Server: puts back the fields of `kept` a stray write into the segment changed
    /// (a client would refuse the segment, "wrong magic number", or take the server
    /// for gone), and the magic; returns the names of those it put back.
    pub fn restore_header(&self, kept: &KeptHeader) -> Vec<&'static str> {
        let header = self.header();
        let mut restored = Vec::new();
        // Stored only if changed: the line is read by every client that connects.
        for ((what, field), want) in header_wide(header).into_iter().zip(kept.wide) {
            if field.load(Ordering::Relaxed) != want {
                // Relaxed: the magic below publishes them again.
                field.store(want, Ordering::Relaxed);
                restored.push(what);
            }
        }
        for ((what, field), want) in header_narrow(header).into_iter().zip(kept.narrow) {
            if field.load(Ordering::Relaxed) != want {
                // SYNC POINT (server state): Release pairs with the client's Acquire
                // in its watchdog, as the stores in `serve` do; for the others the
                // magic below publishes them again.
                field.store(want, Ordering::Release);
                restored.push(what);
            }
        }
        if header.magic.load(Ordering::Relaxed) != MAGIC {
            restored.push("magic number");
        }
        if !restored.is_empty() {
            // SYNC POINT (header published): as in `publish_header`, the fields above
            // are visible to an opener that sees the magic.
            header.magic.store(MAGIC, Ordering::Release);
        }
        restored
    }

    fn publish_header(&self) {
        let header = self.header();
        header.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        header.record_size.store(RECORD_SIZE as u32, Ordering::Relaxed);
        header.segment_size.store(self.layout.size, Ordering::Relaxed);
        header.area_start.store(self.layout.area_start, Ordering::Relaxed);
        header.area_end.store(self.layout.area_end, Ordering::Relaxed);
        header.server_pid.store(sys::current_pid(), Ordering::Relaxed);
        let started = sys::process_start_ticks(sys::current_pid()).unwrap_or(0);
        header.server_started.store(started, Ordering::Relaxed);
        header.server_state.store(SERVER_STARTING, Ordering::Relaxed);
        // SYNC POINT (header published): every field above is visible to an opener
        // that sees the magic (`try_open`).
        header.magic.store(MAGIC, Ordering::Release);
    }

    /// Opens an existing segment, waiting up to `wait` for a server still setting it
    /// up, and validates the header against the mapping.
    pub fn open(name: &str, wait: Duration) -> Result<Segment, SegmentError> {
        let deadline = crate::wait::deadline_after(wait);
        loop {
            match Self::try_open(name)? {
                Some(segment) => return Ok(segment),
                None if Instant::now() >= deadline => {
                    return Err(SegmentError::NotReady { name: name.to_owned() })
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn try_open(name: &str) -> Result<Option<Segment>, SegmentError> {
        let meta = std::fs::symlink_metadata(shm_path(name)).ok();
        if let Some(meta) = &meta {
            if !meta.file_type().is_file() {
                let detail = "it is not a regular file: remove it or pick another --name".to_owned();
                return Err(SegmentError::Foreign { name: name.to_owned(), detail });
            }
        }
        let shmem = match ShmemConf::new().os_id(name).open() {
            Ok(shmem) => shmem,
            Err(ShmemError::MapOpenFailed(code)) if code == libc::ENOENT as u32 => {
                return Err(SegmentError::NotFound { name: name.to_owned() })
            }
            // A zero-length object: the creator has not sized it yet.
            Err(ShmemError::MapOpenFailed(code)) if code == libc::EINVAL as u32 => return Ok(None),
            Err(ShmemError::MapOpenFailed(code)) if code == libc::EACCES as u32 && meta.is_some() => {
                let meta = meta.as_ref().expect("checked");
                // Group-shared (0660): another user's server, with a group we are not in.
                let group = (meta.mode() & 0o060 == 0o060).then(|| sys::group_label(meta.gid()));
                return Err(SegmentError::Denied {
                    name: name.to_owned(),
                    owner: sys::user_label(meta.uid()),
                    group,
                });
            }
            Err(ShmemError::MapOpenFailed(code)) => {
                return Err(SegmentError::Os {
                    name: name.to_owned(),
                    action: "open",
                    source: io::Error::from_raw_os_error(code as i32),
                })
            }
            Err(e) => {
                return Err(SegmentError::Os {
                    name: name.to_owned(),
                    action: "open",
                    source: io::Error::other(e.to_string()),
                })
            }
        };
        let len = shmem.len() as u64;
        if len < AREA_START {
            return Ok(None);
        }
        let mut segment = Segment {
            shmem,
            name: name.to_owned(),
            layout: Layout { size: len, area_start: AREA_START, area_end: len },
        };
        // SYNC POINT (header published): pairs with the Release in `publish_header`
        // (and in `restore_header`).
        match segment.header().magic.load(Ordering::Acquire) {
            0 => return Ok(None),
            MAGIC => {}
            other if other & 0x0000_ffff_ffff_ffff == MAGIC & 0x0000_ffff_ffff_ffff => {
                let found = (other >> 48) as u32;
                return Err(SegmentError::VersionMismatch { name: name.to_owned(), found });
            }
            _ => {
                return Err(SegmentError::Foreign {
                    name: name.to_owned(),
                    detail: "wrong magic number".into(),
                })
            }
        }
        segment.layout = segment.validated_layout()?;
        Ok(Some(segment))
    }

    fn validated_layout(&self) -> Result<Layout, SegmentError> {
        let header = self.header();
        let foreign = |detail: String| SegmentError::Foreign { name: self.name.clone(), detail };
        let version = header.version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(SegmentError::VersionMismatch { name: self.name.clone(), found: version });
        }
        let size = header.segment_size.load(Ordering::Relaxed);
        let area_start = header.area_start.load(Ordering::Relaxed);
        let area_end = header.area_end.load(Ordering::Relaxed);
        if size != self.layout.size {
            return Err(foreign(format!("header says {size} bytes, the mapping has {}", self.layout.size)));
        }
        if area_start != AREA_START || area_end > size || area_end < area_start {
            return Err(foreign(format!("bad area bounds {area_start}..{area_end}")));
        }
        if header.record_size.load(Ordering::Relaxed) as u64 != RECORD_SIZE {
            return Err(foreign("unexpected record size".into()));
        }
        Ok(Layout { size, area_start, area_end })
    }

    /// The segment's name (its file in `SHM_DIR`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The layout validated when the segment was created or opened.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The header, at `HEADER_OFFSET`.
    pub fn header(&self) -> &Header {
        // SAFETY: the mapping is at least AREA_START bytes (checked on create/open),
        // page aligned, and Header fits below HANDOUT_OFFSET (const assert). Header is
        // all atomics, so concurrent writers in other processes are fine, and the
        // reference cannot outlive `self`, which owns the mapping.
        unsafe { &*(self.shmem.as_ptr().add(HEADER_OFFSET as usize) as *const Header) }
    }

    /// The handout area, at `HANDOUT_OFFSET`.
    pub fn handout(&self) -> &Handout {
        // SAFETY: as for `header`: HANDOUT_OFFSET is 8-aligned and Handout fits below
        // AREA_START (const assert); all fields are atomics.
        unsafe { &*(self.shmem.as_ptr().add(HANDOUT_OFFSET as usize) as *const Handout) }
    }

    /// The record at `offset`, after checking alignment and that it lies in the area.
    pub fn record(&self, offset: u64) -> Result<&Record, LayoutError> {
        let err = LayoutError { what: "record", offset, len: RECORD_SIZE };
        let end = offset.checked_add(RECORD_SIZE).ok_or(err.clone())?;
        if offset < self.layout.area_start
            || end > self.layout.area_end
            || !offset.is_multiple_of(RECORD_ALIGN)
        {
            return Err(err);
        }
        // SAFETY: [offset, offset+RECORD_SIZE) lies inside the mapping (checked above
        // against the validated layout), the address is 64-aligned (Record needs 8),
        // and Record is all atomics, valid for any bytes.
        Ok(unsafe { &*(self.shmem.as_ptr().add(offset as usize) as *const Record) })
    }

    /// The bytes [offset, offset+len), after checking they lie in the area.
    pub fn buffer(&self, offset: u64, len: u64) -> Result<Buffer<'_>, LayoutError> {
        let err = LayoutError { what: "buffer", offset, len };
        let end = offset.checked_add(len).ok_or(err.clone())?;
        if offset < self.layout.area_start || end > self.layout.area_end || len == 0 {
            return Err(err);
        }
        // SAFETY: offset is inside the mapping (checked above).
        let ptr = unsafe { self.shmem.as_ptr().add(offset as usize) };
        Ok(Buffer { ptr, len: len as usize, _segment: PhantomData })
    }

    /// The doorbell of the worker serving `record` (an out-of-range index, which only
    /// a misbehaving peer could write, falls back to the last one: a wrong wake, never
    /// a fault; the worker's timeout covers it).
    pub fn doorbell(&self, record: &Record) -> &Event {
        let index = (record.doorbell.load(Ordering::Relaxed) as usize).min(MAX_WORKERS - 1);
        &self.header().doorbells[index]
    }

    /// Zeroes a record before it is offered, so no stale command survives reuse.
    pub fn clear_record(&self, offset: u64) -> Result<(), LayoutError> {
        self.record(offset)?;
        let buffer = self.buffer(offset, RECORD_SIZE)?;
        // SAFETY: the record is server-owned at this point (freed or never offered),
        // the range is in bounds (checked by `buffer`).
        unsafe { std::ptr::write_bytes(buffer.ptr, 0, buffer.len) };
        Ok(())
    }

    /// Keeps the segment in /dev/shm when this value drops (used by tests that
    /// simulate a crashed server).
    pub fn leak_on_drop(&mut self) {
        self.shmem.set_owner(false);
    }
}

/// Removes a segment left behind by a dead server. Only call while holding the
/// server lock for `name` (which proves no server of that name is alive). Only a
/// file of ours that starts with this project's magic (any layout version) is
/// removed; anything else is refused, naming the path, and left alone.
pub fn remove_stale(name: &str) -> io::Result<bool> {
    let path = shm_path(name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if !meta.file_type().is_file() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a segment: remove it or pick another --name", path.display()),
            ))
        }
        Ok(meta) if std::os::unix::fs::MetadataExt::uid(&meta) != sys::current_uid() => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to user id {}, not to you: pick another --name",
                    path.display(),
                    std::os::unix::fs::MetadataExt::uid(&meta)
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        _ => {}
    }
    if !starts_with_magic(&path)? {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a sharedxfer segment (no sharedxfer header): remove it or pick another --name",
                path.display()
            ),
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the file at `path` starts with "SHXFER", the magic's first six bytes
/// (whatever its layout version).
fn starts_with_magic(path: &std::path::Path) -> io::Result<bool> {
    use std::io::Read;
    let mut file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let mut head = [0u8; 8];
    match file.read_exact(&mut head) {
        Ok(()) => Ok(head[..6] == MAGIC.to_le_bytes()[..6]),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Bytes of the segment that one side owns for now, by the ring's hand-over.
pub struct Buffer<'a> {
    ptr: *mut u8,
    len: usize,
    _segment: PhantomData<&'a Segment>,
}

impl Buffer<'_> {
    /// Length in bytes (never 0: `Segment::buffer` refuses an empty range).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes (never, for one `Segment::buffer` made).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads from `file` straight into the buffer until it is full or EOF; returns
    /// the bytes read. No private copy, and no Rust reference to the bytes is made:
    /// the kernel writes them through the raw pointer.
    pub fn fill_from(&self, file: &File) -> io::Result<usize> {
        let mut filled = 0;
        while filled < self.len {
            // SAFETY: [ptr+filled, ptr+len) lies inside the mapping (checked at
            // construction) and stays mapped while `self` borrows the segment. The
            // kernel only stores bytes there; no Rust reference aliases them.
            let n = unsafe {
                libc::read(file.as_raw_fd(), self.ptr.add(filled).cast::<libc::c_void>(), self.len - filled)
            };
            match n {
                0 => break,
                n if n > 0 => filled += n as usize,
                _ => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
        Ok(filled)
    }

    /// Writes the first `len` bytes to `file` straight from the segment, through the
    /// raw pointer (no Rust reference to the shared bytes).
    pub fn write_to(&self, file: &File, len: usize) -> io::Result<()> {
        let len = len.min(self.len);
        let mut done = 0;
        while done < len {
            // SAFETY: [ptr+done, ptr+len) lies inside the mapping (checked at
            // construction); the kernel only reads it.
            let n = unsafe {
                libc::write(file.as_raw_fd(), self.ptr.add(done).cast::<libc::c_void>(), len - done)
            };
            match n {
                n if n > 0 => done += n as usize,
                0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                _ => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
        Ok(())
    }

    /// Maps the buffer's pages into this process at once (one `madvise`), so that
    /// filling it takes no page fault per page: a client maps the segment afresh,
    /// and a slot of small files is touched page by page. Best effort: a kernel
    /// without `MADV_POPULATE_WRITE` (before 5.14) faults the pages in as before.
    pub fn prefault(&self) {
        let page = crate::sys::page_size();
        let start = (self.ptr as usize) & !(page - 1);
        let end = (self.ptr as usize + self.len).next_multiple_of(page);
        // SAFETY: madvise only changes how the kernel maps [start, end), which lies
        // in the segment's mapping (page-aligned, the mapping is page-aligned and a
        // whole number of pages); MADV_POPULATE_WRITE neither changes nor frees the
        // bytes, it faults the pages in writable, as a write to each would.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_POPULATE_WRITE) };
    }

    /// The first `len` bytes (at most the buffer length), for hashing.
    pub fn bytes(&self, len: usize) -> &[u8] {
        self.bytes_at(0, len)
    }

    /// One `read(2)` from `file` into the buffer from byte `from` on (a pipe gives
    /// what it has); returns the bytes read, 0 at end of file or when full.
    pub fn read_once(&self, file: &File, from: usize) -> io::Result<usize> {
        self.read_at(file, from, self.len.saturating_sub(from))
    }

    /// One `read(2)` of at most `len` bytes from `file` into the buffer at byte
    /// `from` (cut to the buffer's end); returns the bytes read, 0 at end of file.
    pub fn read_at(&self, file: &File, from: usize, len: usize) -> io::Result<usize> {
        if from >= self.len {
            return Ok(0);
        }
        let len = len.min(self.len - from);
        loop {
            // SAFETY: [ptr+from, ptr+from+len) lies inside the mapping (checked at
            // construction, `from < self.len`, `len <= self.len - from`); the kernel
            // only stores bytes there and no Rust reference aliases them.
            let n = unsafe { libc::read(file.as_raw_fd(), self.ptr.add(from).cast::<libc::c_void>(), len) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Copies `data` into the start of the buffer (small payloads, tests).
    pub fn copy_from(&self, data: &[u8]) -> usize {
        self.write_at(0, data)
    }

    /// Copies `data` into the buffer at byte `from`, cut to the buffer's end;
    /// returns the bytes copied.
    pub fn write_at(&self, from: usize, data: &[u8]) -> usize {
        let n = data.len().min(self.len.saturating_sub(from));
        if n == 0 {
            return 0;
        }
        // SAFETY: [ptr+from, ptr+from+n) lies inside the buffer (`n` is cut to what
        // is left after `from`); `data` is private memory, so no overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(from), n) };
        n
    }

    /// The `len` bytes from byte `from` on (cut to the buffer's end), for hashing.
    pub fn bytes_at(&self, from: usize, len: usize) -> &[u8] {
        let from = from.min(self.len);
        let len = len.min(self.len - from);
        // SAFETY: in bounds (both cut above). The caller owns the buffer by the ring
        // protocol (slot state Acquire-loaded, and the server never frees a slot the
        // client may be filling), so no one else writes these bytes while the slice
        // lives; a process breaking the protocol can only change byte values (any u8
        // is valid): the checksum catches what it changes before the server's hash,
        // and what it changes after (a file's chunk or a batch entry's data is
        // hashed, then written) only spoils its own file. A batch's framing and
        // names are copied out before they are checked (`batch::decode_batch`).
        unsafe { std::slice::from_raw_parts(self.ptr.add(from), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique_name(tag: &str) -> String {
        format!("sxf-unit-{tag}-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple())
    }

    #[test]
    fn an_opener_sees_the_creators_layout() {
        let name = unique_name("open");
        let created = Segment::create(&name, 1 << 20).unwrap();
        let opened = Segment::open(&name, Duration::from_secs(5)).unwrap();
        assert_eq!(created.layout(), opened.layout());
        assert_eq!(opened.header().server_pid.load(Ordering::Relaxed), std::process::id());
        drop(opened);
        drop(created);
        assert!(!shm_path(&name).exists(), "the creator unlinks the segment on drop");
    }

    #[test]
    fn records_and_buffers_outside_the_area_are_refused() {
        let name = unique_name("bounds");
        let segment = Segment::create(&name, 1 << 20).unwrap();
        assert!(segment.record(0).is_err(), "the header is not a record");
        assert!(segment.record(AREA_START + 1).is_err(), "misaligned");
        assert!(segment.record((1 << 20) - RECORD_SIZE + 64).is_err(), "runs past the end");
        assert!(segment.record(AREA_START).is_ok());
        assert!(segment.buffer(u64::MAX - 2, 4).is_err(), "overflowing offset");
        assert!(segment.buffer(AREA_START, (1 << 20) - AREA_START + 1).is_err());
        assert!(segment.buffer(AREA_START, (1 << 20) - AREA_START).is_ok());
    }

    #[test]
    fn a_wrong_version_is_a_clear_error() {
        let name = unique_name("version");
        let segment = Segment::create(&name, 1 << 20).unwrap();
        segment.header().version.store(99, Ordering::Relaxed);
        let err = Segment::open(&name, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("layout version 99"), "{err}");
    }

    #[test]
    fn a_missing_segment_names_the_server_command() {
        let err = Segment::open(&unique_name("missing"), Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("start one with `sharedserver --name"), "{err}");
    }

    #[test]
    fn a_segment_larger_than_free_space_is_refused_with_both_sizes() {
        let free = sys::free_bytes(std::path::Path::new(SHM_DIR)).unwrap();
        let size = (free + (1 << 30)).min(MAX_SEGMENT_SIZE);
        if size <= free {
            return; // /dev/shm bigger than the largest segment we allow
        }
        let err = Segment::create(&unique_name("huge"), size).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("free"), "{text}");
        assert!(matches!(err, SegmentError::NoSpace { .. }), "{text}");
    }

    #[test]
    fn a_stale_segment_of_another_user_is_not_removed() {
        let name = unique_name("foreign");
        std::fs::write(shm_path(&name), b"").unwrap();
        // Only root can give a file away; elsewhere this case cannot be staged.
        if std::os::unix::fs::chown(shm_path(&name), Some(65534), None).is_err() {
            std::fs::remove_file(shm_path(&name)).unwrap();
            return;
        }
        let err = remove_stale(&name).unwrap_err();
        assert!(shm_path(&name).exists());
        std::fs::remove_file(shm_path(&name)).unwrap();
        assert!(err.to_string().contains("belongs to user id 65534"), "{err}");
    }

    #[test]
    fn human_bytes_reads_naturally() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
