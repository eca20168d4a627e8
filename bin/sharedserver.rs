//! `sharedserver [OUTPUT_DIR]`: parse the command line, resolve the output folder,
//! and run the library's server.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sharedxfer::cli::ServerCli;
use sharedxfer::config::{Config, ConfigError};
use sharedxfer::server::{self, ServerOptions, StartError};
use sharedxfer::ExitStatus;

fn main() -> ExitCode {
    let cli = ServerCli::parse();
    match run(cli) {
        Ok(status) => status.into(),
        Err(e) => {
            // A closed stderr must not turn a clean error into a panic.
            let _ = writeln!(std::io::stderr(), "sharedserver: {e:#}");
            if e.downcast_ref::<StartError>().is_some() {
                ExitStatus::Usage.into()
            } else {
                ExitStatus::Failure.into()
            }
        }
    }
}

fn run(cli: ServerCli) -> anyhow::Result<ExitStatus> {
    let output_dir = match cli.output_dir {
        Some(dir) => dir,
        None => config_output_dir(&cli.common.config)?,
    };
    let workers = cli
        .workers
        .map(|n| n as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    server::run(ServerOptions {
        name: cli.common.name,
        size: cli.size,
        output_dir,
        overwrite: cli.overwrite,
        quiet: cli.common.quiet,
        idle_timeout: Duration::from_secs(cli.idle_timeout),
        workers,
    })
}

/// The config's `<server outputpath>`, else the current folder. A missing config is
/// fine for the server; a broken one is an error.
fn config_output_dir(config: &std::path::Path) -> anyhow::Result<PathBuf> {
    match Config::load(config) {
        Ok(config) => Ok(config.output_path.unwrap_or_else(|| PathBuf::from("."))),
        Err(ConfigError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(PathBuf::from("."))
        }
        Err(e) => Err(StartError(e.to_string()).into()),
    }
}
