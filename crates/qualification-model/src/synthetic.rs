//! A deterministic generator of labelled organisations: conversations in English, Spanish, Portuguese,
//! Hinglish and Indonesian whose outcome (converted or lost) depends probabilistically on hidden traits of
//! each contact.
//!
//! Used by this crate's tests, and meant for integration tests and benchmarks that need realistic
//! conversation traffic. The same [`SyntheticConfig`] always gives the same organisation.
//!
//! Each lead has a hidden *interest* and *responsiveness*. The outcome is drawn from
//! `σ(−1.0 + 3.0·interest + 0.8·responsiveness − 1.2·stale + source effect)`, where `stale` means the
//! contact's last message is more than ten days old. What the contact writes depends on the same traits:
//!
//! * organisation-specific phrases (a product name and a local way of asking for it, not in the lexicons)
//!   get likelier with interest — only a learned model can pick them up from hashed n-grams;
//! * generic lexicon intent ("I want to buy", "quiero comprar", …) is equally likely whatever the interest
//!   (window-shoppers say it too), and price questions are *less* likely with interest (bargain hunters),
//!   so the built-in prior is misled in this organisation;
//! * refusals only come from uninterested contacts; reply delays shrink with responsiveness.
//!
//! No text reveals the label directly.

use super::explain::sigmoid;
use super::features::{Direction, LeadFeatures, Message, MessageKind, SparseVector, Vocabulary};
use super::rng::SplitMix64;
use super::time::Timestamp;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Seed: fixes the organisation (its product and phrases) and every conversation.
    pub seed: u64,
    /// Number of leads.
    pub leads: usize,
    /// The scoring time: every message is before it.
    pub now: Timestamp,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self { seed: 7, leads: 600, now: Timestamp::from_unix_seconds(1_780_000_000) }
    }
}

/// One generated message (owned).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticMessage {
    pub direction: Direction,
    pub at: Timestamp,
    pub text: String,
    pub kind: MessageKind,
    pub campaign_id: Option<String>,
    pub source: Option<String>,
    pub channel: Option<String>,
}

impl SyntheticMessage {
    /// Borrow as a model [`Message`].
    pub fn as_message(&self) -> Message<'_> {
        Message {
            direction: self.direction,
            at: self.at,
            text: Some(&self.text),
            kind: self.kind,
            campaign_id: self.campaign_id.as_deref(),
            source: self.source.as_deref(),
            channel: self.channel.as_deref(),
        }
    }
}

/// One generated lead.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticLead {
    pub id: u64,
    /// `en`, `es`, `pt`, `hi` (Latin script) or `id`.
    pub language: &'static str,
    /// Messages sorted by time.
    pub messages: Vec<SyntheticMessage>,
    /// The outcome.
    pub converted: bool,
}

impl SyntheticLead {
    /// Accumulate all messages.
    pub fn features(&self) -> LeadFeatures {
        let mut f = LeadFeatures::new();
        for m in &self.messages {
            f.observe(&m.as_message());
        }
        f
    }
}

/// A generated organisation.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticOrg {
    pub seed: u64,
    /// The scoring time.
    pub now: Timestamp,
    /// The organisation's product name.
    pub product: &'static str,
    pub leads: Vec<SyntheticLead>,
}

impl SyntheticOrg {
    /// `(vector at now, converted)` for every lead.
    pub fn examples(&self) -> Vec<(SparseVector, bool)> {
        self.leads.iter().map(|l| (l.features().vector(self.now), l.converted)).collect()
    }

    /// Names of the hashed features seen in the organisation's messages.
    pub fn vocabulary(&self, cap: usize) -> Vocabulary {
        let mut v = Vocabulary::new(cap);
        for l in &self.leads {
            for m in &l.messages {
                v.observe(&m.as_message());
            }
        }
        v
    }

    /// Share of converted leads.
    pub fn base_rate(&self) -> f64 {
        self.leads.iter().filter(|l| l.converted).count() as f64 / self.leads.len().max(1) as f64
    }
}

const PRODUCTS: &[&str] = &["zenbox", "aurora kit", "solarflex", "nimbus pro", "kopimax", "lumora"];

struct Lang {
    code: &'static str,
    greeting: &'static [&'static str],
    intent: &'static [&'static str],
    price: &'static [&'static str],
    urgency: &'static [&'static str],
    refusal: &'static [&'static str],
    objection: &'static [&'static str],
    filler: &'static [&'static str],
    /// `{p}` is replaced by the product name.
    org: &'static [&'static str],
    business: &'static [&'static str],
    promo: &'static str,
}

const LANGS: &[Lang] = &[
    Lang {
        code: "en",
        greeting: &["hi", "hello", "good morning", "hey there"],
        intent: &["I want to buy one", "I would like to order", "interested", "can I book an appointment"],
        price: &["how much is it?", "what's the price?", "any discount?", "price please"],
        urgency: &["need it today", "asap please"],
        refusal: &["not interested", "stop sending messages", "please remove me"],
        objection: &["too expensive", "maybe later"],
        filler: &["ok", "I see", "let me check with my family", "send photos", "what colours do you have", "hmm"],
        org: &[
            "is the {p} in stock",
            "{p} would fit my shop",
            "can you ship the {p} to my address",
            "my friend has the {p}",
        ],
        business: &["Thanks for writing to us!", "Here are the details.", "Sure, let me check.", "Anything else?"],
        promo: "New arrivals this week! Reply to know more.",
    },
    Lang {
        code: "es",
        greeting: &["hola", "buenas tardes", "buen día"],
        intent: &["quiero comprar uno", "me interesa", "quiero hacer un pedido", "quiero agendar una cita"],
        price: &["¿cuánto cuesta?", "precio por favor", "¿tienen descuento?", "¿cuánto vale?"],
        urgency: &["lo necesito hoy", "es urgente"],
        refusal: &["no me interesa", "no quiero comprar", "dejen de enviar mensajes"],
        objection: &["muy caro", "más tarde"],
        filler: &["ok", "ya veo", "déjame consultarlo con mi esposa", "mándame fotos", "¿qué colores tienen?", "mmm"],
        org: &[
            "¿el {p} está disponible?",
            "el {p} sirve para mi tienda",
            "¿envían el {p} a mi casa?",
            "mi amiga tiene el {p}",
        ],
        business: &["¡Gracias por escribirnos!", "Aquí están los detalles.", "Claro, déjame revisar.", "¿Algo más?"],
        promo: "¡Novedades esta semana! Responde para saber más.",
    },
    Lang {
        code: "pt",
        greeting: &["oi", "olá", "bom dia"],
        intent: &["quero comprar um", "tenho interesse", "quero fazer um pedido", "quero agendar"],
        price: &["quanto custa?", "qual o preço?", "tem desconto?", "qual o valor?"],
        urgency: &["preciso hoje", "é urgente"],
        refusal: &["não tenho interesse", "não quero", "pare de enviar mensagens"],
        objection: &["muito caro", "mais tarde"],
        filler: &["ok", "entendi", "vou ver com minha esposa", "manda fotos", "quais cores vocês têm?", "hmm"],
        org: &[
            "o {p} tem em estoque?",
            "o {p} serve pra minha loja",
            "vocês entregam o {p} em casa?",
            "minha amiga tem o {p}",
        ],
        business: &["Obrigado pelo contato!", "Seguem os detalhes.", "Claro, vou verificar.", "Mais alguma coisa?"],
        promo: "Novidades esta semana! Responda para saber mais.",
    },
    Lang {
        code: "hi",
        greeting: &["hi", "namaste", "hello ji"],
        intent: &["mujhe ek lena hai", "mujhe yeh chahiye", "order karna hai", "interested hu"],
        price: &["kitne ka hai?", "price kya hai?", "discount milega?", "rate batao"],
        urgency: &["aaj hi chahiye", "jaldi bhejo"],
        refusal: &["nahi chahiye", "interested nahi hu", "message mat bhejo"],
        objection: &["bahut mehenga hai", "baad mein dekhenge"],
        filler: &["ok", "achha samjha", "ghar pe puchke batata hu", "photo bhejo", "kaunse colour hai?", "hmm"],
        org: &[
            "{p} stock mein hai?",
            "{p} meri dukaan ke liye sahi rahega",
            "{p} ghar pe deliver hoga?",
            "mere dost ke paas {p} hai",
        ],
        business: &[
            "Message karne ke liye dhanyavad!",
            "Yeh rahi details.",
            "Zaroor, check karke batata hu.",
            "Aur kuch?",
        ],
        promo: "Is hafte naya stock! Reply karein.",
    },
    Lang {
        code: "id",
        greeting: &["halo", "selamat pagi", "permisi kak"],
        intent: &["saya mau beli satu", "mau pesan", "tertarik kak", "mau order"],
        price: &["berapa harganya?", "harganya berapa kak?", "ada diskon?", "biayanya berapa?"],
        urgency: &["butuh sekarang", "segera ya"],
        refusal: &["tidak tertarik", "jangan kirim pesan lagi", "gak mau"],
        objection: &["mahal banget", "nanti saja"],
        filler: &["ok", "oh begitu", "saya tanya suami dulu", "kirim foto", "warnanya apa saja?", "hmm"],
        org: &["{p} ready stok?", "{p} cocok buat toko saya", "{p} bisa dikirim ke rumah?", "teman saya punya {p}"],
        business: &["Terima kasih sudah menghubungi kami!", "Berikut detailnya.", "Baik, saya cek dulu.", "Ada lagi?"],
        promo: "Produk baru minggu ini! Balas untuk info.",
    },
];

const SOURCES: &[(&str, f64)] = &[("facebook_ads", -0.3), ("website", 0.1), ("instagram", -0.1), ("referral", 0.6)];

/// Generate an organisation.
pub fn generate(config: &SyntheticConfig) -> SyntheticOrg {
    let mut rng = SplitMix64::new(config.seed);
    let product = *rng.pick(PRODUCTS);
    let campaigns: Vec<String> = (0..4).map(|k| format!("camp-{}-{k}", config.seed)).collect();
    let leads = (0..config.leads).map(|i| lead(&mut rng, i as u64, product, &campaigns, config.now)).collect();
    SyntheticOrg { seed: config.seed, now: config.now, product, leads }
}

fn lead(rng: &mut SplitMix64, id: u64, product: &str, campaigns: &[String], now: Timestamp) -> SyntheticLead {
    let lang = rng.pick(LANGS);
    let interest = rng.normal();
    let responsiveness = 0.4 * interest + 0.9 * rng.normal();
    let &(source, source_effect) = rng.pick(SOURCES);
    // Median reply delay: ~10 minutes, faster when responsive.
    let median_delay = (600f64.ln() - 1.4 * responsiveness + 0.4 * rng.normal()).exp().clamp(15.0, 3.0 * 86_400.0);
    let start = now.plus_seconds(-((3_600.0 + rng.next_f64() * 40.0 * 86_400.0) as i64));
    let turns = 1 + (sigmoid(interest + responsiveness) * 5.0) as usize + rng.below(2);

    let mut t = start;
    let mut messages = Vec::new();
    let push = |messages: &mut Vec<SyntheticMessage>, direction, at, text: String, kind, campaign: Option<&String>| {
        messages.push(SyntheticMessage {
            direction,
            at,
            text,
            kind,
            campaign_id: campaign.cloned(),
            source: Some(source.to_owned()),
            channel: Some("whatsapp".to_owned()),
        });
    };
    let broadcast = rng.chance(0.4);
    let campaign = broadcast.then(|| rng.pick(campaigns));
    if broadcast {
        push(&mut messages, Direction::Outbound, t, lang.promo.to_owned(), MessageKind::Broadcast, campaign);
    }
    let p_org = sigmoid(3.0 * interest - 0.8);
    let p_price = sigmoid(-0.9 * interest - 0.2);
    let p_refusal = if interest < -0.8 { 0.35 } else { 0.0 };
    let mut refused = false;
    for turn in 0..turns {
        // The contact writes.
        let delay = if turn == 0 && !broadcast { 0.0 } else { median_delay * (0.8 * rng.normal()).exp() };
        t = t.plus_seconds(delay as i64 + 1);
        let mut parts: Vec<String> = Vec::new();
        if turn == 0 {
            parts.push((*rng.pick(lang.greeting)).to_owned());
        }
        if rng.chance(p_org) {
            parts.push(rng.pick(lang.org).replace("{p}", product));
        }
        if rng.chance(0.3) {
            parts.push((*rng.pick(lang.intent)).to_owned());
        }
        if rng.chance(p_price) {
            parts.push((*rng.pick(lang.price)).to_owned());
        }
        if rng.chance(0.12) {
            parts.push((*rng.pick(lang.urgency)).to_owned());
        }
        if rng.chance(0.12) {
            parts.push((*rng.pick(lang.objection)).to_owned());
        }
        if turn > 0 && rng.chance(p_refusal) {
            parts.push((*rng.pick(lang.refusal)).to_owned());
            refused = true;
        }
        if parts.is_empty() || rng.chance(0.3) {
            parts.push((*rng.pick(lang.filler)).to_owned());
        }
        let kind = if broadcast && turn == 0 { MessageKind::BroadcastReply } else { MessageKind::ChatMessage };
        let reply_campaign = if broadcast && turn == 0 { campaign } else { None };
        push(&mut messages, Direction::Inbound, t, parts.join(". "), kind, reply_campaign);
        if refused {
            break;
        }
        // The business answers within minutes to a few hours.
        t = t.plus_seconds((60.0 + rng.next_f64() * 3_000.0 * (1.0 + rng.below(3) as f64)) as i64);
        if t >= now {
            break;
        }
        push(
            &mut messages,
            Direction::Outbound,
            t,
            (*rng.pick(lang.business)).to_owned(),
            MessageKind::ChatMessage,
            None,
        );
        if t.plus_seconds(median_delay as i64) >= now {
            break;
        }
    }
    messages.retain(|m| m.at < now);
    messages.sort_by_key(|m| m.at);
    let last_inbound = messages.iter().rev().find(|m| m.direction == Direction::Inbound).map_or(start, |m| m.at);
    let stale = f64::from(u8::from(now.seconds_since(last_inbound) / 86_400 > 10));
    let logit =
        -1.0 + 3.0 * interest + 0.8 * responsiveness - 1.2 * stale + source_effect - if refused { 2.0 } else { 0.0 };
    let converted = rng.chance(sigmoid(logit));
    SyntheticLead { id, language: lang.code, messages, converted }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{Model, TrainConfig, train};

    #[test]
    fn deterministic_and_varied() {
        let cfg = SyntheticConfig { leads: 50, ..SyntheticConfig::default() };
        let a = generate(&cfg);
        assert_eq!(a, generate(&cfg));
        let langs: std::collections::BTreeSet<_> = a.leads.iter().map(|l| l.language).collect();
        assert_eq!(langs.len(), 5);
        for l in &a.leads {
            assert!(l.messages.windows(2).all(|w| w[0].at <= w[1].at));
            assert!(l.messages.iter().all(|m| m.at < a.now));
            assert!(l.messages.iter().any(|m| m.direction == Direction::Inbound));
        }
        let other = generate(&SyntheticConfig { seed: 8, ..cfg });
        assert_ne!(a.leads[0].messages, other.leads[0].messages);
    }

    #[test]
    fn learned_model_beats_prior_and_is_calibrated() {
        let org = generate(&SyntheticConfig::default());
        let base = org.base_rate();
        assert!((0.2..0.6).contains(&base), "base rate {base}");
        let cfg = TrainConfig { trained_at: Some(org.now), ..TrainConfig::default() };
        let mut model = train(&org.examples(), &cfg).model().expect("enough data");
        eprintln!(
            "synthetic org: leads={} base_rate={base:.3} holdout_auc={:.3} prior_auc={:.3} mean_p={:.3} holdout_rate={:.3} l2={} weights={}",
            org.leads.len(),
            model.holdout_auc,
            model.prior_holdout_auc,
            model.holdout_mean_probability,
            model.holdout_base_rate,
            model.l2,
            model.weights.len()
        );
        assert!(model.holdout_auc >= 0.85, "learned AUC {}", model.holdout_auc);
        assert!(model.prior_holdout_auc <= model.holdout_auc - 0.05, "prior AUC {}", model.prior_holdout_auc);
        assert!(model.beats_prior());
        // Calibration: mean predicted probability close to the base rate on the hold-out set.
        assert!(
            (model.holdout_mean_probability - model.holdout_base_rate).abs() < 0.06,
            "mean {} vs rate {}",
            model.holdout_mean_probability,
            model.holdout_base_rate
        );
        // The product name is among the features the model relies on, and explanations name it.
        let mut vocabulary = Vocabulary::for_features(model.strongest_hashed(crate::learn::NAMED_FEATURES));
        for m in org.leads.iter().flat_map(|l| &l.messages) {
            vocabulary.observe(&m.as_message());
        }
        model.name_features(&vocabulary);
        assert!(model.names.len() <= crate::learn::NAMED_FEATURES);
        // A new lead that names the product in its first message: the words read as words.
        let text = org
            .leads
            .iter()
            .flat_map(|l| &l.messages)
            .find(|m| m.direction == Direction::Inbound && m.text.contains(org.product))
            .map(|m| m.text.as_str())
            .unwrap();
        let mut fresh = LeadFeatures::new();
        fresh.observe(&Message::chat(Direction::Inbound, org.now.plus_seconds(-60), text));
        let e = model.explain(&fresh.vector(org.now));
        let product_word = org.product.split(' ').next().unwrap();
        assert!(e.factors.iter().any(|f| f.name.starts_with("text: ") && f.name.contains(product_word)), "{e}");
        assert!(e.factors.iter().all(|f| !f.name.contains('#')), "{e}");
        let unnamed = Model { names: std::collections::BTreeMap::new(), ..model.clone() };
        let e = unnamed.explain(&fresh.vector(org.now));
        assert!(e.factors.iter().any(|f| f.name == "text features"), "{e}");
        assert!(e.factors.iter().all(|f| !f.name.contains('#')), "{e}");
        let json = serde_json::to_string(&model).unwrap();
        assert!(json.len() < 400_000, "model JSON {} bytes", json.len());
    }
}
