//! The rules of the source tree, kept by tests rather than by memory.
//!
//! **Layers.** [`crate::LAYERS`] orders the top-level modules bottom up.
//! Every path in `src/` that names an item of this crate (`crate::…`,
//! `super::…`, `self::…`, or a child module by name, in a `use` list or
//! in code) must land in a layer at or below its own file's.
//!
//! **No loops inside a layer.** The files of a layer form a graph: one
//! file has an edge to another when one of its paths lands there. A path
//! through a re-export lands in the file that defines the item, so
//! `crate::rollout::Version` points at `rollout/version.rs`, not at
//! `rollout/mod.rs`. A parent's `mod child;` and its `pub use child::…`
//! are no edges: a parent listing and re-exporting its children is its
//! table of contents. Any other use of a child's items by its parent is
//! an edge, so a child using its parent's items while the parent uses the
//! child's is a loop. The graph must have no cycle; the test names the
//! files of each one and the lines that close it.
//!
//! Paths are what is read, not method calls: a file that adds methods to
//! a type defined in another (`impl Driver` in `controller/replica.rs`)
//! depends on that file, and the type calling its own methods is not an
//! edge back. Split that way, a type's file must still name nothing of
//! the files that extend it.
//!
//! **One unit-test convention.** A module's unit tests are `mod tests`:
//! inline while short (up to [`INLINE_TESTS_MAX_LINES`] lines), else in
//! the sibling file `<stem>_tests.rs`, declared as
//! `#[cfg(test)] #[path = "<stem>_tests.rs"] mod tests;` (the stem of a
//! `mod.rs` is its folder's name). The only other test-only module is
//! `fixtures`, builders that the tests of several modules share. No
//! `#[test]` sits outside a test module, and every file under `src/` is
//! declared by some `mod`.
//!
//! Test code may reach anything: a module behind `#[cfg(test)]` (inline
//! or a file) is skipped, and everything else is read, even after it.
//! Comments and the insides of string literals are not code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Above this many lines, a module's unit tests move to their own file.
const INLINE_TESTS_MAX_LINES: usize = 150;

/// Re-exports that point up a layer, each as its file and line: public
/// paths kept for code outside `src/` (integration tests, examples) that
/// still names an item by where it used to be. Each goes once nothing
/// outside names that path.
const KEPT_PATHS: &[(&str, &str)] = &[
    ("rollout/mod.rs", "pub use crate::admin::Backend;"),
    (
        "config/mod.rs",
        "pub use crate::cli::config_commands as commands;",
    ),
];

/// `text` with comments and the insides of string and character literals
/// blanked to spaces, newlines kept: byte offsets and line numbers stay
/// those of `text`, and what is left is code.
fn blank(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let wipe = |out: &mut Vec<u8>, from: usize, to: usize| {
        for byte in &mut out[from..to.min(b.len())] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |n| i + n);
            wipe(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (0usize, i);
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            wipe(&mut out, i, j);
            i = j;
        } else if let Some((open, hashes)) =
            raw_string_at(b, i).filter(|_| i == 0 || !ident(b[i - 1]))
        {
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let end = b[open + 1..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |n| open + 1 + n);
            wipe(&mut out, open + 1, end);
            i = end + close.len();
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            wipe(&mut out, i + 1, j);
            i = j + 1;
        } else if b[i] == b'\'' {
            // A character literal, or a lifetime or a label (left alone).
            if b.get(i + 1) == Some(&b'\\') {
                let end = b[i + 3..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map_or(b.len(), |n| i + 3 + n);
                wipe(&mut out, i + 1, end);
                i = end + 1;
            } else {
                let width = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                if b.get(i + 1 + width) == Some(&b'\'') {
                    wipe(&mut out, i + 1, i + 1 + width);
                    i += width + 2;
                } else {
                    i += 1;
                }
            }
        } else {
            i += 1;
        }
    }
    // Only whole characters were blanked, so the bytes are still UTF-8.
    String::from_utf8_lossy(&out).into_owned()
}

/// If a raw string (`r"…"`, `r#"…"#`, `br"…"`) starts at `i`: the
/// offset of its opening quote and its number of `#`.
fn raw_string_at(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let r = match b.get(i)? {
        b'r' => i,
        b'b' if b.get(i + 1) == Some(&b'r') => i + 1,
        _ => return None,
    };
    let hashes = b[r + 1..].iter().take_while(|&&c| c == b'#').count();
    (b.get(r + 1 + hashes) == Some(&b'"')).then_some((r + 1 + hashes, hashes))
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(u8),
}

/// A token and the byte offset it starts at.
type Token = (Tok, usize);

fn tokens(code: &str) -> Vec<Token> {
    let b = code.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if word(c) {
            let start = i;
            while i < b.len() && word(b[i]) {
                i += 1;
            }
            if !c.is_ascii_digit() {
                out.push((Tok::Ident(code[start..i].to_owned()), start));
            }
        } else if b[i..].starts_with(b"::") {
            out.push((Tok::Sep, i));
            i += 2;
        } else {
            out.push((Tok::Punct(c), i));
            i += 1;
        }
    }
    out
}

fn is_ident(t: Option<&Token>, name: &str) -> bool {
    matches!(t, Some((Tok::Ident(s), _)) if s == name)
}

fn is_punct(t: Option<&Token>, c: u8) -> bool {
    matches!(t, Some((Tok::Punct(p), _)) if *p == c)
}

/// The index of the bracket closing the one opened at `open`.
fn closing(toks: &[Token], open: usize) -> Option<usize> {
    let (o, c) = match toks.get(open)? {
        (Tok::Punct(b'{'), _) => (b'{', b'}'),
        (Tok::Punct(b'['), _) => (b'[', b']'),
        (Tok::Punct(b'('), _) => (b'(', b')'),
        _ => return None,
    };
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t.0 {
            Tok::Punct(p) if p == o => depth += 1,
            Tok::Punct(p) if p == c => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether the attribute `#[…]` whose `[` is at `open` (closed at
/// `close`) compiles its item for tests only: `cfg(test)`, or an
/// `all(…)` with `test` among its terms.
fn is_cfg_test(toks: &[Token], open: usize, close: usize) -> bool {
    let inner = &toks[open + 1..close];
    if !is_ident(inner.first(), "cfg") {
        return false;
    }
    match &inner[1..] {
        [
            (Tok::Punct(b'('), _),
            (Tok::Ident(t), _),
            (Tok::Punct(b')'), _),
        ] => t == "test",
        [(Tok::Punct(b'('), _), (Tok::Ident(all), _), rest @ ..] if all == "all" => {
            let mut depth = 0usize;
            rest.iter().any(|t| match &t.0 {
                Tok::Punct(b'(') => {
                    depth += 1;
                    false
                }
                Tok::Punct(b')') => {
                    depth = depth.saturating_sub(1);
                    false
                }
                Tok::Ident(s) => depth == 1 && s == "test",
                _ => false,
            })
        }
        _ => false,
    }
}

/// A module declared in a file: inline (`mod name { … }`) or in a file
/// of its own (`mod name;`).
#[derive(Debug)]
struct ModDecl {
    name: String,
    /// Where its first attribute (or `mod`) is.
    line: usize,
    /// From the first attribute to the closing brace; none for `mod name;`.
    inline_lines: Option<usize>,
    /// Its `#[path = "…"]`.
    path: Option<String>,
    /// Behind `#[cfg(test)]`.
    test: bool,
}

/// A path naming an item of this crate, made absolute (`["rollout",
/// "machine", "Rollout"]`; a glob ends in `*`).
#[derive(Debug)]
struct Ref {
    path: Vec<String>,
    line: usize,
    /// In a `pub use`, `pub(crate) use`, ….
    reexport: bool,
}

/// A file under `src/`, read for the rules.
struct Source {
    /// Relative to `src/`.
    rel: PathBuf,
    /// Its module path (`["rollout", "machine"]`; the crate root: `[]`).
    module: Vec<String>,
    lines: Vec<String>,
    mods: Vec<ModDecl>,
    /// The paths of its code (not of its test modules).
    refs: Vec<Ref>,
    /// Names it re-exports, each with the path it stands for.
    reexports: BTreeMap<String, Vec<String>>,
    /// Lines of `#[test]` functions outside test modules.
    stray_tests: Vec<usize>,
}

impl Source {
    fn read(src: &Path, file: &Path) -> Source {
        let raw = std::fs::read_to_string(file).unwrap_or_default();
        let rel = file.strip_prefix(src).unwrap_or(file).to_path_buf();
        let code = blank(&raw);
        let lines = Lines::of(&code);
        let (mods, toks, inline, stray_tests) = modules(&tokens(&code), &raw, &lines);
        let scope = Scope {
            module: module_of(&rel),
            inline,
            children: mods
                .iter()
                .filter(|m| !m.test)
                .map(|m| m.name.clone())
                .collect(),
        };
        let (refs, reexports) = paths(&toks, &scope, &lines);
        Source {
            rel,
            module: scope.module,
            lines: raw.lines().map(str::to_owned).collect(),
            mods,
            refs,
            reexports,
            stray_tests,
        }
    }

    /// Line `n` (from 1), trimmed.
    fn line(&self, n: usize) -> &str {
        self.lines.get(n.wrapping_sub(1)).map_or("", |l| l.trim())
    }

    /// Its layer: the first part of its module path.
    fn layer(&self) -> Option<&str> {
        self.module.first().map(String::as_str)
    }

    /// The name `<stem>_tests.rs` is made from.
    fn stem(&self) -> String {
        let name = self
            .rel
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned());
        match name.as_deref() {
            Some("mod") => self.module.last().cloned().unwrap_or_default(),
            Some(other) => other.to_owned(),
            None => String::new(),
        }
    }

    /// Where the file of a `mod name;` it declares is, relative to `src/`.
    fn declared(&self, m: &ModDecl) -> Vec<PathBuf> {
        let dir = self.rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if let Some(path) = &m.path {
            return vec![dir.join(path)];
        }
        let owns_dir = matches!(
            self.rel.file_name().and_then(|n| n.to_str()),
            Some("mod.rs" | "lib.rs" | "main.rs")
        );
        let dir = if owns_dir { dir } else { dir.join(self.stem()) };
        vec![
            dir.join(format!("{}.rs", m.name)),
            dir.join(&m.name).join("mod.rs"),
        ]
    }
}

/// Line numbers by byte offset.
struct Lines(Vec<usize>);

impl Lines {
    fn of(text: &str) -> Lines {
        Lines(
            std::iter::once(0)
                .chain(text.match_indices('\n').map(|(at, _)| at + 1))
                .collect(),
        )
    }

    /// The line (from 1) the byte at `at` is on.
    fn at(&self, at: usize) -> usize {
        self.0.partition_point(|&start| start <= at)
    }
}

/// The modules a file declares; its tokens but those of its test
/// modules; its inline modules, each with the offsets of its braces; and
/// the lines of `#[test]`s outside test modules.
fn modules(all: &[Token], raw: &str, lines: &Lines) -> FileModules {
    let mut mods = Vec::new();
    let mut toks: Vec<Token> = Vec::new();
    let mut inline = Vec::new();
    let mut stray_tests = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let start = i;
        let (mut test, mut path) = (false, None);
        while is_punct(all.get(i), b'#') && is_punct(all.get(i + 1), b'[') {
            let Some(close) = closing(all, i + 1) else {
                break;
            };
            test |= is_cfg_test(all, i + 1, close);
            match &all[i + 2..close] {
                [
                    (Tok::Ident(p), _),
                    (Tok::Punct(b'='), _),
                    (Tok::Punct(b'"'), a),
                    (Tok::Punct(b'"'), z),
                ] if p == "path" => path = Some(raw[a + 1..*z].to_owned()),
                [(Tok::Ident(t), _)] if t == "test" => stray_tests.push(lines.at(all[i].1)),
                [(Tok::Ident(t), _), (Tok::Sep, _), (Tok::Ident(u), _), ..]
                    if t == "tokio" && u == "test" =>
                {
                    stray_tests.push(lines.at(all[i].1))
                }
                _ => {}
            }
            i = close + 1;
        }
        let mut m = i;
        if is_ident(all.get(m), "pub") {
            m += 1;
            if is_punct(all.get(m), b'(') {
                m = closing(all, m).map_or(m, |c| c + 1);
            }
        }
        if let (true, Some((Tok::Ident(name), _))) = (is_ident(all.get(m), "mod"), all.get(m + 1)) {
            let braced = is_punct(all.get(m + 2), b'{');
            let end = if braced {
                closing(all, m + 2)
            } else {
                is_punct(all.get(m + 2), b';').then_some(m + 2)
            };
            if let Some(end) = end {
                let line = lines.at(all[start].1);
                mods.push(ModDecl {
                    name: name.clone(),
                    line,
                    inline_lines: braced.then(|| lines.at(all[end].1) - line + 1),
                    path,
                    test,
                });
                if test {
                    // A test module may reach anything: skip it whole.
                    i = end + 1;
                    continue;
                }
                if braced {
                    inline.push((name.clone(), all[m + 2].1, all[end].1));
                }
            }
        }
        toks.extend_from_slice(&all[start..i]);
        if i == start {
            toks.push(all[i].clone());
            i += 1;
        }
    }
    (mods, toks, inline, stray_tests)
}

/// An inline module (`mod name { … }`): its name and the offsets of its
/// braces.
type Inline = (String, usize, usize);

/// What [`modules`] finds in a file.
type FileModules = (Vec<ModDecl>, Vec<Token>, Vec<Inline>, Vec<usize>);

/// Where a file's relative paths start from.
struct Scope {
    module: Vec<String>,
    inline: Vec<Inline>,
    /// Modules it declares, which its code may name bare (`machine::…`).
    children: BTreeSet<String>,
}

impl Scope {
    /// `segs`, met at offset `at`, as a path from the crate root; none
    /// for a path outside this crate.
    fn absolute(&self, at: usize, segs: &[String]) -> Option<Vec<String>> {
        let mut base = self.module.clone();
        base.extend(
            self.inline
                .iter()
                .filter(|(_, open, close)| *open < at && at < *close)
                .map(|(name, _, _)| name.clone()),
        );
        let rest = match segs.first()?.as_str() {
            "crate" => {
                base.clear();
                &segs[1..]
            }
            "self" => &segs[1..],
            "super" => {
                let ups = segs.iter().take_while(|s| *s == "super").count();
                for _ in 0..ups {
                    base.pop()?;
                }
                &segs[ups..]
            }
            first if self.children.contains(first) => segs,
            _ => return None,
        };
        base.extend(rest.iter().filter(|s| *s != "self").cloned());
        Some(base)
    }

    /// Whether a path starting with `first` names this crate's items.
    fn starts_path(&self, first: &str) -> bool {
        ["crate", "self", "super"].contains(&first) || self.children.contains(first)
    }
}

/// The paths in `toks` that name this crate's items, and the names a
/// `pub use` re-exports, each with the path it stands for.
fn paths(
    toks: &[Token],
    scope: &Scope,
    lines: &Lines,
) -> (Vec<Ref>, BTreeMap<String, Vec<String>>) {
    let mut refs = Vec::new();
    let mut reexports = BTreeMap::new();
    let mut k = 0;
    while k < toks.len() {
        // `a::crate::…` or `$crate::…` starts no path of ours.
        let after_path = k > 0
            && matches!(
                toks[k - 1].0,
                Tok::Sep | Tok::Punct(b'$') | Tok::Punct(b'.')
            );
        if is_ident(toks.get(k), "use") && !after_path {
            let reexport = is_reexport(toks, k);
            let mut leaves = Vec::new();
            let mut j = k + 1;
            use_tree(toks, &mut j, &[], &mut leaves);
            for (segs, alias, at) in leaves {
                let Some(path) = scope.absolute(at, &segs) else {
                    continue;
                };
                if reexport {
                    let name = alias
                        .or_else(|| segs.last().filter(|s| *s != "*" && *s != "self").cloned());
                    if let Some(name) = name {
                        reexports.insert(name, path.clone());
                    }
                }
                refs.push(Ref {
                    path,
                    line: lines.at(at),
                    reexport,
                });
            }
            k = j.max(k + 1);
            continue;
        }
        if let (Some((Tok::Ident(first), at)), Some((Tok::Sep, _)), false) =
            (toks.get(k), toks.get(k + 1), after_path)
            && scope.starts_path(first)
        {
            let mut segs = vec![first.clone()];
            let mut j = k + 1;
            while let (Some((Tok::Sep, _)), Some((Tok::Ident(s), _))) =
                (toks.get(j), toks.get(j + 1))
            {
                segs.push(s.clone());
                j += 2;
            }
            if let Some(path) = scope.absolute(*at, &segs) {
                refs.push(Ref {
                    path,
                    line: lines.at(*at),
                    reexport: false,
                });
            }
            k = j;
            continue;
        }
        k += 1;
    }
    (refs, reexports)
}

/// Whether the `use` at `k` is public (`pub use`, `pub(crate) use`, …).
fn is_reexport(toks: &[Token], k: usize) -> bool {
    let Some(prev) = k.checked_sub(1) else {
        return false;
    };
    if is_ident(toks.get(prev), "pub") {
        return true;
    }
    if !is_punct(toks.get(prev), b')') {
        return false;
    }
    let open = (0..prev).rev().find(|&i| is_punct(toks.get(i), b'('));
    open.and_then(|o| o.checked_sub(1))
        .is_some_and(|p| is_ident(toks.get(p), "pub"))
}

/// The paths of the `use` tree starting at `*i` (after `use`), each with
/// the name it is bound to (`as`) and the offset of its last segment;
/// `*i` ends after the tree.
fn use_tree(
    toks: &[Token],
    i: &mut usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Option<String>, usize)>,
) {
    let mut path = prefix.to_vec();
    while let Some((tok, at)) = toks.get(*i) {
        match tok {
            Tok::Sep => *i += 1,
            Tok::Ident(name) => {
                path.push(name.clone());
                let last_at = *at;
                *i += 1;
                if matches!(toks.get(*i), Some((Tok::Sep, _))) {
                    continue;
                }
                let mut alias = None;
                if is_ident(toks.get(*i), "as") {
                    alias = match toks.get(*i + 1) {
                        Some((Tok::Ident(a), _)) => Some(a.clone()),
                        _ => None,
                    };
                    *i += 2;
                }
                out.push((path, alias, last_at));
                return;
            }
            Tok::Punct(b'*') => {
                path.push("*".to_owned());
                out.push((path, None, *at));
                *i += 1;
                return;
            }
            Tok::Punct(b'{') => {
                *i += 1;
                while let Some((tok, _)) = toks.get(*i) {
                    match tok {
                        Tok::Punct(b'}') => {
                            *i += 1;
                            return;
                        }
                        Tok::Punct(b',') => *i += 1,
                        _ => {
                            let before = *i;
                            use_tree(toks, i, &path, out);
                            if *i == before {
                                *i += 1;
                            }
                        }
                    }
                }
                return;
            }
            _ => return,
        }
    }
}

/// The module path of a file, from its path under `src/`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's files under `src`, read, but for those of test modules.
struct Tree {
    code: Vec<Source>,
    /// Every file some `mod` declares.
    declared: BTreeSet<PathBuf>,
    /// Files of `code` by module path.
    by_module: BTreeMap<Vec<String>, usize>,
}

impl Tree {
    fn read(src: &Path) -> Tree {
        let mut files = Vec::new();
        rust_files(src, &mut files);
        files.sort();
        let mut all: Vec<Source> = files
            .iter()
            .filter(|f| f.strip_prefix(src).ok() != Some(Path::new("main.rs")))
            .map(|f| Source::read(src, f))
            .collect();
        // Files declared by test modules are tests, and so is whatever
        // those declare in turn.
        let mut tests = BTreeSet::new();
        let mut declared = BTreeSet::new();
        loop {
            let before = tests.len();
            for s in &all {
                let in_test = tests.contains(&s.rel);
                for m in s.mods.iter().filter(|m| m.inline_lines.is_none()) {
                    if m.test || in_test {
                        tests.extend(s.declared(m));
                    }
                    declared.extend(s.declared(m));
                }
            }
            if tests.len() == before {
                break;
            }
        }
        all.retain(|s| !tests.contains(&s.rel));
        let by_module = all
            .iter()
            .enumerate()
            .map(|(i, s)| (s.module.clone(), i))
            .collect();
        Tree {
            code: all,
            declared,
            by_module,
        }
    }

    /// The file a path lands in: the deepest module file on it, or, when
    /// that file re-exports the next name, the file that one lands in.
    fn land(&self, path: &[String]) -> Option<usize> {
        // Re-exports of re-exports are followed this deep, no further, so
        // two that name each other cannot recurse forever.
        self.land_within(path, 8)
    }

    fn land_within(&self, path: &[String], hops: usize) -> Option<usize> {
        let path: Vec<String> = path.iter().filter(|s| *s != "*").cloned().collect();
        let depth = (0..=path.len())
            .rev()
            .find(|&d| self.by_module.contains_key(&path[..d]))?;
        let file = self.by_module[&path[..depth]];
        let target = path
            .get(depth)
            .and_then(|name| self.code[file].reexports.get(name));
        if let (Some(target), Some(hops)) = (target, hops.checked_sub(1)) {
            let mut further = target.clone();
            further.extend_from_slice(&path[depth + 1..]);
            if let Some(t) = self.land_within(&further, hops).filter(|&t| t != file) {
                return Some(t);
            }
        }
        Some(file)
    }
}

/// The rank of a layer in [`crate::LAYERS`].
fn rank(layer: &str) -> Option<usize> {
    crate::LAYERS.iter().position(|l| *l == layer)
}

/// Every path that lands in a layer above its file's, as `file:line:
/// from -> to: line`.
fn upward_imports(src: &Path) -> Vec<String> {
    let tree = Tree::read(src);
    let mut found = Vec::new();
    for s in &tree.code {
        let Some(from) = s.layer() else { continue };
        let Some(from_rank) = rank(from) else {
            found.push(format!(
                "{}: layer {from:?} is not in LAYERS",
                s.rel.display()
            ));
            continue;
        };
        let mut seen = BTreeSet::new();
        for r in &s.refs {
            // Where the path lands, or, when no file of this tree holds
            // it, the layer it names.
            let to = tree
                .land(&r.path)
                .and_then(|t| tree.code[t].layer())
                .or(r.path.first().map(String::as_str));
            let Some(to) = to else { continue };
            if rank(to).is_some_and(|r| r > from_rank) && seen.insert((r.line, to)) {
                found.push(format!(
                    "{}:{}: {from} -> {to}: {}",
                    s.rel.display(),
                    r.line,
                    s.line(r.line)
                ));
            }
        }
    }
    found
}

/// Every loop between files of one layer: the files, then each line that
/// closes the loop.
fn loops(src: &Path) -> Vec<String> {
    let tree = Tree::read(src);
    let n = tree.code.len();
    // edges[from][to]: the first line of `from` whose path lands in `to`.
    let mut edges: Vec<BTreeMap<usize, usize>> = vec![BTreeMap::new(); n];
    for (from, s) in tree.code.iter().enumerate() {
        for r in &s.refs {
            let Some(to) = tree.land(&r.path) else {
                continue;
            };
            let t = &tree.code[to];
            let same_layer = s.layer().is_some() && s.layer() == t.layer();
            let reexports_a_child = r.reexport && t.module.starts_with(&s.module);
            if to != from && same_layer && !reexports_a_child {
                let line = edges[from].entry(to).or_insert(r.line);
                *line = (*line).min(r.line);
            }
        }
    }
    let reach = |start: usize| {
        let mut seen = BTreeSet::from([start]);
        let mut todo = vec![start];
        while let Some(f) = todo.pop() {
            for &t in edges[f].keys() {
                if seen.insert(t) {
                    todo.push(t);
                }
            }
        }
        seen
    };
    let reaches: Vec<BTreeSet<usize>> = (0..n).map(reach).collect();
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for start in 0..n {
        if done.contains(&start) {
            continue;
        }
        // The files that reach `start` and that it reaches: its loop.
        let scc: BTreeSet<usize> = reaches[start]
            .iter()
            .copied()
            .filter(|&f| reaches[f].contains(&start))
            .collect();
        done.extend(scc.iter().copied());
        if scc.len() < 2 {
            continue;
        }
        // The shortest way round from `start` back to it, within the loop.
        let mut back: BTreeMap<usize, usize> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        'search: while let Some(f) = queue.pop_front() {
            for &t in edges[f].keys().filter(|t| scc.contains(t)) {
                if t == start {
                    back.insert(start, f);
                    break 'search;
                }
                if let std::collections::btree_map::Entry::Vacant(e) = back.entry(t) {
                    e.insert(f);
                    queue.push_back(t);
                }
            }
        }
        let mut cycle = vec![start];
        let mut at = back.get(&start).copied();
        while let Some(f) = at.filter(|&f| f != start) {
            cycle.push(f);
            at = back.get(&f).copied();
        }
        cycle.reverse();
        cycle.rotate_right(1);
        let names: Vec<String> = cycle
            .iter()
            .chain([&start])
            .map(|&f| tree.code[f].rel.display().to_string())
            .collect();
        let mut report = names.join(" -> ");
        for (i, &f) in cycle.iter().enumerate() {
            let t = cycle[(i + 1) % cycle.len()];
            let line = edges[f][&t];
            let s = &tree.code[f];
            report.push_str(&format!(
                "\n    {}:{}: {}",
                s.rel.display(),
                line,
                s.line(line)
            ));
        }
        let others = scc.len() - cycle.len();
        if others > 0 {
            report.push_str(&format!("\n    (and {others} more files in the same knot)"));
        }
        found.push(report);
    }
    found
}

/// Every departure from the unit-test convention, naming file and line.
fn test_convention(src: &Path) -> Vec<String> {
    let tree = Tree::read(src);
    let mut found = Vec::new();
    for s in &tree.code {
        let rel = s.rel.display();
        for m in s.mods.iter().filter(|m| m.test) {
            let wanted = format!("{}_tests.rs", s.stem());
            match (m.name.as_str(), m.inline_lines, m.path.as_deref()) {
                ("fixtures", ..) => {}
                ("tests", Some(lines), _) if lines > INLINE_TESTS_MAX_LINES => found.push(format!(
                    "{rel}:{}: inline tests of {lines} lines: move them to {wanted}",
                    m.line
                )),
                ("tests", Some(_), _) => {}
                ("tests", None, Some(path)) if path == wanted => {}
                ("tests", None, _) => found.push(format!(
                    "{rel}:{}: `mod tests;` is not #[path = \"{wanted}\"]",
                    m.line
                )),
                (name, ..) => found.push(format!(
                    "{rel}:{}: test module `{name}`: a module's unit tests are `mod tests`",
                    m.line
                )),
            }
        }
        for line in &s.stray_tests {
            found.push(format!("{rel}:{line}: a test outside `mod tests`"));
        }
    }
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    for f in files {
        let rel = f.strip_prefix(src).unwrap_or(&f).to_path_buf();
        let root = rel == Path::new("lib.rs") || rel == Path::new("main.rs");
        if !root && !tree.declared.contains(&rel) {
            found.push(format!("{}: no `mod` declares it", rel.display()));
        }
    }
    found
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let (kept, up): (Vec<String>, Vec<String>) =
        upward_imports(&src()).into_iter().partition(|u| {
            KEPT_PATHS
                .iter()
                .any(|(file, line)| u.starts_with(&format!("{file}:")) && u.ends_with(line))
        });
    assert!(
        up.is_empty(),
        "imports that run up the layers of crate::LAYERS:\n{}",
        up.join("\n")
    );
    assert_eq!(
        kept.len(),
        KEPT_PATHS.len(),
        "a path of KEPT_PATHS is gone or no longer points up; drop it: {kept:?}"
    );
}

#[test]
fn no_files_of_a_layer_import_each_other_in_a_loop() {
    let found = loops(&src());
    assert!(
        found.is_empty(),
        "loops between files of one layer:\n{}",
        found.join("\n")
    );
}

#[test]
fn unit_tests_follow_one_convention() {
    let found = test_convention(&src());
    assert!(
        found.is_empty(),
        "unit tests off the convention:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_top_level_module_is_a_layer() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap_or_default();
    for line in lib.lines() {
        if let Some(m) = line.strip_prefix("pub mod ") {
            let m = m.trim_end_matches(';');
            assert!(crate::LAYERS.contains(&m), "{m} is not in LAYERS");
        }
    }
}

/// Writes `files` (path under the root, text) into a new directory.
fn tree_of(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("dir");
        std::fs::write(path, text).expect("write");
    }
    dir
}

#[test]
fn an_upward_import_is_found_and_named() {
    let dir = tree_of(&[
        (
            "xds/status.rs",
            "// crate::controller in a comment is fine\nuse crate::controller::Controller;\n",
        ),
        ("config.rs", "use crate::xds::Thing;\n"),
    ]);
    let up = upward_imports(dir.path());
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(
        up[0].starts_with("xds/status.rs:2: xds -> controller"),
        "{up:?}"
    );
}

#[test]
fn test_modules_are_skipped_and_the_code_after_them_is_not() {
    let dir = tree_of(&[
        (
            "xds/mod.rs",
            r##"
#[cfg(test)]
mod tests {
    use crate::controller::A;
    fn f() -> &'static str { "}" }
    const C: char = '}';
    const R: &str = r#"} crate::admin::X"#;
}
#[cfg(all(test, feature = "x"))]
mod more {}
#[cfg(test)]
#[path = "xds_tests.rs"]
mod tests_file;
pub use crate::{admin::B, text::C};
#[cfg(test)]
use crate::cli::D;
fn g() { let _ = "crate::serve::E"; crate::serve::run(); }
"##,
        ),
        ("xds/xds_tests.rs", "use crate::cli::F;\n"),
    ]);
    let up = upward_imports(dir.path());
    let at: Vec<&str> = up
        .iter()
        .map(|u| u.split(": ").next().unwrap_or(""))
        .collect();
    assert_eq!(
        at,
        ["xds/mod.rs:14", "xds/mod.rs:16", "xds/mod.rs:17"],
        "{up:#?}"
    );
    assert!(up[0].contains("xds -> admin"), "{up:?}");
}

#[test]
fn a_loop_between_siblings_through_a_reexport_is_found() {
    let dir = tree_of(&[
        ("rollout/mod.rs", "mod a;\nmod b;\npub use a::A;\n"),
        ("rollout/a.rs", "use super::b::B;\npub struct A;\n"),
        (
            "rollout/b.rs",
            "pub struct B;\n\nfn f(_: crate::rollout::A) {}\n",
        ),
    ]);
    let found = loops(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("rollout/a.rs -> rollout/b.rs -> rollout/a.rs"),
        "{found:?}"
    );
    assert!(
        found[0].contains("rollout/a.rs:1: use super::b::B;"),
        "{found:?}"
    );
    assert!(
        found[0].contains("rollout/b.rs:3: fn f(_: crate::rollout::A) {}"),
        "{found:?}"
    );
}

#[test]
fn a_parent_reexporting_its_children_is_no_loop_but_using_them_is() {
    let reexports = tree_of(&[
        (
            "rollout/mod.rs",
            "mod c;\npub use c::C;\npub(crate) use self::c::{D as E};\npub struct P;\n",
        ),
        (
            "rollout/c.rs",
            "use super::P;\npub struct C;\npub struct D;\n",
        ),
    ]);
    assert_eq!(loops(reexports.path()), Vec::<String>::new());
    let uses = tree_of(&[
        (
            "rollout/mod.rs",
            "mod c;\npub struct P;\nfn g(_: c::C) {}\n",
        ),
        ("rollout/c.rs", "use super::P;\npub struct C;\n"),
    ]);
    let found = loops(uses.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("rollout/mod.rs:3: fn g(_: c::C) {}"),
        "{found:?}"
    );
    assert!(
        found[0].contains("rollout/c.rs:1: use super::P;"),
        "{found:?}"
    );
}

#[test]
fn unit_tests_off_the_convention_are_named() {
    let long_tests = format!(
        "#[cfg(test)]\nmod tests {{\n{}}}\n",
        "    // a line\n".repeat(INLINE_TESTS_MAX_LINES)
    );
    let dir = tree_of(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
        (
            "a.rs",
            "#[cfg(test)]\nmod a_checks;\n#[cfg(test)]\nmod fixtures;\n",
        ),
        ("a/a_checks.rs", ""),
        ("a/fixtures.rs", ""),
        (
            "b.rs",
            &format!("fn f() {{}}\n#[cfg(test)]\n#[test]\nfn t() {{}}\n{long_tests}"),
        ),
        (
            "c/mod.rs",
            "#[cfg(test)]\n#[path = \"c_tests.rs\"]\nmod tests;\n",
        ),
        ("c/c_tests.rs", ""),
        ("c/mod_tests.rs", ""),
    ]);
    let found = test_convention(dir.path());
    assert_eq!(
        found,
        [
            "a.rs:1: test module `a_checks`: a module's unit tests are `mod tests`".to_owned(),
            format!(
                "b.rs:5: inline tests of {} lines: move them to b_tests.rs",
                INLINE_TESTS_MAX_LINES + 3
            ),
            "b.rs:3: a test outside `mod tests`".to_owned(),
            "c/mod_tests.rs: no `mod` declares it".to_owned(),
        ]
    );
}
