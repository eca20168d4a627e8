//! `sharedserver [OUTPUT_DIR]`: parse the command line and run the library's front end.

use std::process::ExitCode;

use clap::Parser;
use sharedxfer::cli::ServerCli;

fn main() -> ExitCode {
    sharedxfer::cli::server::main(ServerCli::parse()).into()
}
