//! The knowledge-time convention: a landing path may carry the moment its rows became knowable.
//!
//! A path component (folder or file name) containing `YYYY-MM-DD` or `YYYY-MM-DDTHH-MM`
//! (optionally `-SS`; `T`, `_` or a space between date and time; `-` or `:` between time parts)
//! gives the file's knowledge time, read as UTC. The component nearest the file wins, so
//! `payments/2024-11-15/batch_2024-11-15T09-15.csv` is known at 09:15. A date alone means
//! midnight UTC that day. Paths without such a part are known at ingestion time.

use std::path::Path;
use std::sync::OnceLock;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use regex::Regex;

fn stamp_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        Regex::new(r"(\d{4})-(\d{2})-(\d{2})(?:[T_ ](\d{2})[-:](\d{2})(?:[-:](\d{2}))?)?")
            .expect("the knowledge-time pattern is a valid regex")
    })
}

fn stamp_in(component: &str) -> Option<DateTime<Utc>> {
    stamp_pattern()
        .captures_iter(component)
        .filter_map(|caps| {
            let number = |i: usize| caps.get(i).and_then(|m| m.as_str().parse::<u32>().ok());
            let date =
                NaiveDate::from_ymd_opt(i32::try_from(number(1)?).ok()?, number(2)?, number(3)?)?;
            let time = match (number(4), number(5)) {
                (Some(h), Some(m)) => NaiveTime::from_hms_opt(h, m, number(6).unwrap_or(0))?,
                _ => NaiveTime::MIN,
            };
            Some(date.and_time(time).and_utc())
        })
        .last()
}

/// The knowledge time a landing path carries, if any (see the module docs for the convention).
pub fn known_at_from_path(relative_path: &Path) -> Option<DateTime<Utc>> {
    relative_path
        .components()
        .rev()
        .filter_map(|c| c.as_os_str().to_str())
        .find_map(stamp_in)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn file_name_with_time_wins_over_folder_date() {
        let path = Path::new("payments/2024-11-14/batch_2024-11-15T09-15.csv");
        assert_eq!(known_at_from_path(path), Some(at(2024, 11, 15, 9, 15, 0)));
    }

    #[test]
    fn folder_date_applies_when_file_name_has_none() {
        let path = Path::new("accounts/2024-11-16/account_details.csv");
        assert_eq!(known_at_from_path(path), Some(at(2024, 11, 16, 0, 0, 0)));
    }

    #[test]
    fn seconds_and_colons_are_accepted() {
        let path = Path::new("risk_feed/risk_2024-11-16 07:05:09.csv");
        assert_eq!(known_at_from_path(path), Some(at(2024, 11, 16, 7, 5, 9)));
    }

    #[test]
    fn compressed_files_and_pulled_pages_carry_their_stamp() {
        let gzip = Path::new("payments/2024-11-18/payments_2024-11-18T09-00.csv.gz");
        assert_eq!(known_at_from_path(gzip), Some(at(2024, 11, 18, 9, 0, 0)));
        let page = Path::new("fraud_labels/api/labels_2026-11-28T04-10-05_3fa2b1c4.jsonl");
        assert_eq!(known_at_from_path(page), Some(at(2026, 11, 28, 4, 10, 5)));
    }

    #[test]
    fn no_stamp_or_impossible_date_gives_none() {
        assert_eq!(
            known_at_from_path(Path::new("payment_transactions.csv")),
            None
        );
        assert_eq!(known_at_from_path(Path::new("x/2024-13-40.csv")), None);
    }
}
