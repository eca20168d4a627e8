//! Property tests of the record decoder: whatever bytes a peer leaves in a mailbox,
//! `ClientCommand::decode` and `ServerReply::decode` never panic, accept exactly what
//! the protocol allows, and everything they accept is in bounds; and whatever bytes a
//! client hands over as a batch, `batch::decode_batch` never panics and keeps every
//! entry inside the slot.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use sharedxfer::batch;
use sharedxfer::protocol::*;
use sharedxfer::segment::{Mailbox, TEXT_CAPACITY};

/// The README's rule for a path component, written independently of the library.
fn component_allowed(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']) && name.len() <= 255
}

/// The README's rule for a relative path: at most 4,096 bytes of allowed components.
fn name_allowed(name: &str) -> bool {
    name.len() <= 4096 && name.split('/').all(component_allowed)
}

/// The metadata word's rule: only the mode bits 0o777 and flag bits 32-35, and
/// mode bits only with the mode flag (bit 32).
fn meta_allowed(word: u64) -> bool {
    let known = 0o777 | (0xF << 16) | (0x3fff_ffff << 32);
    let nanos = (word >> 32) & 0x3fff_ffff;
    let time_ok = if word & (1 << 17) != 0 { nanos < 1_000_000_000 } else { nanos == 0 };
    word & !known == 0 && (word & (1 << 16) != 0 || word & 0o777 == 0) && time_ok
}

/// The time a metadata word and a seconds word stand for, written independently.
fn time_of(word: u64, secs: u64) -> SystemTime {
    let (secs, nanos) = (secs as i64, Duration::from_nanos((word >> 32) & 0x3fff_ffff));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

/// A metadata word: mostly well formed, sometimes not.
fn meta_word() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..16, 0u64..=0o777, 0u64..1_000_000_000).prop_map(|(flags, mode, nanos)| {
            let mode = if flags & 1 == 1 { mode } else { 0 };
            let nanos = if flags & 2 == 2 { nanos << 32 } else { 0 };
            (flags << 16) | mode | nanos
        }),
        1 => any::<u64>(),
        1 => (0u64..64, 0u64..=0o7777, 0u64..0x4000_0000)
            .prop_map(|(flags, mode, nanos)| (flags << 16) | mode | (nanos << 32)),
    ]
}

/// The text field as the protocol defines it: `text_len` bytes, at most the field,
/// valid UTF-8.
fn text_of(raw: &RawCommand) -> Option<&str> {
    let len = raw.text_len as usize;
    (len <= TEXT_CAPACITY).then(|| std::str::from_utf8(&raw.text[..len]).ok()).flatten()
}

fn padded(bytes: &[u8]) -> Box<[u8; TEXT_CAPACITY]> {
    let mut text = Box::new([0u8; TEXT_CAPACITY]);
    let n = bytes.len().min(TEXT_CAPACITY);
    text[..n].copy_from_slice(&bytes[..n]);
    text
}

fn code() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0x0ffu32..=0x10a,
        3 => 0x1ffu32..=0x206,
        1 => any::<u32>(),
    ]
}

/// Bytes that make names interesting: mostly letters, with separators, dots, NULs
/// and bytes that break UTF-8.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        10 => b'a'..=b'z',
        2 => Just(b'.'),
        1 => Just(b'/'),
        1 => Just(0u8),
        2 => 0x80u8..=0xff,
        1 => any::<u8>(),
    ]
}

/// A mailbox as a peer may leave it: random fields, or a plausible name whose
/// announced length is right, a little off, or wild.
fn raw_command() -> impl Strategy<Value = RawCommand> {
    let random_text = (
        proptest::collection::vec(byte(), TEXT_CAPACITY),
        prop_oneof![
            4 => 0u32..=16,
            2 => 0u32..=(TEXT_CAPACITY as u32 + 16),
            1 => any::<u32>(),
        ],
    )
        .prop_map(|(bytes, len)| (padded(&bytes), len));
    let name_text = ("[a-zA-Z0-9 ._/\\-]{0,12}|[Врéмя.]{1,90}|\\.{1,3}", -2i64..=2, proptest::bool::ANY)
        .prop_map(|(name, skew, exact)| {
            let len = if exact { name.len() as i64 } else { (name.len() as i64 + skew).max(0) };
            (padded(name.as_bytes()), len as u32)
        });
    let text = prop_oneof![random_text, name_text];
    let args = (any::<u64>(), meta_word(), meta_word(), any::<u64>()).prop_map(|(a, b, c, d)| [a, b, c, d]);
    (any::<u32>(), code(), args, text).prop_map(|(seq, code, args, (text, text_len))| RawCommand {
        seq,
        code,
        args,
        text_len,
        text,
    })
}

fn check_client_decode(raw: &RawCommand) -> Result<(), TestCaseError> {
    let text = text_of(raw);
    let [a, b, c, d] = raw.args;
    let should_accept = match raw.code {
        C2S_OPEN => text.is_some_and(name_allowed) && meta_allowed(b),
        C2S_PUT => text.is_some_and(name_allowed) && meta_allowed(c),
        C2S_MKDIR => text.is_some_and(name_allowed) && a <= 0o777,
        C2S_ABORT => text.is_some(),
        C2S_FINISH | C2S_PING | C2S_CLOSE | C2S_BATCH | C2S_RELEASE => true,
        _ => false,
    };
    match ClientCommand::decode(raw) {
        Ok(command) => {
            prop_assert!(should_accept, "accepted {command:?} from {raw:?}");
            match &command {
                ClientCommand::Open { name, size, meta } => {
                    prop_assert_eq!(raw.code, C2S_OPEN);
                    prop_assert_eq!(Some(name.as_str()), text);
                    prop_assert!(validate_path(name).is_ok() && name.len() <= MAX_PATH_LEN);
                    prop_assert_eq!(*size, a);
                    prop_assert!(meta.mode.is_none_or(|m| m <= 0o777));
                    prop_assert_eq!(meta.mtime.is_some(), b & (1 << 17) != 0);
                    if meta.mtime.is_some() {
                        prop_assert_eq!(meta.mtime, Some(time_of(b, c)));
                    }
                }
                ClientCommand::Put { name, size, checksum, meta } => {
                    prop_assert_eq!(raw.code, C2S_PUT);
                    prop_assert_eq!(Some(name.as_str()), text);
                    prop_assert!(validate_path(name).is_ok() && name.len() <= MAX_PATH_LEN);
                    prop_assert_eq!((*size, *checksum), (a, b));
                    prop_assert!(meta.mode.is_none_or(|m| m <= 0o777));
                    prop_assert_eq!(meta.size_is_hint, c & (1 << 18) != 0);
                    if meta.mtime.is_some() {
                        prop_assert_eq!(meta.mtime, Some(time_of(c, d)));
                    }
                }
                ClientCommand::Mkdir { name, mode } => {
                    prop_assert_eq!(raw.code, C2S_MKDIR);
                    prop_assert_eq!(Some(name.as_str()), text);
                    prop_assert!(validate_path(name).is_ok());
                    prop_assert_eq!(u64::from(*mode), a);
                }
                ClientCommand::Abort { reason } => {
                    prop_assert_eq!(raw.code, C2S_ABORT);
                    prop_assert_eq!(Some(reason.as_str()), text);
                    prop_assert!(reason.len() <= TEXT_CAPACITY);
                }
                ClientCommand::Finish { size, checksum } => {
                    prop_assert_eq!(raw.code, C2S_FINISH);
                    prop_assert_eq!((*size, *checksum), (a, b));
                }
                ClientCommand::Ping { seq, sent_nanos } => {
                    prop_assert_eq!(raw.code, C2S_PING);
                    prop_assert_eq!((*seq, *sent_nanos), (a, b));
                }
                ClientCommand::Close => prop_assert_eq!(raw.code, C2S_CLOSE),
                ClientCommand::Batch => prop_assert_eq!(raw.code, C2S_BATCH),
                ClientCommand::Release => prop_assert_eq!(raw.code, C2S_RELEASE),
            }
            // What was accepted encodes back to the same code and fits a mailbox.
            let (code, _, bytes) = command.encode();
            prop_assert_eq!(code, raw.code);
            prop_assert!(bytes.len() <= TEXT_CAPACITY);
        }
        Err(e) => {
            prop_assert!(!should_accept, "refused a valid command {raw:?}: {e}");
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

fn check_server_decode(raw: &RawCommand) -> Result<(), TestCaseError> {
    let [a, b, ..] = raw.args;
    let should_accept = match raw.code {
        S2C_OPENED => a <= u32::MAX as u64,
        S2C_DONE | S2C_ERROR | S2C_PONG | S2C_SKIPPED => true,
        _ => false,
    };
    match ServerReply::decode(raw) {
        Ok(reply) => {
            prop_assert!(should_accept, "accepted {reply:?} from {raw:?}");
            match reply {
                ServerReply::Opened { slots, chunk } => prop_assert_eq!((slots as u64, chunk), (a, b)),
                ServerReply::Done { bytes } => prop_assert_eq!(bytes, a),
                ServerReply::Pong { seq, sent_nanos } => prop_assert_eq!((seq, sent_nanos), (a, b)),
                ServerReply::Skipped => prop_assert_eq!(raw.code, S2C_SKIPPED),
                ServerReply::Error { message, .. } => {
                    let len = (raw.text_len as usize).min(TEXT_CAPACITY);
                    prop_assert!(message.chars().count() <= TEXT_CAPACITY);
                    prop_assert_eq!(message, String::from_utf8_lossy(&raw.text[..len]).into_owned());
                }
            }
        }
        Err(e) => prop_assert!(!should_accept, "refused a valid reply {raw:?}: {e}"),
    }
    Ok(())
}

fn empty_mailbox() -> Mailbox {
    Mailbox::default()
}

fn client_command() -> impl Strategy<Value = ClientCommand> {
    let name = "[a-zA-Z0-9 ._/\\-Время]{1,60}".prop_filter("a relative path", |n| name_allowed(n));
    let meta = (
        proptest::option::of(0u32..=0o777),
        proptest::option::of((any::<u32>(), 0u32..1_000_000_000)),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mode, mtime, size_is_hint, skip_existing)| FileMeta {
            mode,
            // Seconds on both sides of the epoch, to the nanosecond.
            mtime: mtime.map(|(secs, nanos)| {
                UNIX_EPOCH - Duration::from_secs(1 << 31) + Duration::new(u64::from(secs), nanos)
            }),
            size_is_hint,
            skip_existing,
        });
    prop_oneof![
        (name.clone(), any::<u64>(), meta.clone()).prop_map(|(name, size, meta)| ClientCommand::Open {
            name,
            size,
            meta
        }),
        (name.clone(), any::<u64>(), any::<u64>(), meta)
            .prop_map(|(name, size, checksum, meta)| ClientCommand::Put { name, size, checksum, meta }),
        (name, 0u32..=0o777).prop_map(|(name, mode)| ClientCommand::Mkdir { name, mode }),
        (any::<u64>(), any::<u64>()).prop_map(|(size, checksum)| ClientCommand::Finish { size, checksum }),
        "\\PC{0,100}".prop_map(|reason| ClientCommand::Abort { reason }),
        (any::<u64>(), any::<u64>()).prop_map(|(seq, sent_nanos)| ClientCommand::Ping { seq, sent_nanos }),
        Just(ClientCommand::Close),
        Just(ClientCommand::Batch),
        Just(ClientCommand::Release),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_mailbox_contents_decode_safely_and_only_in_bounds(raw in raw_command()) {
        check_client_decode(&raw)?;
        check_server_decode(&raw)?;
    }

    #[test]
    fn valid_commands_survive_a_mailbox_whatever_was_there_before(
        stale in raw_command(),
        command in client_command(),
        number in 1u32..1_000_000,
    ) {
        // The mailbox holds a peer's leftovers (message `number`, taken); a full post
        // of the next message replaces all of them.
        let mailbox = empty_mailbox();
        let stale_len = (stale.text_len as usize).min(TEXT_CAPACITY);
        post(&mailbox, number, stale.code, stale.args, &stale.text[..stale_len]);
        let seen = take(&mailbox).expect("a complete message").seq;
        prop_assert_eq!(pending(&mailbox, seen), None);
        let (code, args, text) = command.encode();
        post(&mailbox, number + 1, code, args, &text);
        prop_assert!(pending(&mailbox, seen).is_some());
        let raw = take(&mailbox).expect("a complete message");
        prop_assert_ne!(raw.seq, seen);
        prop_assert_eq!(ClientCommand::decode(&raw), Ok(command));
    }
}

/// A batch as a client packs it, then damaged at `cuts` (offset, byte) places.
fn batch_bytes() -> impl Strategy<Value = Vec<u8>> {
    let entry = ("[a-z/.]{0,12}", proptest::collection::vec(any::<u8>(), 0..40), any::<bool>(), any::<u64>());
    (
        proptest::collection::vec(entry, 1..6),
        any::<u64>(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        0usize..16,
    )
        .prop_map(|(entries, seq, cuts, trim)| {
            let mut out = batch::batch_header(entries.len() as u32, seq).to_vec();
            for (name, data, dir, word) in &entries {
                let kind = if *dir {
                    batch::EntryKind::Dir { mode: (*word as u32) & 0o777 }
                } else {
                    let meta = FileMeta { mode: Some(0o644), ..FileMeta::default() };
                    batch::EntryKind::File { size: data.len() as u64, checksum: *word, meta }
                };
                out.extend_from_slice(&batch::entry_header(&kind, name.len()));
                out.extend_from_slice(name.as_bytes());
                if !*dir {
                    out.extend_from_slice(data);
                }
                out.resize(batch::align(out.len()), 0);
            }
            for (at, byte) in cuts {
                let len = out.len();
                out[at % len] = byte;
            }
            out.truncate(out.len().saturating_sub(trim));
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_batch_decodes_safely_and_only_in_bounds(bytes in batch_bytes()) {
        if let Ok((_, entries)) = batch::decode_batch(&bytes) {
            prop_assert!(!entries.is_empty() && entries.len() <= batch::MAX_ENTRIES);
            let mut end = batch::HEADER_LEN;
            for entry in &entries {
                // Entries follow one another, inside the batch, never overlapping.
                prop_assert!(entry.data.start >= end + batch::ENTRY_LEN);
                prop_assert!(entry.data.end <= bytes.len());
                end = entry.data.end;
                if let Ok((name, kind)) = entry.check() {
                    prop_assert!(name_allowed(name));
                    match kind {
                        batch::EntryKind::File { size, meta, .. } => {
                            prop_assert_eq!(size as usize, entry.data.len());
                            prop_assert!(!meta.size_is_hint && meta.mode.is_none_or(|m| m <= 0o777));
                        }
                        batch::EntryKind::Dir { mode } | batch::EntryKind::Stage { mode } => {
                            prop_assert!(mode <= 0o777 && entry.data.is_empty());
                        }
                        batch::EntryKind::Commit { .. } => prop_assert!(entry.data.is_empty()),
                    }
                }
            }
        }
    }
}
