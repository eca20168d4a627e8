//! XML with positions, the generic half of the options.xml parser: 1-based line
//! and column of a byte offset, attributes with the offsets of their names, open
//! tags, and the small text helpers error messages need. quick-xml's serde errors
//! carry no position, so the parser works on `quick_xml::Reader` events and uses
//! these to say where each problem is. Nothing here knows the options.xml rules.

use std::borrow::Cow;

use quick_xml::events::BytesStart;

/// 1-based line and column of byte `offset` in `text`. Columns count characters
/// (UTF-8 continuation bytes are skipped) so they match what an editor shows.
pub(super) fn line_col(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |newline| newline + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before[line_start..].iter().filter(|&&b| b & 0xC0 != 0x80).count() + 1;
    (line, column)
}

/// An element whose end tag has not been seen yet.
pub(super) struct OpenTag {
    pub(super) name: String,
    pub(super) offset: usize,
}

/// One attribute, unescaped, with the byte offset of its name in the document.
/// `name` is the allowed name it matched; `value` borrows from the document
/// unless it had entities to unescape.
pub(super) struct Attr<'a> {
    pub(super) name: &'static str,
    pub(super) value: Cow<'a, str>,
    pub(super) offset: usize,
}

pub(super) fn find<'v, 'a>(attrs: &'v [Attr<'a>], name: &str) -> Option<&'v Attr<'a>> {
    attrs.iter().find(|attr| attr.name == name)
}

pub(super) fn name_of(tag: &BytesStart) -> String {
    String::from_utf8_lossy(tag.name().as_ref()).into_owned()
}

/// Byte offset of `inner` within `outer`. Attribute keys borrow from the tag's
/// buffer, so this locates an attribute without re-scanning the tag.
pub(super) fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    let diff = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
    if diff <= outer.len() {
        diff
    } else {
        0
    }
}

/// Namespace declarations and `xml:*` belong to XML itself, not to this format,
/// so they are not typos and are let through.
pub(super) fn is_reserved_attribute(name: &str) -> bool {
    name == "xmlns" || name.starts_with("xmlns:") || name.starts_with("xml:")
}

pub(super) fn to_offset(position: u64) -> usize {
    usize::try_from(position).unwrap_or(usize::MAX)
}

/// First line of some stray text, shortened for an error message.
pub(super) fn snippet(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let first = text.trim().lines().next().unwrap_or("");
    let short: String = first.chars().take(30).collect();
    if short.len() < first.len() {
        format!("{short}...")
    } else {
        short
    }
}
