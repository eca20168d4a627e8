//! Thin, checked wrappers over the few Linux calls the chosen crates do not expose:
//! futex wait/wake on a word in the segment, signal flags, page reservation, free
//! space, process liveness. One of the two modules with `unsafe` (the other is
//! `segment`); every block says why it is sound.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::time::Duration;

/// The folder that holds every segment (as a file of its name) and its lock folder.
pub const SHM_DIR: &str = "/dev/shm";

/// Sleeps while `word` still holds `expected`, at most `timeout`. Returns on a wake,
/// a changed value, a signal or the timeout; callers re-check their condition.
///
/// Not `FUTEX_PRIVATE_FLAG`: the waker is another process mapping the same page.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, 4-byte aligned atomic (a reference guarantees both);
    // FUTEX_WAIT only reads it and `ts` outlives the call. Errors (EAGAIN, EINTR,
    // ETIMEDOUT) all mean "re-check", so the result is deliberately ignored.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every waiter sleeping on `word`, in this or any other process.
pub fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a live aligned atomic; FUTEX_WAKE does not access user memory
    // beyond hashing the address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
static HANDLERS_INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn record_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Routes SIGINT, SIGTERM and SIGHUP (a closed terminal or SSH session) to a flag
/// that `stop_signal` reads, instead of killing the process, so both binaries can
/// clean up. Waits all have short timeouts, so the flag is seen promptly without a
/// self-pipe.
pub fn install_stop_handlers() {
    if HANDLERS_INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value, and
        // `record_signal` is an `extern "C"` function that only stores to an atomic;
        // the first call only reads the current disposition into `old`.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut old);
            if signal == libc::SIGHUP && old.sa_sigaction == libc::SIG_IGN {
                // Started under `nohup`: a closed terminal is not a stop.
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = record_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The signal number that asked us to stop, if any.
pub fn stop_signal() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Makes writes past RLIMIT_FSIZE fail with EFBIG instead of killing the server
/// with SIGXFSZ: one stream fails, the server goes on.
pub fn ignore_file_size_signal() {
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Reserves every page of `file` now (tmpfs allocates on first touch, and a full
/// tmpfs then kills the toucher with SIGBUS in the middle of a transfer).
pub fn reserve(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Bytes an unprivileged user may still allocate on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a zeroed statvfs is a valid out-parameter; `c_path` is NUL-terminated
    // and lives across the call.
    let stats = unsafe {
        let mut stats: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut stats) != 0 {
            return Err(io::Error::last_os_error());
        }
        stats
    };
    Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

/// What a process is doing, as far as a peer's liveness checks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// No such process, or it exited and only its zombie is left to reap.
    Gone,
    /// Stopped by a signal (SIGSTOP, SIGTSTP) or a tracer.
    Stopped,
    /// Alive and not known to be stopped.
    Running,
}

/// The state of process `pid` (it may belong to another user). A zombie counts as
/// gone: a killed client whose parent has not reaped it yet is dead all the same.
pub fn process_state(pid: u32) -> ProcessState {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else { return ProcessState::Gone };
    if pid_t <= 0 {
        return ProcessState::Gone;
    }
    // SAFETY: signal 0 only checks existence and permission; nothing is delivered.
    let rc = unsafe { libc::kill(pid_t, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return ProcessState::Gone;
    }
    // The state letter follows the parenthesised command name, which may itself
    // contain spaces or parentheses: take what follows the last ')'.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    match stat.rsplit(')').next().and_then(|rest| rest.trim_start().chars().next()) {
        Some('Z' | 'X') => ProcessState::Gone,
        Some('T' | 't') => ProcessState::Stopped,
        _ => ProcessState::Running,
    }
}

/// Whether a process with this pid exists and has not exited.
pub fn process_alive(pid: u32) -> bool {
    process_state(pid) != ProcessState::Gone
}

/// Our own pid.
pub fn current_pid() -> u32 {
    std::process::id()
}

/// The real user id, for ownership checks on paths we reuse.
pub fn current_uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// Raises the soft open-files limit towards the hard one, to at most 65,536 (best
/// effort; children inherit it): the server holds one lock descriptor and one
/// output file per active stream; a client keeps a descriptor open for each FIFO
/// met while batching until its turn.
pub fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit with a valid out-parameter on the stack.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
            && limit.rlim_cur < limit.rlim_max.min(65_536)
        {
            limit.rlim_cur = limit.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Renames `from` to `to` only if `to` does not exist (atomic no-clobber publish).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from_c = CString::new(from.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let to_c = CString::new(to.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both paths are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        // Filesystems without RENAME_NOREPLACE: a hard link fails if `to` exists.
        std::fs::hard_link(from, to)?;
        return std::fs::remove_file(from);
    }
    Err(err)
}

// ---- Paths beneath a folder descriptor (the server's OUTPUT_DIR) ----

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name contains NUL"))
}

fn owned_fd(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens the folder `name` inside `dir` without following a symbolic link: a link
/// (or anything but a folder) planted there fails with ELOOP or ENOTDIR.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let name = c_name(name)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is an open fd.
    owned_fd(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// Creates the folder `name` inside `dir` with `mode` (less the umask).
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: as in `open_dir_at`.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })
}

/// Whether another open file holds an exclusive `flock` on `file`'s inode (a
/// shared lock cannot be taken now). Leaves no lock behind.
pub fn flock_busy(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: as above; undoes the shared lock just taken.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return false;
    }
    io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// An unnamed file in `dir` (`O_TMPFILE`) with permission bits `mode` (less the
/// umask): nobody can open it by a name before it is linked, and a killed server
/// leaves nothing behind. Fails with EOPNOTSUPP/EISDIR where unsupported.
pub fn tmpfile_in(dir: BorrowedFd<'_>, mode: u32) -> io::Result<File> {
    let flags = libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC;
    // SAFETY: "." is a static NUL-terminated string; `dir` is an open fd.
    owned_fd(unsafe { libc::openat(dir.as_raw_fd(), c".".as_ptr(), flags, mode as libc::c_uint) })
        .map(File::from)
}

/// Creates the new file `name` in `dir` (never an existing one, never through a link).
pub fn create_new_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    create_new_at_mode(dir, name, 0o600)
}

/// `create_new_at`, made with permission bits `mode` (less the umask or as the
/// folder's default ACL says).
pub fn create_new_at_mode(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<File> {
    let name = c_name(name)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: as in `open_dir_at`.
    owned_fd(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint) })
        .map(File::from)
}

/// Gives the unnamed file `file` the name `name` in `dir`; fails with EEXIST if the
/// name exists (no clobber). Tries `AT_EMPTY_PATH` first, then `/proc/self/fd`.
pub fn link_tmpfile(file: &File, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: "" and `name` are NUL-terminated; both fds are open.
    let rc = unsafe {
        libc::linkat(file.as_raw_fd(), c"".as_ptr(), dir.as_raw_fd(), name.as_ptr(), libc::AT_EMPTY_PATH)
    };
    match check(rc) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EPERM)) => {
            let proc_path = c_name(&format!("/proc/self/fd/{}", file.as_raw_fd()))?;
            // SAFETY: both paths are NUL-terminated; `dir` is open.
            check(unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    proc_path.as_ptr(),
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            })
        }
        other => other,
    }
}

/// Renames `from` to `to`, both in `dir`; with `replace == false` only if `to` does
/// not exist. Never follows a link at `to` (a link there is replaced or refused).
pub fn rename_at(dir: BorrowedFd<'_>, from: &str, to: &str, replace: bool) -> io::Result<()> {
    let (from_c, to_c) = (c_name(from)?, c_name(to)?);
    let flags = if replace { 0 } else { libc::RENAME_NOREPLACE };
    let fd = dir.as_raw_fd();
    // SAFETY: both names are NUL-terminated and outlive the call; `dir` is open.
    let rc = unsafe { libc::renameat2(fd, from_c.as_ptr(), fd, to_c.as_ptr(), flags) };
    match check(rc) {
        Err(e) if !replace && e.raw_os_error() == Some(libc::EINVAL) => {
            // Filesystems without RENAME_NOREPLACE: a hard link fails if `to` exists.
            // SAFETY: as above.
            check(unsafe { libc::linkat(fd, from_c.as_ptr(), fd, to_c.as_ptr(), 0) })?;
            unlink_at(dir, from)
        }
        other => other,
    }
}

/// Renames the folder `from` to `to` in `dir`, never over anything that has the
/// name (`AlreadyExists` then). Without `RENAME_NOREPLACE` (a hard link, the
/// fallback of `rename_at`, cannot name a folder) the name is claimed with an
/// empty folder first, which `rename` may replace: it never replaces a folder that
/// is not empty, nor a file.
pub fn rename_dir_at(dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
    let (from_c, to_c) = (c_name(from)?, c_name(to)?);
    let fd = dir.as_raw_fd();
    // SAFETY: both names are NUL-terminated and outlive the call; `dir` is open.
    let rc = unsafe { libc::renameat2(fd, from_c.as_ptr(), fd, to_c.as_ptr(), libc::RENAME_NOREPLACE) };
    match check(rc) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            mkdir_at(dir, to, 0o700)?;
            // SAFETY: as above.
            check(unsafe { libc::renameat(fd, from_c.as_ptr(), fd, to_c.as_ptr()) }).map_err(|e| {
                // Something was put into the claimed folder meanwhile: it stays.
                // SAFETY: as above; AT_REMOVEDIR removes only an empty folder.
                let _ = check(unsafe { libc::unlinkat(fd, to_c.as_ptr(), libc::AT_REMOVEDIR) });
                match e.raw_os_error() {
                    Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => {
                        io::Error::from(io::ErrorKind::AlreadyExists)
                    }
                    _ => e,
                }
            })
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            Err(io::Error::from(io::ErrorKind::AlreadyExists))
        }
        other => other,
    }
}

/// Removes the file `name` in `dir`.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: as in `open_dir_at`.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })
}

/// What is at `name` in `dir` (a link included, not followed): `None` nothing,
/// `Some(true)` a folder, `Some(false)` anything else.
pub fn entry_at(dir: BorrowedFd<'_>, name: &str) -> Option<bool> {
    let name = c_name(name).ok()?;
    // SAFETY: a zeroed stat is a valid out-parameter; `name` is NUL-terminated.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0)
            .then_some(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }
}

/// Whether `name` in `dir` is a symbolic link.
pub fn is_link_at(dir: BorrowedFd<'_>, name: &str) -> bool {
    let Ok(name) = c_name(name) else { return false };
    // SAFETY: a zeroed stat is a valid out-parameter; `name` is NUL-terminated.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// Whether `name` in `dir` (not followed if a link) is the file `file` is open on.
pub fn names_file_at(dir: BorrowedFd<'_>, name: &str, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = file.metadata() else { return false };
    let Ok(name) = c_name(name) else { return false };
    // SAFETY: a zeroed stat is a valid out-parameter; `name` is NUL-terminated.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) != 0 {
            return false;
        }
        st
    };
    (st.st_dev, st.st_ino) == (meta.dev(), meta.ino())
}

/// The memory page size (4 KiB on most machines; 16 or 64 KiB on some arm64).
pub fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system; it cannot fail for this name.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|&size| size.is_power_of_two()).unwrap_or(4096)
}

/// The process's umask, read once (by setting and restoring it: the first call
/// must come before threads start) and kept.
pub fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    // SAFETY: umask cannot fail; the old value is restored at once.
    *UMASK.get_or_init(|| unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old as u32
    })
}

/// Whether the folder `dir` has a default ACL (which, not the umask, then decides a
/// new file's permission bits). A filesystem without ACLs has none.
pub fn has_default_acl(dir: BorrowedFd<'_>) -> bool {
    // SAFETY: the name is NUL-terminated; a NULL buffer of size 0 only asks the size.
    let rc = unsafe {
        libc::fgetxattr(dir.as_raw_fd(), c"system.posix_acl_default".as_ptr(), std::ptr::null_mut(), 0)
    };
    rc >= 0 || !matches!(io::Error::last_os_error().raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP))
}

/// Sets the permission bits of the open file or folder `fd` exactly (no umask).
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod on an open descriptor; no memory is passed.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })
}

/// Asks for a pipe buffer of `bytes` on `fd` if it is a pipe (fewer wake-ups per
/// megabyte); anything else, or a refusal (the system's pipe-max-size), is ignored.
pub fn grow_pipe(fd: BorrowedFd<'_>, bytes: usize) {
    // SAFETY: fcntl on an open descriptor with an integer argument; no memory.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes as libc::c_int);
    }
}

/// Waits up to `timeout` for `fd` to have something to read (data, end of file or
/// an error). `Ok(false)`: nothing yet. A signal ends the wait early (`Ok(false)`).
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut entry = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let millis = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd on the stack, count 1.
    let rc = unsafe { libc::poll(&mut entry, 1, millis) };
    match rc {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}

/// Clears `O_NONBLOCK` on `fd`, a descriptor this process opened for reading with no
/// other status flag (`O_APPEND`, `O_ASYNC`, `O_DIRECT`, `O_NOATIME`): one `F_SETFL`
/// to 0, no `F_GETFL` first (it runs once per file sent).
pub fn clear_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_SETFL on a descriptor we borrow; no memory is passed.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// When process `pid` started, in clock ticks after boot (`/proc/<pid>/stat` field
/// 22); `None` if it is gone or unreadable.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3 (the state).
    stat.rsplit(')').next()?.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Wall-clock milliseconds since the epoch (0 before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// Flushes the open file or folder `fd` to stable storage (`fsync`).
pub fn fsync_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fsync on an open descriptor; no memory is passed.
    check(unsafe { libc::fsync(fd.as_raw_fd()) })
}

/// Flushes the whole filesystem that holds `file` (`syncfs`).
pub fn syncfs(file: &File) -> io::Result<()> {
    // SAFETY: syncfs on an open descriptor; no memory is passed.
    check(unsafe { libc::syncfs(file.as_raw_fd()) })
}

/// The groups this process is in: its group and its supplementary groups (from
/// `/proc/self/status`).
pub fn current_groups() -> Vec<u32> {
    let numbers =
        |rest: &str| -> Vec<u32> { rest.split_whitespace().filter_map(|n| n.parse().ok()).collect() };
    let mut groups = status_field("Groups:").map(|rest| numbers(&rest)).unwrap_or_default();
    groups.extend(status_field("Gid:").and_then(|rest| numbers(&rest).first().copied()));
    groups
}

/// Whether this process may give files to any group (CAP_CHOWN in its effective
/// set, from `/proc/self/status`), as root may.
pub fn has_cap_chown() -> bool {
    status_field("CapEff:")
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & 1 != 0)
}

/// What follows `key` on its line of `/proc/self/status`.
fn status_field(key: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| line.strip_prefix(key)).map(str::to_owned)
}

/// The id of group `name` (from `/etc/group`), or `name` itself if it is a number.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then(|| fields.nth(1)?.parse().ok())?
    })
}

/// "user NAME (uid N)", or "user id N" for a uid without a name, for messages.
pub fn user_label(uid: u32) -> String {
    user_name(uid).map_or(format!("user id {uid}"), |name| format!("user {name} (uid {uid})"))
}

/// "group NAME (gid N)", or "group id N" for a gid without a name, for messages.
pub fn group_label(gid: u32) -> String {
    group_name(gid).map_or(format!("group id {gid}"), |name| format!("group {name} (gid {gid})"))
}

/// The name of group `gid` (from `/etc/group`).
pub fn group_name(gid: u32) -> Option<String> {
    name_of_id("/etc/group", gid)
}

/// The login name of user `uid` (from `/etc/passwd`).
pub fn user_name(uid: u32) -> Option<String> {
    name_of_id("/etc/passwd", uid)
}

/// The name on the line of `file` (`/etc/passwd` or `/etc/group`: name, password,
/// id, ...) whose id is `id`.
fn name_of_id(file: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == id).then(|| name.to_owned())
    })
}
