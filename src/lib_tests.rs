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
//!
//! **How a file is read.** `syn` parses it. Lexing Rust (raw strings,
//! nested comments, a lifetime beside a character literal) is a solved
//! problem, so nothing here does it by hand, and no comment or string is
//! taken for code. `syn` leaves the body of a macro and the arguments of
//! an attribute as tokens: in those, a path is a run of `name::name…`
//! tokens not led by `$`, `.` or `::` (`crate::text::untrusted` in a
//! `tracing::warn!`, a clap `default_value_t`), and a `#[test]` is a test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use syn::punctuated::Punctuated;
use syn::visit::Visit;

/// Above this many lines, a module's unit tests move to their own file.
const INLINE_TESTS_MAX_LINES: usize = 150;

/// Re-exports that point up a layer, each as its file and line: public
/// paths kept for code outside `src/` (integration tests, examples) that
/// still names an item by where it used to be. Each goes once nothing
/// outside names that path.
const KEPT_PATHS: &[(&str, &str)] = &[];

/// A module declared in a file: inline (`mod name { … }`) or in a file
/// of its own (`mod name;`).
#[derive(Debug)]
struct ModDecl {
    name: String,
    /// Where its first attribute (or `mod`) is; doc comments don't count.
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
        // A file that does not parse would not compile either; reading
        // on without it could pass a tree the rules have not seen.
        let ast = syn::parse_file(&raw).unwrap_or_else(|e| {
            let line = e.span().start().line;
            panic!("{}:{line}: {e}", rel.display())
        });
        let mut walk = Walk::default();
        walk.visit_file(&ast);
        let module = module_of(&rel);
        // A module it declares may be named bare (`machine::…`) anywhere
        // in the file, even above its `mod`.
        let children: BTreeSet<&str> = walk
            .mods
            .iter()
            .filter(|m| !m.test)
            .map(|m| m.name.as_str())
            .collect();
        let mut refs = Vec::new();
        let mut reexports = BTreeMap::new();
        for w in &walk.paths {
            let Some(path) = absolute(&module, w, &children) else {
                continue;
            };
            if let (true, Some(name)) = (w.reexport, &w.bound) {
                reexports.insert(name.clone(), path.clone());
            }
            refs.push(Ref {
                path,
                line: w.line,
                reexport: w.reexport,
            });
        }
        Source {
            rel,
            module,
            lines: raw.lines().map(str::to_owned).collect(),
            mods: walk.mods,
            refs,
            reexports,
            stray_tests: walk.stray_tests,
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

/// A path as written in a file, before it is resolved against the
/// file's module.
struct Written {
    segs: Vec<String>,
    /// The inline modules (`mod name { … }`) it sits in, outermost first.
    inside: Vec<String>,
    /// Where its first segment is; for a `use` leaf, its last.
    line: usize,
    /// A leaf of a `pub use`, `pub(crate) use`, ….
    reexport: bool,
    /// For a `use` leaf, the name it binds (`as` or its last segment).
    bound: Option<String>,
}

/// One walk over a file's syntax tree, gathering what the rules read.
/// Test modules are recorded, never entered.
#[derive(Default)]
struct Walk {
    /// The inline modules the walk is in now.
    inside: Vec<String>,
    mods: Vec<ModDecl>,
    paths: Vec<Written>,
    stray_tests: Vec<usize>,
}

impl Walk {
    /// The leaves of a `use` tree under `prefix`.
    fn use_leaves(&mut self, tree: &syn::UseTree, prefix: &mut Vec<String>, reexport: bool) {
        let (leaf, bound, line) = match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_leaves(&p.tree, prefix, reexport);
                prefix.pop();
                return;
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_leaves(t, prefix, reexport);
                }
                return;
            }
            // `use a::{self}` binds `a`, but a parent re-exporting itself
            // is nothing the rules follow.
            syn::UseTree::Name(n) => (
                n.ident.to_string(),
                Some(n.ident.to_string()).filter(|n| n != "self"),
                n.ident.span().start().line,
            ),
            syn::UseTree::Rename(r) => (
                r.ident.to_string(),
                Some(r.rename.to_string()),
                r.ident.span().start().line,
            ),
            syn::UseTree::Glob(g) => ("*".to_owned(), None, g.star_token.span.start().line),
        };
        let mut segs = prefix.clone();
        segs.push(leaf);
        self.paths.push(Written {
            segs,
            inside: self.inside.clone(),
            line,
            reexport,
            bound,
        });
    }

    /// The paths in tokens `syn` leaves unparsed, a macro's body or an
    /// attribute's arguments: runs of `name::name…` that follow no `$`,
    /// `.` or `::`, so `$crate::…` and `x.y::<T>()` are none.
    fn scan(&mut self, tokens: TokenStream) {
        let tts: Vec<TokenTree> = tokens.into_iter().collect();
        let sep = |j: usize| match (tts.get(j), tts.get(j + 1)) {
            (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) => {
                a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
            }
            _ => false,
        };
        let mut i = 0;
        while let Some(tt) = tts.get(i) {
            let led = match i.checked_sub(1).map(|p| &tts[p]) {
                Some(TokenTree::Punct(p)) => {
                    matches!(p.as_char(), '$' | '.') || (i >= 2 && sep(i - 2))
                }
                _ => false,
            };
            i += 1;
            match tt {
                TokenTree::Group(g) => self.scan(g.stream()),
                // A test a macro writes (`proptest! { #[test] fn … }`).
                TokenTree::Punct(p) if p.as_char() == '#' => {
                    if let Some(TokenTree::Group(g)) = tts.get(i)
                        && g.delimiter() == Delimiter::Bracket
                        && syn::parse2::<syn::Meta>(g.stream()).is_ok_and(|m| is_test(m.path()))
                    {
                        self.stray_tests.push(p.span().start().line);
                    }
                }
                TokenTree::Ident(first) if !led => {
                    let mut segs = vec![first.to_string()];
                    while let (true, Some(TokenTree::Ident(next))) = (sep(i), tts.get(i + 2)) {
                        segs.push(next.to_string());
                        i += 3;
                    }
                    if segs.len() > 1 {
                        self.paths.push(Written {
                            segs,
                            inside: self.inside.clone(),
                            line: first.span().start().line,
                            reexport: false,
                            bound: None,
                        });
                    }
                }
                _ => {}
            }
        }
    }
}

impl<'ast> Visit<'ast> for Walk {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        let test = m.attrs.iter().any(is_cfg_test);
        let first_attr = m.attrs.iter().find(|a| !a.path().is_ident("doc"));
        let line = match (first_attr, &m.vis) {
            (Some(a), _) => a.pound_token.span.start().line,
            (None, syn::Visibility::Public(p)) => p.span.start().line,
            (None, syn::Visibility::Restricted(r)) => r.pub_token.span.start().line,
            (None, syn::Visibility::Inherited) => m.mod_token.span.start().line,
        };
        let close = m.content.as_ref().map(|(brace, _)| brace.span.close());
        self.mods.push(ModDecl {
            name: m.ident.to_string(),
            line,
            inline_lines: close.map(|c| c.start().line - line + 1),
            path: m.attrs.iter().find_map(path_attr),
            test,
        });
        // Test code may reach anything.
        if test {
            return;
        }
        let inline = m.content.is_some();
        if inline {
            self.inside.push(m.ident.to_string());
        }
        syn::visit::visit_item_mod(self, m);
        if inline {
            self.inside.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        for attr in &u.attrs {
            self.visit_attribute(attr);
        }
        // `use ::name` names another crate.
        if u.leading_colon.is_none() {
            let reexport = !matches!(u.vis, syn::Visibility::Inherited);
            self.use_leaves(&u.tree, &mut Vec::new(), reexport);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        // One segment (`self`, `crate` in `pub(crate)`) names no item,
        // and `::name` is another crate's.
        if path.leading_colon.is_none() && path.segments.len() > 1 {
            self.paths.push(Written {
                segs: path.segments.iter().map(|s| s.ident.to_string()).collect(),
                inside: self.inside.clone(),
                line: path.segments[0].ident.span().start().line,
                reexport: false,
                bound: None,
            });
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        syn::visit::visit_macro(self, mac);
        self.scan(mac.tokens.clone());
    }

    fn visit_meta_list(&mut self, list: &'ast syn::MetaList) {
        syn::visit::visit_meta_list(self, list);
        self.scan(list.tokens.clone());
    }

    fn visit_attribute(&mut self, attr: &'ast syn::Attribute) {
        if is_test(attr.path()) {
            self.stray_tests.push(attr.pound_token.span.start().line);
        }
        syn::visit::visit_attribute(self, attr);
    }
}

/// Whether an attribute of this path makes its function a test.
fn is_test(path: &syn::Path) -> bool {
    let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    segs == ["test"] || segs == ["tokio", "test"]
}

/// Whether an attribute compiles its item for tests only: `cfg(test)`,
/// or an `all(…)` with `test` among its terms.
fn is_cfg_test(attr: &syn::Attribute) -> bool {
    if !attr.path().is_ident("cfg") {
        return false;
    }
    match attr.parse_args::<syn::Meta>() {
        Ok(syn::Meta::Path(p)) => p.is_ident("test"),
        Ok(syn::Meta::List(all)) if all.path.is_ident("all") => all
            .parse_args_with(Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated)
            .is_ok_and(|terms| terms.iter().any(|t| t.path().is_ident("test"))),
        _ => false,
    }
}

/// The file of a `#[path = "…"]` attribute.
fn path_attr(attr: &syn::Attribute) -> Option<String> {
    let syn::Meta::NameValue(nv) = &attr.meta else {
        return None;
    };
    match &nv.value {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(file),
            ..
        }) if nv.path.is_ident("path") => Some(file.value()),
        _ => None,
    }
}

/// `w` as a path from the crate root, for a file of module `module`
/// declaring `children`; none for a path outside this crate.
fn absolute(module: &[String], w: &Written, children: &BTreeSet<&str>) -> Option<Vec<String>> {
    let mut base = module.to_vec();
    base.extend(w.inside.iter().cloned());
    let segs = &w.segs;
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
        first if children.contains(first) => &segs[..],
        _ => return None,
    };
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(base)
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
    /// Every `.rs` file under `src`, relative to it, test files too.
    files: Vec<PathBuf>,
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
            files: files
                .iter()
                .map(|f| f.strip_prefix(src).unwrap_or(f).to_path_buf())
                .collect(),
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
fn upward_imports(tree: &Tree) -> Vec<String> {
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
fn loops(tree: &Tree) -> Vec<String> {
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
fn test_convention(tree: &Tree) -> Vec<String> {
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
    for rel in &tree.files {
        let root = rel == Path::new("lib.rs") || rel == Path::new("main.rs");
        if !root && !tree.declared.contains(rel) {
            found.push(format!("{}: no `mod` declares it", rel.display()));
        }
    }
    found
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `src/`, read once for the tests that share it: parsing is the slow part
/// (most of a second with an unoptimized `syn`).
fn src_tree() -> &'static Tree {
    static TREE: std::sync::OnceLock<Tree> = std::sync::OnceLock::new();
    TREE.get_or_init(|| Tree::read(&src()))
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let (kept, up): (Vec<String>, Vec<String>) =
        upward_imports(src_tree()).into_iter().partition(|u| {
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
    let found = loops(src_tree());
    assert!(
        found.is_empty(),
        "loops between files of one layer:\n{}",
        found.join("\n")
    );
}

#[test]
fn unit_tests_follow_one_convention() {
    let found = test_convention(src_tree());
    assert!(
        found.is_empty(),
        "unit tests off the convention:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_top_level_module_is_a_layer() {
    let lib = src_tree()
        .code
        .iter()
        .find(|s| s.rel == Path::new("lib.rs"))
        .expect("src/lib.rs is read");
    for m in lib.mods.iter().filter(|m| !m.test) {
        let m = m.name.as_str();
        assert!(crate::LAYERS.contains(&m), "{m} is not in LAYERS");
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
    let up = upward_imports(&Tree::read(dir.path()));
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
    let up = upward_imports(&Tree::read(dir.path()));
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
fn what_syn_leaves_as_tokens_is_still_read() {
    let dir = tree_of(&[
        ("lib.rs", "mod xds;\n"),
        (
            "xds/mod.rs",
            r#"
macro_rules! m { () => { $crate::admin::A } }
fn f() { tracing::warn!(error = %crate::admin::B, "x"); }
#[arg(default_value_t = crate::cli::C)]
struct S;
pub(crate) mod inner {
    // One module down, so two `super`s are the crate root.
    fn g(_: super::super::serve::D) {}
}
macro_rules! t { () => { #[test] fn t() {} } }
"#,
        ),
    ]);
    let tree = Tree::read(dir.path());
    let up = upward_imports(&tree);
    let at: Vec<&str> = up
        .iter()
        .map(|u| u.split(": ").next().unwrap_or(""))
        .collect();
    assert_eq!(
        at,
        ["xds/mod.rs:3", "xds/mod.rs:4", "xds/mod.rs:8"],
        "{up:#?}"
    );
    assert_eq!(
        test_convention(&tree),
        ["xds/mod.rs:10: a test outside `mod tests`"]
    );
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
    let found = loops(&Tree::read(dir.path()));
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
    assert_eq!(loops(&Tree::read(reexports.path())), Vec::<String>::new());
    let uses = tree_of(&[
        (
            "rollout/mod.rs",
            "mod c;\npub struct P;\nfn g(_: c::C) {}\n",
        ),
        ("rollout/c.rs", "use super::P;\npub struct C;\n"),
    ]);
    let found = loops(&Tree::read(uses.path()));
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
    let found = test_convention(&Tree::read(dir.path()));
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
