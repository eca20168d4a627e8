//! `sharedclient [ARG]...`: parse the command line and run the library's front end.

use std::process::ExitCode;

use clap::Parser;
use sharedxfer::cli::ClientCli;

fn main() -> ExitCode {
    sharedxfer::cli::client::main(ClientCli::parse()).into()
}
