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

use serde_json::Value;

use crate::{Error, ErrorKind};

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Both hold.
    And(Box<Filter>, Box<Filter>),
    /// Either holds.
    Or(Box<Filter>, Box<Filter>),
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
    /// Compiles `source`, bounded so that a filter cannot make the server build a huge
    /// automaton.
    fn new(source: &str) -> Result<Pattern, Error> {
        regex::RegexBuilder::new(source)
            .size_limit(1 << 20)
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
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, Error> {
        let mut left = self.not()?;
        while self.peek_word("and") {
            self.pos += 1;
            left = Filter::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Filter, Error> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Filter::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Filter, Error> {
        match self.next() {
            Some(Tok::LParen) => {
                let f = self.or()?;
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
                pattern: Pattern::new(&v)?,
                negate,
            }),
            _ => Err(err("expected a regular expression after 'matches'")),
        }
    }
}

fn selector(word: &str) -> Result<Vec<String>, Error> {
    let parts: Vec<String> = word.split('.').map(str::to_owned).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err(format!("invalid selector {word:?}")));
    }
    Ok(parts)
}

impl Filter {
    /// Parses an expression.
    pub fn parse(input: &str) -> Result<Filter, Error> {
        let mut p = Parser {
            toks: lex(input)?,
            pos: 0,
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
            Filter::And(a, b) => a.matches(item) && b.matches(item),
            Filter::Or(a, b) => a.matches(item) || b.matches(item),
            Filter::Not(a) => !a.matches(item),
            Filter::Match {
                selector,
                op,
                value,
            } => {
                let field = lookup(item, selector);
                match op {
                    Op::Equal => field.is_some_and(|f| equals(f, value)),
                    Op::NotEqual => !field.is_some_and(|f| equals(f, value)),
                    Op::Contains => field.is_some_and(|f| contains(f, value)),
                    Op::NotContains => !field.is_some_and(|f| contains(f, value)),
                    Op::IsEmpty => field.is_none_or(is_empty),
                    Op::IsNotEmpty => !field.is_none_or(is_empty),
                }
            }
            Filter::Regex {
                selector,
                pattern,
                negate,
            } => {
                let hit = lookup(item, selector)
                    .and_then(Value::as_str)
                    .is_some_and(|s| pattern.0.is_match(s));
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

/// Field names match case-insensitively, as bexpr does over Go structs; map keys exactly.
fn lookup<'a>(mut v: &'a Value, path: &[String]) -> Option<&'a Value> {
    for part in path {
        let map = v.as_object()?;
        v = map.get(part).or_else(|| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(part))
                .map(|(_, x)| x)
        })?;
    }
    Some(v)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(expr: &str, v: &Value) -> bool {
        Filter::parse(expr).unwrap().matches(v)
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
}
