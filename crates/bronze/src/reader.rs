//! Streaming readers that split a landing file into usable rows and dead-letter lines.
//!
//! Both readers keep the raw bytes of the record being parsed so that a line which cannot be
//! used is stored exactly as it was sent.

use std::collections::BTreeSet;
use std::io::{self, BufRead, Read};
use std::sync::Arc;

use csv::ByteRecord;
use paylake_contracts::{schema_fingerprint, HeaderMapping, SourceContract};

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

/// What the header of a file says about schema drift.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drift {
    pub added_columns: BTreeSet<String>,
    pub missing_columns: BTreeSet<String>,
}

impl Drift {
    fn record(&mut self, mapping: &HeaderMapping) {
        self.added_columns
            .extend(mapping.extra_columns.iter().map(|(_, name)| name.clone()));
        self.missing_columns
            .extend(mapping.missing_optional.iter().cloned());
        self.missing_columns
            .extend(mapping.missing_required.iter().cloned());
    }

    pub fn is_empty(&self) -> bool {
        self.added_columns.is_empty() && self.missing_columns.is_empty()
    }
}

fn header_problem(mapping: &HeaderMapping, header: &[String]) -> FileProblem {
    let added: Vec<String> = mapping
        .extra_columns
        .iter()
        .map(|(_, name)| name.clone())
        .collect();
    let mut parts = Vec::new();
    if !mapping.missing_required.is_empty() {
        parts.push(format!(
            "missing required column(s): {}",
            mapping.missing_required.join(", ")
        ));
    }
    if !mapping.duplicated.is_empty() {
        parts.push(format!(
            "column(s) named more than once: {}",
            mapping.duplicated.join(", ")
        ));
    }
    if !added.is_empty() {
        parts.push(format!("unexpected column(s): {}", added.join(", ")));
    }
    FileProblem {
        reason: parts.join("; "),
        fingerprint: Some(schema_fingerprint(header.iter().map(String::as_str))),
        added_columns: added,
        missing_columns: mapping.missing_required.clone(),
    }
}

fn rescued_json<'a>(extras: impl Iterator<Item = (&'a str, serde_json::Value)>) -> Option<String> {
    let map: serde_json::Map<String, serde_json::Value> =
        extras.map(|(k, v)| (k.to_string(), v)).collect();
    (!map.is_empty()).then(|| serde_json::Value::Object(map).to_string())
}

/// Keeps the bytes the CSV parser has consumed so a record's raw text can be recovered.
struct Tee<R> {
    inner: R,
    buffer: Vec<u8>,
    /// File offset of `buffer[0]`.
    buffer_start: u64,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.buffer.extend_from_slice(&out[..n]);
        Ok(n)
    }
}

impl<R> Tee<R> {
    fn slice(&self, start: u64, end: u64) -> Vec<u8> {
        let from = start.saturating_sub(self.buffer_start) as usize;
        let to = (end.saturating_sub(self.buffer_start) as usize).min(self.buffer.len());
        self.buffer
            .get(from..to)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn forget_before(&mut self, offset: u64) {
        let drop = (offset.saturating_sub(self.buffer_start) as usize).min(self.buffer.len());
        self.buffer.drain(..drop);
        self.buffer_start += drop as u64;
    }
}

/// CSV records of one file, matched against a contract by header name.
pub struct CsvRecords<R: Read> {
    reader: csv::Reader<Tee<R>>,
    mapping: HeaderMapping,
    header: Vec<String>,
    fingerprint: Arc<str>,
    record: ByteRecord,
    pub drift: Drift,
}

impl<R: Read> CsvRecords<R> {
    /// Reads the header; a header that does not satisfy the contract rejects the file.
    pub fn open(input: R, contract: &SourceContract) -> io::Result<Result<Self, FileProblem>> {
        let tee = Tee {
            inner: input,
            buffer: Vec::new(),
            buffer_start: 0,
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(tee);
        let mut header_record = ByteRecord::new();
        if !reader
            .read_byte_record(&mut header_record)
            .map_err(csv_io)?
        {
            return Ok(Err(FileProblem {
                reason: "file is empty: no header line".into(),
                fingerprint: None,
                added_columns: vec![],
                missing_columns: contract
                    .columns
                    .iter()
                    .filter(|c| c.required)
                    .map(|c| c.name.clone())
                    .collect(),
            }));
        }
        let mut header = Vec::with_capacity(header_record.len());
        for (index, field) in header_record.iter().enumerate() {
            match std::str::from_utf8(field) {
                Ok(name) => header.push(name.to_string()),
                Err(_) => {
                    return Ok(Err(FileProblem {
                        reason: format!("header column {} is not valid UTF-8", index + 1),
                        fingerprint: None,
                        added_columns: vec![],
                        missing_columns: vec![],
                    }))
                }
            }
        }
        let mapping = contract.map_header(&header);
        if !mapping.is_usable() {
            return Ok(Err(header_problem(&mapping, &header)));
        }
        let end = reader.position().byte();
        reader.get_mut().forget_before(end);
        let mut drift = Drift::default();
        drift.record(&mapping);
        let fingerprint: Arc<str> = schema_fingerprint(header.iter().map(String::as_str)).into();
        Ok(Ok(Self {
            reader,
            mapping,
            header,
            fingerprint,
            record: ByteRecord::new(),
            drift,
        }))
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_record(&mut self) -> io::Result<Option<Parsed>> {
        if !self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(csv_io)?
        {
            return Ok(None);
        }
        let position = self
            .record
            .position()
            .cloned()
            .unwrap_or_else(csv::Position::new);
        let (start, line) = (position.byte(), position.line());
        let end = self.reader.position().byte();
        let raw_view = self.reader.get_ref().slice(start, end);
        let parsed = self.classify(line, raw_view);
        self.reader.get_mut().forget_before(end);
        Ok(Some(parsed))
    }

    fn classify(&self, line: u64, raw: Vec<u8>) -> Parsed {
        let bad = |reason: String| Parsed::Bad {
            line,
            raw: raw.clone(),
            reason,
        };
        if self.record.len() != self.header.len() {
            return bad(format!(
                "expected {} fields as in the header, found {}",
                self.header.len(),
                self.record.len()
            ));
        }
        if raw.iter().filter(|b| **b == b'"').count() % 2 == 1 {
            return bad("broken quoting: unbalanced double quote".into());
        }
        let mut text = Vec::with_capacity(self.record.len());
        for (index, field) in self.record.iter().enumerate() {
            match std::str::from_utf8(field) {
                Ok(value) => text.push(value),
                Err(e) => {
                    return bad(format!(
                        "invalid UTF-8 in column {} ('{}') at byte {} of the field",
                        index + 1,
                        self.header[index].trim(),
                        e.valid_up_to()
                    ))
                }
            }
        }
        let values = self
            .mapping
            .column_positions
            .iter()
            .map(|position| position.map(|i| text[i].to_string()))
            .collect();
        let rescued = rescued_json(self.mapping.extra_columns.iter().map(|(i, name)| {
            (
                name.as_str(),
                serde_json::Value::String(text[*i].to_string()),
            )
        }));
        Parsed::Row {
            line,
            values,
            rescued,
            fingerprint: Arc::clone(&self.fingerprint),
        }
    }
}

fn csv_io(error: csv::Error) -> io::Error {
    match error.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

/// JSON-lines records: one object per line, matched against the contract by key.
pub struct JsonRecords<R: BufRead> {
    input: R,
    contract: SourceContract,
    line: u64,
    buffer: Vec<u8>,
    pub drift: Drift,
    pub keys_seen: BTreeSet<String>,
}

impl<R: BufRead> JsonRecords<R> {
    pub fn new(input: R, contract: &SourceContract) -> Self {
        Self {
            input,
            contract: contract.clone(),
            line: 0,
            buffer: Vec::new(),
            drift: Drift::default(),
            keys_seen: BTreeSet::new(),
        }
    }

    pub fn next_record(&mut self) -> io::Result<Option<Parsed>> {
        loop {
            self.buffer.clear();
            if self.input.read_until(b'\n', &mut self.buffer)? == 0 {
                return Ok(None);
            }
            self.line += 1;
            // A UTF-8 byte-order mark before the first object is not part of the JSON.
            if self.line == 1 && self.buffer.starts_with(b"\xEF\xBB\xBF") {
                self.buffer.drain(..3);
            }
            if self.buffer.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(self.classify()));
        }
    }

    fn classify(&mut self) -> Parsed {
        let line = self.line;
        let bad = |reason: String, raw: &[u8]| Parsed::Bad {
            line,
            raw: raw.to_vec(),
            reason,
        };
        let object = match serde_json::from_slice::<serde_json::Value>(&self.buffer) {
            Ok(serde_json::Value::Object(object)) => object,
            Ok(other) => {
                return bad(
                    format!("expected a JSON object, found {}", json_kind(&other)),
                    &self.buffer,
                )
            }
            Err(e) => {
                return bad(
                    format!("invalid JSON at column {}: {e}", e.column()),
                    &self.buffer,
                )
            }
        };
        let keys: Vec<&String> = object.keys().collect();
        let mapping = self.contract.map_header(&keys);
        if !mapping.is_usable() {
            let names: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            return bad(header_problem(&mapping, &names).reason, &self.buffer);
        }
        self.drift.record(&mapping);
        self.keys_seen.extend(keys.iter().map(|k| k.to_string()));
        let values: Vec<&serde_json::Value> = object.values().collect();
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        let row_values = mapping
            .column_positions
            .iter()
            .map(|position| position.and_then(|i| text(values[i])))
            .collect();
        let rescued = rescued_json(
            mapping
                .extra_columns
                .iter()
                .map(|(i, name)| (name.as_str(), values[*i].clone())),
        );
        Parsed::Row {
            line,
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
}
