//! Tokenisation, normalisation, negation scopes and hashed n-gram features.
//!
//! * Words are found on Unicode word boundaries (UAX #29, the same segmentation as
//!   `unicode_segmentation::UnicodeSegmentation::unicode_words`), so scripts such as Devanagari, and
//!   text mixed with emoji, split correctly. The punctuation between words is also looked at: it closes
//!   a clause, which ends a negation scope and stops bigrams and lexicon phrases from spanning it.
//! * Each word is lowercased, Latin accents are folded (`não` → `nao`, `señal` → `senal`, `preço` →
//!   `preco`) and apostrophes are dropped (`don't` → `dont`).
//! * After a negator (`not`, `no`, `dont`, `never`, `nao`, `nunca`, `tidak`, `nahi`, …) the next
//!   [`NEGATION_SCOPE`] words of the same clause are marked negated.
//! * [`hashed_ngrams`] turns tokens into stable 32-bit hashes (FNV-1a, identical on every platform and run)
//!   of word unigrams and bigrams (prefixed `NEG_` when negated) and of character 3-grams of each word
//!   with `<`/`>` boundary markers, reduced to [`HASH_BITS`] bits.

use unicode_segmentation::UnicodeSegmentation;

/// How many words after a negator are marked negated (fewer if the clause ends first).
pub const NEGATION_SCOPE: usize = 3;

/// Bits of the hashed feature space: hashes are reduced to `0..HASH_SPACE`.
pub const HASH_BITS: u32 = 18;

/// Size of the hashed feature space (2^18 = 262 144 slots).
pub const HASH_SPACE: u32 = 1 << HASH_BITS;

/// Longest word prefix (in characters) that character 3-grams are taken from.
const MAX_CHARGRAM_WORD: usize = 24;

/// One normalised word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Lowercased, accent-folded, apostrophes removed.
    pub text: String,
    /// Inside the scope of a preceding negator.
    pub negated: bool,
    /// Index of the clause (punctuation or a contrastive conjunction such as "but"/"pero"/"tapi" starts a
    /// new clause).
    pub clause: u16,
}

/// A message split into tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokenized {
    /// The words, in order.
    pub tokens: Vec<Token>,
    /// The text contains `?` or `¿` (or their full-width forms).
    pub question_mark: bool,
}

/// Words that negate the following few words, in their folded form (en, es, pt, hi-Latin, id).
#[rustfmt::skip]
const NEGATORS: &[&str] = &[
    // English
    "not", "no", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "cant", "cannot", "couldnt", "wont",
    "wouldnt", "shouldnt", "havent", "hasnt", "never", "nor", "neither", "without", "aint",
    // Spanish / Portuguese
    "nunca", "nada", "ni", "tampoco", "sin", "jamas", "nao", "nem", "sem", "jamais",
    // Hindi in Latin script
    "nahi", "nahin", "nhi", "nai", "mat", "tidak", "tak", "bukan", "gak", "nggak", "ngga", "enggak", "ga", "tdk",
    "jangan", "belum", "ndak",
];

/// Contrastive conjunctions that start a new clause (and so end a negation scope).
#[rustfmt::skip]
const CLAUSE_WORDS: &[&str] = &[
    "but", "however", "although", "though", "pero", "sino", "mas", "porem", "tapi", "namun", "lekin", "magar",
];

/// Is `word` (already folded) a negator?
pub fn is_negator(word: &str) -> bool {
    NEGATORS.contains(&word)
}

/// Fold one lowercase character into `out`: strip accents from Latin letters, drop apostrophes, keep the
/// rest.
fn fold_char(c: char, out: &mut String) {
    let r = match c {
        '\'' | '\u{2019}' | '\u{2018}' | '\u{02BC}' | '`' | '\u{00B4}' => return,
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => 'a',
        'ç' | 'ć' | 'č' => 'c',
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => 'e',
        'ì' | 'í' | 'î' | 'ï' | 'ī' | 'ı' => 'i',
        'ñ' | 'ń' | 'ň' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => 'o',
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' => 'u',
        'ý' | 'ÿ' => 'y',
        'ś' | 'š' | 'ş' => 's',
        'ź' | 'ż' | 'ž' => 'z',
        'ğ' => 'g',
        'ł' => 'l',
        'ř' => 'r',
        'ť' => 't',
        'ď' => 'd',
        'ß' => {
            out.push_str("ss");
            return;
        }
        other => other,
    };
    out.push(r);
}

/// Lowercase, fold Latin accents and drop apostrophes: `"NÃO"` → `"nao"`, `"Don't"` → `"dont"`.
pub fn fold(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if c.is_ascii() {
            if c != '\'' && c != '`' {
                out.push(c.to_ascii_lowercase());
            }
        } else {
            for l in c.to_lowercase() {
                fold_char(l, &mut out);
            }
        }
    }
    out
}

fn is_word_segment(s: &str) -> bool {
    s.chars().any(char::is_alphanumeric)
}

fn is_clause_break(s: &str) -> bool {
    s.chars().any(|c| {
        matches!(
            c,
            '.' | ','
                | ';'
                | ':'
                | '!'
                | '?'
                | '¿'
                | '¡'
                | '…'
                | '('
                | ')'
                | '\n'
                | '।'
                | '？'
                | '！'
                | '，'
                | '。'
                | '–'
                | '—'
        )
    })
}

/// Negator + next word pairs that do not negate ("no problem", "can't wait", "not bad", "tidak apa apa").
const IDIOMS: &[(&str, &str)] = &[
    ("no", "problem"),
    ("no", "worries"),
    ("no", "doubt"),
    ("no", "matter"),
    ("cant", "wait"),
    ("not", "bad"),
    ("not", "only"),
    ("sem", "problema"),
    ("tidak", "apa"),
    ("gak", "apa"),
    ("ga", "apa"),
    ("nggak", "apa"),
];

/// Split `text` into normalised tokens with negation scopes and clause indices.
pub fn tokenize(text: &str) -> Tokenized {
    let mut tokens: Vec<Token> = Vec::new();
    let mut question_mark = false;
    let mut clause: u16 = 0;
    let mut clause_has_tokens = false;
    for seg in text.split_word_bounds() {
        if !is_word_segment(seg) {
            if seg.contains(['?', '¿', '？']) {
                question_mark = true;
            }
            if is_clause_break(seg) && clause_has_tokens {
                clause = clause.saturating_add(1);
                clause_has_tokens = false;
            }
            continue;
        }
        let word = fold(seg);
        if word.is_empty() {
            continue;
        }
        if CLAUSE_WORDS.contains(&word.as_str()) && clause_has_tokens {
            clause = clause.saturating_add(1);
        }
        clause_has_tokens = true;
        tokens.push(Token { text: word, negated: false, clause });
    }
    // Negation scopes: up to NEGATION_SCOPE words after a negator, inside its clause.
    let mut scope_left = 0usize;
    let mut scope_clause = 0u16;
    for i in 0..tokens.len() {
        if tokens[i].clause != scope_clause {
            scope_left = 0;
        }
        tokens[i].negated = scope_left > 0;
        scope_left = scope_left.saturating_sub(1);
        let w = tokens[i].text.as_str();
        if is_negator(w) {
            let idiom = tokens.get(i + 1).is_some_and(|n| IDIOMS.contains(&(w, n.text.as_str())));
            if !idiom {
                scope_left = NEGATION_SCOPE;
                scope_clause = tokens[i].clause;
            }
        }
    }
    Tokenized { tokens, question_mark }
}

/// Incremental 64-bit FNV-1a.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    /// Feed bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash reduced to a slot in `0..HASH_SPACE` (high and low halves xor-folded first).
    pub fn slot(&self) -> u32 {
        let folded = (self.0 >> 32) ^ (self.0 & 0xFFFF_FFFF);
        (folded as u32) & (HASH_SPACE - 1)
    }
}

/// Hash a feature given as string parts (joined with a separator byte) into a slot in `0..HASH_SPACE`.
pub fn hash_parts(parts: &[&str]) -> u32 {
    let mut h = Fnv1a::default();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.write(&[0x1F]);
        }
        h.write(p.as_bytes());
    }
    h.slot()
}

/// The kind of a hashed n-gram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gram {
    /// A whole word (`w:` or `NEG_w:`).
    Word,
    /// Two consecutive words of one clause (`b:` or `NEG_b:`).
    Bigram,
    /// A character 3-gram of a word with `<` `>` boundary markers (`c:`).
    Char,
}

/// Calls `emit(slot, kind)` for every hashed n-gram of `tokens`; `label` is only built when `want_label`
/// (for vocabularies), otherwise it is passed empty.
pub fn for_each_ngram(tokens: &[Token], want_label: bool, mut emit: impl FnMut(u32, Gram, &str)) {
    let mut label = String::new();
    for (i, t) in tokens.iter().enumerate() {
        let neg: &[u8] = if t.negated { b"NEG_" } else { b"" };
        // Unigram.
        let mut h = Fnv1a::default();
        h.write(neg);
        h.write(b"w:");
        h.write(t.text.as_bytes());
        if want_label {
            label.clear();
            label.push_str(if t.negated { "NEG_" } else { "" });
            label.push_str(&t.text);
        }
        emit(h.slot(), Gram::Word, &label);
        // Bigram with the previous token of the same clause.
        if i > 0 && tokens[i - 1].clause == t.clause {
            let p = &tokens[i - 1];
            let mut h = Fnv1a::default();
            h.write(neg);
            h.write(b"b:");
            h.write(p.text.as_bytes());
            h.write(b" ");
            h.write(t.text.as_bytes());
            if want_label {
                label.clear();
                label.push_str(if t.negated { "NEG_" } else { "" });
                label.push_str(&p.text);
                label.push(' ');
                label.push_str(&t.text);
            }
            emit(h.slot(), Gram::Bigram, &label);
        }
        // Character 3-grams over "<word>".
        let mut window: [char; 3] = ['<', '\0', '\0'];
        let mut filled = 1usize;
        let chars = t.text.chars().take(MAX_CHARGRAM_WORD).chain(std::iter::once('>'));
        let mut buf = [0u8; 12];
        for c in chars {
            if filled < 3 {
                window[filled] = c;
                filled += 1;
                if filled < 3 {
                    continue;
                }
            } else {
                window = [window[1], window[2], c];
            }
            let mut h = Fnv1a::default();
            h.write(b"c:");
            for w in window {
                h.write(w.encode_utf8(&mut buf).as_bytes());
            }
            if want_label {
                label.clear();
                label.extend(window);
            }
            emit(h.slot(), Gram::Char, &label);
        }
    }
}

/// All hashed n-gram slots of `tokens`, in order of generation (with repeats).
pub fn hashed_ngrams(tokens: &[Token]) -> Vec<(u32, Gram)> {
    let mut out = Vec::with_capacity(tokens.len() * 8);
    for_each_ngram(tokens, false, |slot, kind, _| out.push((slot, kind)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        tokenize(text).tokens.into_iter().map(|t| t.text).collect()
    }

    fn negated(text: &str) -> Vec<String> {
        tokenize(text).tokens.into_iter().filter(|t| t.negated).map(|t| t.text).collect()
    }

    #[test]
    fn folds_accents_and_case() {
        assert_eq!(words("NÃO quero, Señor! Preço? Ação já"), ["nao", "quero", "senor", "preco", "acao", "ja"]);
        assert_eq!(words("¿Cuánto cuesta?"), ["cuanto", "cuesta"]);
        assert_eq!(fold("Don't"), "dont");
        assert_eq!(fold("don\u{2019}t"), "dont");
        assert_eq!(fold("Straße"), "strasse");
    }

    #[test]
    fn devanagari_and_emoji() {
        assert_eq!(words("मुझे यह चाहिए 🙏"), ["मुझे", "यह", "चाहिए"]);
        assert_eq!(words("great👍price!!! 🔥🔥"), ["great", "price"]);
        assert_eq!(words("😀"), Vec::<String>::new());
        // Devanagari danda closes a clause.
        let t = tokenize("नहीं। ठीक");
        assert_eq!(t.tokens.len(), 2);
        assert_ne!(t.tokens[0].clause, t.tokens[1].clause);
    }

    #[test]
    fn negation_scope_is_bounded_and_stops_at_punctuation() {
        assert_eq!(negated("I don't need a discount, I want to buy today"), ["need", "a", "discount"]);
        assert_eq!(negated("not interested"), ["interested"]);
        assert_eq!(negated("no quiero comprar nada hoy"), ["quiero", "comprar", "nada", "hoy"]);
        assert_eq!(negated("não tenho interesse"), ["tenho", "interesse"]);
        assert_eq!(negated("mujhe nahi chahiye"), ["chahiye"]);
        assert_eq!(negated("saya tidak tertarik"), ["tertarik"]);
        assert_eq!(negated("not now but i will buy it"), ["now"]);
        assert!(negated("facebook page").is_empty());
        // Scope of three words.
        assert_eq!(negated("never one two three four"), ["one", "two", "three"]);
        // Idioms do not negate.
        assert!(negated("I can't wait to buy it").is_empty());
        assert!(negated("no problem, send it").is_empty());
    }

    #[test]
    fn question_mark_detection() {
        assert!(tokenize("¿precio").question_mark);
        assert!(tokenize("price?").question_mark);
        assert!(!tokenize("price").question_mark);
    }

    #[test]
    fn hashes_are_stable() {
        // Fixed reference values: must never change, stored models depend on them.
        assert_eq!(hash_parts(&["w:price"]), hash_parts(&["w:price"]));
        let mut h = Fnv1a::default();
        h.write(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
        let t = tokenize("price");
        let grams = hashed_ngrams(&t.tokens);
        // unigram + "<pr" "pri" "ric" "ice" "ce>"
        assert_eq!(grams.len(), 6);
        assert!(grams.iter().all(|&(s, _)| s < HASH_SPACE));
        let again = hashed_ngrams(&tokenize("PRICE").tokens);
        assert_eq!(grams, again);
        // Negated words hash differently.
        let neg = hashed_ngrams(&tokenize("not price").tokens);
        assert!(!neg.iter().any(|g| g.1 == Gram::Word && g.0 == grams[0].0));
    }

    #[test]
    fn short_words_have_char_grams() {
        let g = hashed_ngrams(&tokenize("a hi").tokens);
        let chars = g.iter().filter(|x| x.1 == Gram::Char).count();
        // "<a>" ; "<hi" "hi>"
        assert_eq!(chars, 3);
    }
}
