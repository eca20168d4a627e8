//! Parser for `options.xml`, the configuration shared by the server and the clients.
//!
//! The format is the original tool's, unchanged:
//!
//! ```xml
//! <?xml version="1.0" encoding="utf-8" standalone="yes" ?>
//! <streams>
//!   <server outputpath="/tmp/dst" />
//!   <stream id="1" file="samples/a.bin" />
//! </streams>
//! ```
//!
//! `<server>` is optional (at most one) and so is its `outputpath`; there may be any
//! number of `<stream>` elements, each with a whole-number `id` and a `file`.
//!
//! Invariants of a [`Config`] returned by this module:
//! - stream ids are unique, and every stream has a non-empty file path;
//! - every path (stream files and the output path) is already resolved against the
//!   folder that holds the options file, so callers never resolve again;
//! - the document was well-formed XML with a single `<streams>` root.
//!
//! Every error names the file, a 1-based `line:column` (columns count characters, not
//! bytes) and the problem, and says how to fix it. quick-xml's serde errors carry no
//! position, so the whole parse runs on `quick_xml::Reader` events instead. The parser
//! is strict on purpose: an unknown element or attribute is an error, because a typo
//! such as `fiel="..."` would otherwise silently drop a stream.

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use quick_xml::errors::{IllFormedError, SyntaxError};
use quick_xml::escape::EscapeError;
use quick_xml::events::attributes::AttrError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

mod xml;

use xml::{find, is_reserved_attribute, line_col, name_of, offset_in, snippet, to_offset, Attr, OpenTag};

/// File name the programs look for when no options file is given.
pub const DEFAULT_CONFIG: &str = "options.xml";

/// Identifier of a stream, as written in `<stream id="...">`.
pub type StreamId = u64;

/// A parsed and validated options file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The options file path as given (or `<string>` when parsed from memory).
    pub source: PathBuf,
    /// `<server outputpath>`, resolved against the options file's folder.
    pub output_path: Option<PathBuf>,
    /// Stream id to file, each path resolved against the options file's folder.
    pub streams: BTreeMap<StreamId, PathBuf>,
}

/// Why an options file could not be used.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read at all.
    Io {
        /// The options file, as given.
        path: PathBuf,
        /// The error reading it.
        source: std::io::Error,
    },
    /// The text is not well-formed XML (or not UTF-8).
    Xml {
        /// The options file, as given.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem, in characters.
        column: usize,
        /// What is wrong, for people.
        message: String,
    },
    /// Well-formed XML that does not describe a valid configuration.
    Invalid {
        /// The options file, as given.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem, in characters.
        column: usize,
        /// What is wrong, for people.
        message: String,
    },
    /// Ids asked for (e.g. on the command line) that the file does not define.
    UnknownIds {
        /// The options file, as given.
        path: PathBuf,
        /// The unknown ids, in the order asked, each once.
        ids: Vec<StreamId>,
        /// Every id the file defines, ascending.
        known: Vec<StreamId>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => {
                write!(f, "cannot read options file {}: {source}", path.display())
            }
            Self::Xml { path, line, column, message } => {
                write!(f, "{}:{line}:{column}: malformed XML: {message}", path.display())
            }
            Self::Invalid { path, line, column, message } => {
                write!(f, "{}:{line}:{column}: {message}", path.display())
            }
            Self::UnknownIds { path, ids, known } => {
                let plural = if ids.len() == 1 { "" } else { "s" };
                write!(f, "{}: unknown stream id{plural} {}", path.display(), join_ids(ids))?;
                if known.is_empty() {
                    write!(f, " (no streams are defined)")
                } else {
                    write!(f, " (known ids: {})", join_ids(known))
                }
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn join_ids(ids: &[StreamId]) -> String {
    let text: Vec<String> = ids.iter().map(u64::to_string).collect();
    text.join(", ")
}

impl Config {
    /// Reads and parses `path`; relative paths inside resolve against its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes =
            std::fs::read(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let text = String::from_utf8(bytes).map_err(|err| {
            // Point at the first bad byte: usually a file saved in a legacy code page.
            let (line, column) = line_col(err.as_bytes(), err.utf8_error().valid_up_to());
            ConfigError::Xml {
                path: path.to_path_buf(),
                line,
                column,
                message: "the file is not valid UTF-8: save it with UTF-8 encoding".into(),
            }
        })?;
        // `Path::parent("options.xml")` is `Some("")`; joining onto "" would keep paths
        // relative to the process's working directory only by accident, so say ".".
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        Self::from_xml_str(&text, path, base_dir)
    }

    /// Parses options XML held in memory. `source` names it in errors; relative
    /// paths resolve against `base_dir`.
    pub fn from_xml_str(xml: &str, source: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
        // A byte-order mark is invisible to the user, so drop it before columns are counted.
        let text = xml.strip_prefix('\u{feff}').unwrap_or(xml);
        Parser::new(Doc { text, source, base_dir }).run()
    }

    /// The resolved file of stream `id`, if the file defines it.
    pub fn stream_file(&self, id: StreamId) -> Option<&Path> {
        self.streams.get(&id).map(PathBuf::as_path)
    }
}

/// The text being parsed and what errors need to name it.
struct Doc<'a> {
    text: &'a str,
    source: &'a Path,
    base_dir: &'a Path,
}

impl Doc<'_> {
    /// `value` resolved against the options file's folder, as `Path::components`
    /// reads it: `./a.bin` beside an options.xml in the current folder is
    /// `./a.bin` in messages, not `././a.bin`.
    fn resolve(&self, value: &str) -> PathBuf {
        self.base_dir.join(value).components().collect()
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(self.text.as_bytes(), offset)
    }

    fn malformed(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.line_col(offset);
        ConfigError::Xml { path: self.source.to_path_buf(), line, column, message: message.into() }
    }

    fn invalid(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.line_col(offset);
        ConfigError::Invalid { path: self.source.to_path_buf(), line, column, message: message.into() }
    }
}

/// Event-driven parse of one document; see the module docs for the rules.
struct Parser<'a> {
    doc: Doc<'a>,
    open: Vec<OpenTag>,
    root_seen: bool,
    server_offset: Option<usize>,
    output_path: Option<PathBuf>,
    /// Each stream's file, and where its id was defined (to name both places
    /// on a duplicate).
    streams: BTreeMap<StreamId, (PathBuf, usize)>,
}

impl<'a> Parser<'a> {
    fn new(doc: Doc<'a>) -> Self {
        Parser {
            doc,
            open: Vec::new(),
            root_seen: false,
            server_offset: None,
            output_path: None,
            streams: BTreeMap::new(),
        }
    }

    fn run(mut self) -> Result<Config, ConfigError> {
        let mut reader = Reader::from_str(self.doc.text);
        // The default already, but stated: a mismatched end tag must be an error.
        // Text is not trimmed so that the position before each read is the event's start.
        reader.config_mut().check_end_names = true;
        loop {
            let offset = to_offset(reader.buffer_position());
            let event = match reader.read_event() {
                Ok(event) => event,
                Err(err) => return Err(self.reader_error(&reader, &err)),
            };
            match event {
                Event::Start(tag) => {
                    self.element(&tag, offset)?;
                    let name = name_of(&tag);
                    self.open.push(OpenTag { name, offset });
                }
                Event::Empty(tag) => self.element(&tag, offset)?,
                Event::End(_) => {
                    // quick-xml has already checked that this closes the innermost tag.
                    self.open.pop();
                }
                Event::Text(text) => self.text(&text, offset)?,
                Event::CData(data) => self.text(&data, offset)?,
                Event::Eof => return self.finish(),
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
    }

    /// Turns a quick-xml error into one with a position and, where we can, a fix.
    fn reader_error(&self, reader: &Reader<&[u8]>, err: &quick_xml::Error) -> ConfigError {
        let offset = to_offset(reader.error_position());
        let message = match err {
            quick_xml::Error::IllFormed(IllFormedError::MismatchedEndTag { expected, found }) => {
                let opened = self.open.last().map_or(0, |tag| tag.offset);
                let (line, column) = self.doc.line_col(opened);
                format!(
                    "found </{found}> but <{expected}> (opened at line {line}, column {column}) \
                     is still open: close it first with </{expected}> (or write it as \
                     <{expected} ... />), or remove the stray </{found}>"
                )
            }
            quick_xml::Error::IllFormed(IllFormedError::UnmatchedEndTag(found)) => format!(
                "</{found}> closes nothing: there is no open <{found}>; remove it or add <{found}> before it"
            ),
            quick_xml::Error::Syntax(SyntaxError::UnclosedTag) => {
                "tag is not closed: no `>` before the end of the file; end it with `>` or `/>`".to_string()
            }
            other => other.to_string(),
        };
        self.doc.malformed(offset, message)
    }

    fn finish(self) -> Result<Config, ConfigError> {
        // Report the innermost unclosed tag: that is where a close tag was forgotten.
        if let Some(tag) = self.open.last() {
            let name = &tag.name;
            return Err(self.doc.malformed(
                tag.offset,
                format!(
                    "<{name}> is never closed (the file ends first): add </{name}>, or write it as <{name} ... />"
                ),
            ));
        }
        if !self.root_seen {
            return Err(self.doc.invalid(
                self.doc.text.len(),
                "no <streams> element found: the file must contain <streams> ... </streams>",
            ));
        }
        Ok(Config {
            source: self.doc.source.to_path_buf(),
            output_path: self.output_path,
            streams: self.streams.into_iter().map(|(id, (file, _))| (id, file)).collect(),
        })
    }

    /// Whitespace between elements is fine; any other text is a mistake.
    fn text(&self, raw: &[u8], offset: usize) -> Result<(), ConfigError> {
        let Some(first) = raw.iter().position(|b| !b.is_ascii_whitespace()) else {
            return Ok(());
        };
        let at = offset + first;
        let stray = snippet(raw);
        match self.open.last() {
            None => Err(self
                .doc
                .malformed(at, format!("text \"{stray}\" outside the <streams> element: remove it"))),
            Some(parent) => Err(self.doc.invalid(
                at,
                format!(
                    "unexpected text \"{stray}\" inside <{}>: values go in attributes, \
                     e.g. <stream id=\"1\" file=\"a.bin\" />",
                    parent.name
                ),
            )),
        }
    }

    /// Dispatches a start or empty tag by its depth in the document.
    fn element(&mut self, tag: &BytesStart, offset: usize) -> Result<(), ConfigError> {
        match self.open.len() {
            0 => self.root(tag, &name_of(tag), offset),
            1 => match tag.name().as_ref() {
                b"stream" => self.stream(tag, offset),
                b"server" => self.server(tag, offset),
                _ => Err(self.doc.invalid(
                    offset,
                    format!(
                        "unknown element <{}> inside <streams>: only <server> and <stream> \
                         are allowed (check the spelling)",
                        name_of(tag)
                    ),
                )),
            },
            _ => {
                let name = name_of(tag);
                let parent = &self.open[self.open.len() - 1].name;
                Err(self.doc.invalid(
                    offset,
                    format!(
                        "unexpected element <{name}> inside <{parent}>: <{parent}> takes no \
                         child elements; move it directly under <streams>"
                    ),
                ))
            }
        }
    }

    fn root(&mut self, tag: &BytesStart, name: &str, offset: usize) -> Result<(), ConfigError> {
        if self.root_seen {
            return Err(self.doc.malformed(
                offset,
                format!(
                    "element <{name}> after </streams>: an XML file has exactly one root \
                     element; move it inside <streams>"
                ),
            ));
        }
        if name != "streams" {
            return Err(self.doc.invalid(
                offset,
                format!(
                    "root element must be <streams>, found <{name}>: wrap the <stream> \
                     elements in <streams> ... </streams>"
                ),
            ));
        }
        self.root_seen = true;
        self.attributes(tag, offset, &[]).map(drop)
    }

    fn server(&mut self, tag: &BytesStart, offset: usize) -> Result<(), ConfigError> {
        if let Some(first) = self.server_offset {
            let (line, _) = self.doc.line_col(first);
            return Err(self.doc.invalid(
                offset,
                format!(
                    "more than one <server> element (the first is at line {line}): keep a single <server>"
                ),
            ));
        }
        self.server_offset = Some(offset);
        let attrs = self.attributes(tag, offset, &["outputpath"])?;
        if let Some(attr) = find(&attrs, "outputpath") {
            if attr.value.trim().is_empty() {
                return Err(self.doc.invalid(
                    attr.offset,
                    "<server> has an empty outputpath attribute: remove it or name a folder, \
                     e.g. outputpath=\"/tmp/dst\"",
                ));
            }
            self.output_path = Some(self.doc.resolve(&attr.value));
        }
        Ok(())
    }

    fn stream(&mut self, tag: &BytesStart, offset: usize) -> Result<(), ConfigError> {
        let attrs = self.attributes(tag, offset, &["id", "file"])?;
        let Some(id_attr) = find(&attrs, "id") else {
            return Err(self.doc.invalid(
                offset,
                "<stream> has no id attribute: add id=\"N\" with a number no other stream uses",
            ));
        };
        let id = self.parse_id(id_attr)?;
        let slot = match self.streams.entry(id) {
            Entry::Occupied(first) => {
                let (line, _) = self.doc.line_col(first.get().1);
                return Err(self.doc.invalid(
                    id_attr.offset,
                    format!(
                        "duplicate stream id {id} (first defined at line {line}): give each <stream> its own id"
                    ),
                ));
            }
            Entry::Vacant(slot) => slot,
        };
        let file = match find(&attrs, "file") {
            None => {
                return Err(self.doc.invalid(
                    offset,
                    format!("<stream id=\"{id}\"> has no file attribute: add file=\"path/to/file\""),
                ))
            }
            Some(attr) if attr.value.trim().is_empty() => {
                return Err(self.doc.invalid(
                    attr.offset,
                    format!(
                        "<stream id=\"{id}\"> has an empty file attribute: give a path, \
                         e.g. file=\"samples/a.bin\""
                    ),
                ))
            }
            Some(attr) => &attr.value,
        };
        slot.insert((self.doc.resolve(file), offset));
        Ok(())
    }

    fn parse_id(&self, attr: &Attr) -> Result<StreamId, ConfigError> {
        let text = attr.value.trim();
        // `u64::from_str` accepts a leading '+'; the format does not, so check digits first.
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.doc.invalid(
                attr.offset,
                format!("stream id \"{}\" is not a number: ids are whole numbers like id=\"1\"", attr.value),
            ));
        }
        text.parse().map_err(|_| {
            self.doc.invalid(
                attr.offset,
                format!("stream id \"{text}\" is too large: ids must be at most {}", u64::MAX),
            )
        })
    }

    /// Reads a tag's attributes, unescaped, rejecting any name not in `allowed`.
    fn attributes<'t>(
        &self,
        tag: &'t BytesStart,
        offset: usize,
        allowed: &[&'static str],
    ) -> Result<Vec<Attr<'t>>, ConfigError> {
        // Attribute positions are relative to the byte after '<'.
        let inside = offset + 1;
        let mut found = Vec::with_capacity(allowed.len());
        for attr in tag.attributes() {
            let attr = attr.map_err(|err| self.attribute_syntax_error(&err, inside))?;
            let key = attr.key.as_ref();
            let at = inside + offset_in(tag, key);
            let Some(&name) = allowed.iter().find(|name| name.as_bytes() == key) else {
                let name = String::from_utf8_lossy(key);
                if is_reserved_attribute(&name) {
                    continue;
                }
                return Err(self.unknown_attribute(tag, &name, at, allowed));
            };
            let value_at = inside + offset_in(tag, &attr.value);
            if let Some(lt) = attr.value.iter().position(|&b| b == b'<') {
                let message = format!("< in the value of attribute {name}: write it as &lt;");
                return Err(self.doc.malformed(value_at + lt, message));
            }
            let value = if attr.value.iter().any(|b| matches!(b, b'\t' | b'\n' | b'\r')) {
                // XML's attribute-value normalization: a literal tab or line end
                // (CRLF counts once) reads as a space; &#10; and the like stay.
                let raw = String::from_utf8_lossy(&attr.value)
                    .replace("\r\n", " ")
                    .replace(['\t', '\n', '\r'], " ");
                let value = quick_xml::escape::unescape(&raw)
                    .map_err(|err| self.escape_error(&quick_xml::Error::Escape(err), name, value_at))?;
                Cow::Owned(value.into_owned())
            } else {
                attr.unescape_value().map_err(|err| self.escape_error(&err, name, value_at))?
            };
            found.push(Attr { name, value, offset: at });
        }
        Ok(found)
    }

    /// Rewords a bad `&...;` reference and points at its `&`, since quick-xml's
    /// message gives only a range inside the value.
    fn escape_error(&self, err: &quick_xml::Error, name: &str, value_at: usize) -> ConfigError {
        let (at, problem) = match err {
            // The range covers the name after '&'; step back to point at the '&'.
            quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(range, entity)) => (
                value_at + range.start.saturating_sub(1),
                format!("unknown entity &{entity}; in attribute {name}"),
            ),
            quick_xml::Error::Escape(EscapeError::UnterminatedEntity(range)) => {
                (value_at + range.start, format!("& without a closing ; in attribute {name}"))
            }
            other => (value_at, format!("bad value for attribute {name}: {other}")),
        };
        self.doc.malformed(
            at,
            format!("{problem}: write a literal & as &amp; (also &lt; &gt; &quot; &apos; work)"),
        )
    }

    fn unknown_attribute(&self, tag: &BytesStart, name: &str, at: usize, allowed: &[&str]) -> ConfigError {
        let element = name_of(tag);
        let fix = if allowed.is_empty() {
            format!("<{element}> takes no attributes; remove it")
        } else {
            format!("allowed attributes are {}", allowed.join(", "))
        };
        self.doc.invalid(at, format!("unknown attribute \"{name}\" on <{element}>: {fix}"))
    }

    fn attribute_syntax_error(&self, err: &AttrError, inside: usize) -> ConfigError {
        let (at, message) = match *err {
            AttrError::ExpectedEq(pos) => {
                (pos, "attribute name must be followed by = and a quoted value, like id=\"1\"".into())
            }
            AttrError::ExpectedValue(pos) => {
                (pos, "= must be followed by a quoted value, like id=\"1\"".into())
            }
            AttrError::UnquotedValue(pos) => (pos, "attribute value must be in quotes, like id=\"1\"".into()),
            AttrError::ExpectedQuote(pos, quote) => {
                (pos, format!("attribute value has no closing {}: add the missing quote", quote as char))
            }
            AttrError::Duplicated(pos, previous) => {
                let (line, column) = self.doc.line_col(inside + previous);
                (pos, format!("attribute given twice (first at line {line}, column {column}): keep only one"))
            }
        };
        self.doc.malformed(inside + at, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = r#"<?xml version="1.0" encoding="utf-8" standalone="yes" ?>
<streams>
  <server outputpath="/tmp/dst" />
  <stream id="1" file="samples/a.bin" />
  <stream id="2" file="samples/Тяжелое - наше/02. Свобода.mp3" />
</streams>
"#;

    fn parse(xml: &str) -> Result<Config, ConfigError> {
        Config::from_xml_str(xml, Path::new("options.xml"), Path::new("/base"))
    }

    fn error(xml: &str) -> String {
        match parse(xml) {
            Ok(config) => panic!("expected an error, parsed {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    /// Wraps stream lines in a minimal document; they start on line 2.
    fn doc(body: &str) -> String {
        format!("<streams>\n{body}</streams>\n")
    }

    #[test]
    fn parses_the_documented_example() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(config.source, PathBuf::from("options.xml"));
        assert_eq!(config.output_path, Some(PathBuf::from("/tmp/dst")));
        assert_eq!(config.streams.len(), 2);
        assert_eq!(config.stream_file(1), Some(Path::new("/base/samples/a.bin")));
        assert_eq!(config.stream_file(2), Some(Path::new("/base/samples/Тяжелое - наше/02. Свобода.mp3")));
        assert_eq!(config.stream_file(3), None);
    }

    #[test]
    fn relative_paths_resolve_against_base_dir_and_absolute_paths_stay() {
        let xml = doc(concat!(
            "  <server outputpath=\"out\" />\n",
            "  <stream id=\"1\" file=\"rel/a.bin\" />\n",
            "  <stream id=\"2\" file=\"/abs/b.bin\" />\n",
        ));
        let config = parse(&xml).unwrap();
        assert_eq!(config.output_path, Some(PathBuf::from("/base/out")));
        assert_eq!(config.stream_file(1), Some(Path::new("/base/rel/a.bin")));
        assert_eq!(config.stream_file(2), Some(Path::new("/abs/b.bin")));
    }

    #[test]
    fn paths_are_read_as_their_components() {
        let xml = doc(concat!(
            "  <server outputpath=\"./out/\" />\n",
            "  <stream id=\"1\" file=\"./rel//a.bin\" />\n",
            "  <stream id=\"2\" file=\"../up/./b.bin\" />\n",
        ));
        let config = Config::from_xml_str(&xml, Path::new("options.xml"), Path::new(".")).unwrap();
        assert_eq!(config.output_path, Some(PathBuf::from("./out")));
        assert_eq!(config.stream_file(1).map(Path::as_os_str), Some(std::ffi::OsStr::new("./rel/a.bin")));
        assert_eq!(config.stream_file(2).map(Path::as_os_str), Some(std::ffi::OsStr::new("./../up/b.bin")));
    }

    #[test]
    fn non_ascii_spaces_and_entities_survive() {
        let xml = doc("  <stream id=\" 7 \" file=\"Тяжелое &amp; наше/02 &#x41;&lt;b&gt;.mp3\" />\n");
        let config = parse(&xml).unwrap();
        assert_eq!(config.stream_file(7), Some(Path::new("/base/Тяжелое & наше/02 A<b>.mp3")));
    }

    #[test]
    fn attribute_values_are_normalized_as_xml_says_and_a_raw_lt_is_refused() {
        let xml = doc("  <stream id=\"1\" file=\"a\r\nb\tc\nd&#10;e\" />\n");
        let config = parse(&xml).unwrap();
        assert_eq!(config.stream_file(1), Some(Path::new("/base/a b c d\ne")));
        let message = error(&doc("  <stream id=\"1\" file=\"a<b\" />\n"));
        assert!(message.contains("options.xml:2:") && message.contains("write it as &lt;"), "{message}");
        let message = error(&doc("  <stream id=\"1\" file=\"a\nb&bogus;\" />\n"));
        assert!(message.contains("unknown entity &bogus;"), "{message}");
    }

    #[test]
    fn server_element_is_optional() {
        let config = parse(&doc("  <stream id=\"1\" file=\"a\"></stream>\n")).unwrap();
        assert_eq!(config.output_path, None);
        assert_eq!(config.stream_file(1), Some(Path::new("/base/a")));
        let empty = parse("<streams/>").unwrap();
        assert!(empty.streams.is_empty());
    }

    #[test]
    fn tag_cut_off_by_end_of_file_reports_its_line_and_column() {
        let xml = "<streams>\n  <server />\n  <stream id=\"1\" file=\"a.bin\"\n";
        assert_eq!(
            error(xml),
            "options.xml:3:3: malformed XML: tag is not closed: no `>` before the end of \
             the file; end it with `>` or `/>`"
        );
    }

    #[test]
    fn unclosed_tag_before_parent_end_names_both_places() {
        let xml = "<streams>\n  <server />\n  <stream id=\"1\" file=\"a.bin\">\n</streams>\n";
        assert_eq!(
            error(xml),
            "options.xml:4:1: malformed XML: found </streams> but <stream> (opened at line 3, \
             column 3) is still open: close it first with </stream> (or write it as <stream ... />), or \
             remove the stray </streams>"
        );
    }

    #[test]
    fn unclosed_root_at_end_of_file_is_an_error() {
        let xml = "<streams>\n  <stream id=\"1\" file=\"a\" />\n";
        assert_eq!(
            error(xml),
            "options.xml:1:1: malformed XML: <streams> is never closed (the file ends first): \
             add </streams>, or write it as <streams ... />"
        );
    }

    #[test]
    fn end_tag_without_start_is_an_error() {
        let xml = "<streams>\n  </stream>\n</streams>\n";
        assert_eq!(
            error(xml),
            "options.xml:2:3: malformed XML: found </stream> but <streams> (opened at line 1, \
             column 1) is still open: close it first with </streams> (or write it as <streams ... />), or \
             remove the stray </stream>"
        );
        assert_eq!(
            error("<streams/>\n</streams>"),
            "options.xml:2:1: malformed XML: </streams> closes nothing: there is no open \
             <streams>; remove it or add <streams> before it"
        );
    }

    #[test]
    fn attribute_syntax_errors_point_at_the_attribute() {
        assert_eq!(
            error(&doc("  <stream id=1 file=\"a\" />\n")),
            "options.xml:2:14: malformed XML: attribute value must be in quotes, like id=\"1\""
        );
        assert_eq!(
            error(&doc("  <stream id=\"1\" id=\"2\" file=\"a\" />\n")),
            "options.xml:2:18: malformed XML: attribute given twice (first at line 2, column 11): \
             keep only one"
        );
        assert_eq!(
            error(&doc("  <stream id=\"1\" file=\"a&b;\" />\n")),
            "options.xml:2:25: malformed XML: unknown entity &b; in attribute file: write a \
             literal & as &amp; (also &lt; &gt; &quot; &apos; work)"
        );
        assert_eq!(
            error(&doc("  <stream id=\"1\" file=\"R&D\" />\n")),
            "options.xml:2:25: malformed XML: & without a closing ; in attribute file: write a \
             literal & as &amp; (also &lt; &gt; &quot; &apos; work)"
        );
        assert_eq!(
            error(&doc("  <stream id=\"1\" file=\"&#xZZ;\" />\n")),
            "options.xml:2:24: malformed XML: bad value for attribute file: invalid character \
             reference: invalid digit found in string: write a literal & as &amp; (also &lt; \
             &gt; &quot; &apos; work)"
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let xml = doc("  <stream id=\"1\" file=\"Свобода\" /><bogus/>\n");
        assert_eq!(
            error(&xml),
            "options.xml:2:35: unknown element <bogus> inside <streams>: only <server> and \
             <stream> are allowed (check the spelling)"
        );
    }

    #[test]
    fn duplicate_id_names_both_lines() {
        let xml = doc("  <stream id=\"2\" file=\"a\" />\n  <stream id=\"1\" file=\"b\" />\n  <stream id=\"2\" file=\"c\" />\n");
        assert_eq!(
            error(&xml),
            "options.xml:4:11: duplicate stream id 2 (first defined at line 2): give each \
             <stream> its own id"
        );
    }

    #[test]
    fn non_numeric_signed_and_oversized_ids_are_rejected() {
        assert_eq!(
            error(&doc("  <stream id=\"abc\" file=\"a\" />\n")),
            "options.xml:2:11: stream id \"abc\" is not a number: ids are whole numbers like id=\"1\""
        );
        assert_eq!(
            error(&doc("  <stream id=\"+1\" file=\"a\" />\n")),
            "options.xml:2:11: stream id \"+1\" is not a number: ids are whole numbers like id=\"1\""
        );
        assert_eq!(
            error(&doc("  <stream id=\"-1\" file=\"a\" />\n")),
            "options.xml:2:11: stream id \"-1\" is not a number: ids are whole numbers like id=\"1\""
        );
        assert_eq!(
            error(&doc("  <stream id=\"18446744073709551616\" file=\"a\" />\n")),
            "options.xml:2:11: stream id \"18446744073709551616\" is too large: ids must be at \
             most 18446744073709551615"
        );
    }

    #[test]
    fn stream_without_file_or_with_empty_file_says_how_to_fix() {
        assert_eq!(
            error(&doc("  <stream id=\"3\" />\n")),
            "options.xml:2:3: <stream id=\"3\"> has no file attribute: add file=\"path/to/file\""
        );
        assert_eq!(
            error(&doc("  <stream id=\"3\" file=\"\" />\n")),
            "options.xml:2:18: <stream id=\"3\"> has an empty file attribute: give a path, \
             e.g. file=\"samples/a.bin\""
        );
    }

    #[test]
    fn stream_without_id_says_how_to_fix() {
        assert_eq!(
            error(&doc("  <stream file=\"a\" />\n")),
            "options.xml:2:3: <stream> has no id attribute: add id=\"N\" with a number no other \
             stream uses"
        );
    }

    #[test]
    fn unknown_element_and_attribute_are_named() {
        assert_eq!(
            error(&doc("  <strem id=\"1\" file=\"a\" />\n")),
            "options.xml:2:3: unknown element <strem> inside <streams>: only <server> and \
             <stream> are allowed (check the spelling)"
        );
        assert_eq!(
            error(&doc("  <stream id=\"1\" fiel=\"a\" />\n")),
            "options.xml:2:18: unknown attribute \"fiel\" on <stream>: allowed attributes are id, file"
        );
        assert_eq!(
            error("<streams version=\"2\" />"),
            "options.xml:1:10: unknown attribute \"version\" on <streams>: <streams> takes no \
             attributes; remove it"
        );
        assert_eq!(
            error(&doc("  <stream id=\"1\" file=\"a\"><x/></stream>\n")),
            "options.xml:2:27: unexpected element <x> inside <stream>: <stream> takes no child \
             elements; move it directly under <streams>"
        );
    }

    #[test]
    fn wrong_root_second_server_and_stray_text_are_rejected() {
        assert_eq!(
            error("<?xml version=\"1.0\"?>\n<foo/>"),
            "options.xml:2:1: root element must be <streams>, found <foo>: wrap the <stream> \
             elements in <streams> ... </streams>"
        );
        assert_eq!(
            error(&doc("  <server />\n  <server outputpath=\"x\" />\n")),
            "options.xml:3:3: more than one <server> element (the first is at line 2): keep a \
             single <server>"
        );
        assert_eq!(
            error(&doc("  oops\n")),
            "options.xml:2:3: unexpected text \"oops\" inside <streams>: values go in \
             attributes, e.g. <stream id=\"1\" file=\"a.bin\" />"
        );
        assert_eq!(
            error("<streams/>\n<streams/>"),
            "options.xml:2:1: malformed XML: element <streams> after </streams>: an XML file \
             has exactly one root element; move it inside <streams>"
        );
        assert_eq!(
            error("<!-- nothing -->\n"),
            "options.xml:2:1: no <streams> element found: the file must contain <streams> ... </streams>"
        );
    }

    #[test]
    fn byte_order_mark_and_comments_are_accepted() {
        let xml = format!("\u{feff}<!-- c -->{}", doc("  <!-- off -->\n  <stream id=\"1\" file=\"a\" />\n"));
        assert_eq!(parse(&xml).unwrap().stream_file(1), Some(Path::new("/base/a")));
    }

    #[test]
    fn load_of_a_missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.xml");
        let err = Config::load(&path).unwrap_err();
        assert!(matches!(&err, ConfigError::Io { path: p, .. } if *p == path));
        let expected = format!("cannot read options file {}: ", path.display());
        let message = err.to_string();
        assert!(message.starts_with(&expected), "{message}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn load_resolves_against_the_options_file_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_CONFIG);
        std::fs::write(&path, EXAMPLE).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.source, path);
        assert_eq!(config.stream_file(1), Some(dir.path().join("samples/a.bin").as_path()));
        assert_eq!(config.output_path, Some(PathBuf::from("/tmp/dst")));
    }

    #[test]
    fn load_reports_where_the_file_stops_being_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_CONFIG);
        // "Свобода" in windows-1251, as a legacy editor would save it.
        let mut bytes = b"<streams>\n  <stream id=\"1\" file=\"".to_vec();
        bytes.extend_from_slice(&[0xD1, 0xE2, 0xEE, 0xE1, 0xEE, 0xE4, 0xE0]);
        bytes.extend_from_slice(b"\" />\n</streams>\n");
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(
            Config::load(&path).unwrap_err().to_string(),
            format!(
                "{}:2:24: malformed XML: the file is not valid UTF-8: save it with UTF-8 encoding",
                path.display()
            )
        );
    }

    #[test]
    fn repository_options_xml_parses_and_its_files_exist() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/options.xml"));
        let config = Config::load(path).unwrap_or_else(|err| panic!("{err}"));
        assert!(config.streams.len() >= 3, "{config:?}");
        for (id, file) in &config.streams {
            assert!(file.is_file(), "stream {id}: {} does not exist", file.display());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any id and any escaped file name come back exactly as written.
        #[test]
        fn escaped_file_names_and_ids_round_trip(
            id in any::<u64>(),
            name in "[^\\x00-\\x1f]*[^\\x00-\\x20][^\\x00-\\x1f]*",
        ) {
            let xml = format!(
                "<streams><stream id=\"{id}\" file=\"{}\"/></streams>",
                quick_xml::escape::escape(name.as_str())
            );
            let config = parse(&xml).unwrap();
            let expected = Path::new("/base").join(&name);
            prop_assert_eq!(config.stream_file(id), Some(expected.as_path()));
        }
    }
}
