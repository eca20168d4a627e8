//! `sharedclient ID...`: parse the command line and run the library's client.

use std::process::ExitCode;

use clap::Parser;
use sharedxfer::cli::ClientCli;

fn main() -> ExitCode {
    sharedxfer::client::run(ClientCli::parse()).into()
}
