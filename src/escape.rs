//! File names as people see them: control characters (newline, ESC, ...) and
//! characters that reorder or hide text (U+202E, ...) escaped in
//! every human-readable line, so a name can never break a log line or drive a
//! terminal; backslashes doubled, so two different names never look the same; bytes
//! that are not UTF-8 shown as `\xNN`. JSON output carries names exactly.

use std::borrow::Cow;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `name` with each control character replaced by its escape (`\n`, `\u{1b}`) and
/// each backslash doubled; borrowed when nothing needed escaping.
pub fn escaped(name: &str) -> Cow<'_, str> {
    if !name.chars().any(needs_escape) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    push_escaped(&mut out, name);
    Cow::Owned(out)
}

/// A message a peer wrote (names in it already escaped on its side): control and
/// invisible characters escaped as in `escaped`, backslashes kept as they are, so
/// the peer's escapes read the same and it cannot drive the terminal.
pub fn printable(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c != '\\' && needs_escape(c);
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Control characters, backslashes, and the invisible characters that reorder or
/// hide text on screen (bidirectional overrides and isolates, marks, zero-width
/// space, word joiners, line and paragraph separators, BOM, soft hyphen, blank
/// Hangul fillers, tag characters): a name holding U+202E can show as
/// `txt.exe` while being `exe.txt`. Zero-width (non-)joiners stay, as emoji
/// sequences and Persian words need them.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c,
            '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{180e}' | '\u{200b}'
            | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}'
            | '\u{3164}' | '\u{feff}' | '\u{ffa0}' | '\u{fff9}'..='\u{fffb}' | '\u{e0000}'..='\u{e007f}')
}

fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

/// A path for messages: as `escaped`, with each byte that is not UTF-8 as `\xNN`.
pub fn escaped_path(path: &Path) -> String {
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        push_escaped(&mut out, chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// `bytes` in base64 (RFC 4648, with padding): how JSON output carries a name
/// that is not UTF-8, exactly.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let word = group.iter().enumerate().fold(0u32, |word, (at, &b)| word | u32::from(b) << (16 - 8 * at));
        for at in 0..4 {
            match at <= group.len() {
                true => out.push(char::from(ALPHABET[(word >> (18 - 6 * at)) as usize & 63])),
                false => out.push('='),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn control_characters_are_escaped_and_plain_names_untouched() {
        assert_eq!(escaped("plain Время.txt"), "plain Время.txt");
        assert_eq!(escaped("a\nb"), "a\\nb");
        assert_eq!(escaped("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert!(matches!(escaped("no escapes"), Cow::Borrowed(_)));
    }

    #[test]
    fn characters_that_reorder_or_hide_text_are_escaped() {
        assert_eq!(escaped("nu/\u{202e}txt.exe"), "nu/\\u{202e}txt.exe");
        assert_eq!(escaped("a\u{200b}b\u{feff}"), "a\\u{200b}b\\u{feff}");
        assert_eq!(escaped("\u{2067}x\u{2069}"), "\\u{2067}x\\u{2069}");
        assert_eq!(escaped("a\u{2028}b\u{3164}\u{e0041}"), "a\\u{2028}b\\u{3164}\\u{e0041}");
        // Joiners in emoji and Persian words are kept.
        let family = "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}.jpg";
        assert!(matches!(escaped(family), Cow::Borrowed(_)));
        assert!(matches!(escaped("\u{645}\u{200c}\u{6cc}.txt"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_backslash_never_makes_two_names_look_alike() {
        assert_eq!(escaped("lit\\nx"), "lit\\\\nx");
        assert_ne!(escaped("lit\\nx"), escaped("lit\nx"));
    }

    #[test]
    fn a_peers_message_keeps_its_escapes_and_loses_its_control_characters() {
        assert_eq!(printable("a\\nb (already escaped)"), "a\\nb (already escaped)");
        assert_eq!(printable("\u{1b}[2J\u{1b}]0;PWNED\u{7}evil"), "\\u{1b}[2J\\u{1b}]0;PWNED\\u{7}evil");
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        let vectors = [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")];
        for (plain, encoded) in vectors.into_iter().chain([("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]) {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
        assert_eq!(base64(b"caf\xe9\xff"), "Y2Fm6f8=");
    }

    #[test]
    fn bytes_that_are_not_utf8_show_as_hex() {
        let path = Path::new(OsStr::from_bytes(b"dir/bad\xff\xfe\n.txt"));
        assert_eq!(escaped_path(path), "dir/bad\\xff\\xfe\\n.txt");
    }
}
