//! Percent-encoding (RFC 3986) of record keys, path segments and query values.
//!
//! Everything but the unreserved characters (`A-Z a-z 0-9 - . _ ~`) is
//! encoded byte by byte from UTF-8, with upper-case hex. Record keys also keep
//! `/`, because the API takes the whole rest of the path as the key
//! (`hefei/grain`).

/// Upper-case hex digits for `%XX`.
const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Encodes a record key for the path after `/records/`: `/` stays, every
/// other reserved or non-ASCII byte (space, `%`, `?`, `#`, ...) is encoded.
pub fn encode_key(key: &str) -> String {
    encode(key, true)
}

/// Encodes one path segment (a collection name) or one query value: like
/// [`encode_key`], but `/` is encoded as well.
pub fn encode_component(text: &str) -> String {
    encode(text, false)
}

/// True for the unreserved characters of RFC 3986.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if is_unreserved(byte) || (keep_slash && byte == b'/') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inverse, as the daemon applies it.
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii hex");
                out.push(u8::from_str_radix(hex, 16).expect("valid hex"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn unreserved_and_slash_stay() {
        assert_eq!(encode_key("hefei/grain"), "hefei/grain");
        assert_eq!(encode_key("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(encode_key("a//b/"), "a//b/");
    }

    #[test]
    fn reserved_characters_are_encoded() {
        assert_eq!(encode_key("a b"), "a%20b");
        assert_eq!(encode_key("100%"), "100%25");
        assert_eq!(encode_key("what?"), "what%3F");
        assert_eq!(encode_key("#1"), "%231");
        assert_eq!(encode_key("a+b&c=d;e:f@g"), "a%2Bb%26c%3Dd%3Be%3Af%40g");
        assert_eq!(encode_key("tab\there\n"), "tab%09here%0A");
        assert_eq!(encode_key("quote\"'<>\\"), "quote%22%27%3C%3E%5C");
    }

    #[test]
    fn non_ascii_is_encoded_as_utf8_bytes() {
        assert_eq!(encode_key("合肥"), "%E5%90%88%E8%82%A5");
        assert_eq!(encode_key("é"), "%C3%A9");
    }

    #[test]
    fn components_encode_the_slash_too() {
        assert_eq!(encode_component("hefei/grain"), "hefei%2Fgrain");
        assert_eq!(encode_component("a b&c"), "a%20b%26c");
        assert_eq!(encode_component("situation"), "situation");
    }

    #[test]
    fn decoding_gives_the_key_back() {
        for key in [
            "hefei/grain",
            "a b?c#d%e",
            "合肥/粮食 2024",
            "/lead/and/trail/",
            "~",
        ] {
            assert_eq!(decode(&encode_key(key)), key);
            assert_eq!(decode(&encode_component(key)), key);
            let encoded = encode_key(key);
            assert!(!encoded.contains([' ', '?', '#']), "{encoded}");
        }
    }
}
