//! An embedded server whose files land in memory instead of a folder: the server
//! still checks every name, size and checksum; the sink only keeps the bytes.
//!
//! ```sh
//! cargo run --example receive_into_memory
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sharedxfer::client::Sender;
use sharedxfer::server::Server;
use sharedxfer::sink::{Sink, SinkError, SinkErrorKind, SinkFile, SinkSession};

/// Published files by name.
type Files = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

#[derive(Clone, Default)]
struct MemorySink {
    files: Files,
}

impl Sink for MemorySink {
    fn session(&self, _stream: u128) -> Box<dyn SinkSession> {
        Box::new(self.clone())
    }
}

impl SinkSession for MemorySink {
    fn exists(&mut self, name: &str) -> bool {
        self.files.lock().unwrap().contains_key(name)
    }

    fn create(&mut self, name: &str) -> Result<Box<dyn SinkFile>, SinkError> {
        Ok(Box::new(MemoryFile { name: name.to_owned(), bytes: Vec::new(), files: Arc::clone(&self.files) }))
    }

    fn make_dir(&mut self, _name: &str, _mode: u32) -> Result<(), SinkError> {
        Ok(())
    }
}

struct MemoryFile {
    name: String,
    bytes: Vec<u8>,
    files: Files,
}

impl SinkFile for MemoryFile {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn publish(
        self: Box<Self>,
        _mode: u32,
        _mtime: Option<SystemTime>,
        replace: bool,
    ) -> Result<(), SinkError> {
        let mut files = self.files.lock().unwrap();
        if !replace && files.contains_key(&self.name) {
            return Err(SinkError::new(SinkErrorKind::Exists, format!("{} already exists", self.name)));
        }
        files.insert(self.name, self.bytes);
        Ok(())
    }

    fn discard(self: Box<Self>) {}
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("sxmem-{}", std::process::id());
    let sink = MemorySink::default();
    let server = Server::builder(&name).size(4 << 20).sink(sink.clone()).start()?;

    let sender = Sender::connect(&name, Duration::from_secs(10))?;
    sender.send_reader("greeting.txt", &b"hello from memory"[..])?;
    let this_file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/examples/receive_into_memory.rs");
    for (item, result) in sender.send_path(this_file)? {
        println!("{}: {:?}", item.name, result?);
    }
    drop(sender);
    server.shutdown()?;

    for (name, bytes) in sink.files.lock().unwrap().iter() {
        println!("in memory: {name} ({} bytes)", bytes.len());
    }
    Ok(())
}
