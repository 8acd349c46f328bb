//! Minimal `.xlsx` workbooks written with the `zip` crate, for tests and the sample workbook.
//!
//! Only what Bronze reads is written: sheets of inline-string, number, date and formula cells
//! (a formula with or without the value Excel would have saved with it). Entries are stored
//! uncompressed with a fixed timestamp, so the same cells always make the same bytes.

use std::io::Write;

/// One cell of a sheet.
#[derive(Debug, Clone)]
pub enum Cell {
    Empty,
    Text(String),
    Number(f64),
    /// A date as Excel stores it: days since 1899-12-30, shown with the built-in date format.
    Date(f64),
    /// A formula and the value saved with it, if any.
    Formula {
        formula: String,
        cached: Option<Box<Cell>>,
    },
}

pub fn text(value: &str) -> Cell {
    Cell::Text(value.to_string())
}

/// A calendar date as an Excel date cell.
pub fn date(year: i32, month: u32, day: u32) -> Cell {
    let epoch = chrono::NaiveDate::from_ymd_opt(1899, 12, 30).unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(year, month, day).unwrap();
    Cell::Date((day - epoch).num_days() as f64)
}

pub fn formula(formula: &str, cached: Option<Cell>) -> Cell {
    Cell::Formula {
        formula: formula.to_string(),
        cached: cached.map(Box::new),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn column_letters(mut index: usize) -> String {
    let mut letters = Vec::new();
    index += 1;
    while index > 0 {
        letters.push(b'A' + ((index - 1) % 26) as u8);
        index = (index - 1) / 26;
    }
    letters.reverse();
    String::from_utf8(letters).unwrap()
}

fn cell_xml(reference: &str, cell: &Cell) -> String {
    match cell {
        Cell::Empty => String::new(),
        Cell::Text(value) => format!(
            r#"<c r="{reference}" t="inlineStr"><is><t xml:space="preserve">{}</t></is></c>"#,
            escape(value)
        ),
        Cell::Number(value) => format!(r#"<c r="{reference}"><v>{value}</v></c>"#),
        Cell::Date(serial) => format!(r#"<c r="{reference}" s="1"><v>{serial}</v></c>"#),
        Cell::Formula { formula, cached } => {
            let f = format!("<f>{}</f>", escape(formula));
            match cached.as_deref() {
                None => format!(r#"<c r="{reference}">{f}</c>"#),
                Some(Cell::Text(value)) => {
                    format!(
                        r#"<c r="{reference}" t="str">{f}<v>{}</v></c>"#,
                        escape(value)
                    )
                }
                Some(Cell::Date(serial)) => {
                    format!(r#"<c r="{reference}" s="1">{f}<v>{serial}</v></c>"#)
                }
                Some(Cell::Number(value)) => format!(r#"<c r="{reference}">{f}<v>{value}</v></c>"#),
                Some(other) => panic!("unsupported cached value {other:?}"),
            }
        }
    }
}

fn sheet_xml(rows: &[Vec<Cell>]) -> String {
    let mut xml = String::from(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>"#,
    );
    for (r, row) in rows.iter().enumerate() {
        let number = r + 1;
        xml.push_str(&format!(r#"<row r="{number}">"#));
        for (c, cell) in row.iter().enumerate() {
            xml.push_str(&cell_xml(&format!("{}{number}", column_letters(c)), cell));
        }
        xml.push_str("</row>");
    }
    xml.push_str("</sheetData></worksheet>");
    xml
}

/// An `.xlsx` workbook with the given sheets, in order.
pub fn xlsx(sheets: &[(&str, Vec<Vec<Cell>>)]) -> Vec<u8> {
    const MAIN: &str = "http://schemas.openxmlformats.org/spreadsheetml/2006/main";
    const RELS: &str = "http://schemas.openxmlformats.org/package/2006/relationships";
    const DOC: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
    let mut types = String::from(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/styles.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>"#,
    );
    let mut workbook = format!(r#"<workbook xmlns="{MAIN}" xmlns:r="{DOC}"><sheets>"#);
    let mut workbook_rels = format!(
        r#"<Relationships xmlns="{RELS}"><Relationship Id="rIdStyles" Type="{DOC}/styles" Target="styles.xml"/>"#
    );
    for (i, (name, _)) in sheets.iter().enumerate() {
        let n = i + 1;
        types.push_str(&format!(r#"<Override PartName="/xl/worksheets/sheet{n}.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>"#));
        workbook.push_str(&format!(
            r#"<sheet name="{}" sheetId="{n}" r:id="rId{n}"/>"#,
            escape(name)
        ));
        workbook_rels.push_str(&format!(
            r#"<Relationship Id="rId{n}" Type="{DOC}/worksheet" Target="worksheets/sheet{n}.xml"/>"#
        ));
    }
    types.push_str("</Types>");
    workbook.push_str("</sheets></workbook>");
    workbook_rels.push_str("</Relationships>");
    let root_rels = format!(
        r#"<Relationships xmlns="{RELS}"><Relationship Id="rId1" Type="{DOC}/officeDocument" Target="xl/workbook.xml"/></Relationships>"#
    );
    // Style 1 is the built-in short date format (14), as Excel gives a typed date.
    let styles = format!(
        r#"<styleSheet xmlns="{MAIN}"><cellXfs count="2"><xf numFmtId="0"/><xf numFmtId="14" applyNumberFormat="1"/></cellXfs></styleSheet>"#
    );

    let mut parts: Vec<(String, String)> = vec![
        ("[Content_Types].xml".into(), types),
        ("_rels/.rels".into(), root_rels),
        ("xl/workbook.xml".into(), workbook),
        ("xl/_rels/workbook.xml.rels".into(), workbook_rels),
        ("xl/styles.xml".into(), styles),
    ];
    for (i, (_, rows)) in sheets.iter().enumerate() {
        parts.push((format!("xl/worksheets/sheet{}.xml", i + 1), sheet_xml(rows)));
    }
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    for (name, content) in parts {
        zip.start_file(name, options).unwrap();
        zip.write_all(content.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}
