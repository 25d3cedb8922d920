//! Events of one contact commute: applied in any order, one batch each or all in one, they
//! leave the same lead. An outbound message at or after the lead's first inbound message
//! makes it Contacted even when it was applied before the lead existed.

use leads_tests::{TestEnv, eventually, pb};
use platform::ServiceName;
use serde_json::json;
use std::time::Duration;

const ORG: &str = "acme";
const DEADLINE: Duration = Duration::from_secs(30);

fn event(id: &str, phone: &str, direction: &str, at: &str, text: &str) -> serde_json::Value {
    json!({
        "event_id": id, "occurred_at": at, "kind": "chat_message", "direction": direction,
        "contact": { "phone": phone }, "text": text,
    })
}

/// The four events of one contact: the business writes a minute before the contact does,
/// the contact writes, the business answers at the same instant, the contact writes again.
fn conversation(n: usize, phone: &str) -> Vec<serde_json::Value> {
    vec![
        event(&format!("{n}-early"), phone, "outbound", "2026-11-24T09:59:00Z", "earlier outreach"),
        event(&format!("{n}-hello"), phone, "inbound", "2026-11-24T10:00:00Z", "hello"),
        event(&format!("{n}-answer"), phone, "outbound", "2026-11-24T10:00:00Z", "hi, how can we help?"),
        event(&format!("{n}-again"), phone, "inbound", "2026-11-24T10:01:00Z", "the price?"),
    ]
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for rest in permutations(n - 1) {
        for at in 0..=rest.len() {
            let mut order = rest.clone();
            order.insert(at, n - 1);
            out.push(order);
        }
    }
    out
}

/// What a person sees of a lead, for comparing.
fn seen(lead: &pb::Lead) -> (i32, i64, Option<i64>, Option<i64>, String) {
    (
        lead.status,
        lead.interaction_count,
        lead.first_touch_at.as_ref().map(|t| t.seconds),
        lead.last_interaction_at.as_ref().map(|t| t.seconds),
        lead.last_message_preview.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contacts_events_in_every_order_leave_the_same_lead() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    let admin = env.admin_pool().await?;
    let mut client = node.lead().await?;
    let orders = permutations(4);
    assert_eq!(orders.len(), 24);
    // One batch per event, in each order.
    for (n, order) in orders.iter().enumerate() {
        let phone = leads_tests::phone(500 + n as u32);
        let events = conversation(n, &phone);
        for &i in order {
            env.publish_interaction(ORG, &events[i]).await?;
            let id = events[i]["event_id"].as_str().unwrap_or_default().to_owned();
            eventually(DEADLINE, "the event applied", || {
                let (admin, id) = (admin.clone(), id.clone());
                async move {
                    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.interactions WHERE event_id = $1")
                        .bind(&id)
                        .fetch_one(&admin)
                        .await
                        .ok()?;
                    (n == 1).then_some(())
                }
            })
            .await;
        }
    }
    // All of a contact's events published at once, in a few orders: applied in one batch or
    // by concurrent ones.
    for (k, order) in orders.iter().step_by(5).enumerate() {
        let n = 100 + k;
        let phone = leads_tests::phone(500 + n as u32);
        let events = conversation(n, &phone);
        for &i in order {
            env.publish_interaction(ORG, &events[i]).await?;
        }
    }
    let expected_contacts = orders.len() + orders.iter().step_by(5).count();
    let leads = eventually(DEADLINE, "every contact's lead with its three messages", || {
        let mut client = client.clone();
        async move {
            let all = leads_tests::all_leads(&mut client, ORG).await.ok()?;
            (all.len() == expected_contacts && all.iter().all(|l| l.interaction_count == 3)).then_some(all)
        }
    })
    .await;
    let first = seen(&leads[0]);
    assert_eq!(first.0, pb::LeadStatus::Contacted as i32, "the answer at the inbound's instant reached out");
    for lead in &leads {
        assert_eq!(seen(lead), first, "lead of {:?}", lead.contact.as_ref().map(|c| &c.phone));
    }
    // The earlier outreach stays on the contact, outside the lead.
    let unattached: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lead.interactions WHERE lead_id IS NULL AND event_id LIKE '%-early'")
            .fetch_one(&admin)
            .await?;
    assert_eq!(unattached as usize, expected_contacts);
    // One status change each, whatever the order.
    let history = client
        .get_lead_history(pb::GetLeadHistoryRequest {
            org_id: ORG.into(),
            lead_id: leads[0].id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let changes: Vec<&str> =
        history.entries.iter().filter(|e| e.kind == "status_changed").map(|e| e.summary.as_str()).collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    node.stop().await?;
    env.cleanup().await
}
