//! The Leads page over gRPC: filters, keyset pages, status changes (single and bulk),
//! optimistic concurrency, export and history.

use lead::query::{LeadQuery, WordsOn};
use leads_tests::{Node, TestEnv, all_leads, eventually, pb, phone};
use platform::ServiceName;
use serde_json::json;
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};
use tonic::{Code, transport::Channel};

const DEADLINE: Duration = Duration::from_secs(30);
const ORG: &str = "acme";

type Leads = leads_proto::v1::lead_service_client::LeadServiceClient<Channel>;

struct Page {
    node: Node,
    env: TestEnv,
    client: Leads,
}

impl Page {
    async fn start() -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
        let client = node.lead().await?;
        Ok(Self { node, env, client })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.node.stop().await?;
        self.env.cleanup().await
    }

    /// Sends events through the real ingest path and waits until `count` leads exist.
    async fn ingest(&self, events: &[serde_json::Value], count: usize) -> anyhow::Result<Vec<pb::Lead>> {
        for event in events {
            self.env.publish_interaction(ORG, event).await?;
        }
        let client = self.client.clone();
        Ok(eventually(DEADLINE, "the leads", || {
            let mut client = client.clone();
            async move { all_leads(&mut client, ORG).await.ok().filter(|l| l.len() >= count) }
        })
        .await)
    }

    async fn list(&self, filter: pb::LeadFilter) -> anyhow::Result<pb::ListLeadsResponse> {
        let request =
            pb::ListLeadsRequest { org_id: ORG.into(), filter: Some(filter), page_size: 500, ..Default::default() };
        Ok(self.client.clone().list_leads(request).await?.into_inner())
    }

    /// The leads a search's words find by each plan the service chooses between (see
    /// `lead::read`): from the contacts' words and from the leads' copy of them. Both must
    /// give the same leads, also after a contact changed its name.
    async fn search_both_ways(&self, search: &str) -> anyhow::Result<[HashSet<String>; 2]> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(platform::db::service_options(&self.env.settings, ServiceName::Lead)?)
            .await?;
        let filter = pb::LeadFilter { search: search.into(), ..Default::default() };
        let request =
            pb::ListLeadsRequest { org_id: ORG.into(), filter: Some(filter), page_size: 500, ..Default::default() };
        let query = LeadQuery::parse(&request).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut found = [HashSet::new(), HashSet::new()];
        for (ids, on) in found.iter_mut().zip([WordsOn::Contacts, WordsOn::Leads]) {
            let mut sql = query.page_sql(on).map_err(|e| anyhow::anyhow!("{e}"))?;
            let leads: Vec<contracts::lead::LeadView> = sql.build_query_as().fetch_all(&pool).await?;
            ids.extend(leads.iter().map(|l| l.id.to_string()));
        }
        pool.close().await;
        Ok(found)
    }

    async fn change(
        &self,
        lead_id: &str,
        status: pb::LeadStatus,
        score: Option<i32>,
    ) -> Result<pb::Lead, tonic::Status> {
        let request = pb::ChangeStatusRequest {
            org_id: ORG.into(),
            lead_id: lead_id.into(),
            status: status as i32,
            manual_score: score,
            reason: "test".into(),
            actor: "operator-1".into(),
            ..Default::default()
        };
        Ok(self.client.clone().change_status(request).await?.into_inner())
    }
}

fn event(id: &str, n: u32, name: &str, occurred_at: &str) -> serde_json::Value {
    json!({
        "event_id": id, "occurred_at": occurred_at, "kind": "chat_message",
        "contact": { "phone": phone(n), "name": name, "email": format!("{}@example.com", id) },
        "text": format!("hello from {name}"),
    })
}

fn ids(leads: &[pb::Lead]) -> HashSet<String> {
    leads.iter().map(|l| l.id.clone()).collect()
}

fn by_name<'a>(leads: &'a [pb::Lead], name: &str) -> &'a pb::Lead {
    leads.iter().find(|l| l.contact.as_ref().is_some_and(|c| c.name == name)).expect("lead by name")
}

#[tokio::test]
async fn filters_combine() -> anyhow::Result<()> {
    let page = Page::start().await?;
    let mut reply = event("r-1", 3, "Carol Reply", "2026-11-20T10:00:00Z");
    reply["kind"] = json!("broadcast_reply");
    reply["broadcast"] = json!({ "message_id": "wamid.1", "campaign_id": "cmp-1" });
    let mut shop = event("s-1", 4, "Dan Shop", "2026-11-21T10:00:00Z");
    shop["kind"] = json!("integration");
    shop["integration"] = json!({ "name": "shopify" });
    let events = vec![
        event("a-1", 1, "Alice Chat", "2026-11-18T10:00:00Z"),
        event("b-1", 2, "Bob Chat", "2026-11-19T10:00:00Z"),
        reply,
        shop,
        event("e-1", 5, "Eve Chat", "2026-11-22T10:00:00Z"),
    ];
    let leads = page.ingest(&events, 5).await?;
    let (alice, bob, carol, dan, eve) = (
        by_name(&leads, "Alice Chat").id.clone(),
        by_name(&leads, "Bob Chat").id.clone(),
        by_name(&leads, "Carol Reply").id.clone(),
        by_name(&leads, "Dan Shop").id.clone(),
        by_name(&leads, "Eve Chat").id.clone(),
    );
    page.change(&alice, pb::LeadStatus::Qualified, Some(90)).await?;
    page.change(&bob, pb::LeadStatus::Contacted, Some(40)).await?;
    page.change(&carol, pb::LeadStatus::Lost, None).await?;
    let admin = page.env.admin_pool().await?;
    // Assignment is its own service; here the lead's agent column is set directly.
    sqlx::query("UPDATE lead.leads SET agent_id = 'agent-7' WHERE id = ANY($1::uuid[])")
        .bind(vec![alice.clone(), dan.clone()])
        .execute(&admin)
        .await?;
    sqlx::query("UPDATE lead.leads SET score = 70, score_source = 'ai' WHERE id = $1::uuid")
        .bind(&eve)
        .execute(&admin)
        .await?;
    let ts = |s: &str| {
        let at = chrono::DateTime::parse_from_rfc3339(s).expect("time");
        Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 })
    };
    let cases: Vec<(&str, pb::LeadFilter, Vec<&String>)> = vec![
        (
            "statuses",
            pb::LeadFilter { statuses: vec![pb::LeadStatus::New as i32], ..Default::default() },
            vec![&dan, &eve],
        ),
        (
            "two statuses",
            pb::LeadFilter {
                statuses: vec![pb::LeadStatus::New as i32, pb::LeadStatus::Lost as i32],
                ..Default::default()
            },
            vec![&carol, &dan, &eve],
        ),
        (
            "two agents",
            pb::LeadFilter { agent_ids: vec!["agent-7".into(), "agent-8".into()], ..Default::default() },
            vec![&alice, &dan],
        ),
        (
            "inactive",
            pb::LeadFilter { active: pb::ActiveFilter::InactiveOnly as i32, ..Default::default() },
            vec![&carol],
        ),
        (
            "active",
            pb::LeadFilter { active: pb::ActiveFilter::ActiveOnly as i32, ..Default::default() },
            vec![&alice, &bob, &dan, &eve],
        ),
        ("agent", pb::LeadFilter { agent_ids: vec!["agent-7".into()], ..Default::default() }, vec![&alice, &dan]),
        ("unassigned", pb::LeadFilter { unassigned: true, ..Default::default() }, vec![&bob, &carol, &eve]),
        (
            "score range",
            pb::LeadFilter { min_score: Some(50), max_score: Some(95), ..Default::default() },
            vec![&alice, &eve],
        ),
        (
            "manual",
            pb::LeadFilter { score_source: pb::ScoreSource::Manual as i32, ..Default::default() },
            vec![&alice, &bob],
        ),
        ("ai", pb::LeadFilter { score_source: pb::ScoreSource::Ai as i32, ..Default::default() }, vec![&eve]),
        (
            "source",
            pb::LeadFilter {
                source_kinds: vec![pb::SourceKind::BroadcastReply as i32, pb::SourceKind::Integration as i32],
                ..Default::default()
            },
            vec![&carol, &dan],
        ),
        ("campaign", pb::LeadFilter { campaign_id: "cmp-1".into(), ..Default::default() }, vec![&carol]),
        ("integration", pb::LeadFilter { integration_name: "shopify".into(), ..Default::default() }, vec![&dan]),
        (
            "last interaction",
            pb::LeadFilter {
                last_interaction: Some(pb::TimeRange {
                    from: ts("2026-11-19T00:00:00Z"),
                    to: ts("2026-11-21T00:00:00Z"),
                }),
                ..Default::default()
            },
            vec![&bob, &carol],
        ),
        ("search name", pb::LeadFilter { search: "chat".into(), ..Default::default() }, vec![&alice, &bob, &eve]),
        ("search email", pb::LeadFilter { search: "s-1@example".into(), ..Default::default() }, vec![&dan]),
        ("search phone", pb::LeadFilter { search: phone(2)[5..].to_owned(), ..Default::default() }, vec![&bob]),
        (
            "combined",
            pb::LeadFilter {
                active: pb::ActiveFilter::ActiveOnly as i32,
                agent_ids: vec!["agent-7".into()],
                min_score: Some(80),
                search: "alice".into(),
                ..Default::default()
            },
            vec![&alice],
        ),
        (
            "combined, nothing",
            pb::LeadFilter {
                statuses: vec![pb::LeadStatus::Lost as i32],
                agent_ids: vec!["agent-7".into()],
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (name, filter, expected) in cases {
        let found = page.list(filter).await?;
        let expected: HashSet<String> = expected.into_iter().cloned().collect();
        assert_eq!(ids(&found.leads), expected, "{name}");
        assert_eq!(found.total_count, expected.len() as i64, "{name}: total");
    }
    let created = page
        .list(pb::LeadFilter {
            created: Some(pb::TimeRange { from: ts("2000-01-01T00:00:00Z"), to: None }),
            ..Default::default()
        })
        .await?;
    assert_eq!(created.total_count, 5);
    // Sorting by score ascending puts unscored leads first.
    let request = pb::ListLeadsRequest {
        org_id: ORG.into(),
        sort: pb::LeadSortField::Score as i32,
        direction: pb::SortDirection::Asc as i32,
        ..Default::default()
    };
    let sorted = page.client.clone().list_leads(request).await?.into_inner();
    let scores: Vec<Option<i32>> = sorted.leads.iter().map(|l| l.score).collect();
    assert_eq!(scores, vec![None, None, Some(40), Some(70), Some(90)]);

    // Once the count deltas are folded, the totals by status and agent and by status and score
    // agree with the finer counts they are kept from, and still answer the page's totals.
    eventually(DEADLINE, "the count deltas folded", || {
        let admin = admin.clone();
        async move {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM lead.lead_count_deltas").fetch_one(&admin).await.ok()?;
            (left == 0).then_some(())
        }
    })
    .await;
    let disagreeing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT org_id, status, agent_id, sum(n) AS n FROM lead.lead_counts GROUP BY 1, 2, 3) c \
         FULL JOIN lead.lead_totals t USING (org_id, status, agent_id) WHERE c.n IS DISTINCT FROM t.n",
    )
    .fetch_one(&admin)
    .await?;
    assert_eq!(disagreeing, 0, "lead_totals follows lead_counts");
    let disagreeing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM \
         (SELECT org_id, status, score_bucket, sum(n) AS n FROM lead.lead_counts GROUP BY 1, 2, 3) c \
         FULL JOIN lead.lead_score_totals t USING (org_id, status, score_bucket) WHERE c.n IS DISTINCT FROM t.n",
    )
    .fetch_one(&admin)
    .await?;
    assert_eq!(disagreeing, 0, "lead_score_totals follows lead_counts");
    let scored = page.list(pb::LeadFilter { min_score: Some(70), ..Default::default() }).await?;
    assert_eq!((scored.total_count, scored.total_is_estimate), (2, false));
    assert_eq!(scored.leads.len(), 2);
    let agent = page.list(pb::LeadFilter { agent_ids: vec!["agent-7".into()], ..Default::default() }).await?;
    assert_eq!((agent.total_count, agent.total_is_estimate), (2, false));
    let everyone = page.list(pb::LeadFilter::default()).await?;
    assert_eq!((everyone.total_count, everyone.total_is_estimate), (5, false));
    admin.close().await;
    page.stop().await
}

#[tokio::test]
async fn page_tokens_stay_correct_while_leads_are_created() -> anyhow::Result<()> {
    let page = Page::start().await?;
    let events: Vec<_> =
        (0..60).map(|n| event(&format!("p-{n}"), n, &format!("Lead {n}"), "2026-11-20T10:00:00Z")).collect();
    let original = page.ingest(&events, 60).await?;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut n = 1000;
    loop {
        // Leads keep arriving while the operator pages through.
        page.env.publish_interaction(ORG, &event(&format!("late-{n}"), n, "Late", "2026-11-20T10:00:00Z")).await?;
        n += 1;
        let request = pb::ListLeadsRequest {
            org_id: ORG.into(),
            sort: pb::LeadSortField::Created as i32,
            page_size: 7,
            page_token: token.clone(),
            ..Default::default()
        };
        let response = page.client.clone().list_leads(request).await?.into_inner();
        seen.extend(response.leads.iter().map(|l| l.id.clone()));
        if response.next_page_token.is_empty() {
            break;
        }
        token = response.next_page_token;
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no lead repeated");
    for lead in &original {
        assert!(unique.contains(&lead.id), "no lead skipped");
    }
    // A token is bound to its sort order.
    let request = pb::ListLeadsRequest {
        org_id: ORG.into(),
        page_size: 7,
        sort: pb::LeadSortField::Created as i32,
        ..Default::default()
    };
    let first = page.client.clone().list_leads(request).await?.into_inner();
    let request = pb::ListLeadsRequest {
        org_id: ORG.into(),
        page_token: first.next_page_token,
        sort: pb::LeadSortField::Score as i32,
        ..Default::default()
    };
    let error = page.client.clone().list_leads(request).await.expect_err("token of another sort");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("page_token"));
    for (request, field) in [
        (pb::ListLeadsRequest { org_id: ORG.into(), page_size: 501, ..Default::default() }, "page_size"),
        (pb::ListLeadsRequest { org_id: ORG.into(), page_token: "zz".into(), ..Default::default() }, "page_token"),
        (pb::ListLeadsRequest { org_id: String::new(), ..Default::default() }, "org_id"),
        (
            pb::ListLeadsRequest {
                org_id: ORG.into(),
                filter: Some(pb::LeadFilter { min_score: Some(101), ..Default::default() }),
                ..Default::default()
            },
            "filter.min_score",
        ),
        (
            pb::ListLeadsRequest {
                org_id: ORG.into(),
                filter: Some(pb::LeadFilter { search: "ada ".repeat(60), ..Default::default() }),
                ..Default::default()
            },
            "filter.search",
        ),
    ] {
        let error = page.client.clone().list_leads(request).await.expect_err(field);
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().starts_with(field), "{field}: {}", error.message());
    }
    page.stop().await
}

#[tokio::test]
async fn inactive_leads_take_no_change_single_or_bulk() -> anyhow::Result<()> {
    let page = Page::start().await?;
    let events: Vec<_> =
        (0..4).map(|n| event(&format!("i-{n}"), n, &format!("Lead {n}"), "2026-11-20T10:00:00Z")).collect();
    let leads = page.ingest(&events, 4).await?;
    let converted = page.change(&leads[0].id, pb::LeadStatus::Converted, None).await?;
    assert!(!converted.active);
    let error = page.change(&leads[0].id, pb::LeadStatus::Qualified, None).await.expect_err("inactive");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(error.message().contains("inactive") && error.message().contains("CONVERTED"), "{}", error.message());
    // Still fully readable.
    let read =
        page.client.clone().get_lead(pb::GetLeadRequest { org_id: ORG.into(), lead_id: leads[0].id.clone() }).await?;
    assert_eq!(read.into_inner().status(), pb::LeadStatus::Converted);

    let unknown = uuid::Uuid::now_v7().to_string();
    let request = pb::BulkChangeStatusRequest {
        org_id: ORG.into(),
        lead_ids: vec![
            leads[0].id.clone(),
            leads[1].id.clone(),
            unknown.clone(),
            leads[2].id.clone(),
            "not-an-id".into(),
        ],
        status: pb::LeadStatus::Archived as i32,
        reason: "cleanup".into(),
        actor: "operator-2".into(),
        ..Default::default()
    };
    let results = page.client.clone().bulk_change_status(request).await?.into_inner().results;
    let outcomes: Vec<pb::BulkOutcome> = results.iter().map(leads_proto::v1::BulkResult::outcome).collect();
    assert_eq!(
        outcomes,
        [
            pb::BulkOutcome::Inactive,
            pb::BulkOutcome::Changed,
            pb::BulkOutcome::NotFound,
            pb::BulkOutcome::Changed,
            pb::BulkOutcome::NotFound
        ]
    );
    assert!(results[0].detail.contains("CONVERTED"));
    let archived =
        page.list(pb::LeadFilter { statuses: vec![pb::LeadStatus::Archived as i32], ..Default::default() }).await?;
    assert_eq!(ids(&archived.leads), HashSet::from([leads[1].id.clone(), leads[2].id.clone()]));
    let error = page.change(&unknown, pb::LeadStatus::Qualified, None).await.expect_err("unknown");
    assert_eq!(error.code(), Code::NotFound);
    let error = page.change(&leads[3].id, pb::LeadStatus::Qualified, Some(101)).await.expect_err("bad score");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("manual_score"));
    let too_many = pb::BulkChangeStatusRequest {
        org_id: ORG.into(),
        lead_ids: vec![leads[3].id.clone(); 10_001],
        status: pb::LeadStatus::Lost as i32,
        ..Default::default()
    };
    let error = page.client.clone().bulk_change_status(too_many).await.expect_err("too many");
    assert!(error.message().contains("lead_ids"));
    page.stop().await
}

#[tokio::test]
async fn expected_version_guards_against_lost_updates() -> anyhow::Result<()> {
    let page = Page::start().await?;
    let leads = page.ingest(&[event("v-1", 1, "Versioned", "2026-11-20T10:00:00Z")], 1).await?;
    let lead = &leads[0];
    let request = |status: pb::LeadStatus, version: i64| pb::ChangeStatusRequest {
        org_id: ORG.into(),
        lead_id: lead.id.clone(),
        status: status as i32,
        expected_version: Some(version),
        actor: "op".into(),
        ..Default::default()
    };
    let changed =
        page.client.clone().change_status(request(pb::LeadStatus::Qualifying, lead.version)).await?.into_inner();
    assert_eq!(changed.version, lead.version + 1);
    let error =
        page.client.clone().change_status(request(pb::LeadStatus::Qualified, lead.version)).await.expect_err("stale");
    assert_eq!(error.code(), Code::Aborted);
    let current =
        page.client.clone().get_lead(pb::GetLeadRequest { org_id: ORG.into(), lead_id: lead.id.clone() }).await?;
    assert_eq!(current.into_inner().status(), pb::LeadStatus::Qualifying, "the stale change was not applied");
    page.stop().await
}

#[tokio::test]
async fn export_matches_the_page_and_the_filters() -> anyhow::Result<()> {
    let page = Page::start().await?;
    let mut events: Vec<_> =
        (0..25).map(|n| event(&format!("x-{n}"), n, &format!("Lead {n}"), "2026-11-20T10:00:00Z")).collect();
    events.push(event("x-tricky", 99, "Doe, \"Jim\"\nJunior", "2026-11-20T10:00:00Z"));
    let leads = page.ingest(&events, 26).await?;
    let query = pb::ListLeadsRequest {
        org_id: ORG.into(),
        page_size: 10,
        sort: pb::LeadSortField::Created as i32,
        ..Default::default()
    };
    let first = page.client.clone().list_leads(query.clone()).await?.into_inner();
    let second_query = pb::ListLeadsRequest { page_token: first.next_page_token.clone(), ..query.clone() };
    let second = page.client.clone().list_leads(second_query.clone()).await?.into_inner();

    let export = |query: pb::ListLeadsRequest, scope: pb::ExportScope| {
        let mut client = page.client.clone();
        async move {
            let mut stream = client
                .export_leads(pb::ExportLeadsRequest { query: Some(query), scope: scope as i32 })
                .await?
                .into_inner();
            let mut csv = Vec::new();
            while let Some(chunk) = stream.message().await? {
                csv.extend(chunk.csv);
            }
            let mut reader = csv::Reader::from_reader(csv.as_slice());
            let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>()?;
            anyhow::Ok(rows)
        }
    };
    let rows = export(second_query, pb::ExportScope::CurrentPage).await?;
    let exported: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
    let listed: Vec<&str> = second.leads.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(exported, listed, "current page equals the listed page");

    let all = export(query.clone(), pb::ExportScope::All).await?;
    assert_eq!(all.len() as i64, first.total_count);
    let unique: HashSet<&str> = all.iter().map(|r| &r[0]).collect();
    assert_eq!(unique.len(), leads.len());
    let tricky = all.iter().find(|r| r[1].starts_with("Doe")).expect("the tricky name");
    assert_eq!(&tricky[1], "Doe, \"Jim\"\nJunior", "commas, quotes and newlines survive");
    assert_eq!(&tricky[4], "NEW");
    let filtered =
        pb::ListLeadsRequest { filter: Some(pb::LeadFilter { search: "Doe".into(), ..Default::default() }), ..query };
    assert_eq!(export(filtered, pb::ExportScope::All).await?.len(), 1);
    page.stop().await
}

#[tokio::test]
async fn history_is_one_timeline_newest_first_and_paginated() -> anyhow::Result<()> {
    let page = Page::start().await?;
    let leads = page.ingest(&[event("h-1", 1, "Historic", "2026-11-20T10:00:00Z")], 1).await?;
    let lead = leads[0].clone();
    page.env.publish_interaction(ORG, &event("h-2", 1, "Historic", "2026-11-20T11:00:00Z")).await?;
    let client = page.client.clone();
    eventually(DEADLINE, "the second interaction", || {
        let mut client = client.clone();
        let id = lead.id.clone();
        async move {
            let lead = client.get_lead(pb::GetLeadRequest { org_id: ORG.into(), lead_id: id }).await.ok()?.into_inner();
            (lead.interaction_count == 2).then_some(())
        }
    })
    .await;
    page.change(&lead.id, pb::LeadStatus::Qualified, Some(70)).await?;
    // The same status with a new score by hand: a score change, not a status change.
    page.change(&lead.id, pb::LeadStatus::Qualified, Some(80)).await?;
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let request = pb::GetLeadHistoryRequest {
            org_id: ORG.into(),
            lead_id: lead.id.clone(),
            page_size: 2,
            page_token: token.clone(),
        };
        let response = page.client.clone().get_lead_history(request).await?.into_inner();
        entries.extend(response.entries);
        if response.next_page_token.is_empty() {
            break;
        }
        token = response.next_page_token;
    }
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    for kind in ["created", "interaction", "status_changed", "score"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| **k == "interaction").count(), 2);
    let times: Vec<i64> = entries.iter().map(|e| e.at.as_ref().map_or(0, |t| t.seconds)).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    let changes: Vec<&pb::HistoryEntry> = entries.iter().filter(|e| e.kind == "status_changed").collect();
    assert_eq!(changes.len(), 1, "one status change: {changes:?}");
    assert_eq!(changes[0].actor, "operator-1");
    assert!(changes[0].summary.starts_with("new -> qualified"), "{}", changes[0].summary);
    let scores: Vec<&str> = entries.iter().filter(|e| e.kind == "score").map(|e| e.summary.as_str()).collect();
    assert_eq!(scores, ["manual score 80", "manual score 70"], "newest first");
    page.stop().await
}

#[tokio::test]
async fn history_shows_broadcasts_with_their_delivery_timeline_even_when_inactive() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Broadcast]).await?;
    let message = json!({
        "message_id": "wamid.bf-1", "occurred_at": "2026-11-24T09:00:00Z",
        "campaign": { "id": "cmp-42", "name": "Black Friday" },
        "template": { "name": "bf_offer", "language": "en_US", "category": "MARKETING" },
        "contact": { "phone": phone(7) }
    });
    env.publish(env.subjects.broadcast_messages(ORG), serde_json::to_vec(&message)?, None).await?;
    for (status, at) in
        [("read", "2026-11-24T09:05:00Z"), ("sent", "2026-11-24T09:00:01Z"), ("delivered", "2026-11-24T09:00:03Z")]
    {
        let status = json!({ "message_id": "wamid.bf-1", "status": status, "timestamp": at });
        env.publish(env.subjects.broadcast_statuses(ORG), serde_json::to_vec(&status)?, None).await?;
    }
    let mut reply = event("reply-1", 7, "Replier", "2026-11-24T10:00:00Z");
    reply["kind"] = json!("broadcast_reply");
    reply["broadcast"] = json!({ "message_id": "wamid.bf-1", "campaign_id": "cmp-42" });
    env.publish_interaction(ORG, &reply).await?;
    let client = node.lead().await?;
    let lead = eventually(DEADLINE, "the reply's lead", || {
        let mut client = client.clone();
        async move { all_leads(&mut client, ORG).await.ok()?.into_iter().next() }
    })
    .await;
    let converted = pb::ChangeStatusRequest {
        org_id: ORG.into(),
        lead_id: lead.id.clone(),
        status: pb::LeadStatus::Converted as i32,
        actor: "op".into(),
        ..Default::default()
    };
    client.clone().change_status(converted).await?;
    let entry = eventually(DEADLINE, "the broadcast in the timeline", || {
        let mut client = client.clone();
        let lead_id = lead.id.clone();
        async move {
            let request = pb::GetLeadHistoryRequest { org_id: ORG.into(), lead_id, ..Default::default() };
            let history = client.get_lead_history(request).await.ok()?.into_inner();
            assert!(!history.broadcast_history_unavailable);
            let entry = history.entries.into_iter().find(|e| e.kind == "broadcast")?;
            let details: serde_json::Value = serde_json::from_str(&entry.details_json).ok()?;
            (details["timeline"].as_array()?.len() == 3).then_some((entry, details))
        }
    })
    .await;
    let (entry, details) = entry;
    assert_eq!(details["state"], "read");
    assert_eq!(details["campaign_name"], "Black Friday");
    assert_eq!(details["template"], "bf_offer");
    let statuses: Vec<&str> =
        details["timeline"].as_array().into_iter().flatten().filter_map(|s| s["status"].as_str()).collect();
    assert_eq!(statuses, ["read", "delivered", "sent"], "the delivery timeline, newest first");
    assert!(entry.summary.contains("Black Friday"), "{}", entry.summary);
    // The broadcast history itself also answers for the inactive lead.
    let history = node
        .broadcast()
        .await?
        .get_broadcast_history(pb::GetBroadcastHistoryRequest {
            org_id: ORG.into(),
            target: Some(pb::get_broadcast_history_request::Target::LeadId(lead.id.clone())),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(history.messages.len(), 1);
    node.stop().await?;
    env.cleanup().await
}

#[tokio::test]
async fn search_matches_word_prefixes_and_phone_digits_and_follows_renames() -> anyhow::Result<()> {
    let page = Page::start().await?;
    let mut ada = event("w-1", 1, "Ada Lovelace", "2026-11-18T10:00:00Z");
    ada["contact"]["email"] = json!("ada.lovelace12@example.com");
    let events = vec![
        ada,
        event("w-2", 2, "Grace Hopper", "2026-11-19T10:00:00Z"),
        event("w-3", 3, "Adam Smith", "2026-11-20T10:00:00Z"),
    ];
    let leads = page.ingest(&events, 3).await?;
    let (ada, grace, adam) = (
        by_name(&leads, "Ada Lovelace").id.clone(),
        by_name(&leads, "Grace Hopper").id.clone(),
        by_name(&leads, "Adam Smith").id.clone(),
    );
    let grace_phone = phone(2);
    let formatted = format!("+1 ({}) {}-{}", &grace_phone[2..5], &grace_phone[5..8], &grace_phone[8..]);
    let cases: Vec<(&str, String, Vec<&String>)> = vec![
        ("a word's prefix", "ada".into(), vec![&ada, &adam]),
        ("words in order, the last a prefix", "ADA lov".into(), vec![&ada]),
        ("words out of order", "lovelace ada smith".into(), vec![]),
        ("a word of the email, split from its digits", "lovelace12".into(), vec![&ada]),
        ("inside a word is not a prefix", "velace".into(), vec![]),
        ("a run of phone digits", grace_phone[4..].to_owned(), vec![&grace]),
        ("a run whose last six digits end another phone", format!("9{}", &phone(1)[6..]), vec![]),
        ("a formatted phone number", formatted, vec![&grace]),
        ("no letter or digit filters nothing", "-- !".into(), vec![&ada, &grace, &adam]),
    ];
    for (name, search, expected) in cases {
        let listed = page.list(pb::LeadFilter { search: search.clone(), ..Default::default() }).await?;
        let expected: HashSet<String> = expected.into_iter().cloned().collect();
        assert_eq!(ids(&listed.leads), expected, "{name}: search {search:?}");
        assert_eq!(listed.total_count, expected.len() as i64, "{name}: total of {search:?}");
        if search.chars().any(char::is_alphabetic) {
            let [on_contacts, on_leads] = page.search_both_ways(&search).await?;
            assert_eq!((&on_contacts, &on_leads), (&expected, &expected), "{name}: both plans of {search:?}");
        }
    }

    // Grace's lead closes; she writes again under a new name: both her leads answer to it.
    page.change(&grace, pb::LeadStatus::Converted, None).await?;
    let mut renamed = event("w-4", 2, "Grace Brewster Hopper", "2026-11-23T10:00:00Z");
    renamed["contact"]["email"] = json!("grace@navy.example");
    let leads = page.ingest(&[renamed], 4).await?;
    let new_lead = leads.iter().find(|l| l.id != grace && l.contact.as_ref().is_some_and(|c| c.phone == grace_phone));
    let new_lead = new_lead.expect("a new lead after the converted one").id.clone();
    for search in ["brewster", "navy", "brewster hop"] {
        let listed = page.list(pb::LeadFilter { search: search.into(), ..Default::default() }).await?;
        let both = HashSet::from([grace.clone(), new_lead.clone()]);
        assert_eq!(ids(&listed.leads), both, "search {search:?}");
        let [on_contacts, on_leads] = page.search_both_ways(search).await?;
        assert_eq!((&on_contacts, &on_leads), (&both, &both), "both plans of {search:?}");
    }
    let [_, old_name_on_leads] = page.search_both_ways("grace hopper").await?;
    assert!(old_name_on_leads.is_empty(), "the leads' copy of the old name is gone: {old_name_on_leads:?}");
    page.stop().await
}

/// Seeds `count` leads of `ORG` straight into the lead schema, each with a long contact name,
/// so that exporting them takes far more than the stream's buffers hold.
async fn seed_long_leads(env: &TestEnv, count: i64) -> anyhow::Result<()> {
    let admin = env.admin_pool().await?;
    sqlx::query(
        "INSERT INTO lead.contacts (id, org_id, phone, name, profile_at) \
         SELECT md5('c:' || i)::uuid, $1, '+1415' || lpad(i::text, 7, '0'), \
                'Contact ' || i || ' ' || repeat('with a long name ', 15), now() \
         FROM generate_series(1, $2::bigint) AS g(i)",
    )
    .bind(ORG)
    .bind(count)
    .execute(&admin)
    .await?;
    sqlx::query(
        "INSERT INTO lead.leads (id, org_id, contact_id, status, source_kind, channel, first_touch_at, \
           last_interaction_at) \
         SELECT md5('l:' || i)::uuid, $1, md5('c:' || i)::uuid, 'new', 'chat_message', 'whatsapp', now(), now() \
         FROM generate_series(1, $2::bigint) AS g(i)",
    )
    .bind(ORG)
    .bind(count)
    .execute(&admin)
    .await?;
    admin.close().await;
    Ok(())
}

#[tokio::test]
async fn exports_beyond_their_pool_are_refused_while_the_page_keeps_answering() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.database.export_max_connections = 1;
    let node = env.start(&[ServiceName::Lead]).await?;
    let client = node.lead().await?;
    seed_long_leads(&env, 40_000).await?;
    let query = pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() };
    let export = |scope: pb::ExportScope| {
        let mut client = client.clone();
        let request = pb::ExportLeadsRequest { query: Some(query.clone()), scope: scope as i32 };
        async move { client.export_leads(request).await }
    };

    // Read no further than the first chunk: the export holds its connection until the rest
    // is taken or the caller goes away.
    let mut running = export(pb::ExportScope::All).await?.into_inner();
    assert!(running.message().await?.is_some_and(|chunk| chunk.rows > 0), "the first chunk");
    for scope in [pb::ExportScope::All, pb::ExportScope::CurrentPage] {
        let refused = export(scope).await.expect_err("a second export is over the limit");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{scope:?}: {}", refused.message());
        assert!(refused.message().contains("database.export_max_connections"), "{}", refused.message());
    }
    let page = client.clone().list_leads(pb::ListLeadsRequest { page_size: 10, ..query.clone() }).await?.into_inner();
    assert_eq!(page.leads.len(), 10, "the Leads page answers while the export runs");

    drop(running);
    let rows = eventually(DEADLINE, "an export once the first ended", || {
        let next = export(pb::ExportScope::CurrentPage);
        async move { next.await.ok()?.into_inner().message().await.ok()?.map(|chunk| chunk.rows) }
    })
    .await;
    assert!(rows > 0, "the export after the first answers");
    node.stop().await?;
    env.cleanup().await
}

/// The version a refusal carries in its trailing metadata.
fn version_in(status: &tonic::Status) -> Option<i64> {
    status.metadata().get(lead::error::LEAD_VERSION_KEY)?.to_str().ok()?.parse().ok()
}

async fn history_kinds(page: &Page, lead_id: &str) -> anyhow::Result<Vec<pb::HistoryEntry>> {
    let request =
        pb::GetLeadHistoryRequest { org_id: ORG.into(), lead_id: lead_id.into(), page_size: 100, ..Default::default() };
    Ok(page.client.clone().get_lead_history(request).await?.into_inner().entries)
}

#[tokio::test]
async fn two_operators_edit_one_lead_and_the_stale_one_is_told_the_current_version() -> anyhow::Result<()> {
    let page = Page::start().await?;
    let leads = page.ingest(&[event("two-1", 1, "Shared", "2026-11-20T10:00:00Z")], 1).await?;
    let opened = leads[0].clone();
    // Both operators open the lead at the same version; the first saves.
    let first = pb::ChangeStatusRequest {
        org_id: ORG.into(),
        lead_id: opened.id.clone(),
        status: pb::LeadStatus::Qualified as i32,
        manual_score: Some(70),
        expected_version: Some(opened.version),
        actor: "operator-1".into(),
        ..Default::default()
    };
    let saved = page.client.clone().change_status(first).await?.into_inner();
    assert_eq!(saved.version, opened.version + 1);

    // The second saves what they saw: refused, told where the lead is now, and nothing of theirs lands.
    let second = pb::ChangeStatusRequest {
        org_id: ORG.into(),
        lead_id: opened.id.clone(),
        status: pb::LeadStatus::Lost as i32,
        manual_score: Some(5),
        reason: "no budget".into(),
        expected_version: Some(opened.version),
        actor: "operator-2".into(),
        ..Default::default()
    };
    let refused = page.client.clone().change_status(second.clone()).await.expect_err("a stale version");
    assert_eq!(refused.code(), Code::Aborted);
    assert!(refused.message().starts_with("Someone changed this lead meanwhile: reload to see it"), "{refused:?}");
    let words = format!("is at version {}, not the expected {}", saved.version, opened.version);
    assert!(refused.message().contains(&words), "{}", refused.message());
    assert_eq!(version_in(&refused), Some(saved.version), "the current version in the trailing metadata");
    let now =
        page.client.clone().get_lead(pb::GetLeadRequest { org_id: ORG.into(), lead_id: opened.id.clone() }).await?;
    let now = now.into_inner();
    assert_eq!((now.status(), now.score, now.version), (pb::LeadStatus::Qualified, Some(70), saved.version));
    let entries = history_kinds(&page, &opened.id).await?;
    assert!(!entries.iter().any(|e| e.actor.contains("operator-2")), "the stale change left no trace: {entries:?}");

    // A score change alone is guarded the same way.
    let score_only = pb::ChangeStatusRequest {
        status: pb::LeadStatus::Unspecified as i32,
        reason: String::new(),
        manual_score: Some(10),
        ..second.clone()
    };
    let refused = page.client.clone().change_status(score_only).await.expect_err("a stale score change");
    assert_eq!((refused.code(), version_in(&refused)), (Code::Aborted, Some(saved.version)));

    // Reloaded, the second operator's change goes through.
    let retried = pb::ChangeStatusRequest { expected_version: Some(saved.version), ..second };
    let lost = page.client.clone().change_status(retried).await?.into_inner();
    assert_eq!((lost.status(), lost.score, lost.version), (pb::LeadStatus::Lost, Some(5), saved.version + 1));
    page.stop().await
}

#[tokio::test]
async fn a_score_is_set_and_handed_back_without_restating_the_status() -> anyhow::Result<()> {
    let page = Page::start().await?;
    let leads = page.ingest(&[event("sc-1", 1, "Scored", "2026-11-20T10:00:00Z")], 1).await?;
    let lead = leads[0].clone();
    let qualifying = page.change(&lead.id, pb::LeadStatus::Qualifying, None).await?;
    let score = |manual_score: Option<i32>, clear_manual_score: bool| pb::ChangeStatusRequest {
        org_id: ORG.into(),
        lead_id: lead.id.clone(),
        manual_score,
        clear_manual_score,
        actor: "operator-1".into(),
        ..Default::default()
    };

    let set = page.client.clone().change_status(score(Some(85), false)).await?.into_inner();
    assert_eq!(set.status(), pb::LeadStatus::Qualifying, "the status stays");
    assert_eq!((set.score, set.score_source()), (Some(85), pb::ScoreSource::Manual));
    assert_eq!(set.version, qualifying.version + 1);
    let cleared = page.client.clone().change_status(score(None, true)).await?.into_inner();
    assert_eq!(cleared.status(), pb::LeadStatus::Qualifying, "the status stays");
    assert_eq!(cleared.score, None, "handed back to AI, unscored until its next score");
    assert_eq!(cleared.version, set.version + 1);

    let entries = history_kinds(&page, &lead.id).await?;
    let scores: Vec<&str> = entries.iter().filter(|e| e.kind == "score").map(|e| e.summary.as_str()).collect();
    assert_eq!(scores, ["manual score cleared, back to ai", "manual score 85"], "newest first");
    let moves: Vec<&str> = entries.iter().filter(|e| e.kind == "status_changed").map(|e| e.summary.as_str()).collect();
    assert_eq!(moves.len(), 1, "only the move to qualifying: {moves:?}");
    assert!(moves[0].starts_with("new -> qualifying"), "{moves:?}");

    // Neither a status nor a score: nothing to do, said naming the status.
    let error = page.client.clone().change_status(score(None, false)).await.expect_err("nothing asked");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().starts_with("status:"), "{}", error.message());
    // An inactive lead refuses a score by hand as it refuses a status.
    page.change(&lead.id, pb::LeadStatus::Lost, None).await?;
    let error = page.client.clone().change_status(score(Some(40), false)).await.expect_err("inactive");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(error.message().contains("LOST"), "{}", error.message());
    page.stop().await
}

#[tokio::test]
async fn a_bulk_change_leaves_the_stale_lead_and_changes_the_others() -> anyhow::Result<()> {
    let page = Page::start().await?;
    let events: Vec<_> =
        (0..3).map(|n| event(&format!("bv-{n}"), n, &format!("Bulk {n}"), "2026-11-20T10:00:00Z")).collect();
    let leads = page.ingest(&events, 3).await?;
    let seen: Vec<(String, i64)> = leads.iter().map(|l| (l.id.clone(), l.version)).collect();
    // Someone else moves the middle lead after the list was read.
    let moved = page.change(&seen[1].0, pb::LeadStatus::Contacted, None).await?;

    let request = pb::BulkChangeStatusRequest {
        org_id: ORG.into(),
        lead_ids: seen.iter().map(|(id, _)| id.clone()).collect(),
        status: pb::LeadStatus::Archived as i32,
        reason: "cleanup".into(),
        actor: "operator-2".into(),
        expected_versions: seen.iter().cloned().collect(),
    };
    let results = page.client.clone().bulk_change_status(request.clone()).await?.into_inner().results;
    let outcomes: Vec<pb::BulkOutcome> = results.iter().map(pb::BulkResult::outcome).collect();
    assert_eq!(
        outcomes,
        [pb::BulkOutcome::Changed, pb::BulkOutcome::VersionMismatch, pb::BulkOutcome::Changed],
        "{results:?}"
    );
    assert_eq!(results[1].lead_version, moved.version, "the stale lead's current version");
    assert!(results[1].detail.contains(&format!("version {}", moved.version)), "{}", results[1].detail);
    assert_eq!(results[0].lead_version, seen[0].1 + 1, "a changed lead's new version");
    for (n, status) in [(0, pb::LeadStatus::Archived), (1, pb::LeadStatus::Contacted), (2, pb::LeadStatus::Archived)] {
        let request = pb::GetLeadRequest { org_id: ORG.into(), lead_id: seen[n].0.clone() };
        let lead = page.client.clone().get_lead(request).await?.into_inner();
        assert_eq!(lead.status(), status, "lead {n}");
    }

    // A version for a lead the request does not name is refused, not ignored.
    let stray = pb::BulkChangeStatusRequest {
        lead_ids: vec![seen[1].0.clone()],
        expected_versions: [(seen[0].0.clone(), seen[0].1)].into(),
        ..request
    };
    let error = page.client.clone().bulk_change_status(stray).await.expect_err("a stray version");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().starts_with("expected_versions:"), "{}", error.message());
    page.stop().await
}

#[tokio::test]
async fn a_total_beyond_the_exact_limit_is_the_planners_estimate_and_says_so() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.lead.exact_total_up_to = 3;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead]).await?;
    let client = node.lead().await?;
    let page = Page { node, env, client };
    let events: Vec<serde_json::Value> =
        (0..6).map(|n| leads_tests::chat_event(&format!("e-{n}"), &phone(n), "hello")).collect();
    page.ingest(&events, 6).await?;

    // A search matching all six: counted up to three, then estimated (at least four), and said so.
    let broad = page.list(pb::LeadFilter { search: "ada".into(), ..Default::default() }).await?;
    assert_eq!(broad.leads.len(), 6);
    assert!(broad.total_is_estimate, "{broad:?}");
    assert!(broad.total_count >= 4, "{}", broad.total_count);
    // A search matching one is counted exactly.
    let narrow = page.list(pb::LeadFilter { search: phone(2)[1..].to_owned(), ..Default::default() }).await?;
    assert_eq!((narrow.total_count, narrow.total_is_estimate), (1, false), "{narrow:?}");
    // A filter the maintained counts answer stays exact, however many match.
    let new = page.list(pb::LeadFilter { statuses: vec![pb::LeadStatus::New as i32], ..Default::default() }).await?;
    assert_eq!((new.total_count, new.total_is_estimate), (6, false));
    page.stop().await
}

#[tokio::test]
async fn a_count_that_outlasts_its_budget_gives_way_to_the_estimate_and_the_page_is_whole() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.lead.exact_total_up_to = 1_000_000;
    env.settings.lead.exact_total_budget_ms = 1;
    // Counting is started whatever the planner prices it: the budget is what stops it here.
    env.settings.lead.exact_total_max_cost = f64::MAX;
    let node = env.start(&[ServiceName::Lead]).await?;
    let client = node.lead().await?;
    let page = Page { node, env, client };
    // Enough leads that counting them cannot finish within a millisecond.
    let admin = page.env.admin_pool().await?;
    let leads = 60_000;
    sqlx::query(
        "INSERT INTO lead.contacts (id, org_id, phone, name, profile_at) \
         SELECT md5('c' || i)::uuid, $1, '+1415' || lpad(i::text, 7, '0'), 'Ada Lovelace', now() \
         FROM generate_series(1, $2) i",
    )
    .bind(ORG)
    .bind(leads)
    .execute(&admin)
    .await?;
    sqlx::query(
        "INSERT INTO lead.leads (id, org_id, contact_id, status, source_kind, channel, first_touch_at, \
           last_interaction_at, created_at) \
         SELECT md5('l' || i)::uuid, $1, md5('c' || i)::uuid, 'new', 'chat_message', 'whatsapp', now(), \
           now() - i * interval '1 second', now() - i * interval '1 second' FROM generate_series(1, $2) i",
    )
    .bind(ORG)
    .bind(leads)
    .execute(&admin)
    .await?;
    sqlx::raw_sql("ANALYZE lead.leads; ANALYZE lead.contacts").execute(&admin).await?;
    admin.close().await;

    // A time range is no dimension of the maintained counts: its total is counted from the rows.
    let filter = pb::LeadFilter {
        created: Some(pb::TimeRange {
            from: Some(prost_types::Timestamp { seconds: 946_684_800, nanos: 0 }),
            to: None,
        }),
        ..Default::default()
    };
    let cut_short = page.list(filter.clone()).await?;
    assert!(cut_short.total_is_estimate, "a count over its budget is an estimate: {}", cut_short.total_count);
    assert!(cut_short.total_count > 0, "the estimate is the planner's, not zero");
    assert_eq!(cut_short.leads.len(), 500, "the page itself is whole");
    assert!(!cut_short.next_page_token.is_empty());

    // With time enough, the same total is exact.
    let mut env = page.env.clone();
    env.settings.lead.exact_total_budget_ms = 60_000;
    page.node.stop().await?;
    let node = env.start(&[ServiceName::Lead]).await?;
    let client = node.lead().await?;
    let page = Page { node, env, client };
    let counted = page.list(filter.clone()).await?;
    assert_eq!((counted.total_count, counted.total_is_estimate), (leads, false));

    // The total is the same whether it is counted in the page's own transaction (a pool of one
    // connection) or beside the page on an idle connection sharing its snapshot.
    let request = pb::ListLeadsRequest { org_id: ORG.into(), filter: Some(filter), ..Default::default() };
    let query = LeadQuery::parse(&request).map_err(|e| anyhow::anyhow!("{e}"))?;
    let options = platform::db::service_options(&page.env.settings, ServiceName::Lead)?;
    for connections in [1, 2] {
        let pool =
            sqlx::postgres::PgPoolOptions::new().max_connections(connections).connect_with(options.clone()).await?;
        let idle: Vec<_> = futures::future::try_join_all((0..connections).map(|_| pool.acquire())).await?;
        drop(idle);
        let jit: String = sqlx::query_scalar("SHOW jit").fetch_one(&pool).await?;
        assert_eq!(jit, "off", "a service's statements are not compiled");
        // A count priced above the most it may cost is not started, however long it may take.
        for (budget_ms, max_count_cost, exact) in [(60_000, f64::MAX, true), (1, f64::MAX, false), (60_000, 1.0, false)]
        {
            let totals =
                lead::read::Totals { exact_up_to: 1_000_000, budget: Duration::from_millis(budget_ms), max_count_cost };
            let listed =
                lead::read::list_leads(&pool, &query, Some(totals)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let total = listed.total.expect("a total was asked for");
            let case = format!(
                "{connections} connection(s), a budget of {budget_ms} ms, at most {max_count_cost} to count: {total:?}"
            );
            assert_eq!(total.estimated, !exact, "{case}");
            assert!(if exact { total.count == leads } else { total.count > 0 }, "{case}");
            assert_eq!(listed.leads.len() as i64, query.page_size, "{case}");
        }
        pool.close().await;
    }
    page.stop().await
}

#[tokio::test]
async fn an_export_beyond_its_first_chunk_has_every_lead_once_in_the_pages_order() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start(&[ServiceName::Lead]).await?;
    let mut client = node.lead().await?;
    // Every lead last touched at the same instant: the order rests on the ids after the key.
    seed_long_leads(&env, 5_001).await?;
    let admin = env.admin_pool().await?;
    sqlx::query("UPDATE lead.leads SET score = (get_byte(decode(md5(id::text), 'hex'), 0) % 101) WHERE org_id = $1")
        .bind(ORG)
        .execute(&admin)
        .await?;
    // Cells that need quoting, neutralising or formatting, on leads at both ends of the order:
    // each is in the first chunk of one export and in the rest of another.
    sqlx::query(
        "UPDATE lead.leads SET agent_id = '-agent', campaign_id = '@campaign', score_source = 'manual', \
           attributes = '{\"plan\": \"=SUM(A1)\", \"b\": \"x\\\"y\", \"a\": \"café\"}', \
           score_reasons = '[\"=HYPERLINK(1)\", \"intent, strong\"]' \
         WHERE id IN ((SELECT id FROM lead.leads ORDER BY id LIMIT 3) UNION ALL (SELECT id FROM lead.leads ORDER BY id DESC LIMIT 3))",
    )
    .execute(&admin)
    .await?;
    sqlx::query(
        "UPDATE lead.contacts SET name = E'=Doe, \"Jim\"\\nJunior', email = '+cmd@example.com' \
         WHERE id IN (SELECT contact_id FROM lead.leads WHERE agent_id = '-agent')",
    )
    .execute(&admin)
    .await?;
    admin.close().await;
    let mut rows_of: Vec<HashMap<String, csv::StringRecord>> = Vec::new();
    for (sort, direction) in [
        (pb::LeadSortField::LastInteraction, pb::SortDirection::Desc),
        (pb::LeadSortField::Score, pb::SortDirection::Asc),
        (pb::LeadSortField::Created, pb::SortDirection::Asc),
    ] {
        let query = pb::ListLeadsRequest {
            org_id: ORG.into(),
            sort: sort as i32,
            direction: direction as i32,
            page_size: 500,
            skip_total: true,
            ..Default::default()
        };
        let mut paged = Vec::new();
        let mut token = String::new();
        loop {
            let request = pb::ListLeadsRequest { page_token: token.clone(), ..query.clone() };
            let page = client.list_leads(request).await?.into_inner();
            paged.extend(page.leads.into_iter().map(|l| l.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let request = pb::ExportLeadsRequest { query: Some(query.clone()), scope: pb::ExportScope::All as i32 };
        let mut stream = client.export_leads(request).await?.into_inner();
        let mut csv = Vec::new();
        while let Some(chunk) = stream.message().await? {
            csv.extend(chunk.csv);
        }
        let records: Vec<csv::StringRecord> =
            csv::Reader::from_reader(csv.as_slice()).records().collect::<Result<_, _>>()?;
        let exported: Vec<String> = records.iter().map(|r| r[0].to_owned()).collect();
        rows_of.push(records.into_iter().map(|r| (r[0].to_owned(), r)).collect());
        assert_eq!(exported.len(), 5_001, "{sort:?}");
        assert_eq!(exported.iter().collect::<HashSet<_>>().len(), 5_001, "{sort:?}: each lead once");
        assert_eq!(exported, paged, "{sort:?} {direction:?}: the export follows the page's order");
    }
    // The first chunk is written by the service, the rest by Postgres: a lead reads the same in
    // both.
    let (descending, ascending) = (&rows_of[0], &rows_of[2]);
    let tricky: Vec<&csv::StringRecord> = descending.values().filter(|r| &r[7] == "'-agent").collect();
    assert_eq!(tricky.len(), 6, "the tricky leads, neutralised");
    for record in tricky {
        assert_eq!(Some(record), ascending.get(&record[0]), "lead {} in both exports", &record[0]);
        assert_eq!(&record[1], "'=Doe, \"Jim\"\nJunior");
        assert_eq!(&record[3], "'+cmd@example.com");
        assert_eq!(&record[9], "'@campaign");
        assert_eq!(&record[14], r#"{"a":"café","b":"x\"y","plan":"=SUM(A1)"}"#);
        assert_eq!(&record[15], "'=HYPERLINK(1); intent, strong");
    }
    node.stop().await?;
    env.cleanup().await
}
