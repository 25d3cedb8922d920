//! InteractionEvents as the raw and ingest sections publish them, and the publisher that keeps
//! a window of acks in flight.

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use leads_tests::TestEnv;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::VecDeque;

pub struct Generator {
    rng: StdRng,
}

pub const FIRST_NAMES: [&str; 40] = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Ken",
    "Dennis",
    "Margaret",
    "Linus",
    "Guido",
    "Bjarne",
    "James",
    "Niklaus",
    "John",
    "Frances",
    "Katherine",
    "Radia",
    "Tim",
    "Vint",
    "Robert",
    "Leslie",
    "Shafi",
    "Sophie",
    "Hedy",
    "Annie",
    "Mary",
    "Joan",
    "Jean",
    "Karen",
    "Lynn",
    "Adele",
    "Carol",
    "Susan",
    "Anita",
    "Lois",
    "Ruth",
    "Marian",
    "Evelyn",
    "Ida",
];
pub const LAST_NAMES: [&str; 40] = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Thompson",
    "Ritchie",
    "Hamilton",
    "Torvalds",
    "Rossum",
    "Stroustrup",
    "Gosling",
    "Wirth",
    "McCarthy",
    "Allen",
    "Johnson",
    "Perlman",
    "Berners",
    "Cerf",
    "Tarjan",
    "Lamport",
    "Goldwasser",
    "Wilson",
    "Lamarr",
    "Easley",
    "Keller",
    "Clarke",
    "Bartik",
    "Jones",
    "Conway",
    "Goldberg",
    "Shaw",
    "Graham",
    "Borg",
    "Haibt",
    "Teitelbaum",
    "Wilkes",
    "Boyd",
    "Rhodes",
];
pub const TEXTS: [&str; 6] = [
    "Hi, how much is the premium plan? We are a team of twelve and need it before the end of the month.",
    "Thanks for the quick answer. Could you send me the brochure and the price list for the annual plan?",
    "I saw your offer on Instagram and would like to know whether the discount also applies to renewals.",
    "Good morning! Is the delivery to Lisbon included in the price or is there an extra shipping charge?",
    "We spoke last week about the integration with our shop; do you have time for a call tomorrow at ten?",
    "Perfect, please go ahead with the order. I will pay by card; what is the link for the secure payment?",
];

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed) }
    }

    /// An InteractionEvent of about 400 bytes from contact `contact`; the first one of a
    /// contact is always inbound (it opens a lead), later ones are outbound 30% of the time.
    pub fn event(
        &mut self,
        event_id: &str,
        contact: u64,
        first: bool,
        occurred_at: DateTime<Utc>,
    ) -> serde_json::Value {
        let outbound = !first && self.rng.random_bool(0.3);
        let name = format!("{} {}", FIRST_NAMES[(contact % 40) as usize], LAST_NAMES[((contact / 40) % 40) as usize]);
        let mut event = serde_json::json!({
            "event_id": event_id,
            "occurred_at": occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "kind": "chat_message",
            "direction": if outbound { "outbound" } else { "inbound" },
            "channel": "whatsapp",
            "contact": {
                "phone": leads_tests::phone(contact as u32),
                "name": name,
                "email": format!("contact{contact}@example.com"),
            },
            "text": TEXTS[self.rng.random_range(0..TEXTS.len())],
            "conversation_id": format!("conv-{contact}"),
            "attributes": { "utm_source": "instagram" },
        });
        if outbound {
            event["agent_id"] = format!("agent-{:02}", contact % 50).into();
        } else {
            let roll: f64 = self.rng.random();
            if roll < 0.1 {
                event["kind"] = "broadcast_reply".into();
                event["broadcast"] = serde_json::json!({
                    "message_id": format!("wamid.{event_id}"),
                    "campaign_id": format!("cmp-{}", contact % 20),
                });
            } else if roll < 0.2 {
                event["kind"] = "integration".into();
                event["integration"] =
                    serde_json::json!({ "name": "shopify", "reference": format!("order-{event_id}") });
            }
        }
        event
    }
}

pub fn org_name(index: u64) -> String {
    format!("bench-org-{index}")
}

pub struct Prepared {
    pub subject: String,
    pub event_id: String,
    pub payload: Bytes,
}

pub fn prepare(env: &TestEnv, org: &str, event: &serde_json::Value) -> Prepared {
    Prepared {
        subject: env.subjects.interactions(org),
        event_id: event["event_id"].as_str().unwrap_or_default().to_owned(),
        payload: Bytes::from(serde_json::to_vec(event).expect("JSON")),
    }
}

/// Publishes with `Nats-Msg-Id`, keeping at most `window` acks outstanding (the oldest is
/// awaited before another publish once the window is full).
pub struct Publisher {
    js: jetstream::Context,
    window: usize,
    pending: VecDeque<jetstream::context::PublishAckFuture>,
}

impl Publisher {
    pub fn new(js: jetstream::Context, window: usize) -> Self {
        Self { js, window, pending: VecDeque::with_capacity(window) }
    }

    pub async fn publish(&mut self, subject: String, msg_id: &str, payload: Bytes) -> anyhow::Result<()> {
        if self.pending.len() >= self.window
            && let Some(ack) = self.pending.pop_front()
        {
            ack.await?;
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        let ack = self.js.publish_with_headers(subject, headers, payload).await?;
        self.pending.push_back(ack);
        Ok(())
    }

    pub async fn drain(&mut self) -> anyhow::Result<()> {
        while let Some(ack) = self.pending.pop_front() {
            ack.await?;
        }
        Ok(())
    }
}

pub const ACK_WINDOW: usize = 1000;
