#![warn(missing_docs)]
//! sharedxfer: move files between processes on one machine through one fixed-size
//! shared-memory segment. A server ([`server::Server`]) publishes every file it
//! receives, checksum-verified and atomically; a client ([`client::Sender`]) sends
//! files, folders, or anything readable. The `sharedserver` and `sharedclient`
//! binaries are thin front ends ([`cli`]) over this same API.
//!
//! # Sending to a running server
//!
//! ```no_run
//! use std::time::Duration;
//! use sharedxfer::client::{Delivered, Sender};
//!
//! // `sharedserver /srv/inbox` runs on the default segment name.
//! let sender = Sender::connect("sharedxfer", Duration::from_secs(10))?;
//! for (item, result) in sender.send_path("photos")? {
//!     match result {
//!         Ok(Delivered::Sent { bytes }) => println!("{}: {bytes} bytes", item.name),
//!         Ok(Delivered::Skipped) => println!("{}: already there", item.name),
//!         Err(e) => eprintln!("{}: {e}", item.human()),
//!     }
//! }
//! sender.send_reader("logs/today.txt", std::io::stdin())?;
//! # Ok::<(), sharedxfer::client::SendError>(())
//! ```
//!
//! # An embedded server
//!
//! ```
//! use std::time::Duration;
//! use sharedxfer::client::Sender;
//! use sharedxfer::server::{Server, ServerEvent};
//!
//! let name = format!("sxdoc-{}", std::process::id());
//! let inbox = std::env::temp_dir().join(&name);
//! let server = Server::builder(&name)
//!     .size(4 << 20)
//!     .output_dir(&inbox)
//!     .on_event(|event| if let ServerEvent::Published { .. } = event { println!("{event}") })
//!     .start()?;
//!
//! let sender = Sender::connect(&name, Duration::from_secs(10))?;
//! sender.send_reader("hello.txt", &b"hello, segment"[..])?;
//! drop(sender);
//! server.shutdown()?;
//! assert_eq!(std::fs::read(inbox.join("hello.txt"))?, b"hello, segment");
//! # std::fs::remove_dir_all(&inbox)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A server can receive into a [`sink::Sink`] of its own instead of a folder (see
//! `tests/examples/receive_into_memory.rs`, `cargo run --example
//! receive_into_memory`).
//!
//! # The segment
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
//! Layering (imports only point down): `cli` over `client` and `server` (and
//! `sink`, `sources`), over `protocol`, `ring`, `handout`, `status`, over `segment`,
//! over `alloc`, `lock`, `wait`, `sys`; `config`, `outdir`, `escape`, `checksum`
//! beside them. `unsafe` lives only in `segment` and `sys`.

/// `println!` that never panics: a closed or full stdout (a log pipe that died, `| head`)
/// must not kill a server worker or a client job. The first failure is kept
/// (`stdout_error`): a client whose report was lost (`--json > /dev/full`) does not
/// exit 0.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::note_stdout_error(e);
        }
    }};
}

/// The first error writing to stdout (`outln!`), as text.
static STDOUT_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Keeps `error` as the first stdout failure, if it is. A reader that closed the
/// pipe (`| head`) chose to read no more: not a failure.
pub(crate) fn note_stdout_error(error: std::io::Error) {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        return;
    }
    let mut first = STDOUT_ERROR.lock().unwrap_or_else(|e| e.into_inner());
    first.get_or_insert_with(|| error.to_string());
}

/// Flushes stdout; the first error met writing to it since the start, if any.
pub(crate) fn stdout_error() -> Option<String> {
    use std::io::Write as _;
    if let Err(e) = std::io::stdout().lock().flush() {
        note_stdout_error(e);
    }
    STDOUT_ERROR.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// `errln!` that never panics (see `outln!`).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod alloc;
pub mod batch;
pub mod checksum;
pub mod cli;
pub mod client;
pub mod config;
pub mod escape;
pub mod frames;
pub mod handout;
pub mod layout;
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
    /// The client was stopped by SIGINT, SIGTERM or SIGHUP before it was done (a server
    /// stopped on request exits 0).
    Interrupted = 130,
}

impl ExitStatus {
    /// The process exit code.
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
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 all done (for the server: stopped on request by \
SIGTERM, SIGINT or SIGHUP), 1 a stream or the peer failed, 2 usage or configuration error, 130 \
the client interrupted (SIGINT/SIGTERM/SIGHUP).";
