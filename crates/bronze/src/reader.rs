//! Streaming readers that split a landing file into usable rows and dead-letter lines.
//!
//! Both readers work on physical lines (ended by `\n`, an optional `\r` before it, or the end
//! of the file) and keep the raw bytes of what they could not use, so that a line which cannot
//! be used is stored exactly as it was sent. What they read is accounted for line by line:
//! every line after a CSV header is part of a row, a dead-letter line or a blank line.
//!
//! A CSV record may span lines only inside a quoted value. When such a record cannot be used
//! (its quote is never closed, or the joined lines do not make a valid record), only its first
//! line is dead-lettered ("unclosed quote starting at line N") and reading resumes with the
//! next line, so one stray quote never takes the good lines after it along.
//!
//! No line is held in memory beyond [`MAX_LINE_BYTES`]: a longer line is dead-lettered with
//! its first [`OVERSIZED_PREFIX_BYTES`] bytes and its byte range in the landing file.

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, BufRead};
use std::sync::Arc;

use paylake_contracts::{schema_fingerprint, HeaderMapping, SourceContract};

/// The longest line (or multi-line CSV record) read into memory and kept whole in the dead
/// letter: 1 MiB. A longer line is dead-lettered as a pointer (byte range in the landing file)
/// with its first [`OVERSIZED_PREFIX_BYTES`] bytes.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// How much of a line longer than [`MAX_LINE_BYTES`] the dead letter keeps.
pub const OVERSIZED_PREFIX_BYTES: usize = 1024;

/// The most of any landing-file text (a column name, a JSON key) quoted in a reason, a
/// warning or the file log.
pub const QUOTED_TEXT_BYTES: usize = 200;

/// The longest reason stored in the dead letter or the file log, or printed.
pub const MAX_REASON_BYTES: usize = 2048;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// `text` cut to at most `max` bytes (at a character boundary), saying how long it was.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 && n & ((1 << 20) - 1) == 0 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// One record of a landing file.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Row {
        line: u64,
        /// Values aligned with the contract's columns; `None` when the file lacks the column.
        values: Vec<Option<String>>,
        /// Extra columns as a JSON object, when the record has any.
        rescued: Option<String>,
        fingerprint: Arc<str>,
    },
    Bad {
        line: u64,
        raw: Vec<u8>,
        reason: String,
    },
}

/// Why a whole file cannot land.
#[derive(Debug, Clone, PartialEq)]
pub struct FileProblem {
    pub reason: String,
    pub fingerprint: Option<String>,
    pub added_columns: Vec<String>,
    pub missing_columns: Vec<String>,
}

impl FileProblem {
    pub(crate) fn plain(reason: String) -> Self {
        Self {
            reason,
            fingerprint: None,
            added_columns: vec![],
            missing_columns: vec![],
        }
    }
}

/// What the header of a file says about schema drift.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drift {
    pub added_columns: BTreeSet<String>,
    pub missing_columns: BTreeSet<String>,
}

impl Drift {
    pub(crate) fn record(&mut self, mapping: &HeaderMapping) {
        self.added_columns.extend(
            mapping
                .extra_columns
                .iter()
                .map(|(_, name)| clip(name, QUOTED_TEXT_BYTES)),
        );
        self.missing_columns
            .extend(mapping.missing_optional.iter().cloned());
        self.missing_columns
            .extend(mapping.missing_required.iter().cloned());
    }

    pub fn is_empty(&self) -> bool {
        self.added_columns.is_empty() && self.missing_columns.is_empty()
    }
}

pub(crate) fn header_problem(mapping: &HeaderMapping, header: &[String]) -> FileProblem {
    let added: Vec<String> = mapping
        .extra_columns
        .iter()
        .map(|(_, name)| clip(name, QUOTED_TEXT_BYTES))
        .collect();
    let duplicated: Vec<String> = mapping
        .duplicated
        .iter()
        .map(|name| clip(name, QUOTED_TEXT_BYTES))
        .collect();
    let mut parts = Vec::new();
    if !mapping.missing_required.is_empty() {
        parts.push(format!(
            "missing required column(s): {}",
            mapping.missing_required.join(", ")
        ));
    }
    if !duplicated.is_empty() {
        parts.push(format!(
            "column(s) named more than once: {}",
            duplicated.join(", ")
        ));
    }
    if !added.is_empty() {
        parts.push(format!("unexpected column(s): {}", added.join(", ")));
    }
    FileProblem {
        reason: clip(&parts.join("; "), MAX_REASON_BYTES),
        fingerprint: Some(schema_fingerprint(header.iter().map(String::as_str))),
        added_columns: added,
        missing_columns: mapping.missing_required.clone(),
    }
}

pub(crate) fn rescued_json<'a>(
    extras: impl Iterator<Item = (&'a str, serde_json::Value)>,
) -> Option<String> {
    let map: serde_json::Map<String, serde_json::Value> =
        extras.map(|(k, v)| (k.to_string(), v)).collect();
    (!map.is_empty()).then(|| serde_json::Value::Object(map).to_string())
}

/// One physical line of a landing file.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// 1-based line number.
    pub number: u64,
    /// Byte offset of the line's first byte in the file.
    pub offset: u64,
    /// Length of the whole line in the file, its terminator included.
    pub len: u64,
    /// The line's bytes, terminator included; of an oversized line only the first ones.
    pub bytes: Vec<u8>,
    /// Longer than the reader's limit: `bytes` is only a prefix.
    pub oversized: bool,
}

impl Line {
    /// The line without its terminator (`\n` or `\r\n`).
    pub fn content(&self) -> &[u8] {
        let b = self.bytes.as_slice();
        let b = b.strip_suffix(b"\n").unwrap_or(b);
        if b.len() < self.bytes.len() {
            b.strip_suffix(b"\r").unwrap_or(b)
        } else {
            b
        }
    }

    fn terminator(&self) -> &[u8] {
        &self.bytes[self.content().len()..]
    }

    /// Nothing but spaces, tabs or a line end.
    pub fn is_blank(&self) -> bool {
        !self.oversized && self.bytes.iter().all(u8::is_ascii_whitespace)
    }

    /// The dead-letter reason of a line too long to keep.
    pub fn oversized_reason(&self, limit: usize) -> String {
        format!(
            "line is {} bytes long, over the {} limit: only its first {} bytes are kept here; \
             the whole line is bytes {}..{} of the landing file",
            self.len,
            human_bytes(limit),
            self.bytes.len(),
            self.offset,
            self.offset + self.len
        )
    }
}

/// Splits a file into physical lines without ever holding more than `max_line` bytes of one.
pub struct LineReader<R: BufRead> {
    input: R,
    number: u64,
    offset: u64,
    max_line: usize,
    strip_bom: bool,
}

impl<R: BufRead> LineReader<R> {
    /// `strip_bom`: a UTF-8 byte-order mark before the first line is not part of it.
    pub fn new(input: R, max_line: usize, strip_bom: bool) -> Self {
        Self {
            input,
            number: 0,
            offset: 0,
            max_line: max_line.max(1),
            strip_bom,
        }
    }

    pub fn lines_read(&self) -> u64 {
        self.number
    }

    pub fn next_line(&mut self) -> io::Result<Option<Line>> {
        if self.strip_bom && self.offset == 0 {
            self.strip_bom = false;
            if self.input.fill_buf()?.starts_with(BOM) {
                self.input.consume(BOM.len());
                self.offset = BOM.len() as u64;
            }
        }
        let mut bytes = Vec::new();
        let mut len = 0u64;
        let mut oversized = false;
        loop {
            let buffer = match self.input.fill_buf() {
                Ok(buffer) => buffer,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buffer.is_empty() {
                break;
            }
            let (take, done) = match buffer.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buffer.len(), false),
            };
            if !oversized {
                let room = self.max_line.saturating_sub(bytes.len());
                if take <= room {
                    bytes.extend_from_slice(&buffer[..take]);
                } else {
                    bytes.extend_from_slice(&buffer[..room]);
                    bytes.truncate(OVERSIZED_PREFIX_BYTES);
                    bytes.shrink_to_fit();
                    oversized = true;
                }
            }
            len += take as u64;
            self.input.consume(take);
            if done {
                break;
            }
        }
        let offset = self.offset;
        self.offset += len;
        if len == 0 {
            return Ok(None);
        }
        self.number += 1;
        Ok(Some(Line {
            number: self.number,
            offset,
            len,
            bytes,
            oversized,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted value: closes it, or starts a doubled quote.
    QuoteInQuoted,
}

/// RFC 4180 fields of one record, fed line by line: `,` separates fields, a value starting
/// with `"` runs to the next lone `"` (`""` is a quote) and may span lines; a quote anywhere
/// else is an ordinary character.
struct RecordParser {
    state: QuoteState,
    data: Vec<u8>,
    ends: Vec<usize>,
    /// 1-based byte column, in the line being fed, of the quote that opened the current value.
    open_column: usize,
    quotes: usize,
}

impl RecordParser {
    fn new() -> Self {
        Self {
            state: QuoteState::FieldStart,
            data: Vec::new(),
            ends: Vec::new(),
            open_column: 0,
            quotes: 0,
        }
    }

    fn feed(&mut self, content: &[u8]) {
        for (index, &byte) in content.iter().enumerate() {
            if byte == b'"' {
                self.quotes += 1;
            }
            self.state = match (self.state, byte) {
                (QuoteState::FieldStart, b'"') => {
                    self.open_column = index + 1;
                    QuoteState::Quoted
                }
                (QuoteState::FieldStart | QuoteState::Unquoted, b',') => {
                    self.ends.push(self.data.len());
                    QuoteState::FieldStart
                }
                (QuoteState::FieldStart | QuoteState::Unquoted, _) => {
                    self.data.push(byte);
                    QuoteState::Unquoted
                }
                (QuoteState::Quoted, b'"') => QuoteState::QuoteInQuoted,
                (QuoteState::Quoted, _) => {
                    self.data.push(byte);
                    QuoteState::Quoted
                }
                (QuoteState::QuoteInQuoted, b'"') => {
                    self.data.push(b'"');
                    QuoteState::Quoted
                }
                (QuoteState::QuoteInQuoted, b',') => {
                    self.ends.push(self.data.len());
                    QuoteState::FieldStart
                }
                // Text after a closing quote belongs to the value, as the csv crate reads it.
                (QuoteState::QuoteInQuoted, _) => {
                    self.data.push(byte);
                    QuoteState::Unquoted
                }
            };
        }
    }

    fn in_quotes(&self) -> bool {
        self.state == QuoteState::Quoted
    }

    /// The line ended inside a quoted value: its line break is part of the value.
    fn line_break(&mut self, terminator: &[u8]) {
        self.data.extend_from_slice(terminator);
    }

    fn finish(mut self) -> Fields {
        self.ends.push(self.data.len());
        Fields {
            data: self.data,
            ends: self.ends,
            quotes: self.quotes,
        }
    }
}

/// The fields of one complete record.
struct Fields {
    data: Vec<u8>,
    ends: Vec<usize>,
    quotes: usize,
}

impl Fields {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| &self.data[start..end])
    }
}

/// Why a quoted value opened on a line was never usable.
enum Unclosed {
    EndOfFile,
    TooLong(usize),
    NextLineOversized(u64),
    Unusable { last_line: u64, reason: String },
}

fn unclosed_reason(line: u64, column: usize, why: Unclosed) -> String {
    let why = match why {
        Unclosed::EndOfFile => "no closing quote before the end of the file".to_string(),
        Unclosed::TooLong(limit) => format!("no closing quote within {}", human_bytes(limit)),
        Unclosed::NextLineOversized(n) => {
            format!("no closing quote before line {n}, which is too long to read")
        }
        Unclosed::Unusable { last_line, reason } => {
            format!("the record it opens, closed on line {last_line}, is not usable ({reason})")
        }
    };
    format!(
        "unclosed quote starting at line {line}, column {column}: {why}; \
         the lines after it are read on their own"
    )
}

/// What the next lines of a CSV file make.
enum Assembled {
    Blank,
    Oversized(Line),
    /// A complete record: its lines and fields.
    Record(Vec<Line>, Fields),
    /// The first line of a record whose quoted value never made a usable record; the lines
    /// after it are read again on their own.
    Unclosed {
        line: Line,
        column: usize,
        why: Unclosed,
    },
}

/// How the lines of a CSV file were used, apart from rows and dead-letter lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCounts {
    /// Lines of the header record.
    pub header: u64,
    /// Lines with nothing but spaces, tabs or a line end.
    pub blank: u64,
    /// Lines that continue a quoted value of a landed row begun on an earlier line.
    pub continuation: u64,
}

/// CSV records of one file, matched against a contract by header name.
pub struct CsvRecords<R: BufRead> {
    lines: LineReader<R>,
    /// Lines read ahead and handed back (after a record that could not be used).
    pending: VecDeque<Line>,
    max_record: usize,
    mapping: HeaderMapping,
    header: Vec<String>,
    fingerprint: Arc<str>,
    pub counts: LineCounts,
    pub drift: Drift,
}

impl<R: BufRead> CsvRecords<R> {
    /// Reads the header; a header that does not satisfy the contract rejects the file.
    pub fn open(input: R, contract: &SourceContract) -> io::Result<Result<Self, FileProblem>> {
        Self::open_with_limit(input, contract, MAX_LINE_BYTES)
    }

    /// As [`CsvRecords::open`], holding at most `max_line` bytes of a line or record.
    pub fn open_with_limit(
        input: R,
        contract: &SourceContract,
        max_line: usize,
    ) -> io::Result<Result<Self, FileProblem>> {
        let mut records = Self {
            lines: LineReader::new(input, max_line, true),
            pending: VecDeque::new(),
            max_record: max_line.max(1),
            mapping: contract.map_header::<String>(&[]),
            header: Vec::new(),
            fingerprint: Arc::from(""),
            counts: LineCounts::default(),
            drift: Drift::default(),
        };
        let (lines, fields) = loop {
            match records.assemble()? {
                None => {
                    return Ok(Err(FileProblem {
                        missing_columns: contract
                            .columns
                            .iter()
                            .filter(|c| c.required)
                            .map(|c| c.name.clone())
                            .collect(),
                        ..FileProblem::plain("file is empty: no header line".into())
                    }))
                }
                Some(Assembled::Blank) => records.counts.blank += 1,
                Some(Assembled::Oversized(line)) => {
                    return Ok(Err(FileProblem::plain(format!(
                        "header line {}: {}",
                        line.number,
                        line.oversized_reason(max_line)
                    ))))
                }
                Some(Assembled::Unclosed { line, column, .. }) => {
                    return Ok(Err(FileProblem::plain(format!(
                        "header line {}: unclosed quote starting at column {column}",
                        line.number
                    ))))
                }
                Some(Assembled::Record(lines, fields)) => break (lines, fields),
            }
        };
        let header_line = lines.first().map(|l| l.number).unwrap_or(1);
        let mut header = Vec::with_capacity(fields.len());
        for (index, field) in fields.iter().enumerate() {
            match std::str::from_utf8(field) {
                Ok(name) => header.push(name.to_string()),
                Err(e) => {
                    return Ok(Err(FileProblem::plain(format!(
                    "header line {header_line}: column {} is not valid UTF-8 (byte {} of its name)",
                    index + 1,
                    e.valid_up_to()
                ))))
                }
            }
        }
        let mapping = contract.map_header(&header);
        if !mapping.is_usable() {
            return Ok(Err(header_problem(&mapping, &header)));
        }
        records.counts.header = lines.len() as u64;
        records.drift.record(&mapping);
        records.fingerprint = schema_fingerprint(header.iter().map(String::as_str)).into();
        records.mapping = mapping;
        records.header = header;
        Ok(Ok(records))
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn pull(&mut self) -> io::Result<Option<Line>> {
        match self.pending.pop_front() {
            Some(line) => Ok(Some(line)),
            None => self.lines.next_line(),
        }
    }

    /// Hands lines back to be read again, in order, before any line not read yet.
    fn unread(&mut self, lines: Vec<Line>) {
        for line in lines.into_iter().rev() {
            self.pending.push_front(line);
        }
    }

    fn assemble(&mut self) -> io::Result<Option<Assembled>> {
        let Some(first) = self.pull()? else {
            return Ok(None);
        };
        if first.oversized {
            return Ok(Some(Assembled::Oversized(first)));
        }
        if first.is_blank() {
            return Ok(Some(Assembled::Blank));
        }
        let mut parser = RecordParser::new();
        parser.feed(first.content());
        if !parser.in_quotes() {
            return Ok(Some(Assembled::Record(vec![first], parser.finish())));
        }
        let column = parser.open_column;
        parser.line_break(first.terminator());
        let mut total = first.len;
        let mut lines = vec![first];
        let why = loop {
            let Some(next) = self.pull()? else {
                break Unclosed::EndOfFile;
            };
            if next.oversized {
                let number = next.number;
                self.pending.push_front(next);
                break Unclosed::NextLineOversized(number);
            }
            total += next.len;
            if total > self.max_record as u64 {
                lines.push(next);
                break Unclosed::TooLong(self.max_record);
            }
            parser.feed(next.content());
            if !parser.in_quotes() {
                lines.push(next);
                return Ok(Some(Assembled::Record(lines, parser.finish())));
            }
            parser.line_break(next.terminator());
            lines.push(next);
        };
        let rest = lines.split_off(1);
        self.unread(rest);
        let line = lines.remove(0);
        Ok(Some(Assembled::Unclosed { line, column, why }))
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_record(&mut self) -> io::Result<Option<Parsed>> {
        loop {
            let Some(assembled) = self.assemble()? else {
                return Ok(None);
            };
            return Ok(Some(match assembled {
                Assembled::Blank => {
                    self.counts.blank += 1;
                    continue;
                }
                Assembled::Oversized(line) => Parsed::Bad {
                    line: line.number,
                    reason: line.oversized_reason(self.max_record),
                    raw: line.bytes,
                },
                Assembled::Unclosed { line, column, why } => Parsed::Bad {
                    line: line.number,
                    reason: unclosed_reason(line.number, column, why),
                    raw: line.bytes,
                },
                Assembled::Record(mut lines, fields) => {
                    let first_line = lines.first().map(|l| l.number).unwrap_or_default();
                    match self.classify(&fields) {
                        Ok((values, rescued)) => {
                            self.counts.continuation += lines.len() as u64 - 1;
                            Parsed::Row {
                                line: first_line,
                                values,
                                rescued,
                                fingerprint: Arc::clone(&self.fingerprint),
                            }
                        }
                        Err(reason) if lines.len() == 1 => Parsed::Bad {
                            line: first_line,
                            raw: lines.remove(0).bytes,
                            reason,
                        },
                        Err(reason) => {
                            // A quote opened on the first line and closed lines later made a
                            // record that does not fit: keep only the first line out.
                            let last_line = lines.last().map(|l| l.number).unwrap_or_default();
                            let mut parser = RecordParser::new();
                            parser.feed(lines[0].content());
                            let column = parser.open_column;
                            let rest = lines.split_off(1);
                            self.unread(rest);
                            let line = lines.remove(0);
                            let why = Unclosed::Unusable { last_line, reason };
                            Parsed::Bad {
                                line: line.number,
                                reason: unclosed_reason(line.number, column, why),
                                raw: line.bytes,
                            }
                        }
                    }
                }
            }));
        }
    }

    /// The contract's values and the rescued extra columns of a complete record.
    #[allow(clippy::type_complexity)]
    fn classify(&self, fields: &Fields) -> Result<(Vec<Option<String>>, Option<String>), String> {
        if fields.len() != self.header.len() {
            return Err(format!(
                "expected {} fields as in the header, found {}",
                self.header.len(),
                fields.len()
            ));
        }
        if fields.quotes % 2 == 1 {
            return Err("broken quoting: unbalanced double quote".into());
        }
        let mut text = Vec::with_capacity(fields.len());
        for (index, field) in fields.iter().enumerate() {
            match std::str::from_utf8(field) {
                Ok(value) => text.push(value),
                Err(e) => {
                    return Err(format!(
                        "invalid UTF-8 in column {} ('{}') at byte {} of the field",
                        index + 1,
                        clip(self.header[index].trim(), QUOTED_TEXT_BYTES),
                        e.valid_up_to()
                    ))
                }
            }
        }
        let values = self
            .mapping
            .column_positions
            .iter()
            .map(|position| position.and_then(|i| text.get(i)).map(|v| v.to_string()))
            .collect();
        let rescued = rescued_json(self.mapping.extra_columns.iter().filter_map(|(i, name)| {
            text.get(*i)
                .map(|v| (name.as_str(), serde_json::Value::String(v.to_string())))
        }));
        Ok((values, rescued))
    }
}

/// JSON-lines records: one object per line, matched against the contract by key.
pub struct JsonRecords<R: BufRead> {
    lines: LineReader<R>,
    contract: SourceContract,
    max_line: usize,
    pub blank_lines: u64,
    pub drift: Drift,
    pub keys_seen: BTreeSet<String>,
}

impl<R: BufRead> JsonRecords<R> {
    pub fn new(input: R, contract: &SourceContract) -> Self {
        Self::with_limit(input, contract, MAX_LINE_BYTES)
    }

    /// As [`JsonRecords::new`], holding at most `max_line` bytes of a line.
    pub fn with_limit(input: R, contract: &SourceContract, max_line: usize) -> Self {
        Self {
            lines: LineReader::new(input, max_line, true),
            contract: contract.clone(),
            max_line,
            blank_lines: 0,
            drift: Drift::default(),
            keys_seen: BTreeSet::new(),
        }
    }

    pub fn next_record(&mut self) -> io::Result<Option<Parsed>> {
        loop {
            let Some(line) = self.lines.next_line()? else {
                return Ok(None);
            };
            if line.oversized {
                return Ok(Some(Parsed::Bad {
                    line: line.number,
                    reason: line.oversized_reason(self.max_line),
                    raw: line.bytes,
                }));
            }
            if line.is_blank() {
                self.blank_lines += 1;
                continue;
            }
            return Ok(Some(self.classify(line)));
        }
    }

    fn classify(&mut self, line: Line) -> Parsed {
        let number = line.number;
        let bad = |reason: String, line: Line| Parsed::Bad {
            line: number,
            raw: line.bytes,
            reason,
        };
        let object = match serde_json::from_slice::<serde_json::Value>(&line.bytes) {
            Ok(serde_json::Value::Object(object)) => object,
            Ok(other) => {
                return bad(
                    format!("expected a JSON object, found {}", json_kind(&other)),
                    line,
                )
            }
            Err(e) => {
                return bad(
                    clip(
                        &format!("invalid JSON at column {}: {e}", e.column()),
                        MAX_REASON_BYTES,
                    ),
                    line,
                )
            }
        };
        let keys: Vec<&String> = object.keys().collect();
        let mapping = self.contract.map_header(&keys);
        if !mapping.is_usable() {
            let names: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            return bad(header_problem(&mapping, &names).reason, line);
        }
        self.drift.record(&mapping);
        self.keys_seen
            .extend(keys.iter().map(|k| clip(k, QUOTED_TEXT_BYTES)));
        let values: Vec<&serde_json::Value> = object.values().collect();
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        let row_values = mapping
            .column_positions
            .iter()
            .map(|position| position.and_then(|i| values.get(i).and_then(|v| text(v))))
            .collect();
        let rescued = rescued_json(
            mapping
                .extra_columns
                .iter()
                .filter_map(|(i, name)| values.get(*i).map(|v| (name.as_str(), (*v).clone()))),
        );
        Parsed::Row {
            line: number,
            values: row_values,
            rescued,
            fingerprint: schema_fingerprint(keys.iter().map(|k| k.as_str())).into(),
        }
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paylake_contracts::contract;

    fn csv_all(text: &[u8], source: &str) -> Result<Vec<Parsed>, FileProblem> {
        let contract = contract(source).unwrap();
        let mut records = CsvRecords::open(text, &contract).unwrap()?;
        let mut out = vec![];
        while let Some(p) = records.next_record().unwrap() {
            out.push(p);
        }
        Ok(out)
    }

    fn values(p: &Parsed) -> Vec<Option<String>> {
        match p {
            Parsed::Row { values, .. } => values.clone(),
            Parsed::Bad { reason, .. } => panic!("unexpected bad line: {reason}"),
        }
    }

    #[test]
    fn bom_crlf_and_reordered_headers_are_accepted() {
        let parsed = csv_all(
            b"\xEF\xBB\xBFRisk_Flag , Account_ID\r\n2,ACC1\r\n0,ACC2\r\n",
            "risk_feed",
        )
        .unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            values(&parsed[0]),
            vec![Some("ACC1".into()), Some("2".into())]
        );
        assert_eq!(
            values(&parsed[1]),
            vec![Some("ACC2".into()), Some("0".into())]
        );
    }

    #[test]
    fn wrong_field_count_keeps_raw_bytes_and_line_number() {
        let parsed = csv_all(
            b"account_id,risk_flag\nACC1,1\nACC2,1,extra\nACC3,0\n",
            "risk_feed",
        )
        .unwrap();
        assert_eq!(parsed.len(), 3);
        match &parsed[1] {
            Parsed::Bad { line, raw, reason } => {
                assert_eq!(*line, 3);
                assert_eq!(raw, b"ACC2,1,extra\n");
                assert!(reason.contains("expected 2 fields"), "{reason}");
            }
            other => panic!("expected a bad line, got {other:?}"),
        }
        assert_eq!(
            values(&parsed[2]),
            vec![Some("ACC3".into()), Some("0".into())]
        );
    }

    #[test]
    fn invalid_utf8_and_broken_quotes_are_bad_lines() {
        let parsed = csv_all(b"account_id,risk_flag\nAC\xFFC,1\n\"ACC2,1\n", "risk_feed").unwrap();
        match &parsed[0] {
            Parsed::Bad { raw, reason, .. } => {
                assert_eq!(raw, b"AC\xFFC,1\n");
                assert!(reason.contains("column 1 ('account_id')"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&parsed[1], Parsed::Bad { line: 3, .. }),
            "{:?}",
            parsed[1]
        );
    }

    #[test]
    fn quoted_newlines_stay_in_one_record() {
        let parsed = csv_all(
            b"account_id,risk_flag,comment\nACC1,1,\"two\nlines\"\nACC2,0,x\n",
            "risk_feed",
        )
        .unwrap();
        assert_eq!(parsed.len(), 2);
        match &parsed[0] {
            Parsed::Row { rescued, line, .. } => {
                assert_eq!(*line, 2);
                assert_eq!(rescued.as_deref(), Some(r#"{"comment":"two\nlines"}"#));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&parsed[1], Parsed::Row { line: 4, .. }));
    }

    #[test]
    fn missing_required_column_rejects_the_file() {
        let problem = csv_all(b"account_id,flag\nACC1,1\n", "risk_feed").unwrap_err();
        assert!(problem
            .reason
            .contains("missing required column(s): risk_flag"));
        assert!(problem.reason.contains("unexpected column(s): flag"));
        assert_eq!(problem.missing_columns, vec!["risk_flag".to_string()]);
    }

    #[test]
    fn json_lines_map_keys_and_keep_bad_lines() {
        let contract = contract("fraud_labels").unwrap();
        let text = b"\xEF\xBB\xBF{\"payment_id\":\"P1\",\"fraud_type\":\"mule\",\"fraud_reported_date\":\"2025-01-01\",\"analyst\":7}\n\n[1]\n{\"payment_id\":\"P2\"}\n{broken\n";
        let mut records = JsonRecords::new(&text[..], &contract);
        let mut out = vec![];
        while let Some(p) = records.next_record().unwrap() {
            out.push(p);
        }
        assert_eq!(out.len(), 4);
        match &out[0] {
            Parsed::Row {
                values, rescued, ..
            } => {
                assert_eq!(values[0].as_deref(), Some("P1"));
                assert_eq!(rescued.as_deref(), Some(r#"{"analyst":7}"#));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&out[1], Parsed::Bad { line: 3, reason, .. } if reason.contains("an array"))
        );
        assert!(
            matches!(&out[2], Parsed::Bad { line: 4, reason, .. } if reason.contains("fraud_type"))
        );
        assert!(
            matches!(&out[3], Parsed::Bad { line: 5, reason, .. } if reason.contains("invalid JSON"))
        );
        assert!(records.drift.added_columns.contains("analyst"));
    }

    fn payments_csv(text: &[u8], limit: usize) -> (Vec<Parsed>, LineCounts) {
        let contract = contract("payments").unwrap();
        let mut records = CsvRecords::open_with_limit(text, &contract, limit)
            .unwrap()
            .unwrap();
        let mut out = vec![];
        while let Some(p) = records.next_record().unwrap() {
            out.push(p);
        }
        (out, records.counts)
    }

    const PAYMENTS_HEADER: &str =
        "payment_id,src_account_id,dest_account_id,payment_reference,amount,timestamp\n";

    #[test]
    fn an_unclosed_quote_takes_only_its_own_line() {
        let mut text = PAYMENTS_HEADER.to_string();
        text.push_str("PAY5042,ACC101,ACC201,\"REF open,10.00,2024-11-18 10:00:00\n");
        for i in 0..5 {
            text.push_str(&format!(
                "PAY{i},ACC101,ACC201,REF,1.00,2024-11-18 10:0{i}:00\n"
            ));
        }
        let (parsed, counts) = payments_csv(text.as_bytes(), MAX_LINE_BYTES);
        assert_eq!(parsed.len(), 6, "{parsed:?}");
        match &parsed[0] {
            Parsed::Bad { line, raw, reason } => {
                assert_eq!(*line, 2);
                assert!(raw.starts_with(b"PAY5042,") && raw.ends_with(b"10:00:00\n"));
                assert!(
                    reason.contains("unclosed quote starting at line 2, column 23"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        for (i, p) in parsed[1..].iter().enumerate() {
            assert!(
                matches!(p, Parsed::Row { line, .. } if *line == i as u64 + 3),
                "{p:?}"
            );
        }
        assert_eq!(counts.continuation, 0);

        // A quote closed lines later by a stray quote: the joined record does not fit, so
        // only the first line goes; the line with the stray quote is judged on its own.
        let text = format!(
            "{PAYMENTS_HEADER}P1,A,B,\"open,1.00,2024-11-18 10:00:00\nP2,A,B,R,2.00,2024-11-18 10:01:00\nP3,A,B,R\",3.00,X,2024-11-18 10:02:00\nP4,A,B,R,4.00,2024-11-18 10:03:00\n"
        );
        let (parsed, _) = payments_csv(text.as_bytes(), MAX_LINE_BYTES);
        let lines: Vec<(u64, bool)> = parsed
            .iter()
            .map(|p| match p {
                Parsed::Row { line, .. } => (*line, true),
                Parsed::Bad { line, .. } => (*line, false),
            })
            .collect();
        assert_eq!(lines, vec![(2, false), (3, true), (4, false), (5, true)]);
        match &parsed[0] {
            Parsed::Bad { reason, .. } => {
                assert!(reason.contains("closed on line 4"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn blank_lines_are_counted_not_lost() {
        let text = format!(
            "\r\n{PAYMENTS_HEADER}\nP1,A,B,R,1.00,2024-11-18 10:00:00\r\n  \r\n\nP2,A,B,\"two\nlines\",2.00,2024-11-18 10:01:00\n\n"
        );
        let (parsed, counts) = payments_csv(text.as_bytes(), MAX_LINE_BYTES);
        assert_eq!(parsed.len(), 2);
        assert!(matches!(&parsed[1], Parsed::Row { line: 7, .. }));
        assert_eq!(
            counts,
            LineCounts {
                header: 1,
                blank: 5,
                continuation: 1
            }
        );

        let contract = contract("fraud_labels").unwrap();
        let text = b"\n{\"payment_id\":\"P1\",\"fraud_type\":\"mule\",\"fraud_reported_date\":\"2025-01-01\"}\r\n \t\r\n{\"payment_id\":\"P2\",\"fraud_type\":\"mule\",\"fraud_reported_date\":\"2025-01-01\"}";
        let mut records = JsonRecords::new(&text[..], &contract);
        let mut rows = 0;
        while let Some(p) = records.next_record().unwrap() {
            assert!(matches!(p, Parsed::Row { .. }), "{p:?}");
            rows += 1;
        }
        assert_eq!((rows, records.blank_lines), (2, 2));
    }

    #[test]
    fn a_line_over_the_limit_is_kept_as_a_prefix_and_a_byte_range() {
        let long = "x".repeat(5000);
        let text = format!("{PAYMENTS_HEADER}{long}\nP1,A,B,R,1.00,2024-11-18 10:00:00\n\"{long}");
        let (parsed, _) = payments_csv(text.as_bytes(), 4096);
        assert_eq!(parsed.len(), 3, "{parsed:?}");
        let start = PAYMENTS_HEADER.len();
        match &parsed[0] {
            Parsed::Bad { line, raw, reason } => {
                assert_eq!(*line, 2);
                assert_eq!(raw.len(), OVERSIZED_PREFIX_BYTES);
                assert!(reason.contains("5001 bytes long"), "{reason}");
                assert!(
                    reason.contains(&format!("bytes {start}..{}", start + 5001)),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&parsed[1], Parsed::Row { line: 3, .. }));
        assert!(
            matches!(&parsed[2], Parsed::Bad { line: 4, raw, .. } if raw.len() == OVERSIZED_PREFIX_BYTES)
        );

        // A header over the limit rejects the file without holding it.
        let contract = contract("payments").unwrap();
        let header = format!("{long}\n");
        let problem = CsvRecords::open_with_limit(header.as_bytes(), &contract, 4096)
            .unwrap()
            .err()
            .unwrap();
        assert!(
            problem
                .reason
                .starts_with("header line 1: line is 5001 bytes long"),
            "{}",
            problem.reason
        );
        // Names quoted in a reason are cut.
        let header = format!(
            "payment_id,src_account_id,dest_account_id,payment_reference,{long},timestamp\n"
        );
        let problem = CsvRecords::open(header.as_bytes(), &contract)
            .unwrap()
            .err()
            .unwrap();
        assert!(problem.reason.len() < 400, "{}", problem.reason);
        assert!(
            problem.reason.contains("(5000 bytes in all)"),
            "{}",
            problem.reason
        );
    }

    /// Physical lines of a text: `\n`-ended, plus a last line without one.
    fn physical_lines(text: &[u8]) -> u64 {
        let ends = text.iter().filter(|b| **b == b'\n').count() as u64;
        ends + u64::from(!text.is_empty() && !text.ends_with(b"\n"))
    }

    mod fuzz {
        //! Property tests of the readers on arbitrary input (`make fuzz` runs many more cases:
        //! `PROPTEST_CASES`). Every line after the header is a row, a dead-letter line, a blank
        //! line or the continuation of a row's quoted value; nothing panics.
        use super::*;
        use proptest::prelude::*;

        fn piece() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(b"P1".to_vec()),
                Just(b",".to_vec()),
                Just(b",,,,,".to_vec()),
                Just(b"\"".to_vec()),
                Just(b"\"\"".to_vec()),
                Just(b"\"a,b\"".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\r".to_vec()),
                Just(b" ".to_vec()),
                Just(b"\xEF\xBB\xBF".to_vec()),
                Just(b"\xFF".to_vec()),
                Just(b"\0".to_vec()),
                Just(
                    b"{\"payment_id\":\"P\",\"fraud_type\":\"x\",\"fraud_reported_date\":\"d\"}"
                        .to_vec()
                ),
                Just(b"{".to_vec()),
                Just(b"}".to_vec()),
                Just(b"P1,A,B,R,1.00,2024-11-18 10:00:00".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..12),
                "[a-z0-9 ]{0,90}".prop_map(String::into_bytes),
            ]
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(piece(), 0..40).prop_map(|p| p.concat())
        }

        fn csv_input() -> impl Strategy<Value = Vec<u8>> {
            (
                prop_oneof![
                    Just(PAYMENTS_HEADER.as_bytes().to_vec()),
                    Just(format!("\u{feff}{}", PAYMENTS_HEADER.replace('\n', "\r\n")).into_bytes()),
                    Just(format!("\n{PAYMENTS_HEADER}").into_bytes()),
                    Just(Vec::new()),
                ],
                body(),
            )
                .prop_map(|(header, body)| [header, body].concat())
        }

        fn check_csv(text: &[u8], limit: usize) -> Result<(), TestCaseError> {
            let contract = contract("payments").unwrap();
            let Ok(mut records) = CsvRecords::open_with_limit(text, &contract, limit).unwrap()
            else {
                // Rejected whole: ingest dead-letters it line by line (LineReader, below).
                return Ok(());
            };
            let (mut rows, mut bad, mut last) = (0u64, 0u64, 0u64);
            while let Some(p) = records.next_record().unwrap() {
                let line = match p {
                    Parsed::Row { line, .. } => {
                        rows += 1;
                        line
                    }
                    Parsed::Bad { line, raw, .. } => {
                        bad += 1;
                        prop_assert!(raw.len() <= limit.max(1));
                        line
                    }
                };
                prop_assert!(
                    line > last,
                    "line numbers increase: {} after {}",
                    line,
                    last
                );
                last = line;
            }
            let c = records.counts;
            prop_assert_eq!(
                physical_lines(text),
                c.header + rows + bad + c.blank + c.continuation,
                "{:?} rows {} bad {}",
                c,
                rows,
                bad
            );
            Ok(())
        }

        fn check_json(text: &[u8], limit: usize) -> Result<(), TestCaseError> {
            let contract = contract("fraud_labels").unwrap();
            let mut records = JsonRecords::with_limit(text, &contract, limit);
            let mut used = 0u64;
            while let Some(p) = records.next_record().unwrap() {
                if let Parsed::Bad { raw, .. } = &p {
                    prop_assert!(raw.len() <= limit.max(1));
                }
                used += 1;
            }
            let bom_only_line = u64::from(text == b"\xEF\xBB\xBF");
            prop_assert_eq!(
                physical_lines(text),
                used + records.blank_lines + bom_only_line
            );
            Ok(())
        }

        fn check_lines(text: &[u8], limit: usize) -> Result<(), TestCaseError> {
            let mut lines = LineReader::new(text, limit, false);
            let mut joined = Vec::new();
            let mut offset = 0;
            while let Some(line) = lines.next_line().unwrap() {
                prop_assert_eq!(line.offset, offset);
                offset += line.len;
                prop_assert_eq!(line.oversized, line.len as usize > limit.max(1));
                if !line.oversized {
                    joined.extend_from_slice(&line.bytes);
                } else {
                    joined.extend_from_slice(
                        &text[line.offset as usize..(line.offset + line.len) as usize],
                    );
                }
            }
            prop_assert_eq!(&joined[..], text, "lines put together give the file back");
            prop_assert_eq!(lines.lines_read(), physical_lines(text));
            Ok(())
        }

        proptest! {
            #[test]
            fn fuzz_csv_lines_add_up(text in csv_input(), limit in prop_oneof![Just(MAX_LINE_BYTES), 1usize..80]) {
                check_csv(&text, limit)?;
            }

            #[test]
            fn fuzz_csv_random_bytes(text in proptest::collection::vec(any::<u8>(), 0..400)) {
                check_csv(&text, MAX_LINE_BYTES)?;
                check_csv(&[PAYMENTS_HEADER.as_bytes(), &text].concat(), 64)?;
            }

            #[test]
            fn fuzz_json_lines_add_up(text in body(), limit in prop_oneof![Just(MAX_LINE_BYTES), 1usize..80]) {
                check_json(&text, limit)?;
            }

            #[test]
            fn fuzz_line_reader_gives_the_file_back(text in body(), limit in 1usize..80) {
                check_lines(&text, limit)?;
            }
        }
    }
}
