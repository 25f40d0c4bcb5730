//! A small YAML tree that remembers where every node and key came from.
//!
//! Built from `saphyr-parser` events, so that every diagnostic can name a
//! line and column. Only what the config format needs is kept: scalars
//! (as text; the decoder gives them types), sequences and mappings whose
//! keys are scalars. Anchors and aliases are resolved by copying; a
//! repeated key in a mapping is reported, never silently overwritten.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A 1-based line and column in the source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) col: usize,
}

impl Pos {
    fn of(span: Span) -> Pos {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// The value of a node.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    /// An empty scalar, `~` or `null`.
    Null,
    /// Any other scalar, as written (after unquoting).
    Scalar(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping with scalar keys, in source order.
    Map(Vec<(Key, Node)>),
}

/// A mapping key.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Key {
    pub(crate) text: String,
    pub(crate) pos: Pos,
}

/// A node and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) pos: Pos,
}

impl Node {
    /// What kind of node this is, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing",
            Value::Scalar(_) => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A problem found while reading YAML.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct YamlError {
    pub(crate) pos: Pos,
    pub(crate) message: String,
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        pending: Option<Key>,
        /// Set when a key was not a scalar; its value is then dropped.
        skip_value: bool,
    },
}

/// Parses one YAML document. `Ok(None)` for an empty document. Syntax
/// errors stop parsing (only the first is returned); duplicate keys and
/// unsupported constructs are all collected.
pub(crate) fn load(text: &str) -> Result<Option<Node>, Vec<YamlError>> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut errors = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;

    while let Some(event) = parser.next_event() {
        let (event, span) = match event {
            Ok(ev) => ev,
            Err(e) => {
                errors.push(YamlError {
                    pos: Pos {
                        line: e.marker().line(),
                        col: e.marker().col() + 1,
                    },
                    message: format!("invalid YAML: {}", e.info()),
                });
                return Err(errors);
            }
        };
        let pos = Pos::of(span);
        let complete = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    errors.push(YamlError {
                        pos,
                        message: "only one YAML document is allowed".to_owned(),
                    });
                    return Err(errors);
                }
                None
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => Some((
                    Node {
                        value: node.value.clone(),
                        pos,
                    },
                    0,
                )),
                None => {
                    errors.push(YamlError {
                        pos,
                        message: "unknown alias".to_owned(),
                    });
                    Some((
                        Node {
                            value: Value::Null,
                            pos,
                        },
                        0,
                    ))
                }
            },
            Event::Scalar(text, style, anchor, _tag) => {
                let value = if style == ScalarStyle::Plain
                    && matches!(&*text, "" | "~" | "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar(text.into_owned())
                };
                Some((Node { value, pos }, anchor))
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    pending: None,
                    skip_value: false,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => Some((
                    Node {
                        value: Value::Seq(items),
                        pos,
                    },
                    anchor,
                )),
                _ => None,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) => Some((
                    Node {
                        value: Value::Map(entries),
                        pos,
                    },
                    anchor,
                )),
                _ => None,
            },
        };
        let Some((node, anchor)) = complete else {
            continue;
        };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending,
                skip_value,
                ..
            }) => {
                if *skip_value {
                    *skip_value = false;
                } else if let Some(key) = pending.take() {
                    entries.push((key, node));
                } else {
                    let text = match node.value {
                        Value::Scalar(s) => Some(s),
                        Value::Null => Some(String::new()),
                        _ => None,
                    };
                    match text {
                        Some(text) => {
                            if entries.iter().any(|(k, _)| k.text == text) {
                                errors.push(YamlError {
                                    pos: node.pos,
                                    message: format!("duplicate key {text:?}"),
                                });
                                *skip_value = true;
                            } else {
                                *pending = Some(Key {
                                    text,
                                    pos: node.pos,
                                });
                            }
                        }
                        None => {
                            errors.push(YamlError {
                                pos: node.pos,
                                message: "mapping keys must be plain text".to_owned(),
                            });
                            *skip_value = true;
                        }
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(root)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(errs[0].pos.line >= 1);
    }

    #[test]
    fn empty_document() {
        assert_eq!(load("").expect("valid"), None);
        assert_eq!(load("# only a comment\n").expect("valid"), None);
    }
}
