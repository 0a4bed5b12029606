//! The order-preserving byte encoding of JSON scalars that secondary indexes sort by, and the
//! byte range of that encoding from which a `where` expression can be answered. Pure: no
//! I/O, and no input panics.
//!
//! An encoded value is a type tag followed by its bytes, so that byte order agrees with the
//! order the `where` operators use ([`crate::query`]): `null` < `false` < `true` < numbers
//! < strings. A number is its `f64` value (integers beyond 2^53 round, so several may share
//! one encoding) in 8 bytes whose order is numeric order; a string is its first
//! [`STRING_PREFIX_MAX`] bytes with `0x00` escaped as `00 FF` and a `00 01` terminator, so
//! byte order is code-point order and an encoding is self-delimiting. Arrays and objects are
//! not encoded. The mapping never reverses an order but may merge values (rounded numbers,
//! long strings sharing a prefix): an index answers with candidates, which the query then
//! tests in full.

use serde_json::Value;

use crate::query::{Op, Where};

/// Bytes of a string kept in its encoding; longer strings share the encoding of this prefix.
pub const STRING_PREFIX_MAX: usize = 128;

const NULL: u8 = 0x01;
const FALSE: u8 = 0x02;
const TRUE: u8 = 0x03;
const NUMBER: u8 = 0x04;
const STRING: u8 = 0x05;

/// Integers up to this magnitude are exact in an `f64`.
const EXACT_F64: f64 = 9_007_199_254_740_992.0;

/// The encoding of a JSON scalar; `None` for an array or an object.
pub fn encode(v: &Value) -> Option<Vec<u8>> {
    Some(match v {
        Value::Null => vec![NULL],
        Value::Bool(false) => vec![FALSE],
        Value::Bool(true) => vec![TRUE],
        Value::Number(n) => {
            let mut out = Vec::with_capacity(9);
            out.push(NUMBER);
            out.extend_from_slice(&number_bytes(n.as_f64()?));
            out
        }
        Value::String(s) => {
            let bytes = s.as_bytes();
            let kept = &bytes[..bytes.len().min(STRING_PREFIX_MAX)];
            let mut out = Vec::with_capacity(kept.len() + 3);
            out.push(STRING);
            for &b in kept {
                out.push(b);
                if b == 0 {
                    out.push(0xFF);
                }
            }
            out.extend_from_slice(&[0x00, 0x01]);
            out
        }
        Value::Array(_) | Value::Object(_) => return None,
    })
}

/// Eight bytes whose unsigned order is the numeric order of `f` (`-0.0` as `0.0`).
fn number_bytes(f: f64) -> [u8; 8] {
    let f = if f == 0.0 { 0.0 } else { f };
    let bits = f.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    };
    ordered.to_be_bytes()
}

/// The length of the encoded value that starts `bytes`; `None` when it does not start with one.
pub fn encoded_len(bytes: &[u8]) -> Option<usize> {
    match *bytes.first()? {
        NULL | FALSE | TRUE => Some(1),
        NUMBER if bytes.len() >= 9 => Some(9),
        STRING => {
            let mut at = 1;
            loop {
                match (bytes.get(at)?, bytes.get(at + 1)) {
                    (0x00, Some(0x01)) => return Some(at + 2),
                    (0x00, Some(0xFF)) => at += 2,
                    (0x00, _) => return None,
                    _ => at += 1,
                }
            }
        }
        _ => None,
    }
}

/// A range `[start, end)` of index positions (an encoded value followed by a key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRange {
    /// First position in the range.
    pub start: Vec<u8>,
    /// First position past the range.
    pub end: Vec<u8>,
    /// True when every position in it has the same encoded value (an equality), so its
    /// entries come in key order.
    pub single: bool,
}

impl IndexRange {
    /// The positions in both ranges.
    pub fn intersect(&self, other: &IndexRange) -> IndexRange {
        IndexRange {
            start: self.start.clone().max(other.start.clone()),
            end: self.end.clone().min(other.end.clone()),
            single: self.single || other.single,
        }
    }

    /// True when no position is in the range.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
}

/// The range of index positions holding every record value `w` can match (and maybe
/// others, which the full test of the expression drops); `None` when an index cannot answer
/// it (`!=`, `~`, an array or object compared, an order operator on `null` or a boolean).
pub fn range_of(w: &Where) -> Option<IndexRange> {
    let value = w.value();
    let encoded = encode(value)?;
    let tag = encoded[0];
    // Whether the values sharing `encoded` all equal `value` (nothing rounded or cut).
    let exact = match value {
        Value::Number(n) => n.as_f64().is_some_and(|f| f.abs() < EXACT_F64),
        Value::String(s) => s.len() < STRING_PREFIX_MAX,
        _ => true,
    };
    let after = successor(&encoded);
    let (type_start, type_end) = (vec![tag], vec![tag + 1]);
    let ordered = matches!(value, Value::Number(_) | Value::String(_));
    let (start, end, single) = match w.op() {
        Op::Eq => (encoded, after, true),
        Op::Ge if ordered => (encoded, type_end, false),
        Op::Gt if ordered && exact => (after, type_end, false),
        Op::Gt if ordered => (encoded, type_end, false),
        Op::Le if ordered => (type_start, after, false),
        Op::Lt if ordered && exact => (type_start, encoded, false),
        Op::Lt if ordered => (type_start, after, false),
        _ => return None,
    };
    Some(IndexRange { start, end, single })
}

/// The first byte string after every string that starts with `prefix`.
fn successor(prefix: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xFF {
            out.push(last + 1);
            return out;
        }
    }
    // Only for a prefix of 0xFF bytes, which no encoding is (tags are below 0x06).
    vec![0xFF; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::Filter;
    use proptest::prelude::*;

    fn enc(json: &str) -> Vec<u8> {
        encode(&serde_json::from_str(json).expect("json")).expect("scalar")
    }

    #[test]
    fn types_then_values_sort_as_the_operators_order_them() {
        let sorted = [
            "null",
            "false",
            "true",
            "-1e300",
            "-2",
            "-1.5",
            "0",
            "-0.0",
            "0.5",
            "1",
            "1.0",
            "7.5",
            "1e300",
            "\"\"",
            "\"A\"",
            "\"a\"",
            "\"a\\u0000\"",
            "\"ab\"",
            "\"é\"",
            "\"中\"",
        ];
        for pair in sorted.windows(2) {
            assert!(enc(pair[0]) <= enc(pair[1]), "{} <= {}", pair[0], pair[1]);
        }
        assert_eq!(enc("0"), enc("-0.0"));
        assert_eq!(enc("1"), enc("1.0"));
        assert!(encode(&serde_json::json!([1])).is_none());
        assert!(encode(&serde_json::json!({"a": 1})).is_none());
    }

    #[test]
    fn an_encoding_is_self_delimiting() {
        for v in ["null", "true", "3.25", "\"a\\u0000b\"", "\"\""] {
            let mut e = enc(v);
            let len = e.len();
            e.extend_from_slice(b"\x00key");
            assert_eq!(encoded_len(&e), Some(len), "{v}");
        }
        assert_eq!(encoded_len(&[NUMBER, 1, 2]), None);
        assert_eq!(encoded_len(&[STRING, b'a', 0x00]), None);
        assert_eq!(encoded_len(&[0x09]), None);
        assert_eq!(encoded_len(&[]), None);
    }

    #[test]
    fn long_strings_share_the_encoding_of_their_prefix() {
        let a = format!("\"{}a\"", "x".repeat(STRING_PREFIX_MAX));
        let b = format!("\"{}b\"", "x".repeat(STRING_PREFIX_MAX));
        assert_eq!(enc(&a), enc(&b));
    }

    #[test]
    fn only_comparable_expressions_have_a_range() {
        let r = |e: &str| range_of(&Filter::parse(&[e]).expect("valid").exprs()[0]);
        assert!(r("/a!=1").is_none());
        assert!(r("/a~\"x\"").is_none());
        assert!(r("/a=[1]").is_none());
        assert!(r("/a<true").is_none());
        assert!(r("/a=true").is_some_and(|r| r.single));
        assert!(r("/a>=1").is_some_and(|r| !r.single));
        let both = r("/a>=1")
            .expect("range")
            .intersect(&r("/a<\"z\"").expect("range"));
        assert!(both.is_empty(), "numbers and strings never meet");
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            prop_oneof![Just(9_007_199_254_740_993i64), Just(-9_007_199_254_740_993)]
                .prop_map(Value::from),
            "[a-c\u{0}é]{0,4}".prop_map(Value::from),
            "x{127,130}[ab]?".prop_map(Value::from),
        ]
    }

    proptest! {
        /// Whatever the values, every value an expression matches lies in its range.
        #[test]
        fn a_range_holds_every_match(
            value in scalar(),
            bound in scalar(),
            op in prop_oneof![Just("="), Just("<"), Just("<="), Just(">"), Just(">=")],
        ) {
            let expr = format!("/f{op}{bound}");
            let filter = Filter::parse(&[expr.as_str()]).expect("valid");
            let doc = serde_json::json!({ "f": value }).to_string();
            if filter.matches(Some(doc.as_bytes())) {
                let range = range_of(&filter.exprs()[0]).expect("a comparable match has a range");
                let mut at = encode(&value).expect("scalar");
                at.extend_from_slice(b"some-key");
                prop_assert!(range.start <= at && at < range.end, "{expr} on {doc}");
            }
        }
    }
}
