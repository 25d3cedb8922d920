//! What a lead answers beyond its status: a timeline that is the lead's own (an older lead never
//! shows a later one), every broadcast paged into it once, the attributes and conversation its
//! interactions carried, and the reasons of its AI score, on the lead, its list row, its
//! history and the export.

use chrono::{DateTime, Duration as Span, Utc};
use contracts::{Envelope, qualification::Scored};
use leads_tests::{Node, TestEnv, all_leads, eventually, pb, phone};
use platform::ServiceName;
use serde_json::json;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};
use tonic::transport::Channel;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);
const ORG: &str = "acme";

type Leads = leads_proto::v1::lead_service_client::LeadServiceClient<Channel>;

struct Desk {
    env: TestEnv,
    node: Node,
    leads: Leads,
}

impl Desk {
    async fn start(services: &[ServiceName]) -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        let node = env.start(services).await?;
        let leads = node.lead().await?;
        Ok(Self { env, node, leads })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.node.stop().await?;
        self.env.cleanup().await
    }

    async fn publish(&self, event: &serde_json::Value) -> anyhow::Result<()> {
        self.env.publish_interaction(ORG, event).await
    }

    /// The leads of the contact with phone `n` once `done` holds for them, oldest first.
    async fn leads_of(&self, n: u32, what: &str, done: impl Fn(&[pb::Lead]) -> bool) -> Vec<pb::Lead> {
        let phone = phone(n);
        eventually(DEADLINE, what, || {
            let mut client = self.leads.clone();
            let phone = phone.clone();
            let done = &done;
            async move {
                let mut leads: Vec<pb::Lead> = all_leads(&mut client, ORG)
                    .await
                    .ok()?
                    .into_iter()
                    .filter(|l| l.contact.as_ref().is_some_and(|c| c.phone == phone))
                    .collect();
                leads.sort_by_key(|l| l.created_at.map(|t| (t.seconds, t.nanos)));
                done(&leads).then_some(leads)
            }
        })
        .await
    }

    /// The lead once `done` holds for it.
    async fn lead_when(&self, lead_id: &str, what: &str, done: impl Fn(&pb::Lead) -> bool) -> pb::Lead {
        eventually(DEADLINE, what, || {
            let mut client = self.leads.clone();
            let request = pb::GetLeadRequest { org_id: ORG.into(), lead_id: lead_id.into() };
            let done = &done;
            async move { Some(client.get_lead(request).await.ok()?.into_inner()).filter(|l| done(l)) }
        })
        .await
    }

    /// Every page of the lead's timeline with `page_size`, and its past leads.
    async fn timeline(&self, lead_id: &str, page_size: i32) -> anyhow::Result<Timeline> {
        let mut timeline = Timeline::default();
        let mut token = String::new();
        loop {
            let request = pb::GetLeadHistoryRequest {
                org_id: ORG.into(),
                lead_id: lead_id.into(),
                page_size,
                page_token: token.clone(),
            };
            let page = self.leads.clone().get_lead_history(request).await?.into_inner();
            timeline.broadcast_unavailable |= page.broadcast_history_unavailable;
            assert!(page.entries.len() <= page_size as usize, "a page holds at most {page_size}");
            timeline.pages += 1;
            timeline.entries.extend(page.entries);
            timeline.past_lead_ids = page.past_lead_ids;
            if page.next_page_token.is_empty() {
                return Ok(timeline);
            }
            token = page.next_page_token;
        }
    }

    async fn change(&self, request: pb::ChangeStatusRequest) -> anyhow::Result<pb::Lead> {
        let request = pb::ChangeStatusRequest { org_id: ORG.into(), actor: "operator-1".into(), ..request };
        Ok(self.leads.clone().change_status(request).await?.into_inner())
    }

    /// ExportLeads ALL, as rows by column name.
    async fn export(&self) -> anyhow::Result<Vec<HashMap<String, String>>> {
        let query = pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() };
        let request = pb::ExportLeadsRequest { query: Some(query), scope: pb::ExportScope::All as i32 };
        let mut stream = self.leads.clone().export_leads(request).await?.into_inner();
        let mut csv = Vec::new();
        while let Some(chunk) = stream.message().await? {
            csv.extend(chunk.csv);
        }
        let mut reader = csv::Reader::from_reader(csv.as_slice());
        let header = reader.headers()?.clone();
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record?;
            rows.push(header.iter().zip(record.iter()).map(|(k, v)| (k.to_owned(), v.to_owned())).collect());
        }
        Ok(rows)
    }

    /// Publishes broadcast messages to the contact with phone `n` in batches of 1,000.
    async fn broadcasts(&self, n: u32, sent: &[(String, DateTime<Utc>)]) -> anyhow::Result<()> {
        for batch in sent.chunks(1000) {
            let messages: Vec<serde_json::Value> = batch
                .iter()
                .map(|(id, at)| {
                    json!({
                        "message_id": id, "occurred_at": at.to_rfc3339(),
                        "campaign": { "id": "cmp-1", "name": "Winter" },
                        "template": { "name": "winter_offer", "language": "en" },
                        "contact": { "phone": phone(n) }
                    })
                })
                .collect();
            let payload = serde_json::to_vec(&json!({ "messages": messages }))?;
            self.env.publish(self.env.subjects.broadcast_message_batches(ORG), payload, None).await?;
        }
        Ok(())
    }

    /// Publishes the qualification engine's score of a lead, as the qualification service does.
    async fn score(&self, lead_id: &str, version: i64, score: i32, reasons: &[&str]) -> anyhow::Result<()> {
        let lead_id: Uuid = lead_id.parse()?;
        let scored = Scored {
            lead_id,
            score,
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
            model_version: "prior-v1".into(),
            scored_at: Utc::now(),
        };
        let envelope = Envelope::new(ORG, contracts::qualification::SCORED, lead_id, version, scored);
        let subject = self.env.subjects.event("qualification", ORG, contracts::qualification::SCORED);
        self.env.publish(subject, envelope.to_json(), None).await
    }
}

#[derive(Default)]
struct Timeline {
    entries: Vec<pb::HistoryEntry>,
    past_lead_ids: Vec<String>,
    pages: usize,
    /// Whether a page lacked broadcasts because the broadcast-tracking service did not answer.
    broadcast_unavailable: bool,
}

impl Timeline {
    fn details(entry: &pb::HistoryEntry) -> serde_json::Value {
        serde_json::from_str(&entry.details_json).unwrap_or_default()
    }

    /// The message ids of the broadcast entries, in timeline order.
    fn broadcasts(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.kind == "broadcast")
            .filter_map(|e| Self::details(e)["message_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// The event ids of the interaction entries, in timeline order.
    fn interactions(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.kind == "interaction")
            .filter_map(|e| Self::details(e)["event_id"].as_str().map(str::to_owned))
            .collect()
    }

    fn interaction(&self, event_id: &str) -> Option<serde_json::Value> {
        self.entries.iter().filter(|e| e.kind == "interaction").map(Self::details).find(|d| d["event_id"] == event_id)
    }
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).expect("a time").with_timezone(&Utc)
}

fn time_of(lead_time: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    lead_time.and_then(contracts::time::from_timestamp).expect("a time")
}

fn message(event_id: &str, n: u32, occurred_at: DateTime<Utc>, direction: &str) -> serde_json::Value {
    json!({
        "event_id": event_id, "occurred_at": occurred_at.to_rfc3339(), "kind": "chat_message",
        "direction": direction, "channel": "whatsapp",
        "contact": { "phone": phone(n), "name": "Ada Lovelace" },
        "text": format!("message {event_id}"),
    })
}

#[tokio::test]
async fn an_older_leads_timeline_shows_its_past_never_a_later_lead() -> anyhow::Result<()> {
    let desk = Desk::start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Broadcast]).await?;
    desk.broadcasts(1, &[("wamid.before".into(), at("2026-01-05T09:00:00Z"))]).await?;
    desk.publish(&message("a-1", 1, at("2026-01-05T10:00:00Z"), "inbound")).await?;
    let older = desk.leads_of(1, "the first lead", |l| l.len() == 1).await.remove(0);
    desk.change(pb::ChangeStatusRequest {
        lead_id: older.id.clone(),
        status: pb::LeadStatus::Converted as i32,
        ..Default::default()
    })
    .await?;

    // The contact comes back: a later lead, with a life of its own.
    desk.publish(&message("b-1", 1, at("2026-01-06T10:00:00Z"), "inbound")).await?;
    let later = desk.leads_of(1, "the later lead", |l| l.len() == 2).await.remove(1);
    desk.publish(&message("b-2", 1, at("2026-01-06T10:05:00Z"), "outbound")).await?;
    desk.lead_when(&later.id, "the reply on the later lead", |l| l.interaction_count == 2).await;
    desk.change(pb::ChangeStatusRequest {
        lead_id: later.id.clone(),
        status: pb::LeadStatus::Qualified as i32,
        manual_score: Some(70),
        ..Default::default()
    })
    .await?;
    let after = time_of(later.created_at.as_ref()) + Span::seconds(1);
    desk.broadcasts(1, &[("wamid.after".into(), after)]).await?;

    let newest = eventually(DEADLINE, "both broadcasts on the later lead's timeline", || async {
        let timeline = desk.timeline(&later.id, 100).await.ok()?;
        (timeline.broadcasts().len() == 2).then_some(timeline)
    })
    .await;
    assert!(!newest.broadcast_unavailable);
    assert_eq!(newest.broadcasts(), ["wamid.after", "wamid.before"]);
    assert_eq!(newest.past_lead_ids, std::slice::from_ref(&older.id));
    assert_eq!(newest.interactions(), ["b-2", "b-1", "a-1"], "its own and its past lead's messages");

    for page_size in [100, 2] {
        let timeline = desk.timeline(&older.id, page_size).await?;
        assert!(!timeline.broadcast_unavailable);
        let foreign: Vec<&pb::HistoryEntry> = timeline.entries.iter().filter(|e| e.lead_id == later.id).collect();
        assert!(foreign.is_empty(), "page size {page_size}: the later lead's entries: {foreign:?}");
        assert!(timeline.past_lead_ids.is_empty(), "a later lead is no past lead: {:?}", timeline.past_lead_ids);
        assert_eq!(timeline.interactions(), ["a-1"], "page size {page_size}");
        assert_eq!(timeline.broadcasts(), ["wamid.before"], "sent before the later lead began");
        let kinds: HashSet<&str> = timeline.entries.iter().map(|e| e.kind.as_str()).collect();
        assert!(kinds.contains("created") && kinds.contains("status_changed"), "its own entries: {kinds:?}");
        let scores: Vec<&pb::HistoryEntry> = timeline.entries.iter().filter(|e| e.kind == "score").collect();
        assert!(scores.is_empty(), "the later lead's score set by hand: {scores:?}");
    }
    desk.stop().await
}

#[tokio::test]
async fn every_one_of_2500_broadcasts_appears_once_across_timeline_pages_in_time_order() -> anyhow::Result<()> {
    let desk = Desk::start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Broadcast]).await?;
    let base = at("2026-01-01T00:00:00Z");
    // Two messages a second, so that pages also end between broadcasts of one instant.
    let sent: Vec<(String, DateTime<Utc>)> =
        (0..2500).map(|i| (format!("wamid.{i:05}"), base + Span::seconds(i64::from(i) / 2))).collect();
    desk.broadcasts(2, &sent).await?;
    // Messages of the contact at the very instants of some broadcasts, and one after them all.
    let messages = [("m-100", 100), ("m-700", 700), ("m-1249", 1249), ("m-late", 5000)];
    for (event_id, second) in messages {
        desk.publish(&message(event_id, 2, base + Span::seconds(second), "inbound")).await?;
    }
    let lead = desk.leads_of(2, "the contact's lead", |l| l.first().is_some_and(|l| l.interaction_count == 4)).await;
    let lead = &lead[0];
    let admin = desk.env.admin_pool().await?;
    eventually(DEADLINE, "every broadcast stored", || async {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM broadcast.messages").fetch_one(&admin).await.ok()?;
        (stored == 2500).then_some(())
    })
    .await;
    admin.close().await;
    eventually(DEADLINE, "the broadcasts on the lead's timeline", || async {
        let request = pb::GetLeadHistoryRequest {
            org_id: ORG.into(),
            lead_id: lead.id.clone(),
            page_size: 10,
            ..Default::default()
        };
        let page = desk.leads.clone().get_lead_history(request).await.ok()?.into_inner();
        page.entries.iter().any(|e| e.kind == "broadcast").then_some(())
    })
    .await;

    let sent_at: HashMap<&str, DateTime<Utc>> = sent.iter().map(|(id, at)| (id.as_str(), *at)).collect();
    for page_size in [500, 97] {
        let timeline = desk.timeline(&lead.id, page_size).await?;
        assert!(!timeline.broadcast_unavailable, "page size {page_size}");
        let broadcasts = timeline.broadcasts();
        let distinct: HashSet<&String> = broadcasts.iter().collect();
        assert_eq!(broadcasts.len(), 2500, "page size {page_size}: every broadcast");
        assert_eq!(distinct.len(), 2500, "page size {page_size}: none twice");
        let mut newest_first: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
        newest_first.reverse();
        assert_eq!(broadcasts, newest_first, "page size {page_size}: newest first, the larger id first at one instant");
        assert_eq!(timeline.interactions(), ["m-late", "m-1249", "m-700", "m-100"], "page size {page_size}");
        assert!(timeline.pages >= 2500 / page_size as usize, "page size {page_size}: {} pages", timeline.pages);
        let times: Vec<DateTime<Utc>> = timeline.entries.iter().map(|e| time_of(e.at.as_ref())).collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "page size {page_size}: in time order");
        // A message at a broadcast's instant sorts with it, not pages away.
        let index = |wanted: &str| {
            timeline.entries.iter().position(|e| {
                let details = Timeline::details(e);
                details["event_id"] == wanted || details["message_id"] == wanted
            })
        };
        let (message, broadcast) = (index("m-700").expect("m-700"), index("wamid.01400").expect("wamid.01400"));
        assert_eq!(time_of(timeline.entries[broadcast].at.as_ref()), sent_at["wamid.01400"]);
        assert!(message.abs_diff(broadcast) <= 2, "page size {page_size}: {message} and {broadcast}");
    }
    desk.stop().await
}

#[tokio::test]
async fn attributes_merge_on_the_lead_the_latest_winning_and_show_in_history_and_export() -> anyhow::Result<()> {
    let desk = Desk::start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    let integration = json!({
        "event_id": "int-1", "occurred_at": "2026-02-01T10:00:00Z", "kind": "integration",
        "contact": { "phone": phone(3) },
        "integration": { "name": "shopify", "reference": "order-1001" },
        "attributes": { "utm_source": "instagram", "plan": "pro", "coupon": "=1+2" }
    });
    desk.publish(&integration).await?;
    let mut later = message("int-2", 3, at("2026-02-01T10:10:00Z"), "inbound");
    later["attributes"] = json!({ "plan": "enterprise" });
    desk.publish(&later).await?;
    let lead = desk.leads_of(3, "the lead", |l| l.first().is_some_and(|l| l.interaction_count == 2)).await.remove(0);
    // Older than both, applied last: it fills in what it alone gave, and changes nothing newer.
    let mut older = message("int-0", 3, at("2026-02-01T09:00:00Z"), "inbound");
    older["attributes"] = json!({ "plan": "basic", "ref": "partner-7" });
    desk.publish(&older).await?;
    let lead = desk.lead_when(&lead.id, "the older message", |l| l.interaction_count == 3).await;

    let merged: BTreeMap<String, String> =
        [("utm_source", "instagram"), ("plan", "enterprise"), ("coupon", "=1+2"), ("ref", "partner-7")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    let on_lead: BTreeMap<String, String> = lead.attributes.clone().into_iter().collect();
    assert_eq!(on_lead, merged, "GetLead");
    let listed = all_leads(&mut desk.leads.clone(), ORG).await?;
    let row: BTreeMap<String, String> = listed[0].attributes.clone().into_iter().collect();
    assert_eq!(row, merged, "ListLeads");

    let timeline = desk.timeline(&lead.id, 100).await?;
    for (event_id, attributes) in [
        ("int-1", json!({ "utm_source": "instagram", "plan": "pro", "coupon": "=1+2" })),
        ("int-2", json!({ "plan": "enterprise" })),
        ("int-0", json!({ "plan": "basic", "ref": "partner-7" })),
    ] {
        let details = timeline.interaction(event_id).expect("the interaction");
        assert_eq!(details["attributes"], attributes, "{event_id}'s own attributes in its history entry");
    }

    let export = desk.export().await?;
    let cell = &export[0]["attributes"];
    let exported: BTreeMap<String, String> = serde_json::from_str(cell)?;
    assert_eq!(exported, merged, "the export's attributes column is the lead's, as JSON: {cell}");
    desk.stop().await
}

#[tokio::test]
async fn the_lead_carries_the_conversation_of_its_latest_interaction_that_had_one() -> anyhow::Result<()> {
    let desk = Desk::start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    let with_conversation = |event_id: &str, time: &str, conversation: Option<&str>| {
        let mut event = message(event_id, 4, at(time), "inbound");
        if let Some(conversation) = conversation {
            event["conversation_id"] = json!(conversation);
        }
        event
    };
    desk.publish(&with_conversation("c-1", "2026-03-01T10:00:00Z", Some("conv-1"))).await?;
    let lead = desk.leads_of(4, "the lead", |l| l.len() == 1).await.remove(0);
    assert_eq!(lead.conversation_id, "conv-1");
    // A newer message without a conversation keeps the one there is.
    desk.publish(&with_conversation("c-2", "2026-03-01T10:05:00Z", None)).await?;
    let lead = desk.lead_when(&lead.id, "the second message", |l| l.interaction_count == 2).await;
    assert_eq!(lead.conversation_id, "conv-1");
    // Applied late but later than the first: it is the latest that had one.
    desk.publish(&with_conversation("c-3", "2026-03-01T10:03:00Z", Some("conv-3"))).await?;
    let lead = desk.lead_when(&lead.id, "the third message", |l| l.interaction_count == 3).await;
    assert_eq!(lead.conversation_id, "conv-3");
    // Applied last but older than all: changes nothing.
    desk.publish(&with_conversation("c-0", "2026-03-01T09:00:00Z", Some("conv-0"))).await?;
    let lead = desk.lead_when(&lead.id, "the oldest message", |l| l.interaction_count == 4).await;
    assert_eq!(lead.conversation_id, "conv-3");
    let listed = all_leads(&mut desk.leads.clone(), ORG).await?;
    assert_eq!(listed[0].conversation_id, "conv-3", "ListLeads");
    desk.stop().await
}

#[tokio::test]
async fn score_reasons_show_on_the_lead_list_and_export_and_a_score_by_hand_clears_them() -> anyhow::Result<()> {
    let desk = Desk::start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    desk.publish(&message("s-1", 5, at("2026-04-01T10:00:00Z"), "inbound")).await?;
    let lead = desk.leads_of(5, "the lead", |l| l.len() == 1).await.remove(0);
    let reasons = ["=HYPERLINK(\"http://x\")", "intent signals +16"];
    desk.score(&lead.id, 1, 72, &reasons).await?;
    let scored = desk.lead_when(&lead.id, "the AI score", |l| l.score == Some(72)).await;
    assert_eq!(scored.score_reasons, reasons, "GetLead");
    let listed = all_leads(&mut desk.leads.clone(), ORG).await?;
    assert_eq!(listed[0].score_reasons, reasons, "ListLeads");
    let export = desk.export().await?;
    assert_eq!(
        export[0]["score_reasons"], "'=HYPERLINK(\"http://x\"); intent signals +16",
        "joined, and neutralised as every cell from outside is"
    );

    // A score by hand has no reasons; handed back, none until the engine scores again.
    let manual = desk
        .change(pb::ChangeStatusRequest { lead_id: lead.id.clone(), manual_score: Some(80), ..Default::default() })
        .await?;
    assert_eq!((manual.score, manual.score_reasons.len()), (Some(80), 0), "ChangeStatus answers it");
    let read = desk.lead_when(&lead.id, "the score by hand", |l| l.score == Some(80)).await;
    assert!(read.score_reasons.is_empty(), "{:?}", read.score_reasons);
    assert_eq!(desk.export().await?[0]["score_reasons"], "");
    let handed_back = desk
        .change(pb::ChangeStatusRequest { lead_id: lead.id.clone(), clear_manual_score: true, ..Default::default() })
        .await?;
    assert_eq!((handed_back.score, handed_back.score_reasons.len()), (None, 0));
    desk.score(&lead.id, 2, 64, &["pricing questions +9"]).await?;
    let rescored = desk.lead_when(&lead.id, "the next AI score", |l| l.score == Some(64)).await;
    assert_eq!(rescored.score_reasons, ["pricing questions +9"]);
    desk.stop().await
}

#[tokio::test]
async fn the_console_shows_the_reasons_attributes_and_conversation_of_a_lead() -> anyhow::Result<()> {
    use leads_proto::v1::people_service_client::PeopleServiceClient;
    use leads_tests::browserless::Browserless;
    use platform::auth::{Role, Signer};

    const PASSWORD: &str = "correct horse battery staple";
    let key_dir = std::env::temp_dir().join(format!("leads-answers-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&key_dir)?;
    let key = key_dir.join("local.key");
    std::fs::write(&key, "s".repeat(24) + &Uuid::new_v4().simple().to_string())?;
    let mut env = TestEnv::new().await?;
    env.settings.auth.signing_key_file = Some(key.clone());
    let node = env.start_all().await?;
    let mut settings = env.settings.clone();
    for service in ServiceName::ALL {
        settings.endpoints.set(service, format!("http://{}", node.addr(service)));
    }
    settings.console.port = 0;
    let stop_console = tokio_util::sync::CancellationToken::new();
    let console = leads::start_console(&settings, stop_console.clone()).await?;

    // An operator, added by an admin, signs in.
    let admin = Signer::with_settings(&key, &env.settings.auth)?.mint(
        "root@acme.test",
        Role::Admin,
        vec![ORG.into()],
        Duration::from_secs(600),
    )?;
    let mut people = PeopleServiceClient::new(node.channel(ServiceName::People).await?);
    let mut request = tonic::Request::new(pb::AddPersonRequest {
        org_id: ORG.into(),
        email: "olga@acme.test".into(),
        name: "Olga".into(),
        role: pb::PersonRole::Operator as i32,
        agent_id: String::new(),
    });
    request.metadata_mut().insert("authorization", format!("Bearer {admin}").parse()?);
    let added = people.add_person(request).await?.into_inner();
    people.set_password(pb::SetPasswordRequest { setup_code: added.setup_code, password: PASSWORD.into() }).await?;
    let mut browser = Browserless::new(console.addr);
    let csrf = browser.get("/sign-in").await?.csrf();
    let fields = [("_csrf", csrf.as_str()), ("org_id", ORG), ("email", "olga@acme.test"), ("password", PASSWORD)];
    assert_eq!(browser.post("/sign-in", &fields).await?.status, 303);

    let mut event = message("con-1", 6, Utc::now(), "inbound");
    event["text"] = json!("Hi, how much is the premium plan? We need 40 seats this week.");
    event["conversation_id"] = json!("conv-77");
    event["attributes"] = json!({ "utm_source": "newsletter" });
    env.publish_interaction(ORG, &event).await?;
    let leads = node.lead().await?;
    let lead = eventually(DEADLINE, "the engine's score with its reasons", || {
        let mut leads = leads.clone();
        let mut request = tonic::Request::new(pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() });
        let bearer = format!("Bearer {admin}").parse();
        async move {
            request.metadata_mut().insert("authorization", bearer.ok()?);
            let lead = leads.list_leads(request).await.ok()?.into_inner().leads.into_iter().next()?;
            (lead.score.is_some() && !lead.score_reasons.is_empty()).then_some(lead)
        }
    })
    .await;

    let list = browser.get("/leads").await?;
    let top = format!("<div class=\"sub top-reason\">{}</div>", lead.score_reasons[0]);
    assert!(list.body.contains(&top), "the top reason under the score: {top} in {}", list.body);
    let drawer = browser.get(&format!("/leads/{}", lead.id)).await?;
    assert!(drawer.body.contains(&format!("<dd class=\"score-reasons\">{}</dd>", lead.score_reasons.join(" · "))));
    assert!(drawer.body.contains("<dd class=\"conversation\">conv-77</dd>"), "{}", drawer.body);
    assert!(drawer.body.contains("<dt>utm_source</dt><dd>newsletter</dd>"), "{}", drawer.body);

    stop_console.cancel();
    node.stop().await?;
    std::fs::remove_dir_all(&key_dir).ok();
    env.cleanup().await
}
