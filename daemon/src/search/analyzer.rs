//! The text analyzer of the index: jieba word segmentation (search mode, so a long word is also
//! indexed by the shorter words inside it), only tokens that hold a letter or digit, lower case,
//! no token over [`MAX_TOKEN_BYTES`]. Documents and queries go through the same analyzer.

use tantivy::tokenizer::{
    LowerCaser, RemoveLongFilter, TextAnalyzer, Token, TokenFilter, TokenStream, Tokenizer,
};
use tantivy_jieba::JiebaTokenizer;

/// The name the analyzer is registered under in each index.
pub const ANALYZER: &str = "officesync_jieba";
/// Changes whenever the analyzer's output may change (a different segmenter, filter or
/// dictionary): an index made by another version is rebuilt.
pub const ANALYZER_VERSION: &str = "jieba-rs 0.11 search+hmm, words, lowercase, <64 bytes; v1";
/// Longest token kept, in bytes: longer ones (base64, hashes) are dropped.
pub const MAX_TOKEN_BYTES: usize = 64;

/// A new analyzer (cheap: the jieba dictionary is loaded once per process, at first use).
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(JiebaTokenizer::new())
        .filter(WordsOnly)
        .filter(LowerCaser)
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES + 1))
        .build()
}

/// The tokens `text` is indexed (or queried) by, in order.
pub fn tokens(text: &str) -> Vec<String> {
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while let Some(token) = stream.next() {
        out.push(token.text.clone());
    }
    out
}

/// Drops the tokens jieba makes of spaces and punctuation: a token is kept when it holds a
/// letter or digit of any script (Han characters are letters).
#[derive(Clone, Copy, Debug)]
pub struct WordsOnly;

impl TokenFilter for WordsOnly {
    type Tokenizer<T: Tokenizer> = WordsOnlyTokenizer<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> WordsOnlyTokenizer<T> {
        WordsOnlyTokenizer(tokenizer)
    }
}

/// [`WordsOnly`] around a tokenizer.
#[derive(Clone, Debug)]
pub struct WordsOnlyTokenizer<T>(T);

impl<T: Tokenizer> Tokenizer for WordsOnlyTokenizer<T> {
    type TokenStream<'a> = WordsOnlyStream<T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        WordsOnlyStream(self.0.token_stream(text))
    }
}

/// The token stream of [`WordsOnlyTokenizer`].
#[derive(Debug)]
pub struct WordsOnlyStream<S>(S);

impl<S: TokenStream> TokenStream for WordsOnlyStream<S> {
    fn advance(&mut self) -> bool {
        while self.0.advance() {
            if self.0.token().text.chars().any(char::is_alphanumeric) {
                return true;
            }
        }
        false
    }

    fn token(&self) -> &Token {
        self.0.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.0.token_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_is_segmented_into_words() {
        let words = tokens("今年防汛形势严峻，各地要做好防汛抗旱工作。");
        for word in ["防汛", "形势", "严峻", "抗旱", "工作"] {
            assert!(words.iter().any(|w| w == word), "{word} missing: {words:?}");
        }
        assert!(
            !words.iter().any(|w| w == "，" || w == "。"),
            "punctuation kept: {words:?}"
        );
    }

    #[test]
    fn search_mode_indexes_the_words_inside_a_long_one() {
        let words = tokens("中华人民共和国");
        for word in ["中华", "人民", "共和国", "中华人民共和国"] {
            assert!(words.iter().any(|w| w == word), "{word} missing: {words:?}");
        }
    }

    #[test]
    fn english_is_split_on_spaces_and_lowercased() {
        let words = tokens("Flood WARNING for the Huai river");
        assert_eq!(words, ["flood", "warning", "for", "the", "huai", "river"]);
    }

    #[test]
    fn long_tokens_and_blank_text_give_nothing() {
        assert!(tokens("   \n\t ").is_empty());
        assert!(tokens(&"x".repeat(MAX_TOKEN_BYTES + 1)).is_empty());
        assert_eq!(tokens(&"y".repeat(MAX_TOKEN_BYTES)).len(), 1);
    }
}
