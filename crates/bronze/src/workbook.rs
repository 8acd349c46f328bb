//! Excel workbooks (`.xlsx`, `.xlsm`, `.xls`) read with `calamine` into the same records as CSV.
//!
//! One sheet is read: the one named after the source (`fraud_labels`, compared ignoring case),
//! or else the first sheet. Its first non-empty row is the header, matched against the contract
//! like a CSV header. Every cell becomes the text a user sees in Excel: dates as `YYYY-MM-DD`
//! (`YYYY-MM-DD HH:MM:SS` when they carry a time), whole numbers without `.0`, `TRUE`/`FALSE`,
//! error values as shown (`#N/A`), and formulas by the value Excel saved with them. A formula
//! saved without a value (a workbook written by a program that does not calculate) cannot be
//! read as the user would see it, so its row is dead-lettered naming the cell and formula.
//!
//! A row's line number is its row number in the sheet, and its lineage names the sheet
//! (`_source_file` = `path#Sheet`). The dead letter keeps a row as its cells written as one CSV
//! line. A workbook is read whole into memory (calamine has no row-by-row reader for every
//! format); one that cannot be opened is rejected whole with calamine's reason.

use std::io::Cursor;
use std::sync::Arc;

use calamine::{Data, Range, Reader, Sheets};
use paylake_contracts::{schema_fingerprint, HeaderMapping, SourceContract};

use crate::reader::{
    clip, header_problem, rescued_json, Drift, FileProblem, Parsed, QUOTED_TEXT_BYTES,
};

/// One sheet of a workbook, read as records.
pub struct WorkbookRecords {
    /// The sheet read, for lineage.
    pub sheet: String,
    values: Range<Data>,
    formulas: Range<String>,
    header: Vec<String>,
    mapping: HeaderMapping,
    fingerprint: Arc<str>,
    /// The first column of the table (0-based sheet column).
    first_column: u32,
    width: u32,
    /// The next row to read (0-based sheet row) and the last one.
    next_row: u32,
    last_row: u32,
    /// Rows with no value and no formula.
    pub blank_rows: u64,
    pub drift: Drift,
}

/// A sheet row (0-based) as Excel numbers it.
fn row_number(row: u32) -> u64 {
    u64::from(row) + 1
}

/// The Excel name of a cell: column letters and row number (`C12`).
pub fn cell_name(row: u32, column: u32) -> String {
    let mut letters = Vec::new();
    let mut n = column + 1;
    while n > 0 {
        let rem = ((n - 1) % 26) as u8;
        letters.push(b'A' + rem);
        n = (n - 1) / 26;
    }
    letters.reverse();
    format!("{}{}", String::from_utf8_lossy(&letters), row + 1)
}

/// A cell as Excel shows it with a general or date format; `None` for an empty cell.
pub fn cell_text(cell: &Data) -> Option<String> {
    match cell {
        Data::Empty => None,
        Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => Some(s.clone()),
        Data::Int(i) => Some(i.to_string()),
        Data::Float(f) => Some(number_text(*f)),
        Data::Bool(b) => Some(if *b { "TRUE" } else { "FALSE" }.to_string()),
        Data::Error(e) => Some(e.to_string()),
        Data::DateTime(at) if at.is_duration() => {
            let seconds = (at.as_f64() * 86_400.0).round() as i64;
            let (hours, rest) = (seconds / 3600, seconds.rem_euclid(3600));
            Some(format!("{hours}:{:02}:{:02}", rest / 60, rest % 60))
        }
        Data::DateTime(at) => {
            let (year, month, day, hour, minute, second, milli) = at.to_ymd_hms_milli();
            let date = format!("{year:04}-{month:02}-{day:02}");
            Some(match (hour, minute, second, milli) {
                (0, 0, 0, 0) => date,
                (_, _, _, 0) => format!("{date} {hour:02}:{minute:02}:{second:02}"),
                _ => format!("{date} {hour:02}:{minute:02}:{second:02}.{milli:03}"),
            })
        }
    }
}

/// A number as text: whole numbers without a fraction (Excel stores every number as a float).
fn number_text(value: f64) -> String {
    const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0; // 2^53
    if value.is_finite() && value.fract() == 0.0 && value.abs() < EXACT_INTEGERS {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// Cells written as one CSV line: how a workbook row is kept in the dead letter.
fn csv_line(cells: &[Option<String>]) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing to memory cannot fail; an empty line is still a faithful "no cells".
    let _ = writer.write_record(cells.iter().map(|c| c.as_deref().unwrap_or_default()));
    writer.into_inner().unwrap_or_default()
}

/// Which sheet of a workbook holds a source's rows: the one named after the source, else the
/// first one.
pub fn choose_sheet(names: &[String], source: &str) -> Option<String> {
    names
        .iter()
        .find(|name| name.trim().eq_ignore_ascii_case(source))
        .or_else(|| names.first())
        .cloned()
}

impl WorkbookRecords {
    /// Opens a workbook and reads its header row. `Err` when the workbook cannot be read or its
    /// header does not satisfy the contract; the problem's reason says which.
    pub fn open(bytes: Vec<u8>, contract: &SourceContract) -> Result<Self, WorkbookProblem> {
        let unreadable = |what: String| WorkbookProblem::Unreadable(FileProblem::plain(what));
        let mut workbook: Sheets<Cursor<Vec<u8>>> =
            calamine::open_workbook_auto_from_rs(Cursor::new(bytes))
                .map_err(|e| unreadable(format!("workbook cannot be opened: {e}")))?;
        let sheet = choose_sheet(&workbook.sheet_names(), &contract.source)
            .ok_or_else(|| unreadable("workbook has no sheet".into()))?;
        let quoted = clip(&sheet, QUOTED_TEXT_BYTES);
        let values = workbook
            .worksheet_range(&sheet)
            .map_err(|e| unreadable(format!("sheet '{quoted}' cannot be read: {e}")))?;
        let formulas = workbook
            .worksheet_formula(&sheet)
            .map_err(|e| unreadable(format!("formulas of sheet '{quoted}' cannot be read: {e}")))?;
        let bounds = [values.start(), formulas.start()];
        let ends = [values.end(), formulas.end()];
        let (Some(first_row), Some(first_column)) = (
            bounds.iter().flatten().map(|s| s.0).min(),
            bounds.iter().flatten().map(|s| s.1).min(),
        ) else {
            return Err(WorkbookProblem::Unreadable(FileProblem {
                missing_columns: contract
                    .columns
                    .iter()
                    .filter(|c| c.required)
                    .map(|c| c.name.clone())
                    .collect(),
                ..FileProblem::plain(format!("sheet '{quoted}' is empty: no header row"))
            }));
        };
        let last_row = ends
            .iter()
            .flatten()
            .map(|e| e.0)
            .max()
            .unwrap_or(first_row);
        let last_column = ends
            .iter()
            .flatten()
            .map(|e| e.1)
            .max()
            .unwrap_or(first_column);
        let mut records = Self {
            sheet,
            values,
            formulas,
            header: Vec::new(),
            mapping: contract.map_header::<String>(&[]),
            fingerprint: Arc::from(""),
            first_column,
            width: last_column - first_column + 1,
            // The range starts at the first cell holding something: the header row.
            next_row: first_row + 1,
            last_row,
            blank_rows: 0,
            drift: Drift::default(),
        };
        let header_cells = records.cells(first_row);
        let header: Vec<String> = header_cells
            .iter()
            .map(|c| c.clone().unwrap_or_default())
            .collect();
        let mapping = contract.map_header(&header);
        if !mapping.is_usable() {
            let problem = header_problem(&mapping, &header);
            return Err(WorkbookProblem::Header {
                problem,
                records: Box::new(records),
            });
        }
        records.drift.record(&mapping);
        records.fingerprint = schema_fingerprint(header.iter().map(String::as_str)).into();
        records.mapping = mapping;
        records.header = header;
        Ok(records)
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The cells of one sheet row across the table's columns, as text.
    fn cells(&self, row: u32) -> Vec<Option<String>> {
        (0..self.width)
            .map(|offset| {
                self.values
                    .get_value((row, self.first_column + offset))
                    .and_then(cell_text)
            })
            .collect()
    }

    /// The first cell of a row holding a formula saved without its value.
    fn formula_without_value(&self, row: u32) -> Option<(u32, String)> {
        (0..self.width).find_map(|offset| {
            let column = self.first_column + offset;
            let formula = self.formulas.get_value((row, column))?;
            let value = self.values.get_value((row, column));
            (!formula.is_empty() && matches!(value, None | Some(Data::Empty)))
                .then(|| (column, formula.clone()))
        })
    }

    fn row_is_blank(&self, row: u32, cells: &[Option<String>]) -> bool {
        cells.iter().all(|c| c.as_deref().is_none_or(str::is_empty))
            && self.formula_without_value(row).is_none()
    }

    /// The next row, or `None` after the last row of the sheet.
    pub fn next_record(&mut self) -> Option<Parsed> {
        while self.next_row <= self.last_row {
            let row = self.next_row;
            self.next_row += 1;
            let cells = self.cells(row);
            if self.row_is_blank(row, &cells) {
                self.blank_rows += 1;
                continue;
            }
            return Some(self.classify(row, cells));
        }
        None
    }

    fn classify(&self, row: u32, cells: Vec<Option<String>>) -> Parsed {
        let line = row_number(row);
        if let Some((column, formula)) = self.formula_without_value(row) {
            return Parsed::Bad {
                line,
                reason: format!(
                    "cell {} holds the formula ={} saved without its value (the workbook was \
                     written without calculating it): open and save it in Excel, or send the \
                     value",
                    cell_name(row, column),
                    clip(&formula, QUOTED_TEXT_BYTES)
                ),
                raw: csv_line(&cells),
            };
        }
        let text = |i: usize| cells.get(i).map(|c| c.clone().unwrap_or_default());
        let values = self
            .mapping
            .column_positions
            .iter()
            .map(|position| position.and_then(text))
            .collect();
        let rescued = rescued_json(self.mapping.extra_columns.iter().filter_map(|(i, name)| {
            text(*i).map(|v| (name.as_str(), serde_json::Value::String(v)))
        }));
        Parsed::Row {
            line,
            values,
            rescued,
            fingerprint: Arc::clone(&self.fingerprint),
        }
    }
}

/// Why a workbook lands no rows.
pub enum WorkbookProblem {
    /// It cannot be opened, or its sheet read: nothing of it can be dead-lettered as rows.
    Unreadable(FileProblem),
    /// Its header does not satisfy the contract: every row goes to the dead letter.
    Header {
        problem: FileProblem,
        records: Box<WorkbookRecords>,
    },
}

impl WorkbookRecords {
    /// The header row and every row after it, each as (line, is_header, CSV line, blank), for a
    /// workbook whose header the contract refuses.
    pub fn into_raw_rows(self) -> impl Iterator<Item = (u64, bool, Vec<u8>, bool)> {
        let header_row = self.next_row - 1;
        (header_row..=self.last_row).map(move |row| {
            let cells = self.cells(row);
            let blank = row != header_row && self.row_is_blank(row, &cells);
            (row_number(row), row == header_row, csv_line(&cells), blank)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_names_run_past_z() {
        assert_eq!(cell_name(0, 0), "A1");
        assert_eq!(cell_name(11, 2), "C12");
        assert_eq!(cell_name(0, 25), "Z1");
        assert_eq!(cell_name(0, 26), "AA1");
        assert_eq!(cell_name(0, 701), "ZZ1");
        assert_eq!(cell_name(0, 702), "AAA1");
    }

    #[test]
    fn numbers_read_as_excel_shows_them() {
        assert_eq!(cell_text(&Data::Float(1250.0)).unwrap(), "1250");
        assert_eq!(cell_text(&Data::Float(-3.0)).unwrap(), "-3");
        assert_eq!(cell_text(&Data::Float(220.5)).unwrap(), "220.5");
        assert_eq!(cell_text(&Data::Float(0.1)).unwrap(), "0.1");
        assert_eq!(cell_text(&Data::Int(7)).unwrap(), "7");
        assert_eq!(cell_text(&Data::Bool(true)).unwrap(), "TRUE");
        assert_eq!(cell_text(&Data::Empty), None);
    }

    #[test]
    fn the_sheet_named_after_the_source_wins_over_the_first() {
        let names = vec!["Notes".to_string(), " Fraud_Labels ".to_string()];
        assert_eq!(
            choose_sheet(&names, "fraud_labels").unwrap(),
            " Fraud_Labels "
        );
        assert_eq!(choose_sheet(&names, "payments").unwrap(), "Notes");
        assert_eq!(choose_sheet(&[], "payments"), None);
    }
}
