//! Consul's `?filter=` expressions (go-bexpr), evaluated over the JSON form of each result.
//!
//! Supported: `Sel == value`, `Sel != value`, `value in Sel`, `value not in Sel`,
//! `Sel contains value`, `Sel not contains value`, `Sel is empty`, `Sel is not empty`,
//! `Sel matches "regexp"`, `Sel not matches "regexp"`, combined with `and`, `or`, `not` and
//! parentheses. Selectors are dotted field paths (`Meta.env`, `Service.Tags`); values are
//! quoted strings (`"x"` or `` `x` ``), numbers, booleans or bare words.
//!
//! `matches` takes RE2-like syntax, as Go's `regexp` that bexpr uses (the `regex` crate
//! follows RE2's dialect and, like RE2, runs in linear time, so a hostile pattern cannot stall
//! a request), and matches anywhere in a string field, as Go's `MatchString`. One difference:
//! `\w`, `\d` and `\b` are Unicode-aware here and ASCII in Go (write `(?-u:\w)` for Go's).
//! A field that is not a string never matches.
//!
//! The filter arrives in an unauthenticated query string, so parsing is bounded: the
//! expression's length, its token count, its nesting depth, its selectors and the number and
//! total compiled size of its regular expressions all have limits (below). go-bexpr has no
//! explicit depth limit (a Go stack grows to a gigabyte); a Rust thread's does not, so past
//! [`MAX_DEPTH`] the expression is refused before the parser recurses any deeper. Past any
//! limit the error is `InvalidParameter` (HTTP 400) and names the limit.

use serde_json::Value;

use crate::catalog::{
    AgentService, CatalogService, HealthCheck, HealthStatus, Node, ProxyConfig, ServiceAddress,
    ServiceConnect, ServiceEntry, ServiceKind, Upstream,
};
use crate::intentions::{Intention, IntentionAction};
use crate::{Error, ErrorKind};

/// Longest expression accepted, in bytes. Hand-written and generated filters are a few
/// hundred bytes; this leaves room for long `or` lists of names.
pub const MAX_LENGTH: usize = 16 * 1024;
/// Most tokens (words, values, operators, parentheses) in one expression: bounds the work of
/// evaluating it against every result.
pub const MAX_TOKENS: usize = 2048;
/// Deepest nesting of parentheses and `not`. Real filters nest two or three levels; 32 keeps
/// the parser's recursion (a few frames per level) and every walk of the parsed tree to a few
/// tens of KiB of stack even in a debug build.
pub const MAX_DEPTH: usize = 32;
/// Most `matches` clauses in one expression.
pub const MAX_PATTERNS: usize = 16;
/// Total compiled size of all of one expression's regular expressions, in bytes: each pattern
/// may use its share, so one pattern alone may still use all of it.
pub const MAX_PATTERN_BYTES: usize = 1 << 20;
/// Total lazy-DFA cache of one expression's regular expressions, shared out like
/// [`MAX_PATTERN_BYTES`].
const MAX_DFA_BYTES: usize = 2 << 20;
/// Most dotted parts in one selector (`Service.Meta.env` has three).
pub const MAX_SELECTOR_PARTS: usize = 16;
/// Longest selector, in bytes.
pub const MAX_SELECTOR_LENGTH: usize = 512;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every one holds (`a and b and c`, kept flat so that a long chain is not a deep tree).
    And(Vec<Filter>),
    /// At least one holds.
    Or(Vec<Filter>),
    /// The inner one does not hold.
    Not(Box<Filter>),
    /// One comparison.
    Match {
        /// The field path.
        selector: Vec<String>,
        /// The comparison.
        op: Op,
        /// The literal compared with (empty for `is empty`).
        value: String,
    },
    /// `Sel matches "re"` (or, with `negate`, `Sel not matches "re"`).
    Regex {
        /// The field path.
        selector: Vec<String>,
        /// The compiled expression.
        pattern: Pattern,
        /// `not matches`.
        negate: bool,
    },
}

/// A compiled regular expression; equal when the source texts are.
#[derive(Debug, Clone)]
pub struct Pattern(regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Pattern {
    /// Compiles `source` within `share` of the expression's budget, so that a filter cannot
    /// make the server build a huge automaton, nor many of them.
    fn new(source: &str, share: usize) -> Result<Pattern, Error> {
        regex::RegexBuilder::new(source)
            .size_limit(MAX_PATTERN_BYTES / share)
            .dfa_size_limit(MAX_DFA_BYTES / share)
            .build()
            .map(Pattern)
            .map_err(|e| err(format!("invalid regular expression {source:?}: {e}")))
    }

    /// The expression's source text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`.
    Equal,
    /// `!=`.
    NotEqual,
    /// `value in Sel` or `Sel contains value`.
    Contains,
    /// `value not in Sel` or `Sel not contains value`.
    NotContains,
    /// `Sel is empty`.
    IsEmpty,
    /// `Sel is not empty`.
    IsNotEmpty,
}

fn err(msg: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidParameter,
        format!("Failed to create boolean expression evaluator: {msg}"),
    )
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Eq,
    Ne,
    Word(String),
    Quoted(String),
}

fn lex(input: &str) -> Result<Vec<Tok>, Error> {
    let mut out = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Tok::LParen);
            }
            ')' => {
                chars.next();
                out.push(Tok::RParen);
            }
            '=' | '!' => {
                chars.next();
                match chars.next() {
                    Some((_, '=')) => out.push(if c == '=' { Tok::Eq } else { Tok::Ne }),
                    _ => return Err(err(format!("unexpected {c:?} at offset {i}"))),
                }
            }
            '"' | '`' => {
                chars.next();
                let mut s = String::new();
                let mut closed = false;
                while let Some((_, d)) = chars.next() {
                    if d == c {
                        closed = true;
                        break;
                    }
                    if d == '\\' && c == '"' {
                        if let Some((_, e)) = chars.next() {
                            s.push(e);
                        }
                        continue;
                    }
                    s.push(d);
                }
                if !closed {
                    return Err(err(format!("unterminated string starting at offset {i}")));
                }
                out.push(Tok::Quoted(s));
            }
            _ => {
                let mut s = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if d.is_whitespace() || matches!(d, '(' | ')' | '=' | '!' | '"' | '`') {
                        break;
                    }
                    s.push(d);
                    chars.next();
                }
                out.push(Tok::Word(s));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    /// Parentheses and `not`s open around the current position.
    depth: usize,
    /// How many patterns share the regex budget (the `matches` words, counted up front).
    patterns: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Word(x)) if x == w)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn or(&mut self) -> Result<Filter, Error> {
        let mut terms = vec![self.and()?];
        while self.peek_word("or") {
            self.pos += 1;
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Filter::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Filter, Error> {
        let mut terms = vec![self.not()?];
        while self.peek_word("and") {
            self.pos += 1;
            terms.push(self.not()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Filter::And(terms)
        })
    }

    /// Counts one more level of nesting, refusing before the parser recurses past the limit.
    fn descend(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err(format!(
                "expression nested too deeply (more than {MAX_DEPTH} levels of parentheses \
                 and 'not')"
            )));
        }
        Ok(())
    }

    fn not(&mut self) -> Result<Filter, Error> {
        if self.peek_word("not") {
            self.pos += 1;
            self.descend()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Filter, Error> {
        match self.next() {
            Some(Tok::LParen) => {
                self.descend()?;
                let f = self.or()?;
                self.depth -= 1;
                match self.next() {
                    Some(Tok::RParen) => Ok(f),
                    _ => Err(err("missing closing parenthesis")),
                }
            }
            Some(Tok::Quoted(v)) => self.value_first(v),
            Some(Tok::Word(w)) => {
                // `value in Selector` starts with a value; anything else with a selector.
                if self.peek_word("in") || (self.peek_word("not") && self.word_at(1, "in")) {
                    return self.value_first(w);
                }
                self.selector_first(selector(&w)?)
            }
            Some(t) => Err(err(format!("unexpected {t:?}"))),
            None => Err(err("unexpected end of expression")),
        }
    }

    fn word_at(&self, ahead: usize, w: &str) -> bool {
        matches!(self.toks.get(self.pos + ahead), Some(Tok::Word(x)) if x == w)
    }

    fn value_first(&mut self, value: String) -> Result<Filter, Error> {
        let op = if self.peek_word("in") {
            self.pos += 1;
            Op::Contains
        } else if self.peek_word("not") && self.word_at(1, "in") {
            self.pos += 2;
            Op::NotContains
        } else {
            return Err(err(format!("expected 'in' after value {value:?}")));
        };
        match self.next() {
            Some(Tok::Word(w)) => Ok(Filter::Match {
                selector: selector(&w)?,
                op,
                value,
            }),
            _ => Err(err("expected a selector after 'in'")),
        }
    }

    fn selector_first(&mut self, sel: Vec<String>) -> Result<Filter, Error> {
        let op = match self.next() {
            Some(Tok::Eq) => Op::Equal,
            Some(Tok::Ne) => Op::NotEqual,
            Some(Tok::Word(w)) if w == "contains" => Op::Contains,
            Some(Tok::Word(w)) if w == "not" => match self.next() {
                Some(Tok::Word(x)) if x == "contains" => Op::NotContains,
                Some(Tok::Word(x)) if x == "matches" => return self.regex(sel, true),
                _ => return Err(err("expected 'contains' or 'matches' after 'not'")),
            },
            Some(Tok::Word(w)) if w == "is" => {
                let negate = self.peek_word("not");
                if negate {
                    self.pos += 1;
                }
                match self.next() {
                    Some(Tok::Word(x)) if x == "empty" => {
                        let op = if negate { Op::IsNotEmpty } else { Op::IsEmpty };
                        return Ok(Filter::Match {
                            selector: sel,
                            op,
                            value: String::new(),
                        });
                    }
                    _ => return Err(err("expected 'empty' after 'is'")),
                }
            }
            Some(Tok::Word(w)) if w == "matches" => return self.regex(sel, false),
            other => return Err(err(format!("expected an operator, found {other:?}"))),
        };
        match self.next() {
            Some(Tok::Word(v)) | Some(Tok::Quoted(v)) => Ok(Filter::Match {
                selector: sel,
                op,
                value: v,
            }),
            _ => Err(err("expected a value after the operator")),
        }
    }
}

impl Parser {
    fn regex(&mut self, selector: Vec<String>, negate: bool) -> Result<Filter, Error> {
        match self.next() {
            Some(Tok::Word(v)) | Some(Tok::Quoted(v)) => Ok(Filter::Regex {
                selector,
                pattern: Pattern::new(&v, self.patterns.max(1))?,
                negate,
            }),
            _ => Err(err("expected a regular expression after 'matches'")),
        }
    }
}

fn selector(word: &str) -> Result<Vec<String>, Error> {
    if word.len() > MAX_SELECTOR_LENGTH {
        return Err(err(format!(
            "selector longer than {MAX_SELECTOR_LENGTH} bytes"
        )));
    }
    let parts: Vec<String> = word.split('.').map(str::to_owned).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err(format!("invalid selector {word:?}")));
    }
    if parts.len() > MAX_SELECTOR_PARTS {
        return Err(err(format!(
            "selector has more than {MAX_SELECTOR_PARTS} parts"
        )));
    }
    Ok(parts)
}

impl Filter {
    /// Parses an expression, refusing one past any of this module's limits.
    pub fn parse(input: &str) -> Result<Filter, Error> {
        if input.len() > MAX_LENGTH {
            return Err(err(format!("expression longer than {MAX_LENGTH} bytes")));
        }
        let toks = lex(input)?;
        if toks.len() > MAX_TOKENS {
            return Err(err(format!("expression has more than {MAX_TOKENS} tokens")));
        }
        // Counted before compiling any, so that the budget is shared out, never overrun.
        let patterns = toks
            .iter()
            .filter(|t| matches!(t, Tok::Word(w) if w == "matches"))
            .count();
        if patterns > MAX_PATTERNS {
            return Err(err(format!(
                "expression has more than {MAX_PATTERNS} 'matches' clauses"
            )));
        }
        let mut p = Parser {
            toks,
            pos: 0,
            depth: 0,
            patterns,
        };
        let f = p.or()?;
        if p.pos < p.toks.len() {
            return Err(err(format!("unexpected {:?}", p.toks[p.pos])));
        }
        Ok(f)
    }

    /// Whether `item` (the JSON form of one result) passes.
    pub fn matches(&self, item: &Value) -> bool {
        match self {
            Filter::And(terms) => terms.iter().all(|t| t.matches(item)),
            Filter::Or(terms) => terms.iter().any(|t| t.matches(item)),
            Filter::Not(a) => !a.matches(item),
            Filter::Match {
                selector,
                op,
                value,
            } => {
                let (fields, through_list) = lookup(item, selector);
                // Through a list (`Checks.Status`), the selector names one value per element
                // and `in`/`contains` asks whether any element's value is the one given.
                let has = |f: &Value| match f {
                    Value::Array(_) | Value::Object(_) => contains(f, value),
                    _ if through_list => equals(f, value),
                    _ => contains(f, value),
                };
                match op {
                    Op::Equal => fields.iter().any(|f| equals(f, value)),
                    Op::NotEqual => !fields.iter().any(|f| equals(f, value)),
                    Op::Contains => fields.iter().any(|f| has(f)),
                    Op::NotContains => !fields.iter().any(|f| has(f)),
                    Op::IsEmpty => fields.iter().all(|f| is_empty(f)),
                    Op::IsNotEmpty => !fields.iter().all(|f| is_empty(f)),
                }
            }
            Filter::Regex {
                selector,
                pattern,
                negate,
            } => {
                let hit = lookup(item, selector)
                    .0
                    .iter()
                    .filter_map(|f| f.as_str())
                    .any(|s| pattern.0.is_match(s));
                hit != *negate
            }
        }
    }

    /// Keeps the items that pass, comparing their JSON form.
    pub fn apply<T: serde::Serialize>(&self, items: Vec<T>) -> Vec<T> {
        items
            .into_iter()
            .filter(|i| serde_json::to_value(i).is_ok_and(|v| self.matches(&v)))
            .collect()
    }
}

/// A result type whose selectors a filter is checked against before it runs (go-bexpr refuses
/// a selector the result type does not have: `Selector "X" is not valid`).
pub trait Selectable {
    /// A JSON sample of the type with every field present: an object key `*` stands for any
    /// map key; an empty object or array and `null` accept any selector below them.
    fn selector_sample() -> Value;
}

impl Filter {
    /// Refuses (400) a filter naming a field that `T`'s results do not have, as go-bexpr does,
    /// instead of silently matching nothing.
    pub fn check_selectors<T: Selectable>(&self) -> Result<(), Error> {
        let sample = T::selector_sample();
        let mut result = Ok(());
        self.each_selector(&mut |sel| {
            if result.is_ok() && !selector_valid(&sample, sel) {
                result = Err(err(format!("Selector {:?} is not valid", sel.join("."))));
            }
        });
        result
    }

    fn each_selector<'a>(&'a self, f: &mut impl FnMut(&'a [String])) {
        match self {
            Filter::And(terms) | Filter::Or(terms) => {
                terms.iter().for_each(|t| t.each_selector(f));
            }
            Filter::Not(inner) => inner.each_selector(f),
            Filter::Match { selector, .. } | Filter::Regex { selector, .. } => f(selector),
        }
    }
}

/// Whether `path` names a field of `sample` (see [`Selectable::selector_sample`]).
fn selector_valid(mut sample: &Value, path: &[String]) -> bool {
    for part in path {
        // A list's fields are its elements' (`Checks.Status`).
        while let Value::Array(items) = sample {
            match items.first() {
                Some(first) => sample = first,
                None => return true,
            }
        }
        sample = match sample {
            Value::Null => return true,
            Value::Object(map) if map.is_empty() => return true,
            Value::Object(map) => match map.get("*") {
                Some(any) => any,
                None => match map.iter().find(|(k, _)| k.eq_ignore_ascii_case(part)) {
                    Some((_, v)) => v,
                    None => return false,
                },
            },
            _ => return false,
        };
    }
    true
}

/// The values `path` selects in `v`, and whether the path went through a list. Field names
/// match case-insensitively, as bexpr does over Go structs; map keys exactly. A list met
/// before the path ends stands for each of its elements (`Checks.Status`: every check's
/// status), so one selector can name several values; a missing field names none.
fn lookup<'a>(v: &'a Value, path: &[String]) -> (Vec<&'a Value>, bool) {
    let mut through_list = false;
    let mut current = vec![v];
    for part in path {
        let mut next = Vec::with_capacity(current.len());
        for v in current {
            let elements: &[Value] = match v {
                Value::Array(items) => {
                    through_list = true;
                    items
                }
                other => std::slice::from_ref(other),
            };
            for e in elements {
                let Some(map) = e.as_object() else { continue };
                let field = map.get(part).or_else(|| {
                    map.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(part))
                        .map(|(_, x)| x)
                });
                next.extend(field);
            }
        }
        current = next;
    }
    (current, through_list)
}

fn equals(field: &Value, value: &str) -> bool {
    match field {
        Value::String(s) => s == value,
        Value::Number(n) => value.parse::<f64>().ok() == n.as_f64(),
        Value::Bool(b) => value.parse::<bool>().ok() == Some(*b),
        Value::Null => value.is_empty(),
        _ => false,
    }
}

fn contains(field: &Value, value: &str) -> bool {
    match field {
        Value::Array(items) => items.iter().any(|i| equals(i, value)),
        Value::Object(map) => map.contains_key(value),
        Value::String(s) => s.contains(value),
        _ => false,
    }
}

fn is_empty(field: &Value) -> bool {
    match field {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

// The samples of the result types `?filter=` runs over: every optional field set, one element
// in each list whose elements have fields, `*` for map keys.

fn any_key<V>(v: V) -> std::collections::BTreeMap<String, V> {
    [("*".to_owned(), v)].into()
}

fn node_sample() -> Node {
    let mut node = Node::new("n", "a", "dc");
    node.id = "id".to_owned();
    node.tagged_addresses = any_key("a".to_owned());
    node.meta = any_key("v".to_owned());
    node
}

fn service_sample() -> AgentService {
    let mut upstream = Upstream::service("s", 1);
    upstream.destination_type = "service".to_owned();
    upstream.destination_namespace = "ns".to_owned();
    upstream.destination_partition = "ap".to_owned();
    upstream.destination_peer = "p".to_owned();
    upstream.local_bind_address = "a".to_owned();
    upstream.config = serde_json::Map::new();
    upstream.mesh_gateway.mode = "local".to_owned();
    let mut proxy = ProxyConfig::for_service("d");
    proxy.destination_service_id = "d".to_owned();
    proxy.local_service_address = "a".to_owned();
    proxy.local_service_port = 1;
    proxy.upstreams = vec![upstream];
    AgentService {
        kind: ServiceKind::ConnectProxy,
        id: "id".to_owned(),
        service: "s".to_owned(),
        tags: vec!["t".to_owned()],
        meta: any_key("v".to_owned()),
        port: 1,
        address: "a".to_owned(),
        tagged_addresses: any_key(ServiceAddress::new("a", 1)),
        proxy: Some(proxy),
        connect: ServiceConnect::native(),
        create_index: 1,
        modify_index: 1,
    }
}

fn check_sample() -> HealthCheck {
    let mut check = HealthCheck::node_check("n", "c", HealthStatus::Passing);
    check.service_id = "id".to_owned();
    check.service_name = "s".to_owned();
    check.service_tags = vec!["t".to_owned()];
    check.check_type = "ttl".to_owned();
    check.definition.ttl = "1s".to_owned();
    check
}

fn sample<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl Selectable for Node {
    fn selector_sample() -> Value {
        sample(&node_sample())
    }
}

impl Selectable for AgentService {
    fn selector_sample() -> Value {
        sample(&service_sample())
    }
}

impl Selectable for HealthCheck {
    fn selector_sample() -> Value {
        sample(&check_sample())
    }
}

impl Selectable for ServiceEntry {
    fn selector_sample() -> Value {
        sample(&ServiceEntry {
            node: node_sample(),
            service: service_sample(),
            checks: vec![check_sample()],
        })
    }
}

impl Selectable for CatalogService {
    fn selector_sample() -> Value {
        sample(&CatalogService::new(&node_sample(), &service_sample()))
    }
}

impl Selectable for Intention {
    fn selector_sample() -> Value {
        let mut ixn = Intention::new("s", "d", IntentionAction::Allow);
        ixn.source_peer = "p".to_owned();
        ixn.source_partition = "ap".to_owned();
        ixn.destination_partition = "ap".to_owned();
        ixn.default_addr = "a".to_owned();
        ixn.default_port = 1;
        ixn.meta = any_key("v".to_owned());
        ixn.created_at = Some(time::OffsetDateTime::UNIX_EPOCH);
        ixn.updated_at = Some(time::OffsetDateTime::UNIX_EPOCH);
        ixn.hash = vec![0];
        // `Permissions` (left out of the JSON when empty) as an empty list: any selector
        // below it is accepted.
        let mut v = sample(&ixn);
        if let Value::Object(map) = &mut v {
            map.insert("Permissions".to_owned(), Value::Array(Vec::new()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(expr: &str, v: &Value) -> bool {
        Filter::parse(expr).unwrap().matches(v)
    }

    fn selectors_ok<T: Selectable>(expr: &str) -> Result<(), Error> {
        Filter::parse(expr).unwrap().check_selectors::<T>()
    }

    #[test]
    fn selectors_are_checked_against_the_result_type() {
        // Selectors of Consul's docs (HTTP API > Filtering, per endpoint) are accepted.
        for sel in [
            "Service",
            "ID",
            "Tags",
            "Meta.env",
            "Port",
            "Kind",
            "Proxy.DestinationServiceName",
            "Proxy.Upstreams.DestinationName",
            "Proxy.Upstreams.MeshGateway.Mode",
            "Proxy.LocalServicePort",
            "TaggedAddresses.lan.Address",
            "Connect.Native",
        ] {
            assert!(
                selectors_ok::<AgentService>(&format!("{sel} is empty")).is_ok(),
                "{sel}"
            );
        }
        for sel in [
            "Node.ID",
            "Node.Meta.rack",
            "Service.Tags",
            "Checks.Status",
            "checks.checkid",
        ] {
            assert!(
                selectors_ok::<ServiceEntry>(&format!("{sel} is empty")).is_ok(),
                "{sel}"
            );
        }
        for sel in [
            "ServiceMeta.x",
            "NodeMeta.x",
            "ServiceProxy.Upstreams.Datacenter",
            "TaggedAddresses.wan",
        ] {
            assert!(
                selectors_ok::<CatalogService>(&format!("{sel} is empty")).is_ok(),
                "{sel}"
            );
        }
        for sel in ["Status", "ServiceTags", "Definition.TTL", "Type", "Notes"] {
            assert!(
                selectors_ok::<HealthCheck>(&format!("{sel} is empty")).is_ok(),
                "{sel}"
            );
        }
        for sel in [
            "SourceName",
            "Action",
            "Meta.k",
            "Precedence",
            "SourcePeer",
            "CreatedAt",
            "Permissions.HTTP.PathExact",
        ] {
            assert!(
                selectors_ok::<Intention>(&format!("{sel} is empty")).is_ok(),
                "{sel}"
            );
        }
        // Unknown ones are refused with go-bexpr's words, naming the selector as written.
        for (expr, sel) in [
            ("Bogus == 1", "Bogus"),
            ("Port == 1 and (Meta.env == x or not Nope.x == y)", "Nope.x"),
            ("Tags.x == 1", "Tags.x"),
            ("Meta.env.deeper == 1", "Meta.env.deeper"),
            ("x matches \"y\"", "x"),
            ("\"v\" in Proxy.Bogus", "Proxy.Bogus"),
        ] {
            let e = selectors_ok::<AgentService>(expr).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidParameter);
            assert_eq!(
                e.to_string(),
                format!(
                    "Failed to create boolean expression evaluator: Selector {sel:?} is not valid"
                )
            );
        }
        assert!(selectors_ok::<Node>("Address == x").is_ok());
        assert!(selectors_ok::<Node>("ServiceName == x").is_err());
    }

    #[test]
    fn consul_examples_evaluate() {
        let ixn = json!({"SourceName": "web", "DestinationName": "db", "Action": "allow",
                          "Precedence": 9, "Meta": {"env": "prod"}, "Tags": ["a", "b"]});
        assert!(m(r#"SourceName == "web""#, &ixn));
        assert!(m("SourceName == web and Action == allow", &ixn));
        assert!(!m(r#"SourceName != "web""#, &ixn));
        assert!(m("Precedence == 9", &ixn));
        assert!(m(r#"Meta.env == "prod""#, &ixn));
        assert!(m(r#""env" in Meta"#, &ixn));
        assert!(m(r#""c" not in Tags"#, &ixn));
        assert!(m("Tags contains a", &ixn));
        assert!(m("Meta.missing is empty and Tags is not empty", &ixn));
        assert!(m(
            r#"not (SourceName == "api" or DestinationName == "web")"#,
            &ixn
        ));
        assert!(
            m("sourcename == `web`", &ixn),
            "selectors are case-insensitive"
        );
    }

    #[test]
    fn bad_expressions_are_typed_errors() {
        for bad in [
            "",
            "SourceName ==",
            "(SourceName == web",
            "SourceName = web",
            "Name matches \"(\"",
            "Name matches",
            "Name not equals x",
            r#"SourceName == "web"#,
            "a..b == c",
            "web in",
        ] {
            let e = Filter::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{bad}");
            assert!(
                e.to_string()
                    .starts_with("Failed to create boolean expression evaluator"),
                "{e}"
            );
        }
    }

    #[test]
    fn matches_takes_re2_syntax_anywhere_in_string_fields() {
        let ixn = json!({"SourceName": "web-frontend", "Precedence": 9, "Tags": ["a"]});
        assert!(m(r#"SourceName matches "^web-""#, &ixn));
        assert!(
            m(r#"SourceName matches "front""#, &ixn),
            "unanchored, as MatchString"
        );
        assert!(!m(r#"SourceName matches "^front""#, &ixn));
        assert!(m(r#"SourceName not matches "^api""#, &ixn));
        assert!(!m(r#"SourceName not matches "end$""#, &ixn));
        assert!(m(r#"sourcename matches `(?i)WEB`"#, &ixn));
        // Only strings match; a missing field does not, so `not matches` holds for it.
        assert!(!m(r#"Precedence matches "9""#, &ixn));
        assert!(!m(r#"Tags matches "a""#, &ixn));
        assert!(m(r#"Missing not matches "x""#, &ixn));
        assert_eq!(
            Filter::parse(r#"A matches "x+""#).unwrap(),
            Filter::parse("A matches `x+`").unwrap()
        );
    }

    #[test]
    fn a_huge_pattern_is_refused_not_compiled() {
        let e = Filter::parse(r#"A matches "\w{1000}{1000}""#).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter);
        assert!(e.to_string().contains("invalid regular expression"), "{e}");
    }

    #[test]
    fn apply_keeps_matching_items() {
        let items = vec![json!({"A": 1}), json!({"A": 2})];
        assert_eq!(
            Filter::parse("A == 2").unwrap().apply(items),
            vec![json!({"A": 2})]
        );
    }

    #[test]
    fn selectors_through_lists_name_every_elements_value() {
        let entry = json!({
            "Service": {"Tags": ["v1", "primary"]},
            "Checks": [
                {"CheckID": "serfHealth", "Status": "passing"},
                {"CheckID": "web-ttl", "Status": "critical", "ServiceTags": ["v1"]},
            ],
        });
        for (expr, want) in [
            ("Checks.Status == critical", true),
            ("Checks.Status == warning", false),
            ("Checks.Status != critical", false),
            ("Checks.Status != warning", true),
            ("\"critical\" in Checks.Status", true),
            // Membership, not a substring of one status.
            ("\"crit\" in Checks.Status", false),
            ("Checks.Status not contains passing", false),
            ("Checks.CheckID matches \"^web-\"", true),
            ("Checks.CheckID not matches \"^web-\"", false),
            ("\"v1\" in Checks.ServiceTags", true),
            ("Checks.Output is empty", true),
            ("Checks.Status is not empty", true),
            // A list at the end of the path is one value, as before.
            ("\"primary\" in Service.Tags", true),
            ("Service.Tags == primary", false),
        ] {
            assert_eq!(m(expr, &entry), want, "{expr}");
        }
        let no_checks = json!({"Checks": []});
        assert!(!m("Checks.Status == passing", &no_checks));
        assert!(m("Checks.Status != passing", &no_checks));
        assert!(m("Checks.Status is empty", &no_checks));
    }
}

#[cfg(test)]
mod limits {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Runs `f` on a thread with a small stack, so that a test proves the limits, not the
    /// test harness's big stack, keep the parser from overflowing.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn refused(expr: String, needle: &'static str) {
        let e = on_small_stack(move || Filter::parse(&expr).map(drop)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }

    #[test]
    fn deep_parentheses_are_refused_not_overflowed() {
        // Within the length and token limits, so that the depth limit is what refuses them.
        let deep = format!("{}A == b{}", "(".repeat(1000), ")".repeat(1000));
        refused(deep, "nested too deeply (more than 32 levels");
        refused("(".repeat(2000), "nested too deeply");
        // The attack from the issue is refused by the first limit it meets.
        let huge = format!("{}A == b{}", "(".repeat(5000), ")".repeat(5000));
        refused(huge, "more than 2048 tokens");
    }

    #[test]
    fn deep_nots_are_refused_not_overflowed() {
        refused(
            format!("{}A == b", "not ".repeat(2000)),
            "nested too deeply",
        );
        refused(
            format!("{}A == b", "not (".repeat(1000)),
            "nested too deeply",
        );
        refused(
            format!("{}A == b", "not ".repeat(5000)),
            "longer than 16384 bytes",
        );
    }

    #[test]
    fn nesting_up_to_the_limit_parses_and_evaluates_on_a_small_stack() {
        let half = MAX_DEPTH / 2;
        let ok = format!(
            "{}A == b{}",
            "not (not (".repeat(half / 2),
            "))".repeat(half / 2)
        );
        let item = json!({"A": "b"});
        assert!(on_small_stack(move || Filter::parse(&ok)
            .unwrap()
            .matches(&item)));
        let at = format!("{}A == b{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(on_small_stack(move || Filter::parse(&at).is_ok()));
        let past = format!(
            "{}A == b{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        refused(past, "nested too deeply");
    }

    #[test]
    fn a_long_chain_is_flat_so_evaluating_and_dropping_it_does_not_recurse() {
        let chain = vec!["A == x"; 500].join(" or ") + " or A == b";
        let item = json!({"A": "b"});
        let hit = on_small_stack(move || {
            let f = Filter::parse(&chain).unwrap();
            let hit = f.matches(&item);
            drop(f);
            hit
        });
        assert!(hit);
        let f = Filter::parse("A == 1 and B == 2 and (C == 3 or D == 4 or E == 5)").unwrap();
        let Filter::And(terms) = &f else {
            panic!("{f:?}")
        };
        assert_eq!(terms.len(), 3);
        assert!(matches!(&terms[2], Filter::Or(t) if t.len() == 3));
    }

    #[test]
    fn many_regexes_are_refused_before_any_is_compiled() {
        let many = vec![r#"X matches "a{30000}""#; 300].join(" or ");
        refused(many, "more than 16 'matches' clauses");
        let seventeen = vec![r#"X matches "a""#; MAX_PATTERNS + 1].join(" and ");
        refused(seventeen, "'matches' clauses");
        let sixteen = vec![r#"X matches "a""#; MAX_PATTERNS].join(" and ");
        assert!(Filter::parse(&sixteen).unwrap().matches(&json!({"X": "a"})));
    }

    #[test]
    fn the_regex_size_budget_is_per_expression_not_per_pattern() {
        // Fits the whole budget alone, but not a sixteenth of it.
        let one = r#"X matches "[a-z]{2000}""#;
        assert!(Filter::parse(one).is_ok());
        let shared = vec![one; MAX_PATTERNS].join(" or ");
        refused(shared, "exceeds size limit");
    }

    #[test]
    fn long_expressions_many_tokens_and_big_selectors_are_refused() {
        refused(
            "A == b or ".repeat(2000) + "A == b",
            "longer than 16384 bytes",
        );
        refused(
            "A==b or ".repeat(MAX_TOKENS / 4 + 1) + "A==b",
            "more than 2048 tokens",
        );
        refused(
            format!("{} == b", "A".repeat(MAX_SELECTOR_LENGTH + 1)),
            "selector longer than 512 bytes",
        );
        refused(
            format!("{} == b", vec!["A"; MAX_SELECTOR_PARTS + 1].join(".")),
            "selector has more than 16 parts",
        );
        let parts = vec!["A"; MAX_SELECTOR_PARTS].join(".");
        assert!(Filter::parse(&format!("{parts} is empty")).is_ok());
    }

    /// Pieces of the grammar, put together in any order.
    fn garbage() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just("(".repeat(MAX_DEPTH + 1)),
            Just("not ".repeat(MAX_DEPTH / 2)),
            Just("not ".to_owned()),
            Just(" and ".to_owned()),
            Just(" or ".to_owned()),
            Just(" == ".to_owned()),
            Just(" != ".to_owned()),
            Just(" in ".to_owned()),
            Just(" contains ".to_owned()),
            Just(" matches ".to_owned()),
            Just(" is not empty".to_owned()),
            Just("\"".to_owned()),
            Just("`".to_owned()),
            Just("\\".to_owned()),
            Just("!".to_owned()),
            Just("=".to_owned()),
            "[A-Za-z.]{0,8}",
            "\"[^\"]{0,12}\"",
            "[(){}*+?|\\[\\]^$\\\\a-z0-9]{0,12}",
        ];
        prop::collection::vec(piece, 0..64).prop_map(|v| v.concat())
    }

    /// About a second by default; `PROPTEST_CASES=10000000` runs the same properties for
    /// hours.
    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_strings_parse_or_fail_typed(s in any::<String>()) {
            if let Err(e) = Filter::parse(&s) {
                prop_assert_eq!(e.kind(), ErrorKind::InvalidParameter);
            }
        }

        #[test]
        fn structured_garbage_parses_or_fails_typed(s in garbage()) {
            match Filter::parse(&s) {
                Ok(f) => {
                    let _ = f.matches(&json!({"A": "x", "Tags": ["a"], "Meta": {"k": "v"}}));
                }
                Err(e) => prop_assert_eq!(e.kind(), ErrorKind::InvalidParameter),
            }
        }
    }
}
