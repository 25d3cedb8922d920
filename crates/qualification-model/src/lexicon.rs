//! Multilingual signal lexicons (en, es, pt, hi in Latin script, id), matched on whole folded tokens and
//! token sequences — never on substrings, so "facebook" is not "book" and "explanation" is not "plan".
//!
//! Phrases are matched left to right, longest first, inside one clause; a matched phrase consumes its
//! tokens. Negation (see [`crate::text`]) then changes what a match means:
//!
//! | match                          | not negated | negated                               |
//! |--------------------------------|-------------|---------------------------------------|
//! | intent ("want", "order", …)    | intent      | objection                             |
//! | core intent ("buy", "comprar", "interested", "tertarik", "chahiye", …) | intent | refusal |
//! | pricing, urgency               | signal      | cancelled                             |
//! | positive                       | positive    | objection                             |
//! | objection, refusal             | signal      | cancelled                             |
//!
//! A negated intent is dropped when the same clause already holds a refusal, so "no quiero comprar" is one
//! refusal and no intent. Phrases that contain their own negator ("not interested", "no me interesa",
//! "nahi chahiye", "tidak tertarik", "not bad") are matched as units. Phrases written with a trailing `$`
//! only match at the end of a clause ("no quiero $": "no quiero." but not "no quiero esperar").
//!
//! "stop"-like words ("stop", "unsubscribe", "berhenti", "parar", "band") are a refusal only when the whole
//! message is essentially that word (with fillers such as "please", "pls", "now", "karo", "aja"), or in
//! explicit phrases ("stop sending", "stop messaging", "mat bhejo", "jangan kirim", "pare de enviar"). So
//! "bus stop" is nothing.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::text::{Token, Tokenized, is_negator, tokenize};

/// A kind of signal found in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Wants to buy, order, book, sign up.
    Intent,
    /// Asks about price, cost, discount.
    Pricing,
    /// Wants it now, today, soon.
    Urgency,
    /// Asks a question.
    Question,
    /// Agrees, thanks, likes.
    Positive,
    /// Soft negative: too expensive, later, negated intent or positive.
    Objection,
    /// Hard negative: not interested, opt-out, wrong number.
    Refusal,
}

/// Signal counts of one message (or, summed, of a lead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub intent: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pricing: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub urgency: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub question: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub positive: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub objection: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refusal: u32,
}

#[expect(clippy::trivially_copy_pass_by_ref, reason = "serde's `skip_serializing_if` hands the field by reference")]
fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Signals {
    /// The count of one signal.
    pub fn get(&self, s: Signal) -> u32 {
        match s {
            Signal::Intent => self.intent,
            Signal::Pricing => self.pricing,
            Signal::Urgency => self.urgency,
            Signal::Question => self.question,
            Signal::Positive => self.positive,
            Signal::Objection => self.objection,
            Signal::Refusal => self.refusal,
        }
    }

    fn bump(&mut self, s: Signal) {
        let slot = match s {
            Signal::Intent => &mut self.intent,
            Signal::Pricing => &mut self.pricing,
            Signal::Urgency => &mut self.urgency,
            Signal::Question => &mut self.question,
            Signal::Positive => &mut self.positive,
            Signal::Objection => &mut self.objection,
            Signal::Refusal => &mut self.refusal,
        };
        *slot = slot.saturating_add(1);
    }

    /// Add another set of counts (saturating).
    pub fn add(&mut self, o: &Signals) {
        self.intent = self.intent.saturating_add(o.intent);
        self.pricing = self.pricing.saturating_add(o.pricing);
        self.urgency = self.urgency.saturating_add(o.urgency);
        self.question = self.question.saturating_add(o.question);
        self.positive = self.positive.saturating_add(o.positive);
        self.objection = self.objection.saturating_add(o.objection);
        self.refusal = self.refusal.saturating_add(o.refusal);
    }

    /// Nothing found.
    pub fn is_empty(&self) -> bool {
        *self == Signals::default()
    }
}

/// Lexicon entry kinds (internal: core intent flips to refusal when negated, neutral only blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Intent,
    CoreIntent,
    Pricing,
    Urgency,
    Positive,
    Objection,
    Refusal,
    Neutral,
}

#[rustfmt::skip]
const INTENT: &[&str] = &[
    // en
    "want", "order", "place an order", "sign up", "signup", "subscribe", "book appointment", "book an appointment",
    "book a demo", "book demo", "book a slot", "book a call", "book a table", "book now", "booking", "reserve",
    "demo", "trial", "get started", "ill take", "i will take", "take it", "deal", "invoice", "payment link", "pay",
    "checkout", "need", "send details", "send catalog", "send catalogue",
    // es
    "quiero", "pedido", "hacer un pedido", "ordenar", "reservar", "reserva", "agendar", "agendar una cita",
    "contratar", "pagar", "lo quiero",
    // pt
    "quero", "encomenda", "encomendar", "fazer pedido", "fazer um pedido",
    // hi (Latin)
    "order karna", "order karna hai", "order dena", "book karna", "booking karni", "mangwana", "bhej do",
    // id
    "mau", "pesan", "ambil", "mau ambil", "daftar", "bayar", "ingin", "pengen", "mau order",
];

#[rustfmt::skip]
const CORE_INTENT: &[&str] = &[
    // en
    "buy", "buying", "purchase", "interested", "want to buy", "i want to buy",
    // es
    "comprar", "compro", "quiero comprar", "me interesa", "interesado", "interesada", "me lo llevo", "lo compro",
    // pt
    "quero comprar", "interesse", "tenho interesse", "interessado", "interessada", "me interessa", "vou levar",
    "fechar negocio",
    // hi (Latin)
    "chahiye", "lena", "lena hai", "le lunga", "le lungi", "lunga", "lungi", "kharidna", "kharidna hai", "khareedna",
    "kharid", "interest hai", "buy karna",
    // id
    "beli", "mau beli", "ingin beli", "minat", "berminat", "tertarik",
];

#[rustfmt::skip]
const PRICING: &[&str] = &[
    // en
    "price", "prices", "pricing", "priced", "cost", "costs", "how much", "quote", "quotation", "rate", "rates", "fee",
    "fees", "charges", "discount", "offer", "emi", "installment", "installments", "budget", "cheap", "price list",
    // es
    "precio", "precios", "cuanto cuesta", "cuanto vale", "cuanto sale", "cuanto es", "costo", "coste", "cotizacion",
    "tarifa", "descuento", "presupuesto", "oferta", "promocion",
    // pt
    "preco", "precos", "quanto custa", "quanto e", "quanto fica", "quanto sai", "valor", "valores", "custo",
    "orcamento", "desconto", "promocao", "parcela", "parcelas", "parcelado",
    // hi (Latin)
    "kitna", "kitne", "kitni", "kitne ka", "kitne ki", "kitne mein", "daam", "kimat", "keemat", "kharcha",
    // id
    "berapa", "harga", "harganya", "berapa harganya", "biaya", "biayanya", "ongkir", "diskon", "promo", "cicilan",
    "tarif",
];

#[rustfmt::skip]
const URGENCY: &[&str] = &[
    // en
    "today", "tonight", "now", "right now", "asap", "urgent", "urgently", "immediately", "quickly", "this week",
    "tomorrow", "soon", "as soon as possible",
    // es
    "hoy", "ahora", "ahora mismo", "urgente", "manana", "cuanto antes", "lo antes posible", "inmediato",
    "inmediatamente", "rapido", "pronto", "esta semana", "hoy mismo",
    // pt
    "hoje", "agora", "amanha", "o quanto antes", "o mais rapido", "logo", "essa semana", "hoje mesmo", "ja",
    // hi (Latin)
    "aaj", "abhi", "jaldi", "turant", "kal", "aaj hi", "abhi ke abhi", "fauran",
    // id
    "sekarang", "segera", "hari ini", "besok", "cepat", "buruan", "secepatnya", "minggu ini",
];

#[rustfmt::skip]
const POSITIVE: &[&str] = &[
    // en
    "yes", "yeah", "yep", "yup", "sure", "great", "good", "ok", "okay", "perfect", "awesome", "excellent", "thanks",
    "thank you", "thx", "love", "nice", "sounds good", "cool", "of course", "why not", "not bad", "no problem",
    "no worries", "amazing", "wonderful", "definitely",
    // es
    "si", "claro", "genial", "perfecto", "bueno", "buena", "gracias", "excelente", "vale", "dale", "me gusta",
    "me encanta", "de acuerdo", "claro que si", "no hay problema", "listo",
    // pt
    "sim", "otimo", "otima", "perfeito", "beleza", "obrigado", "obrigada", "legal", "show", "bom", "boa",
    "com certeza", "pode ser", "gostei", "sem problema",
    // hi (Latin)
    "haan", "haa", "han", "ha", "ji", "haan ji", "theek hai", "thik hai", "theek", "thik", "accha", "acha", "achha",
    "badhiya", "badiya", "shukriya", "dhanyavad", "dhanyawad", "sahi", "mast", "pakka",
    // id
    "ya", "iya", "yaa", "boleh", "oke", "siap", "mantap", "bagus", "terima kasih", "makasih", "trims", "baik",
    "setuju", "sip",
];

#[rustfmt::skip]
const OBJECTION: &[&str] = &[
    // en
    "expensive", "too expensive", "too much", "costly", "pricey", "later", "maybe later", "not now", "no thanks",
    "no thank you", "busy", "think about it", "not sure", "let me think",
    // es
    "caro", "cara", "muy caro", "despues", "luego", "mas tarde", "no gracias", "lo pienso", "lo voy a pensar",
    "no se", "no estoy seguro", "tal vez", "quizas",
    // pt
    "muito caro", "depois", "mais tarde", "nao obrigado", "nao obrigada", "vou pensar", "talvez", "nao sei",
    // hi (Latin)
    "mehenga", "mahanga", "mehnga", "mehanga", "baad mein", "baad me", "sochenge", "soch ke", "sochta hu",
    "dekhte hai", "pasand nahi", "abhi nahi",
    // id
    "mahal", "kemahalan", "nanti", "nanti saja", "nanti aja", "pikir pikir", "lain kali", "gak dulu", "nggak dulu",
    "tidak dulu", "belum butuh",
];

#[rustfmt::skip]
const REFUSAL: &[&str] = &[
    // en
    "not interested", "no interest", "dont want $", "dont want it", "dont want to buy", "do not want $",
    "unsubscribe", "dont send", "do not send", "no more messages", "cancel my order", "cancel the order",
    "cancel order", "cancel it", "stop sending", "stop messaging", "stop texting", "stop contacting", "stop calling",
    "stop spamming", "stop the messages", "remove me", "opt out", "leave me alone", "dont contact", "dont message",
    "dont text", "do not contact", "wrong number", "spam", "never contact", "not buying",
    // es
    "no me interesa", "no quiero $", "no quiero nada", "deja de enviar", "deja de escribir", "dejen de enviar",
    "dejen de escribir", "no me escriban", "no me escribas", "darme de baja", "dar de baja", "numero equivocado",
    "no molestar", "no necesito $", "no necesito nada", "no quiero recibir", "no quiero mas", "cancelar el pedido",
    "cancelar mi pedido", "cancelar pedido",
    // pt
    "nao tenho interesse", "sem interesse", "nao quero $", "nao quero nada", "nao me interessa", "pare de enviar",
    "pare de mandar", "para de mandar", "parem de enviar", "parem de mandar", "me tire da lista", "sair da lista",
    "descadastrar", "numero errado", "nao preciso $", "nao preciso de nada", "nao quero mais", "nao quero receber",
    "cancelar o pedido", "cancelar meu pedido",
    // hi (Latin)
    "nahi chahiye", "nhi chahiye", "nahin chahiye", "interested nahi", "interested nhi", "interested nahin",
    "interest nahi", "interest nhi", "nahi lena", "lena nahi", "mat bhejo", "message mat karo", "msg mat karo",
    "call mat karo", "band karo", "order cancel", "order cancel karo", "zaroorat nahi", "jarurat nahi",
    "galat number",
    // id
    "tidak minat", "tidak mau $", "gak mau $", "nggak mau $", "jangan kirim", "jangan hubungi", "jangan ganggu",
    "berhenti kirim", "berhenti mengirim", "salah nomor", "salah sambung", "tidak butuh", "gak butuh", "nggak butuh",
    "tidak jadi", "gak jadi", "ga jadi", "nggak jadi", "batal", "batalkan", "batalin",
];

/// Phrases that mean nothing but block their words from matching on their own.
#[rustfmt::skip]
const NEUTRAL: &[&str] = &[
    "in order to", "bus stop", "stop by", "kirim pesan", "pesan anda", "pesan saya", "pesan ini", "koi baat nahi",
    "tidak apa apa", "gak apa apa", "ga apa apa", "no te preocupes", "no doubt", "no matter",
];

/// Words that opt out when they are (almost) the whole message.
#[rustfmt::skip]
const STOP_WORDS: &[&str] = &[
    "stop", "unsubscribe", "unsub", "stopp", "berhenti", "parar", "pare", "para", "baja", "cancel", "band", "basta",
];

/// Words allowed around a stop word in a whole-message opt-out.
#[rustfmt::skip]
const STOP_FILLER: &[&str] = &[
    "please", "pls", "plz", "it", "now", "all", "this", "these", "me", "messages", "message", "msg", "msgs",
    "sending", "ok", "okay", "thanks", "thank", "you", "yaar", "bhai", "por", "favor", "pf", "tolong", "sudah", "aja",
    "saja", "deh", "dong", "karo", "kar", "do", "just", "already", "ji", "sir", "madam", "de", "ya",
];

/// Thanks words, cancelled right after a bare "no" ("no, thanks" is a polite no, not a positive).
#[rustfmt::skip]
const THANKS: &[&str] = &[
    "thanks", "thank you", "thx", "gracias", "obrigado", "obrigada", "shukriya", "dhanyavad", "dhanyawad",
    "terima kasih", "makasih", "trims",
];

/// Question words that make a question when they open a clause.
#[rustfmt::skip]
const QUESTION_START: &[&str] = &[
    "what", "how", "when", "where", "which", "why", "who", "whom", "whose", "can", "could", "would", "will", "is",
    "are", "do", "does", "did", "should", "may", "que", "cual", "cuales", "cuando", "donde", "como", "quien", "qual",
    "quais", "quando", "onde", "quem", "apa", "mana", "bisa",
];

/// Question words that make a question anywhere (Hindi and Indonesian often put them last).
#[rustfmt::skip]
const QUESTION_ANYWHERE: &[&str] = &[
    "kya", "kaise", "kab", "kahan", "kitna", "kitne", "kitni", "kyun", "kyu", "kaun", "konsa", "apakah", "bagaimana",
    "gimana", "berapa", "kapan", "dimana", "kenapa", "mengapa", "siapa", "bisakah", "cuanto", "cuanta", "cuantos",
    "cuantas", "quanto", "quanta", "quantos", "quantas",
];

#[derive(Debug)]
struct Entry {
    words: Vec<&'static str>,
    anchored: bool,
    kind: Kind,
    phrase: &'static str,
}

type Index = HashMap<&'static str, Vec<Entry>>;

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut idx: Index = HashMap::new();
        let tables: [(&[&str], Kind); 8] = [
            (INTENT, Kind::Intent),
            (CORE_INTENT, Kind::CoreIntent),
            (PRICING, Kind::Pricing),
            (URGENCY, Kind::Urgency),
            (POSITIVE, Kind::Positive),
            (OBJECTION, Kind::Objection),
            (REFUSAL, Kind::Refusal),
            (NEUTRAL, Kind::Neutral),
        ];
        for (table, kind) in tables {
            for &phrase in table {
                let mut words: Vec<&'static str> = phrase.split(' ').collect();
                let anchored = words.last() == Some(&"$");
                if anchored {
                    words.pop();
                }
                idx.entry(words[0]).or_default().push(Entry { words, anchored, kind, phrase });
            }
        }
        for list in idx.values_mut() {
            // Longest first; anchored before unanchored of the same length.
            list.sort_by(|a, b| b.words.len().cmp(&a.words.len()).then(b.anchored.cmp(&a.anchored)));
        }
        idx
    })
}

/// One lexicon match, for explanations and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The lexicon phrase (a trailing ` $` marks an end-of-clause phrase).
    pub phrase: &'static str,
    /// Token position of the first word.
    pub start: usize,
    /// Number of tokens.
    pub len: usize,
    /// The first word was inside a negation scope.
    pub negated: bool,
    /// What it counts as after negation (`None`: cancelled or neutral).
    pub signal: Option<Signal>,
}

fn phrase_at(tokens: &[Token], i: usize) -> Option<&'static Entry> {
    let list = index().get(tokens[i].text.as_str())?;
    let clause = tokens[i].clause;
    list.iter().find(|e| {
        let end = i + e.words.len();
        if end > tokens.len() {
            return false;
        }
        let same = tokens[i..end].iter().zip(&e.words).all(|(t, w)| t.clause == clause && t.text == *w);
        same && (!e.anchored || tokens.get(end).is_none_or(|t| t.clause != clause))
    })
}

fn is_whole_message_stop(tokens: &[Token]) -> bool {
    tokens.len() <= 6
        && tokens.iter().any(|t| STOP_WORDS.contains(&t.text.as_str()))
        && tokens.iter().all(|t| STOP_WORDS.contains(&t.text.as_str()) || STOP_FILLER.contains(&t.text.as_str()))
}

fn is_question(t: &Tokenized) -> bool {
    if t.question_mark {
        return true;
    }
    let mut prev_clause = None;
    for tok in &t.tokens {
        let w = tok.text.as_str();
        let opens = prev_clause != Some(tok.clause);
        prev_clause = Some(tok.clause);
        if QUESTION_ANYWHERE.contains(&w) || (opens && QUESTION_START.contains(&w)) {
            return true;
        }
    }
    false
}

/// All lexicon matches of a tokenised message, with negation applied.
pub fn matches(t: &Tokenized) -> Vec<Match> {
    let tokens = &t.tokens;
    let mut raw: Vec<(&'static Entry, usize, bool)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if let Some(e) = phrase_at(tokens, i) {
            raw.push((e, i, tokens[i].negated));
            i += e.words.len();
        } else {
            i += 1;
        }
    }
    let refusal_clauses: Vec<u16> = raw
        .iter()
        .filter(|(e, _, neg)| (e.kind == Kind::Refusal && !neg) || (e.kind == Kind::CoreIntent && *neg))
        .map(|(_, s, _)| tokens[*s].clause)
        .collect();
    let mut out: Vec<Match> = raw
        .into_iter()
        .map(|(e, start, negated)| {
            let clause = tokens[start].clause;
            let signal = match (e.kind, negated) {
                (Kind::Intent | Kind::CoreIntent, false) => Some(Signal::Intent),
                (Kind::CoreIntent, true) | (Kind::Refusal, false) => Some(Signal::Refusal),
                (Kind::Intent | Kind::Positive, true) => {
                    (!refusal_clauses.contains(&clause)).then_some(Signal::Objection)
                }
                (Kind::Pricing, false) => Some(Signal::Pricing),
                (Kind::Urgency, false) => Some(Signal::Urgency),
                (Kind::Positive, false) => Some(Signal::Positive),
                (Kind::Objection, false) => Some(Signal::Objection),
                _ => None,
            };
            Match { phrase: e.phrase, start, len: e.words.len(), negated, signal }
        })
        .collect();
    // A refusal clause holds one refusal however many words of it matched ("no quiero comprar nada").
    let mut seen: Vec<u16> = Vec::new();
    for m in &mut out {
        if m.signal == Some(Signal::Refusal) {
            let c = tokens[m.start].clause;
            if seen.contains(&c) {
                m.signal = None;
            } else {
                seen.push(c);
            }
        }
    }
    // A clause that is just a negator ("No.", "Não", "Tidak,") is a no: an objection, and thanks right after
    // it are politeness, not a positive.
    let mut bare_no: Vec<u16> = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        let alone =
            (i == 0 || tokens[i - 1].clause != tok.clause) && tokens.get(i + 1).is_none_or(|n| n.clause != tok.clause);
        if alone && is_negator(&tok.text) && !refusal_clauses.contains(&tok.clause) && !seen.contains(&tok.clause) {
            bare_no.push(tok.clause);
            out.push(Match { phrase: "no", start: i, len: 1, negated: false, signal: Some(Signal::Objection) });
        }
    }
    for m in &mut out {
        let c = tokens[m.start].clause;
        if m.signal == Some(Signal::Positive) && THANKS.contains(&m.phrase) && c > 0 && bare_no.contains(&(c - 1)) {
            m.signal = None;
        }
    }
    if seen.is_empty() && is_whole_message_stop(tokens) {
        out.push(Match {
            phrase: "stop (whole message)",
            start: 0,
            len: tokens.len(),
            negated: false,
            signal: Some(Signal::Refusal),
        });
    }
    out
}

/// Signal counts of a tokenised message.
pub fn scan(t: &Tokenized) -> Signals {
    let mut s = Signals::default();
    for m in matches(t) {
        if let Some(sig) = m.signal {
            s.bump(sig);
        }
    }
    if is_question(t) {
        s.bump(Signal::Question);
    }
    s
}

/// Tokenise and scan a text.
pub fn analyze(text: &str) -> Signals {
    scan(&tokenize(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(text: &str) -> Signals {
        analyze(text)
    }

    #[track_caller]
    fn intent(text: &str) {
        let s = sig(text);
        assert!(s.intent > 0 && s.refusal == 0, "{text:?} should be intent, got {s:?}");
    }

    #[track_caller]
    fn refusal(text: &str) {
        let s = sig(text);
        assert!(s.refusal > 0 && s.intent == 0, "{text:?} should be refusal, got {s:?}");
    }

    #[track_caller]
    fn pricing(text: &str) {
        let s = sig(text);
        assert!(s.pricing > 0, "{text:?} should be pricing, got {s:?}");
    }

    #[track_caller]
    fn urgency(text: &str) {
        let s = sig(text);
        assert!(s.urgency > 0, "{text:?} should be urgency, got {s:?}");
    }

    #[track_caller]
    fn positive(text: &str) {
        let s = sig(text);
        assert!(s.positive > 0 && s.refusal == 0, "{text:?} should be positive, got {s:?}");
    }

    #[track_caller]
    fn nothing(text: &str) {
        let s = sig(text);
        assert!(s.intent == 0 && s.refusal == 0 && s.pricing == 0, "{text:?} should be neutral, got {s:?}");
    }

    #[test]
    fn old_substring_bugs_are_gone() {
        nothing("I saw you on facebook");
        nothing("thanks for the explanation");
        nothing("I'm at the bus stop");
        nothing("the bus stop near the mall");
        assert_eq!(sig("facebook").intent, 0);
        assert_eq!(sig("explanation").pricing, 0);
        // "not interested" is one refusal and no intent.
        assert_eq!(sig("not interested").refusal, 1);
        assert_eq!(sig("not interested").intent, 0);
        assert_eq!(sig("I am not interested, thanks").intent, 0);
        assert_eq!(sig("I'm not really interested").refusal, 1);
    }

    #[test]
    fn english() {
        intent("I want to buy the blue one");
        intent("can I book an appointment for Friday");
        intent("please place an order for 3");
        assert_eq!(sig("book").intent, 0, "a bare 'book' is not intent");
        pricing("how much is it");
        pricing("what's the price");
        urgency("I need it today");
        urgency("asap please");
        positive("yes great");
        refusal("not interested");
        refusal("STOP");
        refusal("stop please");
        refusal("Stop sending me messages");
        refusal("unsubscribe");
        refusal("I don't want to buy anything");
        refusal("wrong number");
        nothing("stop by the store tomorrow at the bus stop");
        let s = sig("I don't need a discount, I want to buy today");
        assert!(s.intent >= 1 && s.urgency == 1 && s.refusal == 0 && s.pricing == 0, "{s:?}");
        let s = sig("not now, maybe later");
        assert!(s.urgency == 0 && s.objection >= 1, "{s:?}");
        assert!(sig("not bad").positive == 1 && sig("not bad").objection == 0);
        assert_eq!(sig("not good").objection, 1);
        assert_eq!(sig("in order to compare").intent, 0);
        refusal("please don't send more messages");
        refusal("cancel my order");
        let s = sig("I can't wait to buy it");
        assert!(s.intent == 1 && s.refusal == 0, "{s:?}");
        let s = sig("No, thanks.");
        assert!(s.objection == 1 && s.positive == 0, "{s:?}");
        assert_eq!(sig("no problem").positive, 1);
    }

    #[test]
    fn spanish() {
        intent("Quiero comprar dos");
        intent("me interesa, quiero hacer un pedido");
        pricing("¿Cuánto cuesta?");
        pricing("cuanto cuesta el envio");
        pricing("precio por favor");
        urgency("lo necesito hoy");
        urgency("es urgente");
        positive("sí, perfecto");
        refusal("no me interesa");
        refusal("No quiero comprar");
        refusal("no quiero.");
        refusal("no estoy interesado");
        refusal("dejen de enviar mensajes");
        let s = sig("no quiero comprar nada");
        assert_eq!((s.refusal, s.intent, s.objection), (1, 0, 0), "{s:?}");
        assert_eq!(sig("no quiero esperar, quiero comprar ya").intent, 1);
        assert_eq!(sig("no quiero esperar, quiero comprar ya").refusal, 0);
    }

    #[test]
    fn portuguese() {
        intent("quero comprar esse");
        intent("tenho interesse");
        pricing("quanto custa?");
        pricing("qual o preço");
        pricing("qual o preco");
        urgency("preciso hoje");
        positive("sim, obrigado");
        refusal("não quero");
        refusal("nao quero");
        refusal("não tenho interesse");
        refusal("nao tenho interesse");
        refusal("pare de enviar mensagem");
        refusal("não quero comprar");
        refusal("não quero mais mensagens");
        let s = sig("Não, obrigado");
        assert!(s.objection == 1 && s.positive == 0, "{s:?}");
        assert_eq!(sig("não tenho interesse").intent, 0);
    }

    #[test]
    fn hinglish() {
        intent("mujhe ek lena hai");
        intent("mujhe yeh chahiye");
        intent("order karna hai");
        pricing("kitne ka hai");
        pricing("price kya hai bhai");
        urgency("aaj hi chahiye");
        urgency("abhi bhejo");
        positive("haan ji theek hai");
        refusal("nahi chahiye");
        refusal("mujhe nahi chahiye");
        refusal("interested nahi hu");
        refusal("message mat bhejo");
        refusal("lena nahi hai");
        assert!(sig("kitne ka hai").question == 1);
        let s = sig("abhi nahi");
        assert!(s.urgency == 0 && s.objection == 1, "{s:?}");
    }

    #[test]
    fn indonesian() {
        intent("saya mau beli 2");
        intent("mau pesan satu");
        pricing("berapa harganya?");
        pricing("harga nya berapa kak");
        urgency("bisa kirim sekarang?");
        urgency("segera ya");
        positive("iya mantap");
        refusal("tidak tertarik");
        refusal("saya gak tertarik");
        refusal("jangan kirim pesan lagi");
        refusal("berhenti");
        refusal("tidak mau.");
        nothing("bus berhenti di halte");
        assert_eq!(sig("tidak tertarik").intent, 0);
        let s = sig("tidak, terima kasih");
        assert!(s.objection == 1 && s.positive == 0, "{s:?}");
        assert_eq!(sig("tidak apa apa").objection, 0);
    }

    #[test]
    fn questions() {
        assert_eq!(sig("what colours do you have").question, 1);
        assert_eq!(sig("price kya hai").question, 1);
        assert_eq!(sig("ready").question, 0);
        assert_eq!(sig("¿tienen envío").question, 1);
        assert_eq!(sig("ok, is it available").question, 1);
    }

    #[test]
    fn matches_report_phrases() {
        let m = matches(&tokenize("not interested"));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].phrase, "not interested");
        assert_eq!(m[0].signal, Some(Signal::Refusal));
    }
}
