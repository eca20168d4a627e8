//! sharedxfer: move files between processes on one machine through one fixed-size
//! shared-memory segment.
//!
//! ```text
//! offset 0        +-----------------------------+
//!                 | Header (magic written last) |
//!                 | Handout: the GUID on offer  |
//! 4096            +-----------------------------+
//!                 | Record | Record | hole | ...|  command records grow upward
//!                 |             v               |
//!                 |        free middle gap      |
//!                 |             ^               |
//!                 | ... | Buffer | hole | Buffer|  file-data buffers grow downward
//! segment size    +-----------------------------+
//! ```
//!
//! Layering (imports only point down): `server`, `client` over `protocol`,
//! `handout`, `status` over `segment` over `alloc`, `lock`, `wait`, `sys`, with
//! `config` and `cli` beside them. `unsafe` lives only in `segment` and `sys`.

/// `outln!` that never panics: a closed or full stdout (a log pipe that died, `| head`)
/// must not kill a server worker or a client job.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `errln!` that never panics (see `outln!`).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod alloc;
pub mod checksum;
pub mod cli;
pub mod client;
pub mod config;
pub mod escape;
pub mod handout;
pub mod lock;
pub mod outdir;
pub mod protocol;
pub mod ring;
pub mod segment;
pub mod server;
pub mod sink;
pub mod sources;
pub mod status;
pub mod sys;
pub mod wait;

/// The exit codes of both binaries (also in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitStatus {
    /// Everything asked for was done.
    Success = 0,
    /// A stream or the peer failed.
    Failure = 1,
    /// Bad command line or configuration.
    Usage = 2,
    /// Stopped by SIGINT or SIGTERM.
    Interrupted = 130,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        std::process::ExitCode::from(status.code())
    }
}

/// The exit-code table, shown in `--help` of both binaries.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 all done, 1 a stream or the peer failed, \
2 usage or configuration error, 130 interrupted (SIGINT/SIGTERM).";
