//! The organisations' status rules: each off by default, each moving a lead by itself once an
//! admin turns it on, recorded with actor `system` and the rule's name; never over a status a
//! person set after the lead's last interaction, never on an inactive lead. And the settings
//! that hold them: validated, versioned and audited.

use chrono::{Duration as Span, Utc};
use contracts::Envelope;
use contracts::qualification::{SCORED, Scored};
use leads_tests::{Node, TestEnv, all_leads, chat_event, eventually, pb, phone};
use platform::ServiceName;
use serde_json::json;
use std::time::Duration;
use tonic::{Code, transport::Channel};

const DEADLINE: Duration = Duration::from_secs(30);
const ORG: &str = "acme";

type Leads = leads_proto::v1::lead_service_client::LeadServiceClient<Channel>;
type FollowUps = leads_proto::v1::follow_up_service_client::FollowUpServiceClient<Channel>;

struct Rules {
    env: TestEnv,
    node: Node,
    leads: Leads,
}

impl Rules {
    async fn start(services: &[ServiceName], idle_sweep_secs: u64) -> anyhow::Result<Self> {
        let mut env = TestEnv::new().await?;
        env.settings.lead.idle_sweep_interval_secs = idle_sweep_secs;
        let node = env.start(services).await?;
        let leads = node.lead().await?;
        Ok(Self { env, node, leads })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.node.stop().await?;
        self.env.cleanup().await
    }

    async fn set_rules(&self, org: &str, rules: pb::StatusRules) -> Result<pb::LeadSettings, tonic::Status> {
        let request =
            pb::UpdateLeadSettingsRequest { org_id: org.into(), status_rules: Some(rules), ..Default::default() };
        Ok(self.leads.clone().update_lead_settings(request).await?.into_inner())
    }

    /// The lead of the contact with this phone, once it exists.
    async fn lead_of(&self, org: &str, phone: &str) -> pb::Lead {
        let leads = self.leads.clone();
        eventually(DEADLINE, "the lead", || {
            let mut leads = leads.clone();
            let phone = phone.to_owned();
            let org = org.to_owned();
            async move {
                let all = all_leads(&mut leads, &org).await.ok()?;
                all.into_iter().find(|l| l.contact.as_ref().is_some_and(|c| c.phone == phone) && l.active)
            }
        })
        .await
    }

    async fn get(&self, lead_id: &str) -> anyhow::Result<pb::Lead> {
        let request = pb::GetLeadRequest { org_id: ORG.into(), lead_id: lead_id.into() };
        Ok(self.leads.clone().get_lead(request).await?.into_inner())
    }

    /// Waits until the lead is in `status`.
    async fn reaches(&self, lead_id: &str, status: pb::LeadStatus) -> pb::Lead {
        eventually(DEADLINE, &format!("lead {lead_id} in {status:?}"), || async move {
            self.get(lead_id).await.ok().filter(|l| l.status == status as i32)
        })
        .await
    }

    /// The lead's status changes made by rules, as (rule, from, to), oldest first.
    async fn rule_changes(&self, lead_id: &str) -> anyhow::Result<Vec<(String, String, String)>> {
        let request = pb::GetLeadHistoryRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            page_size: 200,
            ..Default::default()
        };
        let history = self.leads.clone().get_lead_history(request).await?.into_inner();
        let mut changes = Vec::new();
        for entry in history.entries.iter().rev().filter(|e| e.kind == "status_changed") {
            let details: serde_json::Value = serde_json::from_str(&entry.details_json)?;
            if let Some(rule) = details["rule"].as_str() {
                assert_eq!(entry.actor, "system", "a rule's change is the system's: {entry:?}");
                assert!(entry.summary.contains(rule), "the timeline names the rule: {}", entry.summary);
                let side = |key: &str| details[key].as_str().unwrap_or_default().to_owned();
                changes.push((rule.to_owned(), side("from"), side("to")));
            }
        }
        Ok(changes)
    }

    /// Waits until the lead has this score.
    async fn scored(&self, lead_id: &str, score: i32) -> pb::Lead {
        eventually(DEADLINE, &format!("lead {lead_id} scored {score}"), || async move {
            self.get(lead_id).await.ok().filter(|l| l.score == Some(score))
        })
        .await
    }

    /// Publishes the engine's score for the lead, as the qualification service would.
    async fn score(&self, lead: &pb::Lead, score: i32, version: i64) -> anyhow::Result<()> {
        let lead_id = lead.id.parse()?;
        let scored = Scored {
            lead_id,
            score,
            reasons: vec!["intent +9".into()],
            model_version: "prior-v1".into(),
            scored_at: Utc::now(),
        };
        let envelope = Envelope::new(ORG, SCORED, lead_id, version, scored);
        self.env.publish(self.env.subjects.event("qualification", ORG, SCORED), envelope.to_json(), None).await
    }

    async fn change(&self, lead_id: &str, status: pb::LeadStatus) -> anyhow::Result<pb::Lead> {
        let request = pb::ChangeStatusRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            status: status as i32,
            ..Default::default()
        };
        Ok(self.leads.clone().change_status(request).await?.into_inner())
    }
}

fn broadcast_reply(event_id: &str, phone: &str) -> serde_json::Value {
    json!({
        "event_id": event_id,
        "occurred_at": Utc::now().to_rfc3339(),
        "kind": "broadcast_reply",
        "contact": { "phone": phone },
        "text": "yes please",
        "broadcast": { "message_id": format!("wamid.{event_id}"), "campaign_id": "cmp-1" },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_start_off_and_every_change_is_checked_versioned_and_recorded() -> anyhow::Result<()> {
    let rules = Rules::start(&[ServiceName::Lead], 300).await?;
    let mut leads = rules.leads.clone();
    let initial = leads.get_lead_settings(pb::GetLeadSettingsRequest { org_id: ORG.into() }).await?.into_inner();
    assert_eq!(initial.version, 0);
    assert_eq!(initial.status_rules, Some(pb::StatusRules::default()), "every rule is off until turned on");
    assert!(initial.changes.is_empty());

    let refused = rules
        .set_rules(ORG, pb::StatusRules { qualifying_at: Some(80), qualified_at: Some(60), ..Default::default() })
        .await
        .expect_err("qualified below qualifying");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("status_rules.qualified_at"), "{}", refused.message());
    let bad_link = leads
        .update_lead_settings(pb::UpdateLeadSettingsRequest {
            org_id: ORG.into(),
            conversation_url_template: "javascript:alert(1)".into(),
            ..Default::default()
        })
        .await
        .expect_err("not a web link");
    assert!(bad_link.message().contains("conversation_url_template"), "{}", bad_link.message());
    let unchanged = leads.get_lead_settings(pb::GetLeadSettingsRequest { org_id: ORG.into() }).await?.into_inner();
    assert_eq!(unchanged.version, 0, "a refused change leaves nothing behind");

    let first = rules
        .set_rules(ORG, pb::StatusRules { archive_after_days: Some(30), follow_up_status: true, ..Default::default() })
        .await?;
    assert_eq!(first.version, 1);
    assert_eq!(first.changes.len(), 1);
    let mut words = first.changes[0].changes.clone();
    words.sort();
    assert_eq!(words, vec!["archive_after_days: off -> 30", "follow_up_status: off -> on"]);
    assert_eq!(first.changes[0].actor, "unknown", "an open test node records no subject");

    let stale = leads
        .update_lead_settings(pb::UpdateLeadSettingsRequest {
            org_id: ORG.into(),
            status_rules: Some(pb::StatusRules::default()),
            expected_version: Some(0),
            ..Default::default()
        })
        .await
        .expect_err("someone changed them meanwhile");
    assert_eq!(stale.code(), Code::Aborted);
    assert!(stale.message().contains("version 1"), "{}", stale.message());

    let other_org = leads.get_lead_settings(pb::GetLeadSettingsRequest { org_id: "globex".into() }).await?.into_inner();
    assert_eq!(other_org.version, 0, "settings are the organisation's own");
    rules.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reply_opens_as_contacted_only_where_the_rule_is_on() -> anyhow::Result<()> {
    let rules = Rules::start(&[ServiceName::Ingest, ServiceName::Lead], 300).await?;
    rules.env.publish_interaction(ORG, &broadcast_reply("r-1", &phone(1))).await?;
    let before = rules.lead_of(ORG, &phone(1)).await;
    assert_eq!(before.status, pb::LeadStatus::New as i32, "off by default");
    assert!(rules.rule_changes(&before.id).await?.is_empty());

    rules.set_rules(ORG, pb::StatusRules { broadcast_reply_contacted: true, ..Default::default() }).await?;
    rules.env.publish_interaction(ORG, &broadcast_reply("r-2", &phone(2))).await?;
    rules.env.publish_interaction(ORG, &chat_event("c-3", &phone(3), "hi there")).await?;
    let replied = rules.lead_of(ORG, &phone(2)).await;
    assert_eq!(replied.status, pb::LeadStatus::Contacted as i32);
    assert_eq!(
        rules.rule_changes(&replied.id).await?,
        vec![("broadcast_reply_contacted".into(), "new".into(), "contacted".into())]
    );
    let chatted = rules.lead_of(ORG, &phone(3)).await;
    assert_eq!(chatted.status, pb::LeadStatus::New as i32, "a chat message is not a broadcast reply");
    rules.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_scores_move_leads_through_the_thresholds_unless_a_person_set_the_status_since() -> anyhow::Result<()> {
    let rules = Rules::start(&[ServiceName::Ingest, ServiceName::Lead], 300).await?;
    for n in 0..4 {
        rules.env.publish_interaction(ORG, &chat_event(&format!("e-{n}"), &phone(n), "how much is it?")).await?;
    }
    let mut leads = Vec::new();
    for n in 0..4 {
        leads.push(rules.lead_of(ORG, &phone(n)).await);
    }
    let [rule_off, scored, held, closed] = [&leads[0], &leads[1], &leads[2], &leads[3]];

    // Off: a high score leaves the status alone.
    rules.score(rule_off, 95, 1_000).await?;
    rules.scored(&rule_off.id, 95).await;
    assert_eq!(rules.get(&rule_off.id).await?.status, pb::LeadStatus::New as i32);

    rules
        .set_rules(ORG, pb::StatusRules { qualifying_at: Some(50), qualified_at: Some(80), ..Default::default() })
        .await?;
    rules.change(&held.id, pb::LeadStatus::Contacted).await?;
    rules.change(&closed.id, pb::LeadStatus::Lost).await?;

    rules.score(scored, 60, 1_000).await?;
    rules.reaches(&scored.id, pb::LeadStatus::Qualifying).await;
    rules.score(scored, 40, 1_001).await?;
    rules.scored(&scored.id, 40).await;
    assert_eq!(rules.get(&scored.id).await?.status, pb::LeadStatus::Qualifying as i32, "a rule never moves down");
    rules.score(scored, 85, 1_002).await?;
    rules.reaches(&scored.id, pb::LeadStatus::Qualified).await;
    assert_eq!(
        rules.rule_changes(&scored.id).await?,
        vec![
            ("ai_score_qualifying".into(), "new".into(), "qualifying".into()),
            ("ai_score_qualified".into(), "qualifying".into(), "qualified".into()),
        ]
    );

    // Set by hand after the last message: the person's choice stands...
    rules.score(held, 90, 1_000).await?;
    rules.scored(&held.id, 90).await;
    assert_eq!(rules.get(&held.id).await?.status, pb::LeadStatus::Contacted as i32, "manual-set wins");
    // ...until the contact writes again.
    let later = json!({
        "event_id": "e-2-later", "occurred_at": (Utc::now() + Span::seconds(2)).to_rfc3339(),
        "kind": "chat_message", "contact": { "phone": phone(2) }, "text": "ready to buy",
    });
    rules.env.publish_interaction(ORG, &later).await?;
    eventually(DEADLINE, "the new message", || async {
        rules.get(&held.id).await.ok().filter(|l| l.interaction_count == 2)
    })
    .await;
    rules.score(held, 91, 1_001).await?;
    rules.reaches(&held.id, pb::LeadStatus::Qualified).await;

    // Inactive: untouched, score and all.
    rules.score(closed, 99, 1_000).await?;
    rules.score(rule_off, 96, 1_001).await?;
    rules.scored(&rule_off.id, 96).await;
    let closed_now = rules.get(&closed.id).await?;
    assert_eq!(closed_now.status, pb::LeadStatus::Lost as i32);
    assert!(rules.rule_changes(&closed.id).await?.is_empty());
    rules.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_holds_a_lead_in_follow_up_until_its_last_one_closes() -> anyhow::Result<()> {
    let services = [ServiceName::Ingest, ServiceName::Lead, ServiceName::Assignment, ServiceName::FollowUp];
    let rules = Rules::start(&services, 300).await?;
    let follow_ups: FollowUps = rules.node.follow_up().await?;
    for n in 0..2 {
        rules.env.publish_interaction(ORG, &chat_event(&format!("e-{n}"), &phone(n), "call me")).await?;
    }
    let off = rules.lead_of(ORG, &phone(0)).await;
    let on = rules.lead_of(ORG, &phone(1)).await;
    let create = |lead_id: String| {
        let mut follow_ups = follow_ups.clone();
        async move {
            let due = Utc::now() + Span::hours(1);
            let request = pb::CreateFollowUpRequest {
                org_id: ORG.into(),
                lead_id,
                due_at: Some(prost_types::Timestamp { seconds: due.timestamp(), nanos: 0 }),
                note: "call back".into(),
                ..Default::default()
            };
            anyhow::Ok(follow_ups.create_follow_up(request).await?.into_inner())
        }
    };
    let close = |follow_up_id: String, complete: bool| {
        let mut follow_ups = follow_ups.clone();
        async move {
            let request = pb::FollowUpActionRequest { org_id: ORG.into(), follow_up_id, ..Default::default() };
            if complete {
                follow_ups.complete_follow_up(request).await?;
            } else {
                follow_ups.cancel_follow_up(request).await?;
            }
            anyhow::Ok(())
        }
    };

    create(off.id.clone()).await?;
    assert_eq!(rules.get(&off.id).await?.status, pb::LeadStatus::New as i32, "off by default");

    rules.set_rules(ORG, pb::StatusRules { follow_up_status: true, ..Default::default() }).await?;
    rules.change(&on.id, pb::LeadStatus::Qualified).await?;
    let first = create(on.id.clone()).await?;
    assert_eq!(rules.get(&on.id).await?.status, pb::LeadStatus::FollowUp as i32, "moved with the follow-up");
    let second = create(on.id.clone()).await?;
    close(first.id, true).await?;
    // The first close reaches the lead's timeline without moving it: one is still open.
    eventually(DEADLINE, "the completion on the timeline", || async {
        let request = pb::GetLeadHistoryRequest { org_id: ORG.into(), lead_id: on.id.clone(), ..Default::default() };
        let history = rules.leads.clone().get_lead_history(request).await.ok()?.into_inner();
        history.entries.iter().any(|e| e.kind == "follow_up" && e.summary.contains("completed")).then_some(())
    })
    .await;
    assert_eq!(rules.get(&on.id).await?.status, pb::LeadStatus::FollowUp as i32, "one follow-up is still open");
    close(second.id, false).await?;
    rules.reaches(&on.id, pb::LeadStatus::Qualified).await;
    assert_eq!(
        rules.rule_changes(&on.id).await?,
        vec![
            ("follow_up_opened".into(), "qualified".into(), "follow_up".into()),
            ("follow_ups_closed".into(), "follow_up".into(), "qualified".into()),
        ]
    );

    // Or to a status the organisation picks.
    rules
        .set_rules(
            ORG,
            pb::StatusRules {
                follow_up_status: true,
                after_follow_ups: pb::LeadStatus::Qualifying as i32,
                ..Default::default()
            },
        )
        .await?;
    let third = create(on.id.clone()).await?;
    close(third.id, true).await?;
    rules.reaches(&on.id, pb::LeadStatus::Qualifying).await;
    rules.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_leads_are_archived_where_the_rule_is_on_unless_a_person_set_them_since() -> anyhow::Result<()> {
    let rules = Rules::start(&[ServiceName::Ingest, ServiceName::Lead], 1).await?;
    let idle = |event_id: &str, phone: &str, days: i64| {
        json!({
            "event_id": event_id, "occurred_at": (Utc::now() - Span::days(days)).to_rfc3339(),
            "kind": "chat_message", "contact": { "phone": phone }, "text": "hello",
        })
    };
    rules.env.publish_interaction(ORG, &idle("old", &phone(1), 40)).await?;
    rules.env.publish_interaction(ORG, &idle("recent", &phone(2), 3)).await?;
    rules.env.publish_interaction(ORG, &idle("held", &phone(3), 40)).await?;
    rules.env.publish_interaction("globex", &idle("elsewhere", &phone(4), 40)).await?;
    let old = rules.lead_of(ORG, &phone(1)).await;
    let recent = rules.lead_of(ORG, &phone(2)).await;
    let held = rules.lead_of(ORG, &phone(3)).await;
    let elsewhere = rules.lead_of("globex", &phone(4)).await;
    rules.change(&held.id, pb::LeadStatus::Qualifying).await?;

    rules.set_rules(ORG, pb::StatusRules { archive_after_days: Some(30), ..Default::default() }).await?;
    let archived = rules.reaches(&old.id, pb::LeadStatus::Archived).await;
    assert!(!archived.active);
    assert_eq!(rules.rule_changes(&old.id).await?, vec![("archive_idle".into(), "new".into(), "archived".into())]);
    // The sweep that archived `old` read the organisation's other idle candidates in the same
    // transaction: had it taken them, they would be archived by now.
    assert_eq!(rules.get(&recent.id).await?.status, pb::LeadStatus::New as i32);
    assert_eq!(rules.get(&held.id).await?.status, pb::LeadStatus::Qualifying as i32, "set by hand since");
    let request = pb::GetLeadRequest { org_id: "globex".into(), lead_id: elsewhere.id.clone() };
    let other = rules.leads.clone().get_lead(request).await?.into_inner();
    assert_eq!(other.status, pb::LeadStatus::New as i32, "another organisation's rules are its own");
    rules.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_links_to_its_conversation_through_the_organisations_template() -> anyhow::Result<()> {
    let rules = Rules::start(&[ServiceName::Ingest, ServiceName::Lead], 300).await?;
    let mut event = chat_event("e-1", &phone(1), "hello");
    event["conversation_id"] = json!("conv/991 a");
    rules.env.publish_interaction(ORG, &event).await?;
    let lead = rules.lead_of(ORG, &phone(1)).await;
    assert_eq!(lead.conversation_id, "conv/991 a");
    assert_eq!(lead.conversation_url, "", "no template, no link");

    let template = "https://chat.example.com/c/{conversation_id}?via=leads";
    let request = pb::UpdateLeadSettingsRequest {
        org_id: ORG.into(),
        conversation_url_template: template.into(),
        ..Default::default()
    };
    rules.leads.clone().update_lead_settings(request).await?;
    let expected = "https://chat.example.com/c/conv%2F991%20a?via=leads";
    assert_eq!(rules.get(&lead.id).await?.conversation_url, expected);
    let listed = all_leads(&mut rules.leads.clone(), ORG).await?;
    assert_eq!(listed[0].conversation_url, expected, "the list's rows link too");
    rules.stop().await
}
