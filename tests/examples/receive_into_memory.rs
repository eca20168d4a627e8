//! An embedded server whose files land in memory instead of a folder: the server
//! still checks every name, size and checksum; the sink only keeps the bytes.
//! (`sink::MemorySink`; implement `sink::Sink` for a sink of your own.)
//!
//! ```sh
//! cargo run --example receive_into_memory
//! ```

use std::time::Duration;

use sharedxfer::client::Sender;
use sharedxfer::server::Server;
use sharedxfer::sink::MemorySink;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("sxmem-{}", std::process::id());
    let sink = MemorySink::new();
    let server = Server::builder(&name).size(4 << 20).sink(sink.clone()).start()?;

    let sender = Sender::connect(&name, Duration::from_secs(10))?;
    sender.send_reader("greeting.txt", &b"hello from memory"[..])?;
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/examples");
    for (item, result) in sender.send_path(folder)? {
        println!("{}: {:?}", item.name, result?);
    }
    drop(sender);
    server.shutdown()?;

    for (name, bytes) in sink.files().lock().unwrap().iter() {
        println!("in memory: {name} ({} bytes)", bytes.len());
    }
    Ok(())
}
