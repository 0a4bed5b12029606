//! One collection's index on disk (`DATA_DIR/search/<collection>/`, tantivy): its schema, the
//! commit payload that says how far it follows the change log and with which settings, the
//! writing side (upserts, deletes, commits) and the reading side (ranked queries, snippets).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::QueryParser;
use tantivy::schema::{
    IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value as _, STORED, STRING,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use thiserror::Error;

use super::analyzer::{self, ANALYZER, ANALYZER_VERSION};

/// The layout of the index's documents; bump it with any change of fields or their options.
const SCHEMA_VERSION: u32 = 1;
/// Memory the writer buffers before it writes a segment.
const WRITER_BUDGET_BYTES: usize = 32 << 20;
/// Most characters of a snippet.
pub const SNIPPET_CHARS: usize = 160;
/// What marks a matched word in a snippet (the rest of the snippet is HTML-escaped).
pub const MARK: (&str, &str) = ("<mark>", "</mark>");

/// Why an index could not be used.
#[derive(Debug, Error)]
pub enum IndexError {
    /// tantivy failed (I/O, a damaged file, a lock).
    #[error("{0}")]
    Tantivy(#[from] tantivy::TantivyError),
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Why an existing index is not taken as it is, but rebuilt.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Unusable {
    /// There is no index yet.
    #[error("no index yet")]
    Missing,
    /// It cannot be opened or read.
    #[error("the index is damaged: {0}")]
    Damaged(String),
    /// It was made with other settings (fields, JSON pointers, analyzer version).
    #[error("its settings changed")]
    Settings,
    /// It was left before its first complete build (no commit with a cursor).
    #[error("its last build did not finish")]
    Unfinished,
    /// It follows another store (a restored or replaced data dir).
    #[error("it was made from another store ({0})")]
    OtherStore(String),
}

/// The settings an index is built with; an index whose fingerprint differs is rebuilt.
pub fn fingerprint(pointers: &[String]) -> String {
    format!(
        "schema {SCHEMA_VERSION}; analyzer {ANALYZER_VERSION}; pointers {}",
        serde_json::to_string(pointers).unwrap_or_default()
    )
}

/// What each commit records: the change-log cursor the index is complete through, the
/// settings it was built with, and the store (replica id) it follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Every change with a cursor up to this one is in the index.
    pub cursor: u64,
    /// [`fingerprint`] of the settings.
    pub fingerprint: String,
    /// The replica id of the store the index was built from.
    pub replica: String,
}

/// The fields of the schema.
#[derive(Debug, Clone, Copy)]
struct Fields {
    /// The record key (not tokenized; stored).
    key: tantivy::schema::Field,
    /// The version indexed, `origin:counter` (stored only).
    version: tantivy::schema::Field,
    /// The text (analyzed with positions; not stored: snippets are cut from the store's
    /// value).
    body: tantivy::schema::Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let key = builder.add_text_field("key", STRING | STORED);
    let version = builder.add_text_field("version", STORED);
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(ANALYZER)
        .set_index_option(IndexRecordOption::WithFreqsAndPositions);
    let body = builder.add_text_field(
        "body",
        TextOptions::default().set_indexing_options(indexing),
    );
    (builder.build(), Fields { key, version, body })
}

/// The fields of `index`'s schema, when it is the one this build makes.
fn fields_of(index: &Index) -> Option<Fields> {
    let (expected, fields) = schema();
    (index.schema() == expected).then_some(fields)
}

/// The reading side of an open index, shared by queries.
#[derive(Clone)]
pub struct Searchable {
    index: Index,
    reader: IndexReader,
    fields: Fields,
}

impl std::fmt::Debug for Searchable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Searchable").finish_non_exhaustive()
    }
}

/// One hit before its snippet: key, version indexed, score.
#[derive(Debug, Clone, PartialEq)]
pub struct RawHit {
    /// The record key.
    pub key: String,
    /// The version indexed.
    pub version: String,
    /// The relevance score (BM25).
    pub score: f32,
}

/// The answer to a query: the best hits, the number of matching documents, and what cuts
/// snippets for this query.
pub struct Found {
    /// The hits, best first.
    pub hits: Vec<RawHit>,
    /// How many documents match.
    pub total: usize,
    /// Cuts a snippet of a document's text with the query's words marked.
    pub snippets: SnippetGenerator,
}

/// A query the index cannot run.
#[derive(Debug, Error)]
pub enum QueryError {
    /// The query text is malformed (syntax, unknown field).
    #[error("{0}")]
    Malformed(String),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] tantivy::TantivyError),
}

impl Searchable {
    /// Documents in the index (as of the last commit).
    pub fn docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Runs `query` (tantivy's query language: words, "phrases", AND/OR/NOT, +/-; words are
    /// all required by default) and returns at most `limit` hits.
    pub fn search(&self, query: &str, limit: usize) -> Result<Found, QueryError> {
        let mut parser = QueryParser::for_index(&self.index, vec![self.fields.body]);
        parser.set_conjunction_by_default();
        let query = parser
            .parse_query(query)
            .map_err(|e| QueryError::Malformed(e.to_string()))?;
        let searcher = self.reader.searcher();
        let (top, total) = searcher.search(
            &query,
            &(TopDocs::with_limit(limit.max(1)).order_by_score(), Count),
        )?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            let text = |field| {
                doc.get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            hits.push(RawHit {
                key: text(self.fields.key),
                version: text(self.fields.version),
                score,
            });
        }
        let mut snippets = SnippetGenerator::create(&searcher, &*query, self.fields.body)?;
        snippets.set_max_num_chars(SNIPPET_CHARS);
        Ok(Found {
            hits,
            total,
            snippets,
        })
    }
}

/// The snippet of `text` for a query: HTML-escaped, the matched words in [`MARK`]; the start
/// of the text when no word of the query is in it.
pub fn snippet(snippets: &SnippetGenerator, text: &str) -> String {
    let mut snippet = snippets.snippet(text);
    if snippet.is_empty() {
        let start: String = text.chars().take(SNIPPET_CHARS).collect();
        return crate::api::web::escape(&start);
    }
    snippet.set_snippet_prefix_postfix(MARK.0, MARK.1);
    snippet.to_html()
}

/// The writing side of an open index: one per collection, owned by its indexer.
pub struct Writer {
    dir: PathBuf,
    writer: IndexWriter<TantivyDocument>,
    searchable: Searchable,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Opens the index in `dir` and checks it: built with `fingerprint`, from replica
    /// `replica`, complete through the cursor it returns.
    pub fn open(
        dir: &Path,
        fingerprint: &str,
        replica: &str,
    ) -> Result<(Writer, Payload), Unusable> {
        if !dir.join("meta.json").exists() {
            return Err(Unusable::Missing);
        }
        let damaged = |e: &dyn std::fmt::Display| Unusable::Damaged(e.to_string());
        let index = Index::open_in_dir(dir).map_err(|e| damaged(&e))?;
        let fields = fields_of(&index).ok_or(Unusable::Settings)?;
        let metas = index.load_metas().map_err(|e| damaged(&e))?;
        let payload: Payload = match metas.payload.as_deref() {
            None => return Err(Unusable::Unfinished),
            Some(text) => serde_json::from_str(text).map_err(|e| damaged(&e))?,
        };
        if payload.fingerprint != fingerprint {
            return Err(Unusable::Settings);
        }
        if payload.replica != replica {
            return Err(Unusable::OtherStore(payload.replica));
        }
        let writer = Self::assemble(dir, index, fields).map_err(|e| damaged(&e))?;
        Ok((writer, payload))
    }

    /// Makes an empty index in `dir`, removing whatever was there.
    pub fn create(dir: &Path) -> Result<Writer, IndexError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|source| IndexError::Io {
                what: format!("cannot remove {}", dir.display()),
                source,
            })?;
        }
        create_private_dir(dir)?;
        let (schema, fields) = schema();
        let index = Index::create_in_dir(dir, schema)?;
        Self::assemble(dir, index, fields)
    }

    fn assemble(dir: &Path, index: Index, fields: Fields) -> Result<Writer, IndexError> {
        index.tokenizers().register(ANALYZER, analyzer::analyzer());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        // Opening a searcher reads every segment's metadata: a damaged one fails here.
        reader.searcher();
        let writer = index.writer_with_num_threads(1, WRITER_BUDGET_BYTES)?;
        Ok(Writer {
            dir: dir.to_owned(),
            writer,
            searchable: Searchable {
                index,
                reader,
                fields,
            },
        })
    }

    /// The reading side (as of the last commit).
    pub fn searchable(&self) -> Searchable {
        self.searchable.clone()
    }

    /// Indexes `text` as the document of `key` at `version`, replacing any earlier one.
    pub fn upsert(&mut self, key: &str, version: &str, text: &str) -> Result<(), IndexError> {
        let fields = self.searchable.fields;
        self.writer
            .delete_term(Term::from_field_text(fields.key, key));
        let mut doc = TantivyDocument::default();
        doc.add_text(fields.key, key);
        doc.add_text(fields.version, version);
        doc.add_text(fields.body, text);
        self.writer.add_document(doc)?;
        Ok(())
    }

    /// Removes the document of `key`, if any.
    pub fn remove(&mut self, key: &str) {
        let fields = self.searchable.fields;
        self.writer
            .delete_term(Term::from_field_text(fields.key, key));
    }

    /// Makes everything added so far durable and searchable, recording `payload`.
    pub fn commit(&mut self, payload: &Payload) -> Result<(), IndexError> {
        let text = serde_json::to_string(payload).unwrap_or_default();
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&text);
        prepared.commit()?;
        self.searchable.reader.reload()?;
        Ok(())
    }

    /// Bytes the index takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.dir)
    }
}

/// Bytes of the files in `dir` (not recursive: an index is flat).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Creates `dir` and its missing parents, owner-only (0700), as the store's own directories.
fn create_private_dir(dir: &Path) -> Result<(), IndexError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| IndexError::Io {
            what: format!("cannot create {}", dir.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLICA: &str = "hefei@1";

    fn payload(cursor: u64) -> Payload {
        Payload {
            cursor,
            fingerprint: fingerprint(&[]),
            replica: REPLICA.into(),
        }
    }

    fn keys(found: &Found) -> Vec<&str> {
        found.hits.iter().map(|h| h.key.as_str()).collect()
    }

    #[test]
    fn upserts_and_removes_are_found_after_a_commit() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("documents");
        let mut writer = Writer::create(&dir).expect("create");
        writer
            .upsert("a", "hefei@1:1", "今年防汛形势严峻 flood season")
            .expect("add");
        writer
            .upsert("b", "hefei@1:2", "Grain harvest report")
            .expect("add");
        writer.commit(&payload(2)).expect("commit");
        let search = writer.searchable();
        assert_eq!(keys(&search.search("防汛", 10).expect("query")), ["a"]);
        assert_eq!(keys(&search.search("FLOOD", 10).expect("query")), ["a"]);
        assert_eq!(search.search("harvest grain", 10).expect("q").total, 1);
        assert_eq!(search.search("harvest flood", 10).expect("q").total, 0);
        assert_eq!(search.search("harvest OR flood", 10).expect("q").total, 2);

        writer
            .upsert("a", "hefei@1:3", "drought relief")
            .expect("replace");
        writer.remove("b");
        writer.commit(&payload(4)).expect("commit");
        let search = writer.searchable();
        assert_eq!(search.search("防汛", 10).expect("q").total, 0);
        assert_eq!(search.search("harvest", 10).expect("q").total, 0);
        let found = search.search("drought", 10).expect("q");
        assert_eq!(found.hits[0].version, "hefei@1:3");
        assert_eq!(search.docs(), 1);
    }

    #[test]
    fn snippets_mark_the_matched_words_and_escape_the_rest() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut writer = Writer::create(&tmp.path().join("c")).expect("create");
        let text = "<b>通知</b>：各地要做好防汛抗旱工作";
        writer.upsert("k", "n@1:1", text).expect("add");
        writer.commit(&payload(1)).expect("commit");
        let found = writer.searchable().search("防汛", 5).expect("query");
        let cut = snippet(&found.snippets, text);
        assert!(cut.contains("<mark>防汛</mark>"), "{cut}");
        assert!(cut.contains("&lt;b&gt;"), "{cut}");
        assert!(!cut.contains("<b>"), "{cut}");
        // Text without the word: its start, escaped.
        assert_eq!(snippet(&found.snippets, "a < b"), "a &lt; b");
    }

    #[test]
    fn malformed_queries_are_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut writer = Writer::create(&tmp.path().join("c")).expect("create");
        writer.commit(&payload(0)).expect("commit");
        let search = writer.searchable();
        for bad in ["\"unclosed", "nosuchfield:x", "version:x"] {
            match search.search(bad, 5) {
                Err(QueryError::Malformed(message)) => assert!(!message.is_empty()),
                other => panic!("{bad}: {:?}", other.map(|f| f.total)),
            }
        }
    }

    #[test]
    fn reopening_checks_the_payload() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("c");
        assert_eq!(
            Writer::open(&dir, &fingerprint(&[]), REPLICA).err(),
            Some(Unusable::Missing)
        );
        {
            let mut writer = Writer::create(&dir).expect("create");
            writer.upsert("k", "n@1:1", "words").expect("add");
            // Not committed with a payload yet: an unfinished build.
            writer.writer.commit().expect("plain commit");
        }
        assert_eq!(
            Writer::open(&dir, &fingerprint(&[]), REPLICA).err(),
            Some(Unusable::Unfinished)
        );
        {
            let (mut writer, _) = match Writer::open(&dir, &fingerprint(&[]), REPLICA) {
                Err(Unusable::Unfinished) => (Writer::create(&dir).expect("create"), ()),
                other => panic!("{:?}", other.err()),
            };
            writer.upsert("k", "n@1:1", "words").expect("add");
            writer.commit(&payload(7)).expect("commit");
        }
        let (writer, found) = Writer::open(&dir, &fingerprint(&[]), REPLICA).expect("opens");
        assert_eq!(found.cursor, 7);
        assert_eq!(writer.searchable().docs(), 1);
        drop(writer);
        assert_eq!(
            Writer::open(&dir, &fingerprint(&["/title".into()]), REPLICA).err(),
            Some(Unusable::Settings)
        );
        assert!(matches!(
            Writer::open(&dir, &fingerprint(&[]), "hefei@2"),
            Err(Unusable::OtherStore(_))
        ));
        std::fs::write(dir.join("meta.json"), b"{not json").expect("damage");
        assert!(matches!(
            Writer::open(&dir, &fingerprint(&[]), REPLICA),
            Err(Unusable::Damaged(_))
        ));
    }
}
