//! `sharedclient [ARG]...`: parse the command line and run the library's front end.

use std::process::ExitCode;

use clap::Parser;
use sharedxfer::cli::ClientCli;

fn main() -> ExitCode {
    match ClientCli::try_parse() {
        Ok(cli) => sharedxfer::cli::client::main(cli).into(),
        Err(e) => {
            // A script that asked for JSON gets JSON on stdout, whatever went wrong.
            let json = std::env::args_os().skip(1).take_while(|arg| arg != "--").any(|arg| arg == "--json");
            if e.use_stderr() && json {
                sharedxfer::cli::client::print_json_error(&e.to_string());
            }
            e.exit()
        }
    }
}
