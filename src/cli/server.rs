//! `sharedserver`'s front end: the output folder from the command line or
//! options.xml, one line per event, and the exit code. Built on [`crate::server`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::ServerCli;
use crate::config::{Config, ConfigError};
use crate::segment::MAX_WORKERS;
use crate::server::{Server, ServerEvent, ServerOptions};
use crate::{sys, ExitStatus};

/// Runs `sharedserver` until SIGINT, SIGTERM or SIGHUP; returns its exit status.
pub fn main(cli: ServerCli) -> ExitStatus {
    sys::install_stop_handlers();
    // The default options.xml is read only for want of OUTPUT_DIR; one named with
    // `-c` is always read (a typo in its path is an error, not a silent default).
    let named = cli.common.config.is_some();
    let from_config = match named || cli.output_dir.is_none() {
        true => config_output_dir(cli.common.config_path(), named),
        false => Ok(None),
    };
    let output_dir = match (cli.output_dir.clone(), from_config) {
        (Some(dir), Ok(_)) => dir,
        (None, Ok(dir)) => dir.unwrap_or_else(|| PathBuf::from(".")),
        (_, Err(e)) => {
            errln!("sharedserver: {e}");
            return ExitStatus::Usage;
        }
    };
    let workers = cli
        .workers
        .map(|n| n as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()).min(MAX_WORKERS));
    let group = match cli.group.as_deref().map(|name| (name, sys::group_id(name))) {
        None => None,
        Some((_, Some(gid))) => Some(gid),
        Some((name, None)) => {
            errln!("sharedserver: --group {name}: no such group (see /etc/group)");
            return ExitStatus::Usage;
        }
    };
    let options = ServerOptions {
        name: cli.common.name,
        size: cli.size,
        output_dir,
        overwrite: cli.overwrite,
        idle_timeout: Duration::from_secs(cli.idle_timeout),
        workers,
        sync: cli.sync,
        group,
        max_file_size: cli.max_file_size,
        max_streams_per_client: cli.max_streams_per_client as usize,
    };
    let shown = match (cli.common.quiet, cli.verbose) {
        (true, _) => Shown::Failures,
        (false, false) => Shown::Clients,
        (false, true) => Shown::Files,
    };
    let started = Server::builder(options.name.clone())
        .options(options)
        .on_event(move |event| print(event, shown))
        .start();
    let result = started.and_then(Server::wait);
    match result {
        // The server's normal way to end is SIGTERM, SIGINT or SIGHUP: a clean stop on
        // request is a success (systemd, Docker and supervisors read it so).
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            let status = e.exit_status();
            errln!("sharedserver: {:#}", anyhow::Error::new(e));
            status
        }
    }
}

/// What the server prints besides failures, notices and its ready line.
#[derive(Clone, Copy, PartialEq)]
enum Shown {
    /// `--quiet`: nothing more.
    Failures,
    /// The default: a line per client process when its last stream ends (with
    /// thousands of small files, a line per file costs more than the file).
    Clients,
    /// `--verbose`: also a line per published file.
    Files,
}

/// One line per event: failures, client summaries and (with `--verbose`) published
/// files on stdout, notices on stderr.
fn print(event: &ServerEvent, shown: Shown) {
    match event {
        ServerEvent::Published { .. } if shown != Shown::Files => {}
        ServerEvent::ClientDone { .. } if shown == Shown::Failures => {}
        ServerEvent::Notice(_) => errln!("{event}"),
        _ => outln!("{event}"),
    }
}

/// The config's `<server outputpath>`, if it has one. The default options.xml may
/// be missing (the server needs nothing from it); one named with `-c` may not, and a
/// broken one is an error either way.
fn config_output_dir(config: &Path, named: bool) -> Result<Option<PathBuf>, ConfigError> {
    match Config::load(config) {
        Ok(config) => Ok(config.output_path),
        Err(ConfigError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound && !named => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
