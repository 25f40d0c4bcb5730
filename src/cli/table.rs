//! Plain-text tables and timestamps for the read commands.
//!
//! Cells hold text from proxies and endpoints (node ids, NACK messages,
//! check details), so the table escapes every cell and cuts it at its
//! column's width (see [`crate::text`]): no cell content can break the
//! layout, reach the terminal raw, or make a line megabytes wide. `-o json`
//! prints the same values whole.

use std::fmt::Write as _;

use crate::text::{CUT, safe, untrusted};

/// The widest a cell is shown, in characters, unless its column says
/// otherwise ([`Table::max_width`]). Long enough for real node ids
/// (`sidecar~10.1.2.3~web-7d9f.prod~prod.svc.cluster.local`).
pub(crate) const CELL_MAX_CHARS: usize = 80;

/// A table: a header row and rows, columns padded to the widest cell and
/// separated by two spaces. Trailing spaces are trimmed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Per column, where it differs from [`CELL_MAX_CHARS`].
    max_widths: Vec<(usize, usize)>,
}

impl Table {
    /// A table with these column titles.
    pub(crate) fn new<S: AsRef<str>>(header: &[S]) -> Table {
        Table {
            header: header.iter().map(|h| h.as_ref().to_owned()).collect(),
            rows: Vec::new(),
            max_widths: Vec::new(),
        }
    }

    /// Cuts the cells of column `column` (from 0) at `chars` characters.
    pub(crate) fn max_width(mut self, column: usize, chars: usize) -> Table {
        self.max_widths.push((column, chars));
        self
    }

    /// Adds a row; missing cells are blank, extra cells are kept.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether there are no rows.
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn column_max(&self, column: usize) -> usize {
        self.max_widths
            .iter()
            .rev()
            .find(|(c, _)| *c == column)
            .map_or(CELL_MAX_CHARS, |(_, w)| *w)
    }

    /// The table as text, one line per row, each ending in `\n`; if a cell
    /// was cut, a last line says so.
    pub(crate) fn render(&self) -> String {
        let mut cut = false;
        let shown: Vec<Vec<String>> = std::iter::once(&self.header)
            .chain(&self.rows)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .map(|(i, cell)| {
                        let max = self.column_max(i);
                        let text = safe(cell, max.saturating_sub(1));
                        cut |= text.ends_with(CUT) && !cell.ends_with(CUT);
                        text
                    })
                    .collect()
            })
            .collect();
        let columns = shown.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &shown {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &shown {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                line.push_str(cell);
                // Padding by hand: a `{:width$}` wider than 65,535 panics.
                let pad = width.saturating_sub(cell.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if cut {
            let _ = writeln!(
                out,
                "(long values are cut with {CUT}; -o json shows them whole)"
            );
        }
        out
    }
}

/// A unix-millis time as UTC `YYYY-MM-DD HH:MM:SSZ`.
pub(crate) fn utc(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A split as `blue=90 green=10`, fleet names escaped (it is printed
/// outside tables too).
pub(crate) fn split(weights: &std::collections::BTreeMap<String, u32>) -> String {
    let parts: Vec<String> = weights
        .iter()
        .map(|(f, w)| format!("{}={w}", untrusted(f).max_chars(CELL_MAX_CHARS)))
        .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_pad_to_the_widest_cell() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec!["edge-1".into(), "SYNCED".into()]);
        t.row(vec!["e".into(), "NACKED v2".into()]);
        assert_eq!(
            t.render(),
            "NAME    STATE\nedge-1  SYNCED\ne       NACKED v2\n"
        );
    }

    #[test]
    fn ragged_rows_and_unicode_widths() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["→x".into()]);
        t.row(vec!["1".into(), "2".into(), "3".into()]);
        assert_eq!(t.render(), "A   B\n→x\n1   2  3\n");
    }

    #[test]
    fn huge_and_hostile_cells_are_cut_and_escaped() {
        let mut t = Table::new(&["PROXY", "STATE"]).max_width(1, 10);
        t.row(vec![
            "p".repeat(70_000),
            "NACKED\n\x1b[31m v2 and more".into(),
        ]);
        t.row(vec!["edge-1".into(), "SYNCED".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(
            lines[1],
            format!("{}…  NACKED\\n…", "p".repeat(CELL_MAX_CHARS - 1))
        );
        assert!(lines[2].starts_with("edge-1 "), "{text}");
        assert!(lines[3].contains("-o json"), "{text}");
        assert!(!text.contains('\x1b'));
        assert!(text.lines().all(|l| l.chars().count() < 120), "{text}");
    }

    #[test]
    fn utc_formats_unix_millis() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_700_000_000_999), "2023-11-14 22:13:20Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn splits_are_sorted() {
        let w = [("green".to_owned(), 10), ("blue".to_owned(), 90)].into();
        assert_eq!(split(&w), "blue=90 green=10");
        assert_eq!(split(&Default::default()), "-");
    }
}
