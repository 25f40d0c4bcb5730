//! Diagnostics: every problem found in a config file, with its place.

use std::fmt;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given to [`Config::parse`](super::Config::parse).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Key path of the offending node, like
    /// `services.web.fleets.blue.endpoints[0]` (empty for the document).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Keeps every position inside `text`. The YAML parser places a problem
/// at the end of input one line past the last one when the file has no
/// final line break, and counts some columns past a line's end; an editor
/// cannot jump there, so such a position becomes the end of the last line
/// (or of its line). Line breaks are counted as YAML counts them: CR LF,
/// CR or LF. One pass over the text, whatever the number of problems.
pub(crate) fn clamp_to(diags: &mut [Diagnostic], text: &str) {
    if diags.is_empty() {
        return;
    }
    let normalized = text.replace("\r\n", "\n");
    let widths: Vec<usize> = normalized
        .split(['\n', '\r'])
        .map(|l| l.chars().count())
        .collect();
    let last = widths.len().max(1);
    for d in diags {
        if d.line > last {
            d.line = last;
            d.column = usize::MAX;
        }
        d.line = d.line.max(1);
        let width = widths.get(d.line - 1).copied().unwrap_or(0);
        d.column = d.column.clamp(1, width + 1);
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config file, in source order. Never empty when
/// returned as an error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub(crate) Vec<Diagnostic>);

impl Diagnostics {
    /// The problems, in source order.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// How many problems there are.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Diagnostics {
    /// One problem per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
