//! `where` expressions of a record scan: a JSON pointer, an operator and a JSON value
//! (`/level_m>=7.5`, `/river="Nanfei"`), parsed from untrusted text and matched against
//! record values. Pure: no I/O, and no input panics.
//!
//! Grammar: `POINTER OP VALUE`. `POINTER` is an RFC 6901 JSON pointer (empty, or `/` tokens
//! with `~0` for `~` and `~1` for `/`); it ends at the first `=`, `!`, `<`, `>` or at a `~`
//! that is not an escape (not followed by `0` or `1`), so a pointer cannot name a member
//! whose name holds one of those characters. `OP` is `=`, `!=`, `<`, `<=`, `>`, `>=` or `~`
//! (substring). `VALUE` is JSON text; `~` takes a JSON string.
//!
//! Matching: a record value that is not JSON, or has nothing at the pointer, never matches
//! (whatever the operator, `!=` included). `=` and `!=` compare JSON values, numbers by
//! value (`7.5` equals `7.50`, `1` equals `1.0`). The order operators compare two numbers or
//! two strings (by Unicode code points); any other pair never matches. `~` matches a string
//! that contains the given string.

use std::cmp::Ordering;

use serde_json::{Number, Value};

/// Longest expression accepted, in bytes.
pub const MAX_EXPR_BYTES: usize = 4096;
/// Most expressions one scan accepts.
pub const MAX_EXPRS: usize = 16;

/// Why an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The expression is longer than [`MAX_EXPR_BYTES`].
    #[error("where expression is {0} bytes, more than the {MAX_EXPR_BYTES} allowed")]
    TooLong(usize),
    /// More than [`MAX_EXPRS`] expressions were given.
    #[error("{0} where expressions given, at most {MAX_EXPRS} allowed")]
    TooMany(usize),
    /// The expression does not start with a JSON pointer (empty or starting with `/`).
    #[error("where {0:?}: must start with a JSON pointer such as /river")]
    NoPointer(String),
    /// The pointer holds a `~` escape other than `~0` or `~1`.
    #[error("where {0:?}: bad JSON pointer escape (use ~0 for ~ and ~1 for /)")]
    BadEscape(String),
    /// No operator follows the pointer.
    #[error("where {0:?}: no operator; use =, !=, <, <=, >, >= or ~")]
    NoOperator(String),
    /// A `!` not followed by `=`.
    #[error("where {0:?}: unknown operator after the pointer; use =, !=, <, <=, >, >= or ~")]
    BadOperator(String),
    /// The text after the operator is not JSON.
    #[error("where {expr:?}: the value {value:?} is not JSON ({detail}); quote strings, as in /river=\"Nanfei\"")]
    NotJson {
        /// The whole expression.
        expr: String,
        /// The text after the operator.
        value: String,
        /// What the JSON parser said.
        detail: String,
    },
    /// `~` was given something other than a JSON string.
    #[error("where {0:?}: ~ (substring) takes a JSON string, as in /name~\"Nan\" (in a pointer, write ~0 for ~ and ~1 for /)")]
    SubstringNotString(String),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`: equal JSON values.
    Eq,
    /// `!=`: a present, unequal JSON value.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `~`: a string containing the given string.
    Contains,
}

/// A parsed RFC 6901 JSON pointer: its reference tokens, unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pointer {
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses a pointer alone (as declared for an index): empty, or `/` tokens with `~0` and
    /// `~1` escapes. It must also be usable in a `where` expression: a pointer holding `=`,
    /// `!`, `<`, `>` or a `~` that is not an escape would end there, and is refused.
    pub fn parse(text: &str) -> Result<Pointer, QueryError> {
        let tokens = parse_pointer(text).map_err(|e| match e {
            PointerError::NoSlash => QueryError::NoPointer(text.to_owned()),
            PointerError::Escape => QueryError::BadEscape(text.to_owned()),
        })?;
        let pointer = Pointer { tokens };
        match Where::parse(&format!("{text}=0")) {
            Ok(w) if w.pointer == pointer => Ok(pointer),
            _ => Err(QueryError::NoOperator(text.to_owned())),
        }
    }

    /// The value at this pointer in `doc`, if any. An array index is a decimal without
    /// leading zeros.
    pub fn resolve<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        resolve(doc, &self.tokens)
    }
}

/// One parsed `where` expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Where {
    /// The pointer.
    pointer: Pointer,
    /// The operator.
    op: Op,
    /// The value compared with.
    value: Value,
}

impl Where {
    /// Parses one expression.
    pub fn parse(expr: &str) -> Result<Where, QueryError> {
        if expr.len() > MAX_EXPR_BYTES {
            return Err(QueryError::TooLong(expr.len()));
        }
        let owned = || expr.to_owned();
        let bytes = expr.as_bytes();
        let mut at = 0;
        let op_at = loop {
            match bytes.get(at) {
                None => return Err(QueryError::NoOperator(owned())),
                Some(b'=' | b'!' | b'<' | b'>') => break at,
                Some(b'~') if !matches!(bytes.get(at + 1), Some(b'0' | b'1')) => break at,
                Some(b'~') => at += 2,
                Some(_) => at += 1,
            }
        };
        // Every byte before `op_at` is ASCII-delimited: `op_at` is a char boundary.
        let (pointer, rest) = expr.split_at(op_at);
        let tokens = parse_pointer(pointer).map_err(|e| match e {
            PointerError::NoSlash => QueryError::NoPointer(owned()),
            PointerError::Escape => QueryError::BadEscape(owned()),
        })?;
        let (op, value_text) = if let Some(v) = rest.strip_prefix("!=") {
            (Op::Ne, v)
        } else if let Some(v) = rest.strip_prefix("<=") {
            (Op::Le, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Op::Ge, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (Op::Eq, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Op::Lt, v)
        } else if let Some(v) = rest.strip_prefix('>') {
            (Op::Gt, v)
        } else if let Some(v) = rest.strip_prefix('~') {
            (Op::Contains, v)
        } else {
            return Err(QueryError::BadOperator(owned()));
        };
        let value = serde_json::from_str::<Value>(value_text);
        if op == Op::Contains && !value.as_ref().is_ok_and(Value::is_string) {
            return Err(QueryError::SubstringNotString(owned()));
        }
        let value = value.map_err(|e| QueryError::NotJson {
            expr: owned(),
            value: value_text.to_owned(),
            detail: e.to_string(),
        })?;
        Ok(Where {
            pointer: Pointer { tokens },
            op,
            value,
        })
    }

    /// The operator.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The pointer.
    pub fn pointer(&self) -> &Pointer {
        &self.pointer
    }

    /// The JSON value compared with.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// True when `doc` holds, at the pointer, a value the operator accepts.
    pub fn matches_json(&self, doc: &Value) -> bool {
        let Some(found) = self.pointer.resolve(doc) else {
            return false;
        };
        match self.op {
            Op::Eq => json_eq(found, &self.value),
            Op::Ne => !json_eq(found, &self.value),
            Op::Lt => order(found, &self.value) == Some(Ordering::Less),
            Op::Le => matches!(
                order(found, &self.value),
                Some(Ordering::Less | Ordering::Equal)
            ),
            Op::Gt => order(found, &self.value) == Some(Ordering::Greater),
            Op::Ge => matches!(
                order(found, &self.value),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            Op::Contains => match (found, &self.value) {
                (Value::String(s), Value::String(part)) => s.contains(part.as_str()),
                _ => false,
            },
        }
    }
}

/// Every expression of one scan; a record matches when all of them hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    exprs: Vec<Where>,
}

impl Filter {
    /// Parses `exprs` (each as [`Where::parse`]), at most [`MAX_EXPRS`] of them.
    pub fn parse<S: AsRef<str>>(exprs: &[S]) -> Result<Filter, QueryError> {
        if exprs.len() > MAX_EXPRS {
            return Err(QueryError::TooMany(exprs.len()));
        }
        let exprs = exprs
            .iter()
            .map(|e| Where::parse(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Filter { exprs })
    }

    /// The expressions, in the order given.
    pub fn exprs(&self) -> &[Where] {
        &self.exprs
    }

    /// True when there is no expression: every record matches.
    pub fn is_empty(&self) -> bool {
        self.exprs.is_empty()
    }

    /// True when every expression holds for `value`, a record's raw bytes (`None` for a
    /// tombstone, which never matches a non-empty filter). Bytes that are not JSON never match.
    pub fn matches(&self, value: Option<&[u8]>) -> bool {
        if self.exprs.is_empty() {
            return true;
        }
        let Some(bytes) = value else {
            return false;
        };
        let Ok(doc) = serde_json::from_slice::<Value>(bytes) else {
            return false;
        };
        self.exprs.iter().all(|w| w.matches_json(&doc))
    }
}

enum PointerError {
    NoSlash,
    Escape,
}

/// The unescaped reference tokens of an RFC 6901 pointer.
fn parse_pointer(pointer: &str) -> Result<Vec<String>, PointerError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(PointerError::NoSlash);
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(PointerError::Escape),
                    },
                    c => out.push(c),
                }
            }
            Ok(out)
        })
        .collect()
}

/// The value at `tokens` in `doc`, if any. An array index is a decimal without leading zeros.
fn resolve<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    let mut at = doc;
    for token in tokens {
        at = match at {
            Value::Object(map) => map.get(token)?,
            Value::Array(items) => {
                let valid = !token.is_empty()
                    && token.bytes().all(|b| b.is_ascii_digit())
                    && (token == "0" || !token.starts_with('0'));
                if !valid {
                    return None;
                }
                items.get(token.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(at)
}

/// JSON equality with numbers compared by value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// The order of two numbers or two strings; `None` for any other pair.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y),
        (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
        _ => None,
    }
}

/// Compares two JSON numbers: exactly when both are integers, else as `f64`.
fn num_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    fn int(n: &Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    match (int(a), int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(expr: &str, doc: &str) -> bool {
        Where::parse(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .matches_json(&serde_json::from_str(doc).expect("test doc is JSON"))
    }

    #[test]
    fn every_operator_on_numbers_and_strings() {
        let doc = r#"{"river":"Nanfei","level_m":7.5,"n":3}"#;
        assert!(m("/level_m>=7.5", doc));
        assert!(m("/level_m<=7.50", doc));
        assert!(!m("/level_m>7.5", doc));
        assert!(!m("/level_m<7.5", doc));
        assert!(m("/level_m>7", doc));
        assert!(m("/n=3.0", doc));
        assert!(m("/n!=4", doc));
        assert!(!m("/n!=3", doc));
        assert!(m("/river=\"Nanfei\"", doc));
        assert!(m("/river!=\"Huai\"", doc));
        assert!(m("/river>\"Huai\"", doc));
        assert!(m("/river~\"anf\"", doc));
        assert!(!m("/river~\"Huai\"", doc));
        // Mixed types never order.
        assert!(!m("/river>1", doc));
        assert!(!m("/level_m<\"z\"", doc));
    }

    #[test]
    fn missing_fields_never_match_not_even_not_equal() {
        assert!(!m("/river!=\"x\"", r#"{"level_m":1}"#));
        assert!(!m("/a/b=1", r#"{"a":1}"#));
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let doc = r#"{"a/b":{"m~n":[10,20]},"":5}"#;
        assert!(m("/a~1b/m~0n/1=20", doc));
        assert!(!m("/a~1b/m~0n/01=20", doc));
        assert!(!m("/a~1b/m~0n/2=20", doc));
        assert!(m("/=5", doc));
        assert!(m("=5", "5"));
        assert!(m("={\"x\":[1.0]}", r#"{"x":[1]}"#));
    }

    #[test]
    fn substring_after_an_escape_is_an_operator() {
        // `~0` is an escape, `~"` the operator.
        assert!(m("/m~0~\"o\"", r#"{"m~":"foo"}"#));
    }

    #[test]
    fn malformed_expressions_name_the_problem() {
        let err = |e: &str| Where::parse(e).expect_err(e);
        assert!(matches!(err("river=1"), QueryError::NoPointer(_)));
        assert!(matches!(err("/river"), QueryError::NoOperator(_)));
        assert!(matches!(err("/river!1"), QueryError::BadOperator(_)));
        // `~` not followed by 0 or 1 is the operator, and wants a JSON string.
        assert!(matches!(err("/a~2b=1"), QueryError::SubstringNotString(_)));
        assert!(matches!(err("/river=Nanfei"), QueryError::NotJson { .. }));
        assert!(matches!(err("/river="), QueryError::NotJson { .. }));
        assert!(matches!(err("/river~1"), QueryError::NoOperator(_)));
        assert!(matches!(err("/river~5"), QueryError::SubstringNotString(_)));
        let long = format!("/a={}", "1".repeat(MAX_EXPR_BYTES));
        assert!(matches!(err(&long), QueryError::TooLong(_)));
        let many = vec!["/a=1"; MAX_EXPRS + 1];
        assert_eq!(
            Filter::parse(&many).expect_err("too many"),
            QueryError::TooMany(MAX_EXPRS + 1)
        );
        let text = err("/river=Nanfei").to_string();
        assert!(text.contains("not JSON"), "{text}");
    }

    #[test]
    fn values_that_are_not_json_or_tombstones_never_match() {
        let f = Filter::parse(&["/a=1"]).expect("valid");
        assert!(f.matches(Some(br#"{"a":1}"#)));
        assert!(!f.matches(Some(b"a=1 plain text")));
        assert!(!f.matches(Some(&[0xff, 0xfe])));
        assert!(!f.matches(None));
        let all = Filter::parse(&["/a=1", "/b~\"x\""]).expect("valid");
        assert!(all.matches(Some(br#"{"a":1,"b":"xy"}"#)));
        assert!(!all.matches(Some(br#"{"a":1,"b":"y"}"#)));
        let none: [&str; 0] = [];
        assert!(Filter::parse(&none).expect("empty").matches(None));
    }

    #[test]
    fn pointers_alone_parse_when_a_where_could_name_them() {
        let p = Pointer::parse("/a~1b/0").expect("valid");
        let doc: Value = serde_json::from_str(r#"{"a/b":[7]}"#).expect("json");
        assert_eq!(p.resolve(&doc), Some(&Value::from(7)));
        assert_eq!(Pointer::parse("").expect("root").resolve(&doc), Some(&doc));
        assert!(matches!(
            Pointer::parse("river"),
            Err(QueryError::NoPointer(_))
        ));
        assert!(matches!(
            Pointer::parse("/a~2"),
            Err(QueryError::BadEscape(_))
        ));
        for unusable in ["/a=b", "/a<b", "/a!", "/a~b"] {
            assert!(Pointer::parse(unusable).is_err(), "{unusable}");
        }
    }

    proptest! {
        #[test]
        fn any_expression_and_value_never_panics(
            expr in "[/~a-z01=!<>\"{}\\[\\]:,. 0-9\u{80}-\u{10ffff}]{0,40}",
            raw in proptest::collection::vec(any::<u8>(), 0..64),
            doc in "[{}\\[\\]\"a-z0-9:,.~/ -]{0,40}",
        ) {
            if let Ok(w) = Where::parse(&expr) {
                let f = Filter { exprs: vec![w] };
                f.matches(Some(&raw));
                f.matches(Some(doc.as_bytes()));
                f.matches(None);
            }
        }
    }
}
