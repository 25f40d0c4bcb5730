//! The log: where it goes, when it has colours, and how every field value
//! is made safe.
//!
//! Log lines quote what proxies send (node ids, NACK messages), so every
//! field value, and the message itself, goes through `SafeFields`, which
//! escapes control characters and cuts long values (`crate::text`). It is
//! done here, in the formatter, so that no call site can forget it.
//!
//! Colours only when stderr is a terminal and `NO_COLOR` is unset or empty
//! (<https://no-color.org>): a log file never holds escape codes.

use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

use crate::text::SafeWriter;

/// The environment variable holding the log filter (`info` if unset).
pub(crate) const FILTER_VAR: &str = "TEAL_LOG";

/// Whether the log gets colours: only on a terminal, and not when
/// `NO_COLOR` is set to anything non-empty.
pub(crate) fn colours(stderr_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Sends the log to stderr, filtered by `TEAL_LOG`, each field value cut
/// at `max_value_chars` characters; logs panics as errors.
pub fn init(max_value_chars: usize) {
    let filter = EnvFilter::try_from_env(FILTER_VAR).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .fmt_fields(SafeFields::new(max_value_chars))
        .init();
    // The default hook writes the panic message raw to stderr; this one
    // writes it as one escaped log line like everything else.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), panic = %info, "panicked");
        // With RUST_BACKTRACE set, the backtrace as the default hook prints
        // it: teal's own function names and paths, nothing untrusted.
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            eprintln!("{backtrace}");
        }
    }));
}

/// Formats event and span fields like tracing-subscriber's default
/// (`message key=value ...`), with every value escaped and cut.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SafeFields {
    max_value_chars: usize,
}

impl SafeFields {
    /// Cuts each value at `max_value_chars` characters.
    pub(crate) fn new(max_value_chars: usize) -> SafeFields {
        SafeFields { max_value_chars }
    }
}

impl<'w> MakeVisitor<Writer<'w>> for SafeFields {
    type Visitor = SafeVisitor<'w>;

    fn make_visitor(&self, target: Writer<'w>) -> SafeVisitor<'w> {
        SafeVisitor {
            writer: target,
            max_value_chars: self.max_value_chars,
            empty: true,
            result: Ok(()),
        }
    }
}

/// Writes one event's fields; see [`SafeFields`].
#[derive(Debug)]
pub(crate) struct SafeVisitor<'w> {
    writer: Writer<'w>,
    max_value_chars: usize,
    /// Nothing written yet: no separating space.
    empty: bool,
    result: fmt::Result,
}

impl SafeVisitor<'_> {
    /// Writes `name=` (nothing for the message) and the value, escaped and
    /// cut; `cut` says the caller already left part of it out.
    fn field(&mut self, field: &Field, value: fmt::Arguments<'_>, cut: bool) {
        if self.result.is_err() {
            return;
        }
        self.result = self.write_field(field, value, cut);
    }

    fn write_field(&mut self, field: &Field, value: fmt::Arguments<'_>, cut: bool) -> fmt::Result {
        if !std::mem::take(&mut self.empty) {
            self.writer.write_char(' ')?;
        }
        let name = field.name();
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            if self.writer.has_ansi_escapes() {
                // Italic name, dimmed `=`, as the default formatter does.
                write!(self.writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?;
            } else {
                write!(self.writer, "{name}=")?;
            }
        }
        let mut safe = SafeWriter::new(&mut self.writer, self.max_value_chars);
        safe.write_fmt(value)?;
        if cut {
            safe.mark_cut();
        }
        safe.finish().map(|_| ())
    }
}

impl Visit for SafeVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Cut before quoting, so a 4 MB value costs no more than a short one.
        let end = value
            .char_indices()
            .nth(self.max_value_chars)
            .map_or(value.len(), |(i, _)| i);
        let (head, cut) = (&value[..end], end < value.len());
        if field.name() == "message" {
            self.field(field, format_args!("{head}"), cut);
        } else {
            self.field(field, format_args!("{head:?}"), cut);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, format_args!("{value}"), false);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, format_args!("{value:?}"), false);
    }
}

impl VisitOutput<fmt::Result> for SafeVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for SafeVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What `log` writes with a subscriber like teal's, with or without
    /// colours.
    fn logged(ansi: bool, max: usize, log: impl FnOnce()) -> String {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(ansi)
            .without_time()
            .fmt_fields(SafeFields::new(max))
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = buf.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn values_of_every_kind_are_escaped() {
        let evil = "edge\nINFO forged line\x1b[31m red\u{9b}";
        let out = logged(false, 1024, || {
            let err = io::Error::other(evil);
            tracing::warn!(node = %evil, raw = evil, debug = ?evil, error = &err as &dyn std::error::Error, "NACK {evil}");
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\x1b') && !out.contains('\u{9b}'), "{out:?}");
        assert!(
            out.contains(r"node=edge\nINFO forged line\x1b[31m red\u{9b}"),
            "{out}"
        );
        assert!(out.contains(r"NACK edge\nINFO"), "{out}");
        assert!(out.contains(r#"raw="edge\nINFO"#), "{out}");
    }

    #[test]
    fn long_values_are_cut() {
        let huge = "n".repeat(4 << 20);
        let out = logged(false, 100, || {
            tracing::info!(node = %huge, quoted = huge.as_str(), "proxy connected");
        });
        assert!(out.len() < 400, "{} bytes", out.len());
        assert!(out.contains(&format!("node={}…", "n".repeat(100))), "{out}");
        assert!(
            out.contains(&format!("quoted=\"{}…", "n".repeat(99))),
            "{out}"
        );
    }

    #[test]
    fn no_colours_unless_asked() {
        let plain = logged(false, 1024, || tracing::warn!(node = "x", "hello"));
        assert!(!plain.contains('\x1b'), "{plain:?}");
        let coloured = logged(true, 1024, || tracing::warn!(node = "x", "hello"));
        assert!(coloured.contains('\x1b'), "{coloured:?}");
    }

    #[test]
    fn colours_need_a_terminal_and_no_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some(OsString::new())));
        assert!(!colours(true, Some("1".into())));
        assert!(!colours(false, None));
    }
}
