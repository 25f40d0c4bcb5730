use super::*;
use crate::config::{DEFAULT_MAX_DEPTH, MAX_MAX_DEPTH};

fn load(text: &str) -> Result<Option<Node>, Vec<YamlError>> {
    super::load(text, &Limits::default())
}

fn with_depth(max_depth: usize) -> Limits {
    Limits {
        max_depth,
        ..Limits::default()
    }
}

fn with_alias_nodes(max_alias_nodes: usize) -> Limits {
    Limits {
        max_alias_nodes,
        ..Limits::default()
    }
}

/// The one error of a load that must fail.
fn only_error(text: &str, limits: &Limits) -> YamlError {
    let mut errs = super::load(text, limits).expect_err("must fail");
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs.remove(0)
}

/// Runs `f` on a thread with the stack teal parses on in `teal serve`.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .expect("thread")
        .join()
        .expect("no stack overflow or panic");
}

#[test]
fn depth_at_the_limit_passes_and_one_more_fails() {
    assert!(super::load("[[[x]]]", &with_depth(3)).is_ok());
    let e = only_error("[[[[x]]]]", &with_depth(3));
    assert_eq!(e.pos, Pos { line: 1, col: 4 });
    assert_eq!(e.path, "[0][0][0]");
    assert!(e.message.contains("limit of 3 levels (--config-max-depth)"));

    let block = "a:\n  b:\n    c: 1\n";
    assert!(super::load(block, &with_depth(3)).is_ok());
    let e = only_error(block, &with_depth(2));
    assert_eq!(e.pos, Pos { line: 3, col: 5 });
    assert_eq!(e.path, "a.b");
    assert!(e.message.contains("--config-max-depth"), "{e:?}");
}

#[test]
fn very_deep_input_stops_at_the_limit_on_a_small_stack() {
    on_small_stack(|| {
        for depth in [50_000, 200_000] {
            let lists = format!("x:\n{}1\n", "- ".repeat(depth));
            let e = only_error(&lists, &Limits::default());
            assert!(e.message.contains("--config-max-depth"), "{e:?}");
            assert_eq!(e.pos.line, 2);
            // `x:` opens the first level; each `- ` one more.
            assert_eq!(e.pos.col, 2 * DEFAULT_MAX_DEPTH - 1);
            let maps: String = (0..depth.min(3_000))
                .map(|i| format!("{}a:\n", " ".repeat(i)))
                .collect();
            let e = only_error(&maps, &Limits::default());
            assert!(e.message.contains("--config-max-depth"), "{e:?}");
            assert_eq!(e.pos.line, DEFAULT_MAX_DEPTH + 1);
        }
    });
}

#[test]
fn the_deepest_tree_allowed_is_safe_on_a_small_stack() {
    on_small_stack(|| {
        let limits = with_depth(MAX_MAX_DEPTH);
        let text = format!(
            "{}1{}",
            "[".repeat(MAX_MAX_DEPTH),
            "]".repeat(MAX_MAX_DEPTH)
        );
        // saphyr-parser refuses flow collections this deep by itself, so
        // build the tree with block lists: `- - - 1`.
        assert!(super::load(&text, &limits).is_err());
        let text = format!("{}1\n", "- ".repeat(MAX_MAX_DEPTH));
        let tree = super::load(&text, &limits).expect("at the limit");
        let copy = tree.clone();
        assert_eq!(copy, tree);
        drop(copy);
        drop(tree);
        let over = format!("{}1\n", "- ".repeat(MAX_MAX_DEPTH + 1));
        let e = only_error(&over, &limits);
        assert!(e.message.contains("--config-max-depth"), "{e:?}");
        // And through the decoder, which walks the tree.
        let doc = format!(
            "services:\n  web:\n    fleets:\n      blue:\n        endpoints:\n{}{}1\n",
            " ".repeat(10),
            "- ".repeat(MAX_MAX_DEPTH - 5)
        );
        let diags =
            crate::config::Config::parse_with(&doc, "t.yaml", &limits).expect_err("not a config");
        assert!(!diags.is_empty());
    });
}

#[test]
fn alias_copies_at_the_limit_pass_and_one_more_fails() {
    // The anchor keeps a copy of 3 nodes (the list and its items), the
    // alias makes another: 6 in all.
    let text = "a: &x [1, 2]\nb: *x\n";
    let root = super::load(text, &with_alias_nodes(6))
        .expect("at the limit")
        .expect("doc");
    assert_eq!(map(&root)[1].1.value, map(&root)[0].1.value);
    let e = only_error(text, &with_alias_nodes(5));
    assert_eq!(e.pos, Pos { line: 2, col: 4 });
    assert_eq!(e.path, "b");
    assert!(
        e.message
            .contains("limit of 5 nodes (--config-max-alias-nodes)"),
        "{e:?}"
    );
    // Keys count too: a mapping of one entry is 3 nodes.
    let text = "a: &x {k: v}\nb: *x\n";
    assert!(super::load(text, &with_alias_nodes(6)).is_ok());
    assert!(super::load(text, &with_alias_nodes(5)).is_err());
    // An anchor alone is charged when it is defined.
    let e = only_error("a: &x [1, 2]\n", &with_alias_nodes(2));
    assert!(e.message.contains("--config-max-alias-nodes"), "{e:?}");
    assert!(super::load("a: [1, 2]\nb: [1, 2]\n", &with_alias_nodes(0)).is_ok());
}

#[test]
fn copied_text_at_the_size_limit_passes_and_one_byte_more_fails() {
    let long = "x".repeat(1_000);
    // The anchor's copy and three aliases: 4,000 bytes of text.
    let text = format!("a: &x {long}\nb: [*x, *x, *x]\n");
    let limits = |max_bytes| Limits {
        max_bytes,
        ..Limits::default()
    };
    assert!(super::load(&text, &limits(4_000)).is_ok());
    let e = only_error(&text, &limits(3_999));
    assert_eq!(e.pos, Pos { line: 2, col: 13 });
    assert_eq!(e.path, "b[2]");
    assert!(
        e.message
            .contains("limit of 3999 bytes of text (--config-max-bytes)"),
        "{e:?}"
    );
}

#[test]
fn billion_laughs_stops_at_the_alias_budget() {
    let mut text = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n".to_owned();
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 9].join(", ");
        text.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    let started = std::time::Instant::now();
    let e = only_error(&text, &Limits::default());
    assert!(e.message.contains("--config-max-alias-nodes"), "{e:?}");
    // Generous: the budget is 100,000 copies, well under a second.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn many_distinct_keys_are_checked_in_linear_time() {
    let n = 80_000;
    let text: String = (0..n).map(|i| format!("k{i}: {i}\n")).collect();
    let started = std::time::Instant::now();
    let root = load(&text).expect("valid").expect("doc");
    assert_eq!(map(&root).len(), n);
    // Generous: the quadratic check took minutes here.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let dup = format!("{text}k0: again\n");
    let errs = load(&dup).expect_err("duplicate");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].pos.line, n + 1);
}

#[test]
fn errors_name_the_key_path_and_cut_long_keys() {
    let e = only_error("s:\n  l:\n    - a: 1\n      a: 2\n", &Limits::default());
    assert_eq!(e.pos, Pos { line: 4, col: 7 });
    assert_eq!(e.path, "s.l[0].a");
    let long = "k".repeat(10_000);
    let e = only_error(&format!("{long}: 1\n{long}: 2\n"), &Limits::default());
    assert!(e.path.len() < 100, "{}", e.path.len());
    assert!(e.message.len() < 100, "{}", e.message);
}

fn map(node: &Node) -> &[(Key, Node)] {
    match &node.value {
        Value::Map(m) => m,
        other => panic!("not a map: {other:?}"),
    }
}

#[test]
fn positions_are_one_based() {
    let root = load("a:\n  b: 1\n  c: [x, y]\n")
        .expect("valid")
        .expect("doc");
    let a = &map(&root)[0];
    assert_eq!(a.0.text, "a");
    assert_eq!(a.0.pos, Pos { line: 1, col: 1 });
    let b = &map(&a.1)[0];
    assert_eq!(b.0.pos, Pos { line: 2, col: 3 });
    assert_eq!(b.1.pos, Pos { line: 2, col: 6 });
    let c = &map(&a.1)[1];
    match &c.1.value {
        Value::Seq(items) => assert_eq!(items[1].pos, Pos { line: 3, col: 10 }),
        other => panic!("not a seq: {other:?}"),
    }
}

#[test]
fn duplicate_keys_are_errors() {
    let errs = load("a: 1\nb: 2\na: 3\n").expect_err("duplicate");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].pos, Pos { line: 3, col: 1 });
    assert!(errs[0].message.contains("duplicate key \"a\""));
}

#[test]
fn nulls_and_aliases() {
    let root = load("a: &x {k: v}\nb: *x\nc:\nd: '~'\n")
        .expect("valid")
        .expect("doc");
    let m = map(&root);
    assert_eq!(m[1].1.value, m[0].1.value);
    assert_eq!(m[2].1.value, Value::Null);
    assert_eq!(m[3].1.value, Value::Scalar("~".into()));
}

#[test]
fn syntax_errors_have_positions() {
    let errs = load("a: [1, 2\nb: 3\n").expect_err("unclosed");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.starts_with("invalid YAML"));
    // The flow sequence opened on line 1 is still open where line 2
    // starts a mapping key.
    assert_eq!(errs[0].pos.line, 2, "{:?}", errs[0]);
    let errs = load("a: 1\nb: 2\nc: [\n").expect_err("unclosed at the end");
    assert_eq!(errs[0].pos.line, 4, "{:?}", errs[0]);
    let errs = load("a: 1\n  b: 2\n").expect_err("bad indentation");
    assert_eq!(errs[0].pos.line, 2, "{:?}", errs[0]);
}

#[test]
fn empty_document() {
    assert_eq!(load("").expect("valid"), None);
    assert_eq!(load("# only a comment\n").expect("valid"), None);
}
