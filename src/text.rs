//! Untrusted text made safe for a terminal or a log line: node ids, NACK
//! messages, resource names, check details, anything a proxy, an endpoint
//! or a file chose.
//!
//! Two dangers, two answers:
//! - **Control characters** forge log lines (`\n`), rewrite the operator's
//!   terminal (ESC and C1 sequences: colours, cursor moves, window titles)
//!   or reorder what is shown (bidi overrides); **format characters**
//!   (Unicode category Cf: zero-width spaces and joiners, the byte order
//!   mark, invisible operators, tags) make two different names look the
//!   same. Each is written as a visible escape (`\n`, `\x1b`, `\u{9b}`,
//!   `\u{202e}`, `\u{200b}`); ordinary Unicode is kept.
//!
//! Text teal stores and shows again (a zone) must be **printable text**:
//! none of these at all ([`is_plain`]), one rule wherever it is checked.
//! - **Length**: a 4 MB node id must not become a 4 MB log line or a table
//!   a screen wide. Text is cut after a number of characters and marked
//!   with [`CUT`].
//!
//! The escaping is for people, not for parsing back: a backslash is left
//! as it is, so paths and regexes stay readable, and `\n` in the output may
//! have been a newline or the two characters `\` `n`. `-o json` is the
//! lossless form.
//!
//! [`Untrusted`] wraps a `&str` for `format!`; [`SafeWriter`] does the same
//! to anything written through [`fmt::Write`] (a `Display` or `Debug`
//! value), which is how the log formatter bounds every field.

use std::fmt::{self, Write as _};

/// Marks text that was cut.
pub(crate) const CUT: char = '…';

/// How many characters of one untrusted value a terminal line or a log
/// field shows by default.
pub(crate) const DEFAULT_MAX_CHARS: usize = 1024;

/// How `c` is shown, if it cannot be shown as itself.
fn escape(c: char) -> Option<Escape> {
    let code = u32::from(c);
    let named = match c {
        '\n' => Some('n'),
        '\r' => Some('r'),
        '\t' => Some('t'),
        _ => None,
    };
    if let Some(n) = named {
        return Some(Escape::Named(n));
    }
    match code {
        // C0 controls and DEL.
        0x00..=0x1f | 0x7f => Some(Escape::Byte(code)),
        // C1 controls (0x9b is a one-character CSI on some terminals), and
        // the Unicode line and paragraph separators (line breaks to some
        // log viewers).
        0x80..=0x9f | 0x2028 | 0x2029 => Some(Escape::Unicode(code)),
        _ if is_format(code) => Some(Escape::Unicode(code)),
        _ => None,
    }
}

/// Whether `code` is a format character (Unicode general category Cf, as
/// of Unicode 16): invisible, or changing how the text around it is
/// shown, among them the bidi marks, embeddings, overrides and isolates
/// that make a terminal show text in another order than it is, and the
/// zero-width space and joiners that make two names look the same.
fn is_format(code: u32) -> bool {
    matches!(
        code,
        0x00ad
            | 0x0600..=0x0605
            | 0x061c
            | 0x06dd
            | 0x070f
            | 0x0890..=0x0891
            | 0x08e2
            | 0x180e
            | 0x200b..=0x200f
            | 0x202a..=0x202e
            | 0x2060..=0x2064
            | 0x2066..=0x206f
            | 0xfeff
            | 0xfff9..=0xfffb
            | 0x110bd
            | 0x110cd
            | 0x13430..=0x1343f
            | 0x1bca0..=0x1bca3
            | 0x1d173..=0x1d17a
            | 0xe0001
            | 0xe0020..=0xe007f
    )
}

#[derive(Clone, Copy)]
enum Escape {
    /// `\n`, `\r`, `\t`.
    Named(char),
    /// `\x1b`.
    Byte(u32),
    /// `\u{9b}`.
    Unicode(u32),
}

impl Escape {
    /// How many characters the escape takes.
    fn len(self) -> usize {
        match self {
            Escape::Named(_) => 2,
            Escape::Byte(_) => 4,
            // `\u{` + the hex digits + `}`: format characters reach five
            // digits (the tag characters at U+E0000).
            Escape::Unicode(code) => {
                let digits = (u32::BITS - code.leading_zeros()).div_ceil(4).max(1);
                4 + usize::try_from(digits).unwrap_or(8)
            }
        }
    }
}

impl fmt::Display for Escape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Escape::Named(c) => write!(f, "\\{c}"),
            Escape::Byte(code) => write!(f, "\\x{code:02x}"),
            Escape::Unicode(code) => write!(f, "\\u{{{code:x}}}"),
        }
    }
}

/// Whether `c` is shown as an escape rather than as itself.
pub(crate) fn needs_escape(c: char) -> bool {
    escape(c).is_some()
}

/// Whether `text` would be shown unchanged (no escape needed; length not
/// considered): printable text, with no control, format (Cf), line or
/// paragraph separator character.
pub(crate) fn is_plain(text: &str) -> bool {
    text.chars().all(|c| escape(c).is_none())
}

/// A [`fmt::Write`] that escapes what goes through it and stops after
/// `max_chars` characters of output; [`SafeWriter::finish`] adds [`CUT`]
/// if anything was left out. The output is at most `max_chars + 1`
/// characters, however much is written, and the work done past the limit
/// is only skipping.
#[derive(Debug)]
pub(crate) struct SafeWriter<W> {
    inner: W,
    /// Characters still allowed.
    left: usize,
    /// Something was left out.
    cut: bool,
}

impl<W: fmt::Write> SafeWriter<W> {
    /// Writes into `inner`, at most `max_chars` characters before the mark.
    pub(crate) fn new(inner: W, max_chars: usize) -> SafeWriter<W> {
        SafeWriter {
            inner,
            left: max_chars,
            cut: false,
        }
    }

    /// Whether something was left out so far.
    #[cfg(test)]
    pub(crate) fn was_cut(&self) -> bool {
        self.cut
    }

    /// Marks the text as cut even if nothing was left out here (the caller
    /// cut it before writing).
    pub(crate) fn mark_cut(&mut self) {
        self.cut = true;
    }

    /// Writes the [`CUT`] mark if needed and returns the inner writer.
    pub(crate) fn finish(mut self) -> Result<W, fmt::Error> {
        if self.cut {
            self.inner.write_char(CUT)?;
        }
        Ok(self.inner)
    }
}

impl<W: fmt::Write> fmt::Write for SafeWriter<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.cut {
            return Ok(());
        }
        // Plain runs are copied in one piece; the loop only stops at
        // characters that need an escape or at the limit.
        let mut plain_start = 0;
        let mut plain_chars = 0;
        for (i, c) in s.char_indices() {
            let esc = escape(c);
            let width = esc.map_or(1, Escape::len);
            if width > self.left - plain_chars {
                self.inner.write_str(&s[plain_start..i])?;
                self.cut = true;
                return Ok(());
            }
            match esc {
                None => plain_chars += 1,
                Some(e) => {
                    self.inner.write_str(&s[plain_start..i])?;
                    self.left -= plain_chars;
                    plain_chars = 0;
                    write!(self.inner, "{e}")?;
                    self.left -= width;
                    plain_start = i + c.len_utf8();
                }
            }
        }
        self.left -= plain_chars;
        self.inner.write_str(&s[plain_start..])
    }
}

/// Untrusted text for a terminal or a log: escaped and cut (see the
/// module doc). `format!("{}", untrusted(msg))`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Untrusted<'a> {
    text: &'a str,
    max_chars: usize,
}

/// `text`, escaped and cut at [`DEFAULT_MAX_CHARS`].
pub(crate) fn untrusted(text: &str) -> Untrusted<'_> {
    Untrusted {
        text,
        max_chars: DEFAULT_MAX_CHARS,
    }
}

impl<'a> Untrusted<'a> {
    /// The same text cut at `max_chars` characters instead.
    pub(crate) fn max_chars(self, max_chars: usize) -> Untrusted<'a> {
        Untrusted { max_chars, ..self }
    }
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut w = SafeWriter::new(&mut *f, self.max_chars);
        w.write_str(self.text)?;
        w.finish().map(|_| ())
    }
}

/// `text` escaped and cut at `max_chars`, as a `String`.
pub(crate) fn safe(text: &str, max_chars: usize) -> String {
    untrusted(text).max_chars(max_chars).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_text_is_kept() {
        for s in ["", "edge-1", "héllo wörld →", "日本語", "a\\nb", "🦀 ok"] {
            assert_eq!(safe(s, 100), s);
            assert!(is_plain(s));
        }
    }

    #[test]
    fn every_c0_c1_and_del_is_escaped() {
        for code in (0x00..=0x1f).chain([0x7f]).chain(0x80..=0x9f) {
            let c = char::from_u32(code).expect("a char");
            let out = safe(&format!("a{c}b"), 100);
            assert!(!out.contains(c), "{code:#x}: {out:?}");
            assert!(out.starts_with("a\\") && out.ends_with('b'), "{out:?}");
            assert!(!is_plain(&c.to_string()));
        }
        assert_eq!(safe("a\nb\r\tc", 100), "a\\nb\\r\\tc");
        assert_eq!(safe("\x1b[31mred", 100), "\\x1b[31mred");
        assert_eq!(safe("\x00\x7f", 100), "\\x00\\x7f");
        assert_eq!(safe("\u{9b}2J", 100), "\\u{9b}2J");
    }

    #[test]
    fn line_separators_and_bidi_controls_are_escaped() {
        assert_eq!(safe("a\u{2028}b", 100), "a\\u{2028}b");
        assert_eq!(safe("\u{202e}txt.exe", 100), "\\u{202e}txt.exe");
        assert_eq!(safe("\u{2066}x\u{2069}", 100), "\\u{2066}x\\u{2069}");
    }

    #[test]
    fn invisible_format_characters_are_escaped_and_not_plain() {
        assert_eq!(safe("a\u{200b}b", 100), "a\\u{200b}b");
        assert_eq!(safe("\u{feff}x\u{ad}", 100), "\\u{feff}x\\u{ad}");
        assert_eq!(safe("tag\u{e0041}", 100), "tag\\u{e0041}");
        for hidden in [
            "a\u{200b}b",
            "\u{202e}",
            "a\u{2028}",
            "\u{2029}",
            "\u{feff}",
            "\u{2060}",
        ] {
            assert!(!is_plain(hidden), "{hidden:?}");
        }
        assert!(
            is_plain("eu-west-1a ζώνη 日本 🦀"),
            "ordinary Unicode is kept"
        );
    }

    #[test]
    fn long_text_is_cut_with_a_mark() {
        assert_eq!(safe("abcdef", 6), "abcdef");
        assert_eq!(safe("abcdefg", 6), "abcdef…");
        assert_eq!(
            safe(&"x".repeat(4 << 20), 10),
            format!("{}…", "x".repeat(10))
        );
        // An escape is never split: it fits whole or is left out.
        assert_eq!(safe("abc\x1b", 5), "abc…");
        assert_eq!(safe("abc\x1b", 7), "abc\\x1b");
    }

    #[test]
    fn cuts_fall_on_char_boundaries() {
        assert_eq!(safe("日本語テキスト", 3), "日本語…");
        assert_eq!(safe("🦀🦀🦀", 2), "🦀🦀…");
        assert_eq!(safe("é", 0), "…");
        assert_eq!(safe("", 0), "");
    }

    #[test]
    fn a_five_digit_escape_counts_all_its_characters() {
        // U+E0020 (a tag character) shows as `\u{e0020}`: nine characters.
        let out = safe("\u{e0020}\u{e0020}", 9);
        assert_eq!(out, "\\u{e0020}…");
        assert_eq!(safe("\u{e0020}", 8), "…");
        assert_eq!(safe("\u{9b}", 6), "\\u{9b}");
    }

    #[test]
    fn pieces_written_separately_share_one_budget() {
        let mut w = SafeWriter::new(String::new(), 5);
        w.write_str("abc").expect("write");
        w.write_str("\n").expect("write");
        w.write_str("d").expect("write");
        assert!(w.was_cut());
        assert_eq!(w.finish().expect("finish"), "abc\\n…");
    }

    fn any_text() -> impl Strategy<Value = String> {
        let ch = prop_oneof![
            any::<char>(),
            (0u32..0xa0).prop_map(|c| char::from_u32(c).unwrap_or('?')),
            prop::sample::select(vec!['\u{2028}', '\u{202e}', '\u{2066}', '\u{1b}']),
        ];
        prop::collection::vec(ch, 0..300).prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #[test]
        fn output_is_bounded_and_free_of_controls(text in any_text(), max in 0usize..200) {
            let out = safe(&text, max);
            prop_assert!(out.chars().count() <= max + 1, "{} chars: {out:?}", out.chars().count());
            prop_assert!(out.chars().all(|c| !c.is_control()), "{out:?}");
            prop_assert!(is_plain(&out), "{out:?}");
            if is_plain(&text) && text.chars().count() <= max {
                prop_assert_eq!(out, text);
            }
        }
    }
}
