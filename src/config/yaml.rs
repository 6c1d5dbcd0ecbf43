//! A YAML tree in which every node knows its line and column.
//!
//! Owns turning the bytes of one config file into [`Node`]s. Positions are what make
//! config errors point at the offending text (`file:line:col`), and having the whole tree
//! before validating is what lets the loader report every error of a file rather than the
//! first one. Scalars keep their source text, because the reference takes integers and
//! booleans given as descriptor keys or values as their text.
//!
//! Scalar types resolve as the reference's YAML library (yaml.v2, YAML 1.1) does, so a
//! file that loads there means the same here: `yes`/`on` are booleans, `0x1f` is an
//! integer. Hostile input is bounded: nesting deeper than [`MAX_DEPTH`] (counted after
//! alias expansion, so an alias cannot stack a deep anchor under a deep position) and
//! documents that expand past [`MAX_NODES`] nodes or [`MAX_EXPANDED_BYTES`] of text are
//! errors, never a stack overflow or an out-of-memory. Every later walk of the tree
//! (the schema reader, the rule builder, metadata) may therefore recurse: no tree it is
//! given is deeper than [`MAX_DEPTH`].
//!
//! This module knows nothing about rate limits.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

/// The deepest nesting of sequences and mappings accepted in a config file, aliases
/// expanded. A safety invariant rather than a setting: every walk of a config recurses
/// once per level, and 128 levels fit any thread's stack many times over (a rule tree
/// has at most 64 descriptor levels, each a list and a mapping).
pub const MAX_DEPTH: usize = 128;
/// The most nodes one file may expand to, counting every alias expansion. A node costs
/// about a hundred bytes while the file is read, so this bounds a load's memory to about
/// 100 MB however the aliases multiply; a rule file of 4 MiB written out without aliases
/// has fewer.
pub const MAX_NODES: usize = 1_000_000;
/// The most scalar text one file may expand to through aliases: four times the largest
/// file.
pub const MAX_EXPANDED_BYTES: usize = 16 * 1024 * 1024;

/// A 1-based line and column in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Entries in file order; duplicate keys are kept so the validator can name them.
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    /// The scalar's text as written (after YAML unescaping).
    pub text: String,
    pub kind: ScalarKind,
    /// Columns between the node's position and its first character of text (1 for a
    /// quoted scalar), when the text sits on one line as written; `None` for block
    /// scalars. Lets errors point inside a string.
    pub text_offset: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScalarKind {
    Null,
    Bool(bool),
    Int(i128),
    /// An integer literal too large for 128 bits.
    BigInt,
    Float,
    Str,
}

impl Node {
    /// A short description of what the node is, for error messages: `a mapping`,
    /// `the float 1.5`, `the string "x"`.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
            Value::Scalar(s) => match s.kind {
                ScalarKind::Null => "nothing (null)".to_string(),
                ScalarKind::Bool(_) => format!("the boolean {}", s.text),
                ScalarKind::Int(_) | ScalarKind::BigInt => format!("the integer {}", s.text),
                ScalarKind::Float => format!("the float {}", s.text),
                ScalarKind::Str => format!("the string {:?}", s.text),
            },
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(Scalar { kind: ScalarKind::Null, .. }))
    }
}

/// A syntax or resource error while reading YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// Parses every document of `text`. An empty stream yields no documents; a document with
/// no content yields a null node.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, YamlError> {
    let mut builder = Builder::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlError {
            pos: Pos {
                line: u32::try_from(e.marker().line()).unwrap_or(u32::MAX),
                col: u32::try_from(e.marker().col() + 1).unwrap_or(u32::MAX),
            },
            message: e.info().to_string(),
        })?;
        builder.event(event, span)?;
    }
    Ok(builder.documents)
}

/// A container under construction.
/// `height` is the nesting inside the container so far: 1 plus the tallest child's.
enum Open {
    Seq { items: Vec<Node>, pos: Pos, anchor: usize, height: usize },
    Map { entries: Vec<(Node, Node)>, pending_key: Option<Node>, pos: Pos, anchor: usize, height: usize },
}

#[derive(Default)]
struct Builder {
    documents: Vec<Node>,
    stack: Vec<Open>,
    /// Anchored nodes with their heights (0 for a scalar).
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    /// Scalar text copied by alias expansions so far.
    expanded_bytes: usize,
    /// Whether the current document has produced its root node yet.
    root_done: bool,
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
        col: u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
    }
}

/// Nodes and scalar bytes in a subtree.
fn count_nodes(node: &Node) -> (usize, usize) {
    // Iterative on purpose: an alias can name a deep subtree.
    let (mut count, mut bytes) = (0, 0);
    let mut todo = vec![node];
    while let Some(n) = todo.pop() {
        count += 1;
        match &n.value {
            Value::Scalar(s) => bytes += s.text.len(),
            Value::Seq(items) => todo.extend(items.iter()),
            Value::Map(entries) => {
                for (k, v) in entries {
                    todo.push(k);
                    todo.push(v);
                }
            }
        }
    }
    (count, bytes)
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), YamlError> {
        let pos = pos_of(&span);
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
            Event::DocumentStart(_) => self.root_done = false,
            Event::DocumentEnd => {
                if !self.root_done {
                    self.documents.push(Node {
                        value: Value::Scalar(Scalar { text: String::new(), kind: ScalarKind::Null, text_offset: None }),
                        pos,
                    });
                }
            }
            Event::Alias(id) => {
                let (anchored, height) = self
                    .anchors
                    .get(&id)
                    .ok_or_else(|| YamlError { pos, message: "alias refers to an unknown anchor".to_string() })?;
                // Checked before copying: cloning a too-deep tree would itself recurse.
                if self.stack.len() + height > MAX_DEPTH {
                    return Err(YamlError {
                        pos,
                        message: format!("nesting is deeper than {MAX_DEPTH} levels (through an alias)"),
                    });
                }
                let (node, height) = (anchored.clone(), *height);
                let (nodes, bytes) = count_nodes(&node);
                self.count(nodes, pos)?;
                self.expanded_bytes = self.expanded_bytes.saturating_add(bytes);
                if self.expanded_bytes > MAX_EXPANDED_BYTES {
                    return Err(YamlError {
                        pos,
                        message: format!("aliases expand the file past {MAX_EXPANDED_BYTES} bytes of text"),
                    });
                }
                self.finish(Node { pos, ..node }, 0, height)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, pos)?;
                let scalar = resolve_scalar(text, style, tag.as_deref());
                self.finish(Node { value: Value::Scalar(scalar), pos }, anchor, 0)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.open(Open::Seq { items: Vec::new(), pos, anchor, height: 1 }, pos)?;
            }
            Event::MappingStart(anchor, _) => {
                self.open(Open::Map { entries: Vec::new(), pending_key: None, pos, anchor, height: 1 }, pos)?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor, height) = match self.stack.pop() {
                    Some(Open::Seq { items, pos, anchor, height }) => {
                        (Node { value: Value::Seq(items), pos }, anchor, height)
                    }
                    Some(Open::Map { entries, pos, anchor, height, .. }) => {
                        (Node { value: Value::Map(entries), pos }, anchor, height)
                    }
                    None => {
                        return Err(YamlError { pos, message: "unbalanced end of collection".to_string() });
                    }
                };
                self.finish(node, anchor, height)?;
            }
        }
        Ok(())
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                pos,
                message: format!("the file expands to more than {MAX_NODES} YAML nodes (aliases included)"),
            });
        }
        Ok(())
    }

    fn open(&mut self, open: Open, pos: Pos) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlError { pos, message: format!("nesting is deeper than {MAX_DEPTH} levels") });
        }
        self.count(1, pos)?;
        self.stack.push(open);
        Ok(())
    }

    /// Adds a finished node (`height` levels of containers tall) to its parent.
    fn finish(&mut self, node: Node, anchor: usize, height: usize) -> Result<(), YamlError> {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), height));
        }
        match self.stack.last_mut() {
            None => {
                self.documents.push(node);
                self.root_done = true;
            }
            Some(Open::Seq { items, height: parent, .. }) => {
                *parent = (*parent).max(height + 1);
                items.push(node);
            }
            Some(Open::Map { entries, pending_key, height: parent, .. }) => {
                *parent = (*parent).max(height + 1);
                match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(key) => entries.push((key, node)),
                }
            }
        }
        Ok(())
    }
}

fn resolve_scalar(text: Cow<'_, str>, style: ScalarStyle, tag: Option<&Tag>) -> Scalar {
    let text = text.into_owned();
    let text_offset = match style {
        _ if text.contains('\n') => None,
        ScalarStyle::Plain => Some(0),
        ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => Some(1),
        _ => None,
    };
    if let Some(tag) = tag
        && tag.handle == "tag:yaml.org,2002:"
        && tag.suffix == "str"
    {
        return Scalar { text, kind: ScalarKind::Str, text_offset: None };
    }
    if style != ScalarStyle::Plain {
        return Scalar { text, kind: ScalarKind::Str, text_offset };
    }
    let kind = resolve_plain(&text);
    Scalar { text, kind, text_offset }
}

/// Resolves a plain scalar the way yaml.v2 (YAML 1.1) does.
fn resolve_plain(text: &str) -> ScalarKind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarKind::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return ScalarKind::Bool(true);
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return ScalarKind::Bool(false);
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF" | ".nan" | ".NaN"
        | ".NAN" => return ScalarKind::Float,
        _ => {}
    }
    if let Some(kind) = resolve_int(text) {
        return kind;
    }
    if is_float(text) {
        return ScalarKind::Float;
    }
    ScalarKind::Str
}

fn resolve_int(text: &str) -> Option<ScalarKind> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let cleaned: String = body.chars().filter(|&c| c != '_').collect();
    if cleaned.is_empty() || !body.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    let (radix, digits) = if let Some(rest) = cleaned.strip_prefix("0x") {
        (16, rest)
    } else if let Some(rest) = cleaned.strip_prefix("0b") {
        (2, rest)
    } else if let Some(rest) = cleaned.strip_prefix("0o") {
        (8, rest)
    } else if cleaned.len() > 1 && cleaned.starts_with('0') && cleaned.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        (8, &cleaned[1..])
    } else {
        (10, cleaned.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    Some(match i128::from_str_radix(digits, radix) {
        Ok(v) => ScalarKind::Int(if negative { -v } else { v }),
        Err(_) => ScalarKind::BigInt,
    })
}

/// yaml.v2's float syntax: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
fn is_float(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && (b[*i].is_ascii_digit() || b[*i] == b'_') {
            *i += 1;
        }
        *i > start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    } else {
        if !digits(&mut i) {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let mut docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.remove(0)
    }

    fn kind(text: &str) -> ScalarKind {
        one(&format!("v: {text}\n")).value_map()[0].1.as_scalar().unwrap().kind
    }

    impl Node {
        fn value_map(&self) -> &Vec<(Node, Node)> {
            match &self.value {
                Value::Map(m) => m,
                other => panic!("not a map: {other:?}"),
            }
        }
    }

    #[test]
    fn scalars_resolve_like_yaml_v2() {
        assert_eq!(kind("10"), ScalarKind::Int(10));
        assert_eq!(kind("-1"), ScalarKind::Int(-1));
        assert_eq!(kind("0x1f"), ScalarKind::Int(31));
        assert_eq!(kind("010"), ScalarKind::Int(8));
        assert_eq!(kind("1_000"), ScalarKind::Int(1000));
        assert_eq!(kind("99999999999999999999999999999999999999999"), ScalarKind::BigInt);
        assert_eq!(kind("1.5"), ScalarKind::Float);
        assert_eq!(kind(".5"), ScalarKind::Float);
        assert_eq!(kind("1e3"), ScalarKind::Float);
        assert_eq!(kind(".inf"), ScalarKind::Float);
        assert_eq!(kind("yes"), ScalarKind::Bool(true));
        assert_eq!(kind("Off"), ScalarKind::Bool(false));
        assert_eq!(kind("~"), ScalarKind::Null);
        assert_eq!(kind(""), ScalarKind::Null);
        assert_eq!(kind("\"true\""), ScalarKind::Str);
        assert_eq!(kind("'10'"), ScalarKind::Str);
        assert_eq!(kind("!!str 10"), ScalarKind::Str);
        assert_eq!(kind("10.0.0.1"), ScalarKind::Str);
        assert_eq!(kind("1.2.3"), ScalarKind::Str);
        assert_eq!(kind("foo*"), ScalarKind::Str);
        assert_eq!(kind("a-b"), ScalarKind::Str);
    }

    #[test]
    fn positions_are_one_based_and_point_at_the_node() {
        let doc = one("domain: d\ndescriptors:\n  - key: k\n    value: v\n");
        let map = doc.value_map();
        assert_eq!(map[0].0.pos, Pos { line: 1, col: 1 });
        assert_eq!(map[0].1.pos, Pos { line: 1, col: 9 });
        let Value::Seq(items) = &map[1].1.value else { panic!() };
        let item = items[0].value_map();
        assert_eq!(item[1].1.pos, Pos { line: 4, col: 12 });
    }

    #[test]
    fn every_document_is_returned() {
        let docs = parse_documents("---\na: 1\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert!(parse_documents("").unwrap().is_empty());
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse_documents("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        // Flow nesting stops in the parser's own limit, block nesting in ours.
        let text = "[".repeat(100_000);
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("recursion limit"), "{err:?}");
        let text: String = (0..1000).map(|d| format!("{}k{d}:\n", " ".repeat(d))).collect();
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("deeper than 128"), "{err:?}");
    }

    /// Depth of a tree, iteratively (the tree under test may be deep).
    fn depth(node: &Node) -> usize {
        let mut deepest = 0;
        let mut todo = vec![(node, 0)];
        while let Some((n, d)) = todo.pop() {
            match &n.value {
                Value::Scalar(_) => deepest = deepest.max(d),
                Value::Seq(items) => todo.extend(items.iter().map(|i| (i, d + 1))),
                Value::Map(entries) => {
                    deepest = deepest.max(d + 1);
                    todo.extend(entries.iter().map(|(_, v)| (v, d + 1)));
                }
            }
        }
        deepest
    }

    #[test]
    fn aliases_cannot_nest_past_the_depth_cap() {
        // Each anchor nests the previous one a level deeper: 1,830 levels in a few KB.
        let mut text = String::from("l0: &l0 [x]\n");
        for i in 1..1830 {
            text.push_str(&format!("l{i}: &l{i} [*l{}]\n", i - 1));
        }
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("deeper than 128 levels (through an alias)"), "{err:?}");
        // An alias nested under a deep position counts from there.
        let deep: String = (0..100).map(|d| format!("{}k{d}:\n", " ".repeat(d))).collect();
        let text = format!(
            "a: &a [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[x]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n{deep}{}v: *a\n",
            " ".repeat(100)
        );
        assert!(parse_documents(&text).unwrap_err().message.contains("through an alias"));
        // Up to the cap, aliases are fine, and the tree really is that deep.
        let mut text = String::from("l0: &l0 [x]\n");
        for i in 1..126 {
            text.push_str(&format!("l{i}: &l{i} [*l{}]\n", i - 1));
        }
        let doc = one(&text);
        assert_eq!(depth(&doc), 127);
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 { "a".to_string() } else { format!("l{}", i - 1) };
            text.push_str(&format!("l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("more than"), "{err:?}");
    }

    #[test]
    fn aliases_of_long_text_are_bounded_by_bytes() {
        let long = "x".repeat(1 << 20);
        let mut text = format!("a: &a {long}\nl:\n");
        for _ in 0..100 {
            text.push_str("  - *a\n");
        }
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("bytes of text"), "{err:?}");
    }

    #[test]
    fn aliases_expand_to_the_anchored_value() {
        let doc = one("a: &x 5\nb: *x\n");
        let map = doc.value_map();
        assert_eq!(map[1].1.as_scalar().unwrap().kind, ScalarKind::Int(5));
    }
}
