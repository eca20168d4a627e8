//! File names as people see them: control characters (newline, ESC, ...) escaped in
//! every human-readable line, so a name can never break a log line or drive a
//! terminal. JSON output carries names exactly.

use std::borrow::Cow;

/// `name` with each control character replaced by its escape (`\n`, `\u{1b}`) and
/// each backslash doubled only when something else needed escaping.
pub fn escaped(name: &str) -> Cow<'_, str> {
    if !name.chars().any(char::is_control) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_names_untouched() {
        assert_eq!(escaped("plain Время.txt"), "plain Время.txt");
        assert_eq!(escaped("a\nb"), "a\\nb");
        assert_eq!(escaped("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escaped("back\\slash\tx"), "back\\\\slash\\tx");
        assert!(matches!(escaped("no escapes"), Cow::Borrowed(_)));
    }
}
