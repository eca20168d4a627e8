//! Thin, checked wrappers over the few Linux calls the chosen crates do not expose:
//! futex wait/wake on a word in the segment, signal flags, page reservation, free
//! space, process liveness. One of the two modules with `unsafe` (the other is
//! `segment`); every block says why it is sound.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::time::Duration;

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

/// Routes SIGINT and SIGTERM to a flag that `stop_signal` reads, instead of killing
/// the process, so both binaries can clean up. Waits all have short timeouts, so the
/// flag is seen promptly without a self-pipe.
pub fn install_stop_handlers() {
    if HANDLERS_INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value, and
        // `record_signal` is an `extern "C"` function that only stores to an atomic.
        unsafe {
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

/// Raises the soft open-files limit to the hard limit: the server holds one lock
/// descriptor and one output file per active stream.
pub fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit with a valid out-parameter on the stack.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
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
