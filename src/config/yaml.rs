//! A small YAML tree that remembers where every node and key came from.
//!
//! Built from `saphyr-parser` events, so that every diagnostic can name a
//! line and column. Only what the config format needs is kept: scalars
//! (as text; the decoder gives them types), sequences and mappings whose
//! keys are scalars. Anchors and aliases are resolved by copying; a
//! repeated key in a mapping is reported, never silently overwritten.
//! Depth and copies are bounded by [`Limits`]; see [`load`].

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::limits::Limits;

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
    /// Key path of the node being read, as the decoder writes them.
    pub(crate) path: String,
    pub(crate) message: String,
}

/// How much a node holds: nodes (keys included) and bytes of text. It is
/// what copying the node costs when an anchor or alias asks for a copy.
#[derive(Clone, Copy, Debug, Default)]
struct Size {
    nodes: usize,
    bytes: usize,
}

impl Size {
    fn scalar(text: &str) -> Size {
        Size {
            nodes: 1,
            bytes: text.len(),
        }
    }

    fn add(&mut self, other: Size) {
        self.nodes = self.nodes.saturating_add(other.nodes);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

/// A collection being read, with the [`Size`] of what is already in it.
enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
        size: Size,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        /// The keys of `entries`, so a repeated key is found in constant
        /// time (a scan of `entries` made 80,000 keys take minutes).
        keys: HashSet<String>,
        pending: Option<Key>,
        /// Set when a key was refused; its value is then dropped.
        skip_value: bool,
        size: Size,
    },
}

/// Longest key text a path or message quotes; longer keys are cut, so one
/// huge key cannot make every message under it huge.
const MAX_QUOTED_KEY: usize = 64;

fn short(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_QUOTED_KEY) {
        None => text.into(),
        Some((end, _)) => format!("{}...", &text[..end]).into(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        short(key).into_owned()
    } else {
        format!("{path}.{}", short(key))
    }
}

/// The key path of the node about to be read, from the open collections.
fn path_of(stack: &[Frame]) -> String {
    let mut path = String::new();
    for frame in stack {
        match frame {
            Frame::Seq { items, .. } => path.push_str(&format!("[{}]", items.len())),
            Frame::Map {
                pending: Some(key), ..
            } => path = join(&path, &key.text),
            Frame::Map { pending: None, .. } => {}
        }
    }
    path
}

/// Parses one YAML document. `Ok(None)` for an empty document. Syntax
/// errors and exceeded limits stop parsing (only the first is returned);
/// duplicate keys and unsupported constructs are all collected.
///
/// The YAML crate `serde-saphyr` has budgets like these, but it is a serde
/// deserializer: to keep a position on every node it would have to build
/// this tree through `deserialize_any`, which gives scalars types (`0x10`
/// arrives as 16, `1e3` as a float) where teal's decoder wants the text as
/// written, and it stops at the first problem where teal reports every
/// repeated key. So the tree is built here from `saphyr-parser` events
/// (serde-saphyr's own parser, `granit-parser`, is a fork of it), with
/// the limits:
///
/// - depth: a collection opened deeper than `limits.max_depth` stops the
///   parse. The loop below keeps open collections on a heap stack, but
///   the finished tree is dropped, cloned and compared recursively, so its
///   depth must stay small enough for a thread's native stack;
/// - alias expansion: every node an anchor keeps or an alias copies counts
///   against `limits.max_alias_nodes`, and the text they copy against
///   `limits.max_bytes`, checked before copying, so a few hundred bytes of
///   nested aliases cannot ask for a billion nodes, nor a long scalar
///   copied by thousands of aliases for gigabytes;
/// - repeated keys: a hash set per mapping, linear in the number of keys.
///
/// The file's size is bounded before it gets here, by
/// [`super::read_bounded`] and [`Config::parse_with`](super::Config::parse_with).
pub(crate) fn load(text: &str, limits: &Limits) -> Result<Option<Node>, Vec<YamlError>> {
    let mut parser = Parser::new_from_str(text);
    let mut loader = Loader::new(limits);
    while let Some(event) = parser.next_event() {
        let step = match event {
            Ok((event, span)) => loader.step(event, Pos::of(span)),
            Err(e) => Err(YamlError {
                pos: Pos {
                    line: e.marker().line(),
                    col: e.marker().col() + 1,
                },
                path: path_of(&loader.stack),
                message: format!("invalid YAML: {}", e.info()),
            }),
        };
        if let Err(fatal) = step {
            loader.errors.push(fatal);
            return Err(loader.errors);
        }
    }
    if loader.errors.is_empty() {
        Ok(loader.root)
    } else {
        Err(loader.errors)
    }
}

/// A node just finished: the node, its anchor (0 for none) and its size.
type Complete = (Node, usize, Size);

/// The tree being built from parser events (see [`load`]).
struct Loader<'l> {
    limits: &'l Limits,
    /// The collections open, outermost first.
    stack: Vec<Frame>,
    /// Each anchored node, with its size.
    anchors: HashMap<usize, (Node, Size)>,
    /// What anchors and aliases copied so far.
    copied: Size,
    /// Problems that do not stop the parse (repeated keys, unknown aliases).
    errors: Vec<YamlError>,
    root: Option<Node>,
    documents: usize,
}

impl<'l> Loader<'l> {
    fn new(limits: &'l Limits) -> Loader<'l> {
        Loader {
            limits,
            stack: Vec::new(),
            anchors: HashMap::new(),
            copied: Size::default(),
            errors: Vec::new(),
            root: None,
            documents: 0,
        }
    }

    /// Takes one parser event; `Err` is a problem that stops the parse.
    fn step(&mut self, event: Event<'_>, pos: Pos) -> Result<(), YamlError> {
        if matches!(event, Event::SequenceStart(..) | Event::MappingStart(..))
            && self.stack.len() >= self.limits.max_depth
        {
            return Err(YamlError {
                pos,
                path: path_of(&self.stack),
                message: format!(
                    "nested deeper than the limit of {} levels (--config-max-depth)",
                    self.limits.max_depth
                ),
            });
        }
        let Some((node, anchor, size)) = self.complete(event, pos)? else {
            return Ok(());
        };
        if anchor != 0 {
            self.copied.add(size);
            if let Some(e) = over_copy_budget(self.copied, node.pos, &self.stack, self.limits) {
                return Err(e);
            }
            self.anchors.insert(anchor, (node.clone(), size));
        }
        self.attach(node, size);
        Ok(())
    }

    /// Opens or closes collections; returns the node `event` finished, if
    /// any.
    fn complete(&mut self, event: Event<'_>, pos: Pos) -> Result<Option<Complete>, YamlError> {
        Ok(match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(YamlError {
                        pos,
                        path: String::new(),
                        message: "only one YAML document is allowed".to_owned(),
                    });
                }
                None
            }
            Event::Alias(id) => Some(self.alias(id, pos)?),
            Event::Scalar(text, style, anchor, _tag) => {
                let size = Size::scalar(&text);
                let value = if style == ScalarStyle::Plain
                    && matches!(&*text, "" | "~" | "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar(text.into_owned())
                };
                Some((Node { value, pos }, anchor, size))
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                    size: Size::default(),
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    keys: HashSet::new(),
                    pending: None,
                    skip_value: false,
                    size: Size::default(),
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(),
        })
    }

    /// A copy of the anchored node `id`, counted against the budgets; an
    /// unknown alias is recorded and read as null.
    fn alias(&mut self, id: usize, pos: Pos) -> Result<Complete, YamlError> {
        let Some((node, size)) = self.anchors.get(&id) else {
            self.errors.push(YamlError {
                pos,
                path: path_of(&self.stack),
                message: "unknown alias".to_owned(),
            });
            let null = Node {
                value: Value::Null,
                pos,
            };
            return Ok((null, 0, Size::scalar("")));
        };
        let (value, size) = (node.value.clone(), *size);
        self.copied.add(size);
        if let Some(e) = over_copy_budget(self.copied, pos, &self.stack, self.limits) {
            return Err(e);
        }
        Ok((Node { value, pos }, 0, size))
    }

    /// Closes the innermost collection.
    fn close(&mut self) -> Option<Complete> {
        let (value, pos, anchor, mut size) = match self.stack.pop()? {
            Frame::Seq {
                pos,
                anchor,
                items,
                size,
            } => (Value::Seq(items), pos, anchor, size),
            Frame::Map {
                pos,
                anchor,
                entries,
                size,
                ..
            } => (Value::Map(entries), pos, anchor, size),
        };
        size.add(Size::scalar(""));
        Some((Node { value, pos }, anchor, size))
    }

    /// Puts a finished node where it belongs: the root, the next item of a
    /// sequence, or a mapping's next key or value.
    fn attach(&mut self, node: Node, size: Size) {
        // A refused key: its text (None when it was not a scalar) and place.
        let mut refused: Option<(Option<String>, Pos)> = None;
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq {
                items, size: own, ..
            }) => {
                items.push(node);
                own.add(size);
            }
            Some(Frame::Map {
                entries,
                keys,
                pending,
                skip_value,
                size: own,
                ..
            }) => {
                if *skip_value {
                    *skip_value = false;
                } else if let Some(key) = pending.take() {
                    entries.push((key, node));
                    own.add(size);
                } else {
                    let text = match node.value {
                        Value::Scalar(s) => Some(s),
                        Value::Null => Some(String::new()),
                        _ => None,
                    };
                    match text {
                        Some(text) if !keys.contains(&text) => {
                            keys.insert(text.clone());
                            own.add(Size::scalar(&text));
                            *pending = Some(Key {
                                text,
                                pos: node.pos,
                            });
                        }
                        text => {
                            refused = Some((text, node.pos));
                            *skip_value = true;
                        }
                    }
                }
            }
        }
        // The path is only worked out for a problem: it costs a walk of
        // the open collections.
        if let Some((text, pos)) = refused {
            let path = path_of(&self.stack);
            self.errors.push(match text {
                Some(text) => YamlError {
                    pos,
                    path: join(&path, &text),
                    message: format!("duplicate key {:?}", short(&text)),
                },
                None => YamlError {
                    pos,
                    path,
                    message: "mapping keys must be plain text".to_owned(),
                },
            });
        }
    }
}

/// The problem when `copied` is over a budget: in nodes, or in bytes of
/// text (a long scalar copied many times is as bad as many nodes).
fn over_copy_budget(copied: Size, pos: Pos, stack: &[Frame], limits: &Limits) -> Option<YamlError> {
    let message = if copied.nodes > limits.max_alias_nodes {
        format!(
            "anchors and aliases copy more than the limit of {} nodes (--config-max-alias-nodes)",
            limits.max_alias_nodes
        )
    } else if u64::try_from(copied.bytes).unwrap_or(u64::MAX) > limits.max_bytes {
        format!(
            "anchors and aliases copy more than the limit of {} bytes of text (--config-max-bytes)",
            limits.max_bytes
        )
    } else {
        return None;
    };
    Some(YamlError {
        pos,
        path: path_of(stack),
        message,
    })
}

#[cfg(test)]
#[path = "yaml_tests.rs"]
mod tests;
