//! Sends files and folders to a running `sharedserver`, as a program would:
//!
//! ```sh
//! sharedserver /tmp/inbox &
//! cargo run --example send -- sharedxfer README.md src
//! ```
//!
//! The first argument is the segment name; each further one a file, FIFO or folder.

use std::time::Duration;

use sharedxfer::client::{Delivered, SendOptions, Sender};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "sharedxfer".into());
    let sender = Sender::connect(&name, Duration::from_secs(10))?
        .with_options(SendOptions { skip_existing: true, ..SendOptions::default() });
    let mut failed = 0;
    for path in args {
        for (item, result) in sender.send_path(&path)? {
            match result {
                Ok(Delivered::Sent { bytes }) => println!("sent {} ({bytes} bytes)", item.name),
                Ok(Delivered::Skipped) => println!("skipped {} (the server has it)", item.name),
                Err(e) => {
                    eprintln!("failed {}: {e}", item.human());
                    failed += 1;
                }
            }
        }
    }
    // Anything readable can be sent too, under a name of its choosing.
    let when = format!("sent at {:?}\n", std::time::SystemTime::now());
    sender.send_reader("send-example/when.txt", when.as_bytes())?;
    if failed > 0 {
        return Err(format!("{failed} file(s) failed").into());
    }
    Ok(())
}
