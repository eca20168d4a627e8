//! The command-line front end: clap definitions of both binaries (flags both share
//! live in `Common`), and in `client` and `server` everything only a terminal user
//! needs (progress bars, summary lines, exit codes). The binaries call only this
//! module; it is built on the library's public API.

pub mod client;
pub mod server;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, Parser};

/// The segment name when `--name` is not given.
pub const DEFAULT_NAME: &str = "sharedxfer";
/// The server's segment size when `--size` is not given (as `parse_size` reads it).
pub const DEFAULT_SIZE: &str = "64M";

/// Flags both binaries take.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The options file [default: options.xml; the server needs it only without
    /// OUTPUT_DIR, and only one named here must exist].
    #[arg(short = 'c', long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Segment name; lock files and every other name derive from it.
    #[arg(short = 'n', long = "name", value_name = "NAME", default_value = DEFAULT_NAME)]
    pub name: String,
    /// Quieter: no progress bar and no line per sent stream id, only the summary
    /// (client); no line per client that finished (server). Failures are always printed.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
}

impl Common {
    /// The options file: the one named with `-c`, else `options.xml`.
    pub fn config_path(&self) -> &Path {
        self.config.as_deref().unwrap_or(Path::new(crate::config::DEFAULT_CONFIG))
    }
}

/// sharedserver: create the shared-memory segment and write every file clients send
/// into OUTPUT_DIR. Runs until SIGINT, SIGTERM or SIGHUP.
#[derive(Debug, Parser)]
#[command(name = "sharedserver", version, after_help = crate::EXIT_CODES_HELP)]
pub struct ServerCli {
    /// Where received files go (default: the config's `<server outputpath>`, else the current folder).
    #[arg(value_name = "OUTPUT_DIR")]
    pub output_dir: Option<PathBuf>,
    /// Flags both binaries take.
    #[command(flatten)]
    pub common: Common,
    /// Segment size in bytes, or with a K, M or G suffix.
    #[arg(short = 's', long = "size", value_name = "SIZE", default_value = DEFAULT_SIZE, value_parser = parse_size)]
    pub size: u64,
    /// Replace files that already exist in OUTPUT_DIR (default: refuse them).
    #[arg(long = "overwrite")]
    pub overwrite: bool,
    /// Streams one client process may hold at once; more are refused, so one client
    /// cannot take every record.
    #[arg(long = "max-streams-per-client", value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_streams_per_client: u64,
    /// Refuse files larger than SIZE (bytes, or with K, M, G), whatever their source.
    #[arg(long = "max-file-size", value_name = "SIZE", value_parser = parse_size)]
    pub max_file_size: Option<u64>,
    /// Let members of GROUP send: the segment and lock folder become group-accessible
    /// (0660 / 3770). Files received still belong to the server's user.
    #[arg(long = "group", value_name = "GROUP")]
    pub group: Option<String>,
    /// Flush each published file to disk before confirming it: none (as cp and
    /// rsync), file (each file and its folder), batch (once per group of files).
    #[arg(long = "sync", value_name = "MODE", default_value = "none")]
    pub sync: crate::sink::SyncMode,
    /// Drop a stream whose client shows no activity for this many seconds.
    #[arg(long = "idle-timeout", value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
    /// Worker threads writing files, 1 to 16 (default: one per core, at most 16).
    #[arg(long = "workers", value_name = "N", value_parser = clap::value_parser!(u64).range(1..=16))]
    pub workers: Option<u64>,
    /// One line per published file (`done NAME ...`), besides the line per client.
    #[arg(short = 'v', long = "verbose", conflicts_with = "quiet")]
    pub verbose: bool,
}

/// sharedclient: send files, folders, file lists or standard input to a running
/// sharedserver; each ARG is a stream id from options.xml, an id range, or a path.
#[derive(Debug, Parser)]
#[command(name = "sharedclient", version, after_help = CLIENT_AFTER_HELP)]
pub struct ClientCli {
    /// A stream id from options.xml (`7`), an id range (`3-9`, both ends included), or
    /// a PATH: a file, a folder (sent whole, as `cp -r`), or `-` for standard input.
    /// Write `./7` for a file named 7.
    #[arg(value_name = "ARG", required_unless_present_any = ["ping", "status", "all", "files_from", "relay"])]
    pub args: Vec<OsString>,
    /// Flags both binaries take.
    #[command(flatten)]
    pub common: Common,
    /// Every stream in options.xml.
    #[arg(long = "all")]
    pub all: bool,
    /// Paths to send, one per line (`-`: standard input); each arrives under the same relative path.
    #[arg(long = "files-from", value_name = "FILE")]
    pub files_from: Option<PathBuf>,
    /// --files-from entries end with NUL instead of a newline.
    #[arg(short = '0', long = "from0", requires = "files_from")]
    pub from0: bool,
    /// The output name (a relative path), when exactly one file, folder (everything in it moves with it) or `-` is sent.
    #[arg(long = "as", value_name = "NAME")]
    pub as_name: Option<String>,
    /// A file the server already has under that name is skipped, not a failure.
    #[arg(long = "skip-existing")]
    pub skip_existing: bool,
    /// Follow symbolic links found inside folders (links named on the command line are always followed).
    #[arg(short = 'L', long = "follow-symlinks")]
    pub follow_symlinks: bool,
    /// One line per file when sending paths.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Print the final summary (or, with --status, the map; with --ping, the round trips) as JSON on stdout.
    #[arg(long = "json")]
    pub json: bool,
    /// Seconds to wait for a server that does not answer (or is still setting up).
    #[arg(long = "timeout", value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Run COUNT ping-pong round trips on one stream and print min/median/p99.
    #[arg(long = "ping", value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..), conflicts_with_all = ["args", "all", "files_from", "as_name", "skip_existing"])]
    pub ping: Option<u64>,
    /// Streams sent at once, whatever the number of files (at most the server's
    /// --max-streams-per-client).
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub jobs: u64,
    /// Print a read-only map of the running server's segment and its live streams.
    #[arg(long = "status", conflicts_with_all = ["ping", "args", "all", "files_from"])]
    pub status: bool,
    /// Send to the server on another host: runs `CMD [USER@]HOST sharedclient --relay
    /// -n NAME` and streams every file through it (ids resolve against the local options.xml).
    #[arg(long = "remote", value_name = "[USER@]HOST", value_parser = parse_host, conflicts_with_all = ["ping", "status", "relay"])]
    pub remote: Option<String>,
    /// The remote shell for --remote, split into words like a shell would (default `ssh`;
    /// e.g. `ssh -p 2222 -i ~/.ssh/key`).
    #[arg(long = "rsh", value_name = "CMD", default_value = "ssh", requires = "remote")]
    pub rsh: String,
    /// Be the remote end of --remote: read files as frames on stdin, send each to the
    /// server of -n NAME on this host, answer on stdout (started by --remote over SSH).
    #[arg(long = "relay", conflicts_with_all = ["ping", "status", "args", "all", "files_from"])]
    pub relay: bool,
}

const CLIENT_AFTER_HELP: &str =
    "Examples:\n  sharedclient report.pdf photos/      a file and a whole folder\n  \
tar c src | sharedclient - --as src.tar\n  find . -name '*.log' | sharedclient --files-from -\n  \
sharedclient 1 3-5                    streams named in options.xml\n\n\
Exit codes: 0 all done, 1 a stream or the peer failed, 2 usage or configuration error, \
130 interrupted (SIGINT/SIGTERM/SIGHUP).";

/// `--remote`'s `[USER@]HOST`: not empty, and not taken for an option of the remote
/// shell (`-oProxyCommand=...`), nor holding spaces or control characters.
fn parse_host(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("give a host name (or user@host)".into());
    }
    if text.starts_with('-') {
        return Err(format!(
            "{text:?} starts with '-': a host name never does (options for ssh go in --rsh)"
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{text:?} holds a space or a control character: not a host name"));
    }
    Ok(text.to_owned())
}

/// Parses "65536", "64K", "64M", "1G" (binary multiples; optional trailing "B"/"iB").
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let upper = trimmed.to_ascii_uppercase();
    let stripped = upper.strip_suffix("IB").or_else(|| upper.strip_suffix('B')).unwrap_or(&upper);
    let (digits, shift) = match stripped.chars().last() {
        Some('K') => (&stripped[..stripped.len() - 1], 10),
        Some('M') => (&stripped[..stripped.len() - 1], 20),
        Some('G') => (&stripped[..stripped.len() - 1], 30),
        Some('T') => (&stripped[..stripped.len() - 1], 40),
        _ => (stripped, 0),
    };
    let value: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size: use bytes or a number with K, M or G, like 64M"))?;
    value.checked_mul(1u64 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_valid() {
        ServerCli::command().debug_assert();
        ClientCli::command().debug_assert();
    }

    #[test]
    fn sizes_take_plain_bytes_and_suffixes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert!(parse_size("lots").unwrap_err().contains("like 64M"));
        assert!(parse_size("99999999999T").unwrap_err().contains("too large"));
    }

    #[test]
    fn a_client_without_ids_is_a_usage_error() {
        let err = ClientCli::try_parse_from(["sharedclient"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(ClientCli::try_parse_from(["sharedclient", "--ping", "3"]).is_ok());
        assert!(ClientCli::try_parse_from(["sharedclient", "--status", "--json"]).is_ok());
        assert!(ClientCli::try_parse_from(["sharedclient", "--all"]).is_ok());
        assert!(ClientCli::try_parse_from(["sharedclient", "--files-from", "-", "-0"]).is_ok());
        assert!(ClientCli::try_parse_from(["sharedclient", "-0", "a"]).is_err(), "-0 needs --files-from");
    }
}
