//! The context that collects problems, and readers for scalar values.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::diag::Diagnostic;
use crate::config::yaml::{Key, Node, Pos, Value};

pub(super) struct Cx<'a> {
    pub(super) file: &'a str,
    pub(super) diags: Vec<Diagnostic>,
}

impl Cx<'_> {
    pub(super) fn err(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.col,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn expected(&mut self, node: &Node, path: &str, what: &str) {
        let found = node.kind();
        self.err(node.pos, path, format!("expected {what}, found {found}"));
    }
}

/// The entries of a mapping whose keys were checked against a list.
pub(super) struct Fields<'n> {
    pub(super) pos: Pos,
    pub(super) path: String,
    pub(super) entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    pub(super) fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.text == key)
            .map(|(_, v)| v)
    }

    pub(super) fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub(super) fn required(&self, cx: &mut Cx<'_>, key: &str) -> Option<&'n Node> {
        let found = self.get(key);
        if found.is_none() {
            cx.err(
                self.pos,
                &self.path,
                format!("missing required key `{key}`"),
            );
        }
        found
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn fields<'n>(
    cx: &mut Cx<'_>,
    node: &'n Node,
    path: &str,
    allowed: &[&str],
) -> Option<Fields<'n>> {
    let Value::Map(entries) = &node.value else {
        cx.expected(node, path, "a mapping");
        return None;
    };
    for (key, _) in entries {
        if !allowed.contains(&key.text.as_str()) {
            cx.err(
                key.pos,
                &join(path, &key.text),
                format!(
                    "unknown key {:?} (expected one of: {})",
                    key.text,
                    allowed.join(", ")
                ),
            );
        }
    }
    Some(Fields {
        pos: node.pos,
        path: path.to_owned(),
        entries,
    })
}

/// A mapping whose keys are names chosen by the user.
pub(super) fn named<'n>(cx: &mut Cx<'_>, node: &'n Node, path: &str) -> Option<&'n [(Key, Node)]> {
    match &node.value {
        Value::Map(entries) => Some(entries),
        _ => {
            cx.expected(node, path, "a mapping of names");
            None
        }
    }
}

pub(super) fn seq<'n>(cx: &mut Cx<'_>, node: &'n Node, path: &str) -> Option<&'n [Node]> {
    match &node.value {
        Value::Seq(items) => Some(items),
        _ => {
            cx.expected(node, path, "a list");
            None
        }
    }
}

pub(super) fn text(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<String> {
    match &node.value {
        Value::Scalar(s) => Some(s.clone()),
        _ => {
            cx.expected(node, path, "a string");
            None
        }
    }
}

pub(super) fn uint(cx: &mut Cx<'_>, node: &Node, path: &str, min: u32, max: u32) -> Option<u32> {
    let s = text(cx, node, path)?;
    match s.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        Ok(n) => {
            cx.err(
                node.pos,
                path,
                format!("{n} is out of range (must be from {min} to {max})"),
            );
            None
        }
        Err(_) => {
            cx.err(
                node.pos,
                path,
                format!("expected a whole number from {min} to {max}, found {s:?}"),
            );
            None
        }
    }
}

/// Parses a duration of the config ([`crate::config::parse_duration`],
/// the parser the CLI uses too), at most a day.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let total = crate::config::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))?;
    // Envoy's Duration seconds are bounded; a day is plenty for any of ours.
    if total > Duration::from_secs(86_400) {
        return Err(format!("bad duration {s:?}: longer than 24h"));
    }
    Ok(total)
}

pub(super) fn duration(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    allow_zero: bool,
) -> Option<Duration> {
    let s = text(cx, node, path)?;
    match parse_duration(&s) {
        Ok(d) if d.is_zero() && !allow_zero => {
            cx.err(
                node.pos,
                path,
                format!("duration {s:?} must be more than 0"),
            );
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            cx.err(node.pos, path, e);
            None
        }
    }
}

pub(super) fn opt_duration(
    cx: &mut Cx<'_>,
    f: &Fields<'_>,
    key: &str,
    default: Duration,
    allow_zero: bool,
) -> Option<Duration> {
    match f.get(key) {
        None => Some(default),
        Some(node) => duration(cx, node, &f.path(key), allow_zero),
    }
}

pub(super) fn opt_uint(
    cx: &mut Cx<'_>,
    f: &Fields<'_>,
    key: &str,
    default: u32,
    min: u32,
    max: u32,
) -> Option<u32> {
    match f.get(key) {
        None => Some(default),
        Some(node) => uint(cx, node, &f.path(key), min, max),
    }
}

/// Parses `IP:PORT` (IPv6 as `[::1]:PORT`).
pub(crate) fn parse_address(s: &str) -> Result<SocketAddr, String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("bad address {s:?}: expected IP:PORT"));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p != 0 => p,
        _ => {
            return Err(format!(
                "bad address {s:?}: port must be a number from 1 to 65535"
            ));
        }
    };
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = bare.parse().map_err(|_| {
        format!("bad address {s:?}: {host:?} is not an IP address (names are not resolved)")
    })?;
    if ip.is_ipv6() && !host.starts_with('[') {
        return Err(format!(
            "bad address {s:?}: write IPv6 addresses in brackets, like [::1]:8080"
        ));
    }
    Ok(SocketAddr::new(ip, port))
}

pub(super) fn address(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<SocketAddr> {
    let s = text(cx, node, path)?;
    match parse_address(&s) {
        Ok(a) => Some(a),
        Err(e) => {
            cx.err(node.pos, path, e);
            None
        }
    }
}

/// Service and fleet names: they become cluster names and host names.
pub(super) fn is_dns_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && !s.ends_with('-')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Group, listener and virtual host names.
pub(super) fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

pub(super) fn check_name(cx: &mut Cx<'_>, key: &Key, path: &str, what: &str, dns: bool) -> bool {
    let ok = if dns {
        is_dns_name(&key.text)
    } else {
        is_plain_name(&key.text)
    };
    if !ok {
        let rule = if dns {
            "use lowercase letters, digits and '-', starting with a letter (at most 63)"
        } else {
            "use letters, digits, '-', '_' and '.'"
        };
        cx.err(
            key.pos,
            path,
            format!("invalid {what} name {:?}: {rule}", key.text),
        );
    }
    ok
}

pub(super) fn http_path(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<String> {
    let s = text(cx, node, path)?;
    if !s.starts_with('/') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.err(
            node.pos,
            path,
            format!("bad path {s:?}: must start with '/' and contain no spaces"),
        );
        return None;
    }
    Some(s)
}

/// A route's `regex`: a non-empty pattern that parses as a regular
/// expression. Checked with Rust's `regex-syntax`, which shares RE2's
/// syntax for everything but a few extensions (see docs/configuration.md), so what
/// passes here is what Envoy's RE2 compiles in all but those cases.
pub(super) fn path_regex(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<String> {
    let s = text(cx, node, path)?;
    if s.is_empty() {
        cx.err(node.pos, path, "empty regex: it would match no path");
        return None;
    }
    if let Err(e) = regex_syntax::Parser::new().parse(&s) {
        let why = match &e {
            regex_syntax::Error::Parse(e) => e.kind().to_string(),
            regex_syntax::Error::Translate(e) => e.kind().to_string(),
            other => other.to_string(),
        };
        cx.err(node.pos, path, format!("bad regex {s:?}: {why}"));
        return None;
    }
    Some(s)
}
