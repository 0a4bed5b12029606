//! `[search]`: which collections this node keeps a full-text index of, and which JSON fields of
//! their values it indexes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use officesync_protocol::names::validate_collection_name;
use serde::Deserialize;

/// Most collections one node indexes.
pub const MAX_SEARCH_COLLECTIONS: usize = 64;
/// Most JSON pointers named for one collection.
pub const MAX_SEARCH_FIELDS: usize = 64;
/// Longest JSON pointer accepted in `search.fields`.
pub const MAX_POINTER_BYTES: usize = 256;

/// `[search]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Collections indexed for full-text search (Chinese and English).
    pub collections: Vec<String>,
    /// Per collection, the JSON pointers (`/title`, `/body/text`) of the string fields to
    /// index; a collection not listed here has every string field of its JSON values indexed.
    /// A value that is not JSON is indexed whole either way.
    pub fields: BTreeMap<String, Vec<String>>,
    /// Allows an index beside a store whose values are encrypted at rest
    /// (`storage.encryption_key_file`): the index holds the words of the documents in clear.
    pub allow_plaintext_index: bool,
}

/// What is wrong with a `[search]` section: the dotted key, the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchConfigProblem {
    /// Dotted key, like `search.collections[0]`.
    pub key: String,
    /// What is wrong (one line).
    pub message: String,
    /// How to fix it (one line).
    pub fix: String,
}

impl SearchConfig {
    /// True when some collection is indexed.
    pub fn is_enabled(&self) -> bool {
        !self.collections.is_empty()
    }

    /// The JSON pointers indexed in `collection` (empty: every string field).
    pub fn pointers(&self, collection: &str) -> &[String] {
        self.fields.get(collection).map_or(&[], Vec::as_slice)
    }

    /// Checks names, pointers and limits; `encrypted` says whether the store encrypts values.
    pub fn validate(&self, encrypted: bool) -> Result<(), SearchConfigProblem> {
        let problem = |key: String, message: String, fix: &str| SearchConfigProblem {
            key,
            message,
            fix: fix.to_owned(),
        };
        if self.collections.len() > MAX_SEARCH_COLLECTIONS {
            return Err(problem(
                "search.collections".into(),
                format!(
                    "search.collections lists {} collections",
                    self.collections.len()
                ),
                &format!("index at most {MAX_SEARCH_COLLECTIONS} collections"),
            ));
        }
        for (i, name) in self.collections.iter().enumerate() {
            let key = format!("search.collections[{i}]");
            if validate_collection_name(name).is_err() || name.starts_with('_') {
                return Err(problem(
                    key.clone(),
                    format!("{key} = {name:?} is not a collection that can be searched"),
                    "name a data collection: a-z, 0-9, '_', '.', '-', 1-64 characters, not starting with '_' (system collections are not indexed)",
                ));
            }
            if self.collections[..i].contains(name) {
                return Err(problem(
                    key.clone(),
                    format!("{key} = {name:?} is listed twice"),
                    "list each collection once",
                ));
            }
        }
        for (collection, pointers) in &self.fields {
            let key = format!("search.fields.{collection}");
            if !self.collections.contains(collection) {
                return Err(problem(
                    key.clone(),
                    format!("{key}: {collection:?} is not in search.collections"),
                    "add the collection to search.collections, or remove its fields",
                ));
            }
            if pointers.is_empty() || pointers.len() > MAX_SEARCH_FIELDS {
                return Err(problem(
                    key.clone(),
                    format!("{key} lists {} JSON pointers", pointers.len()),
                    &format!("list 1 to {MAX_SEARCH_FIELDS} pointers, e.g. [\"/title\", \"/body\"], or remove the entry to index every string field"),
                ));
            }
            for (i, p) in pointers.iter().enumerate() {
                if !p.starts_with('/') || p.len() > MAX_POINTER_BYTES || bad_escape(p) {
                    return Err(problem(
                        format!("{key}[{i}]"),
                        format!("{key}[{i}] = {p:?} is not a JSON pointer"),
                        "write a JSON pointer (RFC 6901) starting with '/', e.g. \"/title\" or \"/body/text\" (~0 for '~', ~1 for '/')",
                    ));
                }
            }
        }
        if encrypted && self.is_enabled() && !self.allow_plaintext_index {
            return Err(problem(
                "search.collections".into(),
                "search.collections is set but the store encrypts values at rest \
                 (storage.encryption_key_file) and the search index would hold the \
                 documents' words in clear"
                    .into(),
                "remove [search], or set search.allow_plaintext_index = true if the disk is protected otherwise",
            ));
        }
        Ok(())
    }

    /// Writes the section as TOML (nothing when search is off).
    pub fn write_toml(&self, out: &mut String) -> std::fmt::Result {
        if *self == SearchConfig::default() {
            return Ok(());
        }
        let list = |items: &[String]| items.iter().map(|s| super::toml_str(s)).collect::<Vec<_>>();
        writeln!(out)?;
        writeln!(out, "[search]")?;
        writeln!(
            out,
            "collections = [{}]",
            list(&self.collections).join(", ")
        )?;
        if self.allow_plaintext_index {
            writeln!(out, "allow_plaintext_index = true")?;
        }
        if !self.fields.is_empty() {
            writeln!(out)?;
            writeln!(out, "[search.fields]")?;
            for (collection, pointers) in &self.fields {
                writeln!(
                    out,
                    "{} = [{}]",
                    super::toml_str(collection),
                    list(pointers).join(", ")
                )?;
            }
        }
        Ok(())
    }
}

/// True when `pointer` has a `~` not followed by `0` or `1`.
fn bad_escape(pointer: &str) -> bool {
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SearchConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn collections_and_fields_are_checked() {
        let ok = parse("collections = [\"documents\", \"letters\"]\n[fields]\nletters = [\"/title\", \"/body/a~1b\"]\n");
        assert_eq!(ok.validate(false), Ok(()));
        assert_eq!(ok.pointers("letters"), ["/title", "/body/a~1b"]);
        assert!(ok.pointers("documents").is_empty());
        for (text, key) in [
            ("collections = [\"_policy\"]", "search.collections[0]"),
            ("collections = [\"Bad Name\"]", "search.collections[0]"),
            ("collections = [\"a\", \"a\"]", "search.collections[1]"),
            (
                "collections = [\"a\"]\n[fields]\nb = [\"/x\"]",
                "search.fields.b",
            ),
            ("collections = [\"a\"]\n[fields]\na = []", "search.fields.a"),
            (
                "collections = [\"a\"]\n[fields]\na = [\"x\"]",
                "search.fields.a[0]",
            ),
            (
                "collections = [\"a\"]\n[fields]\na = [\"/x~2\"]",
                "search.fields.a[0]",
            ),
        ] {
            let problem = parse(text).validate(false).expect_err(text);
            assert_eq!(problem.key, key, "{text}: {problem:?}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<SearchConfig>("collection = [\"a\"]").is_err());
    }

    #[test]
    fn an_encrypted_store_needs_consent() {
        let config = parse("collections = [\"documents\"]");
        assert!(config.validate(true).is_err());
        assert_eq!(SearchConfig::default().validate(true), Ok(()));
        let consent = parse("collections = [\"documents\"]\nallow_plaintext_index = true");
        assert_eq!(consent.validate(true), Ok(()));
    }

    #[test]
    fn toml_round_trips() {
        let config = parse("collections = [\"documents\", \"letters\"]\nallow_plaintext_index = true\n[fields]\nletters = [\"/title\"]\n");
        let mut out = String::new();
        config.write_toml(&mut out).expect("writes");
        let table: toml::Table = toml::from_str(&out).expect("TOML");
        let back: SearchConfig = table["search"].clone().try_into().expect("section");
        assert_eq!(back, config);
    }
}
