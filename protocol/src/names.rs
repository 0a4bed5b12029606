//! Validation of the names users choose: node names, collection names and record keys.

use thiserror::Error;

/// Longest record key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a name or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// A node name that is not `[a-z0-9][a-z0-9-]{0,62}`.
    #[error("invalid node name {0:?}: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit")]
    Node(String),
    /// A collection name that is not `[a-z0-9][a-z0-9_.-]{0,63}` (or `_` + that for system collections).
    #[error("invalid collection name {0:?}: use 1-64 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit")]
    Collection(String),
    /// A record key that is empty or longer than [`MAX_KEY_BYTES`].
    #[error("invalid key: must be 1..={MAX_KEY_BYTES} bytes of UTF-8 (got {0} bytes)")]
    Key(usize),
}

/// Checks a node name: `[a-z0-9][a-z0-9-]{0,62}` (it appears in certificates and replica ids).
pub fn validate_node_name(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError::Node(name.to_owned()))
    }
}

/// Checks a collection name: `[a-z0-9][a-z0-9_.-]{0,63}`, or a system name `_` followed by that.
pub fn validate_collection_name(name: &str) -> Result<(), NameError> {
    let body = name.strip_prefix('_').unwrap_or(name);
    let bytes = body.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(NameError::Collection(name.to_owned()))
    }
}

/// True for system collections (`_policy`, `_nodes`), whose names start with `_`.
pub fn is_system_collection(name: &str) -> bool {
    name.starts_with('_')
}

/// Checks a record key: 1..=[`MAX_KEY_BYTES`] bytes (it is already UTF-8 as a `&str`).
pub fn validate_key(key: &str) -> Result<(), NameError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        Err(NameError::Key(key.len()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for ok in ["hefei", "general-office", "beijing-office", "a", "9x"] {
            assert!(validate_node_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "Hefei", "a_b", "a.b", "a b", &"x".repeat(64)] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn collection_names() {
        for ok in ["situation", "a.b-c_d", "_policy", "0", &"x".repeat(64)] {
            assert!(validate_collection_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "_",
            "__x",
            "Situation",
            ".a",
            "a/b",
            &"x".repeat(65),
            "a b",
        ] {
            assert!(validate_collection_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        assert!(validate_key("hefei/grain").is_ok());
        assert!(validate_key(&"k".repeat(1024)).is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(1025)).is_err());
    }
}
