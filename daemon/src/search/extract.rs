//! The text a value is indexed by: the string fields of a JSON value (every one, or those under
//! the configured JSON pointers), or a plain-text value whole; nothing for bytes that are not
//! UTF-8. The same text is what snippets are cut from.

use serde_json::Value;

/// Most bytes of a value's text that are indexed (the rest is not searchable): bounds the
/// segmentation work of one version.
pub const MAX_INDEXED_BYTES: usize = 1 << 20;

/// The indexed text of `value`: with `pointers` empty, every string of a JSON value (object
/// keys excluded; members in key order), one per line; otherwise the strings under each pointer
/// in the order given. A value that is not JSON is taken whole when it is UTF-8.
pub fn document_text(value: &[u8], pointers: &[String]) -> String {
    let mut text = match serde_json::from_slice::<Value>(value) {
        Ok(json) => {
            let mut out = String::new();
            if pointers.is_empty() {
                push_strings(&json, &mut out);
            } else {
                for p in pointers {
                    if let Some(part) = json.pointer(p) {
                        push_strings(part, &mut out);
                    }
                }
            }
            out
        }
        Err(_) => match std::str::from_utf8(value) {
            Ok(text) => text.to_owned(),
            Err(_) => String::new(),
        },
    };
    if text.len() > MAX_INDEXED_BYTES {
        let mut end = MAX_INDEXED_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Appends every string inside `value`, each on its own line.
fn push_strings(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        }
        Value::Array(items) => items.iter().for_each(|v| push_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| push_strings(v, out)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_indexed_and_numbers_and_keys_are_not() {
        let value = br#"{"title":"Flood warning","level_m":9.2,"tags":["Huai","urgent"],"meta":{"by":"li"}}"#;
        assert_eq!(document_text(value, &[]), "li\nHuai\nurgent\nFlood warning");
    }

    #[test]
    fn pointers_pick_fields_in_the_order_given() {
        let value = br#"{"title":"T","body":{"text":"B"},"secret":"S"}"#;
        let pointers = ["/body".to_owned(), "/title".to_owned(), "/nope".to_owned()];
        assert_eq!(document_text(value, &pointers), "B\nT");
    }

    #[test]
    fn plain_text_is_whole_and_binary_is_nothing() {
        assert_eq!(
            document_text("防汛 notice: 今天".as_bytes(), &[]),
            "防汛 notice: 今天"
        );
        assert_eq!(document_text(&[0xff, 0xfe, 0x00], &[]), "");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let value = "汛".repeat(MAX_INDEXED_BYTES);
        let text = document_text(value.as_bytes(), &[]);
        assert!(text.len() <= MAX_INDEXED_BYTES && text.len() > MAX_INDEXED_BYTES - 4);
        assert!(text.chars().all(|c| c == '汛'));
    }
}
