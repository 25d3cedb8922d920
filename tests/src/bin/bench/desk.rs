//! The `desk` section: what an operator's desk does besides the Leads page. AssignLead,
//! BulkAssign, ChangeStatus and CreateFollowUp through gRPC to the in-process services (with
//! the production connection pools), each beside a raw baseline that writes the same rows with
//! the same commits into copies of the services' own tables; each again, and its baseline, paced
//! at 200 calls/s, open loop; the lead service's part of the calls that cross services, called directly; and
//! the scheduler bringing follow-ups due.

use super::report::{CpuSpent, Stats, Target, loadavg, micros, ms, progress, rate, stats, thousands};
use futures::{FutureExt, StreamExt, future::BoxFuture};
use leads_tests::{desk::Desk, eventually, pb};
use platform::{ServiceName, settings::ExposeSecret};
use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};
use uuid::Uuid;

const ORG: &str = "desk-org";
/// Concurrent callers, as a busy desk of operators would be; the raw baselines run as many.
const CALLERS: usize = 8;
/// Leads one BulkAssign names: an operator's selection on the Leads page.
const BULK_LEADS: usize = 10;
/// Agents the leads are spread over, so that no agent's open leads grow past what a desk has.
const AGENTS: usize = 20;
/// The agent the one bulk assignment of every lead goes to, which no lead has before.
const ALL_LEADS_AGENT: &str = "agent-all";
/// The paced runs: calls started on this schedule whether or not the earlier ones are done.
const PACED_RATE: u32 = 200;
const PACED_FOR: Duration = Duration::from_secs(10);
/// The lead service's part of a call, called directly at the same rate (on other leads).
const HOP_PACED_FOR: Duration = Duration::from_secs(5);
/// The goal: each call at least this fraction of its raw baseline's rate...
const RATIO_TARGET: f64 = 0.5;
/// ...and its p99 under this at `PACED_RATE`.
const P99_TARGET: Duration = Duration::from_millis(20);
/// Calls made one at a time, nothing else running, for what each part of a call costs alone.
const ONE_AT_A_TIME: usize = 200;
/// How long leftovers of a run may take to leave the outboxes before the next run starts.
const SETTLE_WITHIN: Duration = Duration::from_secs(15);

pub struct DeskOptions {
    /// Leads created (through ingest) before the measurements.
    pub leads: u32,
    /// Calls of AssignLead, ChangeStatus and CreateFollowUp each in the closed-loop runs
    /// (BulkAssign makes a tenth as many, of `BULK_LEADS` leads each).
    pub requests: usize,
}

/// The section, and its targets for the report's table of targets.
pub async fn run_with_targets(options: &DeskOptions) -> anyhow::Result<(String, Vec<Target>)> {
    // Before the services start: what the machine was doing before this section.
    let load = loadavg();
    let env = super::production_env().await?;
    let desk =
        Desk::start_in(env, &[ServiceName::Ingest, ServiceName::Lead, ServiceName::Assignment, ServiceName::FollowUp])
            .await?;
    let result = run_in(&desk, options, load).await;
    desk.stop().await?;
    result
}

/// The four calls of the goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    AssignLead,
    BulkAssign,
    ChangeStatus,
    CreateFollowUp,
}

impl Call {
    /// In the order they run: the follow-ups come last, on leads the assignments gave agents.
    const ALL: [Call; 4] = [Call::AssignLead, Call::BulkAssign, Call::ChangeStatus, Call::CreateFollowUp];

    fn name(self) -> String {
        match self {
            Call::AssignLead => "AssignLead".into(),
            Call::BulkAssign => format!("BulkAssign of {BULK_LEADS}"),
            Call::ChangeStatus => "ChangeStatus".into(),
            Call::CreateFollowUp => "CreateFollowUp".into(),
        }
    }

    /// The commits one call makes before it answers, in order, by the services that make them.
    fn commits(self) -> &'static str {
        match self {
            Call::AssignLead | Call::BulkAssign => "2: lead, then assignment",
            Call::ChangeStatus => "1: lead",
            Call::CreateFollowUp => "2: lead, then followup",
        }
    }

    /// The rows one call writes (and its raw baseline too), per lead where it names several.
    fn rows(self) -> &'static str {
        match self {
            Call::AssignLead | Call::BulkAssign => {
                "lead: the lead locked and updated (2 `lead_count_deltas` by trigger), 1 `assignment_changes`, \
                 1 `outbox` (1 a call: a BulkAssign's events leave as one `assignments_applied`); assignment: 1 `assignments`, 1 `lead_agents` upserted with its untouched clock \
                 (`agent_load_deltas` by trigger), the agent's `last_assigned_at` (1 `agents` row per call)"
            }
            Call::ChangeStatus => {
                "lead: the lead locked and updated (2 `lead_count_deltas` by trigger), 1 `status_changes`, 1 `outbox`"
            }
            Call::CreateFollowUp => {
                "lead: the lead locked and its version bumped, 1 `follow_up_entries`, 1 `outbox`; \
                 followup: 1 `lead_states` upserted, 1 `follow_ups`"
            }
        }
    }

    /// What the call does on the way that its baseline does not. Both read the lead with its
    /// contact for the event (the baseline inside its outbox insert).
    fn reads(self) -> &'static str {
        match self {
            Call::AssignLead | Call::BulkAssign => {
                "whether the agent is known and active, read first by the assignment service"
            }
            Call::ChangeStatus => "nothing but the request's checks: the answer is the lead read for the event",
            Call::CreateFollowUp => {
                "GetLead and GetAgent first; in the lead's transaction the organisation's status rules read \
                 with the lock, and the follow-up looked up by id in the insert"
            }
        }
    }

    /// The calls a service makes to another on the way, called directly beside the whole call.
    fn hops(self) -> &'static [Hop] {
        match self {
            Call::AssignLead => &[Hop::AssignLeads],
            Call::BulkAssign => &[Hop::AssignLeadsBulk],
            Call::ChangeStatus => &[],
            Call::CreateFollowUp => &[Hop::GetLead, Hop::GetAgent, Hop::OpenFollowUp],
        }
    }

    /// The service a call goes to, which calls the others.
    fn outer(self) -> &'static str {
        match self {
            Call::AssignLead | Call::BulkAssign => "assignment",
            Call::ChangeStatus => "lead",
            Call::CreateFollowUp => "followup",
        }
    }

    fn closed_calls(self, requests: usize) -> usize {
        match self {
            Call::BulkAssign => (requests / BULK_LEADS).max(CALLERS * 2),
            _ => requests,
        }
    }
}

/// A call one service makes to another inside a desk call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    AssignLeads,
    AssignLeadsBulk,
    GetLead,
    GetAgent,
    OpenFollowUp,
}

impl Hop {
    fn name(self) -> String {
        match self {
            Hop::AssignLeads => "lead AssignLeads, 1 lead".into(),
            Hop::AssignLeadsBulk => format!("lead AssignLeads, {BULK_LEADS} leads"),
            Hop::GetLead => "lead GetLead".into(),
            Hop::GetAgent => "assignment GetAgent".into(),
            Hop::OpenFollowUp => "lead OpenFollowUp".into(),
        }
    }
}

/// Which run of leads a call takes its next ones from: each kind of call walks the leads on
/// its own, so that a run works on leads the run before it of that kind did not touch, and the
/// follow-ups go to leads the assignments gave an agent.
#[derive(Debug, Clone, Copy)]
enum Lane {
    Assign = 0,
    Status = 1,
    FollowUp = 2,
}

/// Hands out the leads, and remembers what each was given, so that every assignment and status
/// change really changes its lead (an unchanged one writes nothing).
struct Picker {
    ids: Vec<Uuid>,
    lanes: [AtomicUsize; 3],
    /// 0 for none, else the index of the agent plus one.
    agent_of: Vec<AtomicUsize>,
    status_moves: Vec<AtomicUsize>,
}

fn agent_name(index: usize) -> String {
    format!("agent-{index:02}")
}

impl Picker {
    fn new(ids: Vec<Uuid>) -> Self {
        let agent_of = ids.iter().map(|_| AtomicUsize::new(0)).collect();
        let status_moves = ids.iter().map(|_| AtomicUsize::new(0)).collect();
        Self { ids, lanes: Default::default(), agent_of, status_moves }
    }

    fn take(&self, lane: Lane, count: usize) -> Vec<usize> {
        let first = self.lanes[lane as usize].fetch_add(count, Ordering::Relaxed);
        (first..first + count).map(|n| n % self.ids.len()).collect()
    }

    fn id(&self, lead: usize) -> Uuid {
        self.ids[lead]
    }

    /// An agent none of `leads` has (the call's own in turn, or the next free one), now theirs.
    fn assign(&self, call: usize, leads: &[usize]) -> String {
        let mut agent = call % AGENTS;
        while leads.iter().any(|&lead| self.agent_of[lead].load(Ordering::Relaxed) == agent + 1) {
            agent = (agent + 1) % AGENTS;
        }
        for &lead in leads {
            self.agent_of[lead].store(agent + 1, Ordering::Relaxed);
        }
        agent_name(agent)
    }

    fn agent_of(&self, lead: usize) -> Option<String> {
        self.agent_of[lead].load(Ordering::Relaxed).checked_sub(1).map(agent_name)
    }

    /// Contacted, then Qualifying, then Contacted again: a move each time (leads start New).
    fn next_status(&self, lead: usize) -> pb::LeadStatus {
        match self.status_moves[lead].fetch_add(1, Ordering::Relaxed) % 2 {
            0 => pb::LeadStatus::Contacted,
            _ => pb::LeadStatus::Qualifying,
        }
    }
}

fn status_column(status: pb::LeadStatus) -> &'static str {
    match status {
        pb::LeadStatus::Contacted => "contacted",
        _ => "qualifying",
    }
}

/// Whole seconds, as requests carry them.
fn whole_seconds(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

type CallFuture = BoxFuture<'static, anyhow::Result<()>>;
type LeadClient = pb::lead_service_client::LeadServiceClient<tonic::transport::Channel>;
type AssignmentClient = pb::assignment_service_client::AssignmentServiceClient<tonic::transport::Channel>;
type FollowUpClient = pb::follow_up_service_client::FollowUpServiceClient<tonic::transport::Channel>;

/// The calls, made through the services.
struct Services {
    lead: LeadClient,
    assignment: AssignmentClient,
    follow_up: FollowUpClient,
    picker: Picker,
}

fn all_changed(results: impl IntoIterator<Item = i32>) -> anyhow::Result<()> {
    let unchanged = results.into_iter().filter(|outcome| *outcome != pb::BulkOutcome::Changed as i32).count();
    anyhow::ensure!(unchanged == 0, "{unchanged} leads left unchanged by an assignment meant to change them");
    Ok(())
}

impl Services {
    fn call(&self, call: Call, n: usize, due: chrono::DateTime<chrono::Utc>) -> CallFuture {
        match call {
            Call::AssignLead => {
                let leads = self.picker.take(Lane::Assign, 1);
                let request = pb::AssignLeadRequest {
                    org_id: ORG.into(),
                    lead_id: self.picker.id(leads[0]).to_string(),
                    agent_id: self.picker.assign(n, &leads),
                    actor: "bench".into(),
                    ..Default::default()
                };
                let mut client = self.assignment.clone();
                async move {
                    let answer = client.assign_lead(request).await?.into_inner();
                    anyhow::ensure!(answer.agent_id != answer.previous_agent_id, "the lead already had its agent");
                    Ok(())
                }
                .boxed()
            }
            Call::BulkAssign => {
                let leads = self.picker.take(Lane::Assign, BULK_LEADS);
                let request = pb::BulkAssignRequest {
                    org_id: ORG.into(),
                    lead_ids: leads.iter().map(|&lead| self.picker.id(lead).to_string()).collect(),
                    agent_id: self.picker.assign(n, &leads),
                    actor: "bench".into(),
                    ..Default::default()
                };
                let mut client = self.assignment.clone();
                async move {
                    let answer = client.bulk_assign(request).await?.into_inner();
                    all_changed(answer.results.iter().map(|r| r.outcome))
                }
                .boxed()
            }
            Call::ChangeStatus => {
                let lead = self.picker.take(Lane::Status, 1)[0];
                let status = self.picker.next_status(lead);
                let request = pb::ChangeStatusRequest {
                    org_id: ORG.into(),
                    lead_id: self.picker.id(lead).to_string(),
                    status: status as i32,
                    actor: "bench".into(),
                    ..Default::default()
                };
                let mut client = self.lead.clone();
                async move {
                    let lead = client.change_status(request).await?.into_inner();
                    anyhow::ensure!(lead.status == status as i32, "the lead is not at the status asked for");
                    Ok(())
                }
                .boxed()
            }
            Call::CreateFollowUp => {
                let lead = self.picker.take(Lane::FollowUp, 1)[0];
                let request = pb::CreateFollowUpRequest {
                    org_id: ORG.into(),
                    lead_id: self.picker.id(lead).to_string(),
                    due_at: Some(prost_types::Timestamp { seconds: due.timestamp(), nanos: 0 }),
                    note: format!("call back {n}"),
                    actor: "bench".into(),
                    ..Default::default()
                };
                let mut client = self.follow_up.clone();
                async move {
                    client.create_follow_up(request).await?;
                    Ok(())
                }
                .boxed()
            }
        }
    }

    /// The inner call as the outer service makes it, with the same arguments, on other leads.
    fn hop(&self, hop: Hop, n: usize, due: chrono::DateTime<chrono::Utc>) -> CallFuture {
        match hop {
            Hop::AssignLeads | Hop::AssignLeadsBulk => {
                let count = if hop == Hop::AssignLeads { 1 } else { BULK_LEADS };
                let leads = self.picker.take(Lane::Assign, count);
                let request = pb::AssignLeadsRequest {
                    org_id: ORG.into(),
                    lead_ids: leads.iter().map(|&lead| self.picker.id(lead).to_string()).collect(),
                    agent_id: self.picker.assign(n, &leads),
                    actor: "bench".into(),
                    ..Default::default()
                };
                let mut client = self.lead.clone();
                async move {
                    let answer = client.assign_leads(request).await?.into_inner();
                    all_changed(answer.results.iter().map(|r| r.outcome))
                }
                .boxed()
            }
            Hop::GetLead => {
                let lead = self.picker.take(Lane::FollowUp, 1)[0];
                let request = pb::GetLeadRequest { org_id: ORG.into(), lead_id: self.picker.id(lead).to_string() };
                let mut client = self.lead.clone();
                async move {
                    client.get_lead(request).await?;
                    Ok(())
                }
                .boxed()
            }
            Hop::GetAgent => {
                let lead = self.picker.take(Lane::FollowUp, 1)[0];
                let agent_id = self.picker.agent_of(lead).unwrap_or_else(|| agent_name(n % AGENTS));
                let request = pb::GetAgentRequest { org_id: ORG.into(), agent_id };
                let mut client = self.assignment.clone();
                async move {
                    client.get_agent(request).await?;
                    Ok(())
                }
                .boxed()
            }
            Hop::OpenFollowUp => {
                let lead = self.picker.take(Lane::FollowUp, 1)[0];
                let request = pb::OpenFollowUpRequest {
                    org_id: ORG.into(),
                    lead_id: self.picker.id(lead).to_string(),
                    follow_up_id: Uuid::now_v7().to_string(),
                    due_at: Some(prost_types::Timestamp { seconds: due.timestamp(), nanos: 0 }),
                    note: format!("call back {n}"),
                    // As the follow-up service names it: the lead's agent, checked active.
                    agent_id: self.picker.agent_of(lead).unwrap_or_default(),
                    actor: "bench".into(),
                    ..Default::default()
                };
                let mut client = self.lead.clone();
                async move {
                    client.open_follow_up(request).await?;
                    Ok(())
                }
                .boxed()
            }
        }
    }
}

/// The services' tables the desk calls write, by schema, each after the tables it refers to.
/// The raw baselines write copies of them in `raw_<schema>`: the same columns, indexes, data,
/// foreign keys and triggers, so that a raw row costs Postgres what the service's row does.
const MIRRORED: [(&str, &[&str]); 3] = [
    (
        "lead",
        &[
            "contacts",
            "leads",
            "lead_count_deltas",
            "assignment_changes",
            "status_changes",
            "follow_up_entries",
            "outbox",
        ],
    ),
    ("assignment", &["agents", "agent_loads", "agent_load_deltas", "assignments", "lead_agents"]),
    ("followup", &["lead_states", "follow_ups"]),
];

fn raw_schema(schema: &str) -> String {
    format!("raw_{schema}")
}

async fn execute(admin: &sqlx::PgPool, statement: String) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
        .execute(admin)
        .await
        .map_err(|error| anyhow::anyhow!("{error}: {statement}"))?;
    Ok(())
}

/// A trigger function of `schema` made again in its raw copy, finding its tables there.
fn mirrored_function(schema: &str, definition: &str) -> anyhow::Result<String> {
    let raw = raw_schema(schema);
    let (header, body) =
        definition.split_once("AS $").ok_or_else(|| anyhow::anyhow!("no body in function: {definition}"))?;
    let header = header
        .replacen(&format!("FUNCTION {schema}."), &format!("FUNCTION {raw}."), 1)
        .replace(&format!("search_path TO '{schema}'"), &format!("search_path TO '{raw}'"))
        .replace(&format!("search_path TO {schema}\n"), &format!("search_path TO {raw}\n"));
    // A function that found its tables otherwise would write the services' own rows.
    let finds_copies =
        header.contains(&format!("search_path TO '{raw}'")) || header.contains(&format!("search_path TO {raw}\n"));
    anyhow::ensure!(
        header.contains(&format!("FUNCTION {raw}.")) && finds_copies,
        "cannot point this trigger function at the raw copies: {definition}"
    );
    Ok(format!("{header}AS ${body}"))
}

/// Copies `MIRRORED` into the raw schemas, and gathers statistics on both sides alike.
async fn mirror_tables(admin: &sqlx::PgPool) -> anyhow::Result<()> {
    for (schema, tables) in MIRRORED {
        let raw = raw_schema(schema);
        execute(admin, format!("CREATE SCHEMA {raw}")).await?;
        for table in tables {
            execute(admin, format!("CREATE TABLE {raw}.{table} (LIKE {schema}.{table} INCLUDING ALL)")).await?;
            let columns: String = sqlx::query_scalar(
                "SELECT string_agg(quote_ident(column_name::text), ', ' ORDER BY ordinal_position) \
                 FROM information_schema.columns \
                 WHERE table_schema = $1 AND table_name = $2 AND is_generated = 'NEVER'",
            )
            .bind(schema)
            .bind(table)
            .fetch_one(admin)
            .await?;
            execute(
                admin,
                format!(
                    "INSERT INTO {raw}.{table} ({columns}) OVERRIDING SYSTEM VALUE SELECT {columns} FROM {schema}.{table}"
                ),
            )
            .await?;
        }
    }
    // Keys and triggers once every copy is filled: the copies were not written through them.
    for (schema, tables) in MIRRORED {
        let raw = raw_schema(schema);
        for table in tables {
            let qualified = format!("{schema}.{table}");
            let keys: Vec<(String, String)> = sqlx::query_as(
                "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE contype = 'f' AND conrelid = $1::regclass",
            )
            .bind(&qualified)
            .fetch_all(admin)
            .await?;
            for (name, definition) in keys {
                let definition = definition.replace(&format!("REFERENCES {schema}."), &format!("REFERENCES {raw}."));
                execute(admin, format!("ALTER TABLE {raw}.{table} ADD CONSTRAINT {name} {definition}")).await?;
            }
            let triggers: Vec<(String, String)> = sqlx::query_as(
                "SELECT pg_get_triggerdef(oid), pg_get_functiondef(tgfoid) FROM pg_trigger \
                 WHERE NOT tgisinternal AND tgrelid = $1::regclass",
            )
            .bind(&qualified)
            .fetch_all(admin)
            .await?;
            for (trigger, function) in triggers {
                execute(admin, mirrored_function(schema, &function)?).await?;
                let trigger = trigger
                    .replace(&format!(" ON {qualified} "), &format!(" ON {raw}.{table} "))
                    .replace(&format!("EXECUTE FUNCTION {schema}."), &format!("EXECUTE FUNCTION {raw}."));
                anyhow::ensure!(trigger.contains(&format!(" ON {raw}.{table} ")), "cannot copy trigger: {trigger}");
                execute(admin, trigger).await?;
            }
            execute(admin, format!("ANALYZE {qualified}, {raw}.{table}")).await?;
        }
    }
    Ok(())
}

/// The raw baselines: the rows each call writes, with its commits, and nothing else.
struct Raw {
    pool: sqlx::PgPool,
    picker: Picker,
}

/// Contact columns a follow-up copies from its lead's contact.
type ContactRow = (Uuid, Option<String>, Option<String>, Option<String>, Option<String>);

/// Queues one event per lead, carrying the lead and its contact as the lead service's events
/// do (read in the transaction), and answers the contacts.
async fn raw_queue_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ids: &[Uuid],
    kind: &str,
) -> anyhow::Result<Vec<ContactRow>> {
    Ok(sqlx::query_as(
        "WITH lead AS ( \
           SELECT l.id, l.org_id, l.contact_id, c.phone, c.external_id, c.name, c.email, \
                  jsonb_build_object('kind', $2::text, 'lead', to_jsonb(l) - 'search_words', \
                                     'contact', to_jsonb(c) - 'search_words') AS event \
           FROM raw_lead.leads l JOIN raw_lead.contacts c ON c.id = l.contact_id WHERE l.id = ANY($1)), \
         queued AS ( \
           INSERT INTO raw_lead.outbox (org_id, subject, msg_id, payload) \
           SELECT org_id, 'events.lead.' || org_id || '.' || $2, gen_random_uuid()::text, \
                  convert_to(event::text, 'UTF8') \
           FROM lead ORDER BY id) \
         SELECT contact_id, phone, external_id, name, email FROM lead",
    )
    .bind(ids)
    .bind(kind)
    .fetch_all(&mut **tx)
    .await?)
}

/// Queues the events of several leads as one message of `kind`, as the lead service queues an
/// assignment of several leads.
async fn raw_queue_batch(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ids: &[Uuid],
    kind: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO raw_lead.outbox (org_id, subject, msg_id, payload) \
         SELECT min(l.org_id), 'events.lead.' || min(l.org_id) || '.' || $2, gen_random_uuid()::text, \
                convert_to(jsonb_build_object('kind', $2::text, 'data', jsonb_agg( \
                  jsonb_build_object('lead', to_jsonb(l) - 'search_words', 'contact', to_jsonb(c) - 'search_words') \
                  ORDER BY l.id))::text, 'UTF8') \
         FROM raw_lead.leads l JOIN raw_lead.contacts c ON c.id = l.contact_id WHERE l.id = ANY($1) \
         HAVING count(*) > 0",
    )
    .bind(ids)
    .bind(kind)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// AssignLeads in the lead's schema, then the assignment service's record of it.
async fn raw_assign(pool: sqlx::PgPool, mut ids: Vec<Uuid>, agent: String) -> anyhow::Result<()> {
    ids.sort();
    let mut tx = pool.begin().await?;
    let before: HashMap<Uuid, Option<String>> = sqlx::query_as(
        "SELECT id, agent_id FROM raw_lead.leads WHERE org_id = $1 AND id = ANY($2) ORDER BY id FOR UPDATE",
    )
    .bind(ORG)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let changed: Vec<(Uuid, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "UPDATE raw_lead.leads SET agent_id = $2, updated_at = now(), version = version + 1 \
         WHERE id = ANY($1) RETURNING id, version, updated_at",
    )
    .bind(&ids)
    .bind(&agent)
    .fetch_all(&mut *tx)
    .await?;
    let changed_ids: Vec<Uuid> = changed.iter().map(|c| c.0).collect();
    let versions: Vec<i64> = changed.iter().map(|c| c.1).collect();
    let at: Vec<chrono::DateTime<chrono::Utc>> = changed.iter().map(|c| c.2).collect();
    let froms: Vec<Option<String>> = changed_ids.iter().map(|id| before.get(id).cloned().flatten()).collect();
    sqlx::query(
        "INSERT INTO raw_lead.assignment_changes (org_id, lead_id, from_agent, to_agent, actor, lead_version, at) \
         SELECT $1, id, from_agent, $4, 'bench', version, now() \
         FROM UNNEST($2::uuid[], $3::text[], $5::bigint[]) AS t(id, from_agent, version)",
    )
    .bind(ORG)
    .bind(&changed_ids)
    .bind(&froms)
    .bind(&agent)
    .bind(&versions)
    .execute(&mut *tx)
    .await?;
    match changed_ids.as_slice() {
        [_] => {
            raw_queue_events(&mut tx, &changed_ids, "assigned").await?;
        }
        _ => raw_queue_batch(&mut tx, &changed_ids, contracts::lead::ASSIGNMENTS_APPLIED).await?,
    }
    tx.commit().await?;
    // The assignment service's commit, as it makes it: one statement, committed on its own.
    sqlx::query(
        "WITH history AS ( \
           INSERT INTO raw_assignment.assignments \
             (org_id, lead_id, lead_version, agent_id, previous_agent_id, actor, reason, at) \
           SELECT $1, lead_id, version, $4, from_agent, 'bench', NULL, at \
           FROM UNNEST($2::uuid[], $3::bigint[], $5::text[], $6::timestamptz[]) AS t(lead_id, version, from_agent, at) \
           ON CONFLICT DO NOTHING \
         ), agent AS ( \
           UPDATE raw_assignment.agents SET last_assigned_at = greatest(last_assigned_at, now()) \
           WHERE org_id = $1 AND agent_id = $4 \
         ) \
         INSERT INTO raw_assignment.lead_agents (org_id, lead_id, agent_id, active, version, touch_version) \
         SELECT $1, lead_id, $4, true, version, version FROM UNNEST($2::uuid[], $3::bigint[]) AS t(lead_id, version) \
         ON CONFLICT (org_id, lead_id) DO UPDATE \
           SET agent_id = excluded.agent_id, active = excluded.active, version = excluded.version, \
               untouched_since = NULL, touch_version = excluded.touch_version \
           WHERE lead_agents.version < excluded.version",
    )
    .bind(ORG)
    .bind(&changed_ids)
    .bind(&versions)
    .bind(&agent)
    .bind(&froms)
    .bind(&at)
    .execute(&pool)
    .await?;
    anyhow::ensure!(
        changed_ids.len() == ids.len(),
        "raw assignment found {} of {} leads",
        changed_ids.len(),
        ids.len()
    );
    Ok(())
}

async fn raw_change_status(pool: sqlx::PgPool, id: Uuid, to: &'static str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let (from,): (String,) =
        sqlx::query_as("SELECT status FROM raw_lead.leads WHERE org_id = $1 AND id = $2 FOR UPDATE")
            .bind(ORG)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    let version: i64 = sqlx::query_scalar(
        "UPDATE raw_lead.leads SET status = $2, status_set_by_hand_at = now(), updated_at = now(), \
           version = version + 1 WHERE id = $1 RETURNING version",
    )
    .bind(id)
    .bind(to)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO raw_lead.status_changes (org_id, lead_id, from_status, to_status, actor, lead_version) \
         VALUES ($1, $2, $3, $4, 'bench', $5)",
    )
    .bind(ORG)
    .bind(id)
    .bind(&from)
    .bind(to)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    raw_queue_events(&mut tx, &[id], "status_changed").await?;
    tx.commit().await?;
    Ok(())
}

/// OpenFollowUp in the lead's schema, then the follow-up service keeping the follow-up.
async fn raw_create_follow_up(
    pool: sqlx::PgPool,
    id: Uuid,
    agent: Option<String>,
    due: chrono::DateTime<chrono::Utc>,
    note: String,
) -> anyhow::Result<()> {
    let follow_up_id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT status FROM raw_lead.leads WHERE org_id = $1 AND id = $2 FOR UPDATE")
        .bind(ORG)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO raw_lead.follow_up_entries (org_id, follow_up_id, lead_id, state, due_at, note, agent_id, actor) \
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, 'bench')",
    )
    .bind(ORG)
    .bind(follow_up_id)
    .bind(id)
    .bind(due)
    .bind(&note)
    .bind(&agent)
    .execute(&mut *tx)
    .await?;
    let version: i64 = sqlx::query_scalar(
        "UPDATE raw_lead.leads SET version = version + 1, updated_at = now() WHERE id = $1 RETURNING version",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let contacts = raw_queue_events(&mut tx, &[id], "follow_up_opened").await?;
    tx.commit().await?;
    let (contact_id, phone, external_id, name, email) =
        contacts.into_iter().next().ok_or_else(|| anyhow::anyhow!("raw lead {id} has no contact"))?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO raw_followup.lead_states AS s (org_id, lead_id, active, version) VALUES ($1, $2, true, $3) \
         ON CONFLICT (org_id, lead_id) DO UPDATE \
           SET active = s.active AND excluded.active, version = greatest(s.version, excluded.version)",
    )
    .bind(ORG)
    .bind(id)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO raw_followup.follow_ups (id, org_id, lead_id, contact_id, phone, external_id, contact_name, \
           email, due_at, note, agent_id, state, created_by, agent_set_by_hand) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', 'bench', false)",
    )
    .bind(follow_up_id)
    .bind(ORG)
    .bind(id)
    .bind(contact_id)
    .bind(phone)
    .bind(external_id)
    .bind(name)
    .bind(email)
    .bind(due)
    .bind(&note)
    .bind(&agent)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

impl Raw {
    fn call(&self, call: Call, n: usize, due: chrono::DateTime<chrono::Utc>) -> CallFuture {
        let pool = self.pool.clone();
        match call {
            Call::AssignLead | Call::BulkAssign => {
                let count = if call == Call::AssignLead { 1 } else { BULK_LEADS };
                let leads = self.picker.take(Lane::Assign, count);
                let agent = self.picker.assign(n, &leads);
                let ids = leads.iter().map(|&lead| self.picker.id(lead)).collect();
                raw_assign(pool, ids, agent).boxed()
            }
            Call::ChangeStatus => {
                let lead = self.picker.take(Lane::Status, 1)[0];
                let to = status_column(self.picker.next_status(lead));
                raw_change_status(pool, self.picker.id(lead), to).boxed()
            }
            Call::CreateFollowUp => {
                let lead = self.picker.take(Lane::FollowUp, 1)[0];
                raw_create_follow_up(
                    pool,
                    self.picker.id(lead),
                    self.picker.agent_of(lead),
                    due,
                    format!("call back {n}"),
                )
                .boxed()
            }
        }
    }
}

/// Calls timed one by one, and the time all of them took.
struct Timed {
    samples: Vec<Duration>,
    elapsed: Duration,
}

impl Timed {
    fn rate(&self) -> f64 {
        rate(self.samples.len() as u64, self.elapsed)
    }
}

/// Runs `calls` calls with `in_flight` at a time, timing each; the first failure fails the run.
async fn closed_loop(
    in_flight: usize,
    calls: usize,
    mut call: impl FnMut(usize) -> CallFuture,
) -> anyhow::Result<Timed> {
    let started = Instant::now();
    let samples = futures::stream::iter(0..calls)
        .map(|n| {
            let request = call(n);
            async move {
                let at = Instant::now();
                request.await.map(|()| at.elapsed())
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Timed { samples, elapsed: started.elapsed() })
}

/// Calls started on a fixed schedule, each timed from the instant it was due to start (so a
/// call that had to wait for the ones before it counts its wait).
struct Paced {
    scheduled: usize,
    samples: Vec<Duration>,
    /// When each of `samples` was due, from the run's start.
    due: Vec<Duration>,
    failed: usize,
    first_error: Option<String>,
    /// From the first call's start to the last one's answer.
    elapsed: Duration,
    /// The bare commits made beside the calls: when each started, from the run's start, and
    /// how long it took.
    commits: Vec<(Duration, Duration)>,
}

impl Paced {
    fn stats(&self) -> Option<Stats> {
        (!self.samples.is_empty()).then(|| stats(self.samples.clone()))
    }

    /// Whether the answers came as fast as the calls started: else the latencies are mostly
    /// waiting behind the earlier calls.
    fn kept_pace(&self) -> bool {
        self.failed == 0 && rate(self.samples.len() as u64, self.elapsed) >= 0.95 * f64::from(PACED_RATE)
    }

    fn met(&self) -> bool {
        self.failed == 0 && self.stats().is_some_and(|s| s.p99 < P99_TARGET)
    }

    /// When the server's commits stalled: each bare commit slower than `STALL`, as the span it
    /// took.
    fn stalls(&self) -> Vec<(Duration, Duration)> {
        self.commits.iter().filter(|(_, took)| *took > STALL).map(|&(start, took)| (start, start + took)).collect()
    }

    /// The calls that were under way while a commit stalled, and the latencies of the others.
    fn beside_stalls(&self) -> (usize, Vec<Duration>) {
        let stalls = self.stalls();
        let (mut met_one, mut others) = (0, Vec::with_capacity(self.samples.len()));
        for (&due, &took) in self.due.iter().zip(&self.samples) {
            if stalls.iter().any(|&(from, to)| due < to && from < due + took) {
                met_one += 1;
            } else {
                others.push(took);
            }
        }
        (met_one, others)
    }
}

/// How often the commit probe beside a paced run commits.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// A bare commit slower than this waited on the disk (a WAL flush, or the file system making
/// room for a table's next page), which every write under way waits on too: no call that
/// writes can then answer within its target.
const STALL: Duration = P99_TARGET;

/// The probe's table: rows of a fixed 2 KiB, stored as they are (not compressed), so that the
/// table grows by a page every few rows as the services' tables grow under the calls.
const PROBE_TABLE: &str = "CREATE TABLE IF NOT EXISTS raw_commit_probe (id bigserial PRIMARY KEY, filler text); \
                           ALTER TABLE raw_commit_probe ALTER COLUMN filler SET STORAGE PLAIN";

/// Inserts a row and commits it (flushed to the WAL, as every call's commit is) every
/// `PROBE_EVERY` on a connection of its own until `done`: the raw parts every call's writes
/// wait on, the table's growth and the commit's flush, timed beside the calls.
async fn commit_probe(
    pool: sqlx::PgPool,
    started: tokio::time::Instant,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Vec<(Duration, Duration)>> {
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql(PROBE_TABLE).execute(&mut *conn).await?;
    let mut commits = Vec::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !done.load(Ordering::Relaxed) {
        tick.tick().await;
        let start = tokio::time::Instant::now();
        sqlx::query("INSERT INTO raw_commit_probe (filler) VALUES (repeat('x', 2048))").execute(&mut *conn).await?;
        commits.push((start - started, start.elapsed()));
    }
    Ok(commits)
}

/// Starts `PACED_RATE` calls a second for `duration`, open loop, and waits for all of them.
async fn paced(
    duration: Duration,
    probe: &sqlx::PgPool,
    mut call: impl FnMut(usize) -> CallFuture,
) -> anyhow::Result<Paced> {
    let scheduled = (f64::from(PACED_RATE) * duration.as_secs_f64()).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(PACED_RATE));
    let started = tokio::time::Instant::now();
    let probe_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probing = tokio::spawn(commit_probe(probe.clone(), started, probe_done.clone()));
    let mut running = tokio::task::JoinSet::new();
    for n in 0..scheduled {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due).await;
        let request = call(n);
        running.spawn(async move { request.await.map(|()| (due - started, due.elapsed())) });
    }
    let (mut samples, mut due) = (Vec::with_capacity(scheduled), Vec::with_capacity(scheduled));
    let (mut failed, mut first_error) = (0, None);
    while let Some(done) = running.join_next().await {
        match done.map_err(anyhow::Error::from).and_then(|answer| answer) {
            Ok((at, latency)) => {
                due.push(at);
                samples.push(latency);
            }
            Err(error) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    let elapsed = started.elapsed();
    probe_done.store(true, Ordering::Relaxed);
    let commits = probing.await??;
    Ok(Paced { scheduled, samples, due, failed, first_error, elapsed, commits })
}

/// Waits (up to `SETTLE_WITHIN`) until the events of the runs before have left the services'
/// outboxes, so that a run does not pay for its predecessor's relays.
async fn settle(admin: &sqlx::PgPool) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let queued: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM lead.outbox) + (SELECT count(*) FROM assignment.outbox) \
                    + (SELECT count(*) FROM followup.outbox)",
        )
        .fetch_one(admin)
        .await?;
        if queued == 0 {
            return Ok(());
        }
        if started.elapsed() > SETTLE_WITHIN {
            progress(format!("desk: {queued} events still in the outboxes after {SETTLE_WITHIN:?}, going on"));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A call in closed loop beside its raw baseline, with the CPU each spent: the calls' until
/// their events had left the outboxes.
struct ClosedFigures {
    call: Call,
    service: Timed,
    raw: Timed,
    service_cpu: CpuSpent,
    raw_cpu: CpuSpent,
}

/// A call one at a time and paced, and its hops alike; its raw baseline paced the same.
struct PacedCall {
    call: Call,
    alone: Timed,
    whole: Paced,
    raw: Paced,
    hops: Vec<HopFigures>,
}

struct HopFigures {
    hop: Hop,
    alone: Timed,
    paced: Paced,
}

/// One call of every lead in one BulkAssign, beside the raw baseline of the same rows.
struct AllLeadsFigures {
    leads: usize,
    service: Duration,
    raw: Duration,
}

/// Follow-ups due at one instant, and how long after it every one was marked due.
struct DueFigures {
    total: i64,
    after: Duration,
}

struct Figures {
    closed: Vec<ClosedFigures>,
    paced: Vec<PacedCall>,
    all_leads: AllLeadsFigures,
    due: DueFigures,
}

async fn run_in(desk: &Desk, options: &DeskOptions, load: String) -> anyhow::Result<(String, Vec<Target>)> {
    let admin = desk.env.admin_pool().await?;
    let assignment = desk.node.assignment().await?;
    let ids = seed_leads_and_agents(desk, &assignment, options).await?;
    settle(&admin).await?;
    progress("desk: copying the services' tables for the raw baselines");
    mirror_tables(&admin).await?;
    let raw_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(CALLERS as u32)
        .connect_with(platform::db::connect_options(desk.env.settings.database_url.expose_secret())?)
        .await?;
    let raw = Raw { pool: raw_pool, picker: Picker::new(ids.clone()) };
    let services = Services {
        lead: desk.leads.clone(),
        assignment,
        follow_up: desk.node.follow_up().await?,
        picker: Picker::new(ids.clone()),
    };
    let figures = measure(&admin, &raw, &services, &ids, options).await;
    raw.pool.close().await;
    admin.close().await;
    Ok(report(options, &load, &figures?))
}

async fn measure(
    admin: &sqlx::PgPool,
    raw: &Raw,
    services: &Services,
    ids: &[Uuid],
    options: &DeskOptions,
) -> anyhow::Result<Figures> {
    let far = whole_seconds(chrono::Utc::now() + chrono::Duration::days(1));
    let mut closed: Vec<ClosedFigures> = Vec::new();
    let mut due = None;
    // Each call right after its baseline, so that both see the machine alike.
    for call in Call::ALL {
        settle(admin).await?;
        progress(format!("desk: raw baseline of {} with {CALLERS} in flight", call.name()));
        let cpu_started = CpuSpent::start();
        let raw_run = closed_loop(CALLERS, call.closed_calls(options.requests), |n| raw.call(call, n, far)).await?;
        let raw_cpu = CpuSpent::since(cpu_started);
        settle(admin).await?;
        progress(format!("desk: {} with {CALLERS} callers", call.name()));
        let cpu_started = CpuSpent::start();
        if call == Call::CreateFollowUp {
            // Far enough ahead that creating them all ends before it: twice what as many
            // assignments took, and 5 s.
            let assign_elapsed = closed.first().map_or(Duration::ZERO, |c| c.service.elapsed);
            let lead_time = chrono::Duration::seconds(5) + chrono::Duration::from_std(assign_elapsed * 2)?;
            let due_at = whole_seconds(chrono::Utc::now() + lead_time);
            let service = closed_loop(CALLERS, options.requests, |n| services.call(call, n, due_at)).await?;
            settle(admin).await?;
            let service_cpu = CpuSpent::since(cpu_started);
            due = Some(measure_due(admin, due_at, options.requests as i64).await?);
            closed.push(ClosedFigures { call, service, raw: raw_run, service_cpu, raw_cpu });
        } else {
            let service =
                closed_loop(CALLERS, call.closed_calls(options.requests), |n| services.call(call, n, far)).await?;
            settle(admin).await?;
            let service_cpu = CpuSpent::since(cpu_started);
            closed.push(ClosedFigures { call, service, raw: raw_run, service_cpu, raw_cpu });
        }
    }
    let due = due.ok_or_else(|| anyhow::anyhow!("no follow-ups were created"))?;

    let mut paced_runs = Vec::new();
    for call in Call::ALL {
        settle(admin).await?;
        let alone_calls = ONE_AT_A_TIME.min(options.requests);
        progress(format!("desk: {} one at a time, and its hops", call.name()));
        let alone = closed_loop(1, alone_calls, |n| services.call(call, n, far)).await?;
        let mut hops_alone = Vec::new();
        for &hop in call.hops() {
            settle(admin).await?;
            hops_alone.push(closed_loop(1, alone_calls, |n| services.hop(hop, n, far)).await?);
        }
        settle(admin).await?;
        progress(format!("desk: {} paced at {PACED_RATE}/s for {PACED_FOR:?}", call.name()));
        let whole = paced(PACED_FOR, admin, |n| services.call(call, n, far)).await?;
        settle(admin).await?;
        progress(format!("desk: raw baseline of {} paced at {PACED_RATE}/s for {PACED_FOR:?}", call.name()));
        let raw_paced = paced(PACED_FOR, admin, |n| raw.call(call, n, far)).await?;
        let mut hops = Vec::new();
        for (&hop, alone) in call.hops().iter().zip(hops_alone) {
            settle(admin).await?;
            progress(format!("desk: {} paced at {PACED_RATE}/s for {HOP_PACED_FOR:?}", hop.name()));
            let paced = paced(HOP_PACED_FOR, admin, |n| services.hop(hop, n, far)).await?;
            hops.push(HopFigures { hop, alone, paced });
        }
        paced_runs.push(PacedCall { call, alone, whole, raw: raw_paced, hops });
    }

    let all_ids: Vec<Uuid> = ids.iter().copied().take(contracts::values::limits::MAX_BULK_LEADS).collect();
    settle(admin).await?;
    progress(format!("desk: raw baseline of BulkAssign of {} leads in one call", all_ids.len()));
    let raw_all_started = Instant::now();
    raw_assign(raw.pool.clone(), all_ids.clone(), ALL_LEADS_AGENT.into()).await?;
    let raw_all = raw_all_started.elapsed();
    settle(admin).await?;
    progress(format!("desk: BulkAssign of {} leads in one call", all_ids.len()));
    let mut client = services.assignment.clone();
    let started = Instant::now();
    let answer = client
        .bulk_assign(pb::BulkAssignRequest {
            org_id: ORG.into(),
            lead_ids: all_ids.iter().map(Uuid::to_string).collect(),
            agent_id: ALL_LEADS_AGENT.into(),
            actor: "bench".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let service_all = started.elapsed();
    all_changed(answer.results.iter().map(|r| r.outcome))?;
    Ok(Figures {
        closed,
        paced: paced_runs,
        all_leads: AllLeadsFigures { leads: all_ids.len(), service: service_all, raw: raw_all },
        due,
    })
}

/// Waits for `due_at`, then for the scheduler to mark all `total` follow-ups due.
async fn measure_due(
    admin: &sqlx::PgPool,
    due_at: chrono::DateTime<chrono::Utc>,
    total: i64,
) -> anyhow::Result<DueFigures> {
    let due_now: i64 =
        sqlx::query_scalar("SELECT count(*) FROM followup.follow_ups WHERE state = 'due'").fetch_one(admin).await?;
    anyhow::ensure!(due_now == 0, "follow-ups came due before their time");
    tokio::time::sleep((due_at - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    let started = Instant::now();
    eventually(Duration::from_secs(300), "every follow-up due", || {
        let admin = admin.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM followup.follow_ups WHERE state = 'due'")
                .fetch_one(&admin)
                .await
                .ok()?;
            (n == total).then_some(())
        }
    })
    .await;
    Ok(DueFigures { total, after: started.elapsed() })
}

/// Leads created through ingest and the agents to assign them to; answers the leads' ids.
async fn seed_leads_and_agents(
    desk: &Desk,
    assignment: &AssignmentClient,
    options: &DeskOptions,
) -> anyhow::Result<Vec<Uuid>> {
    progress(format!("desk: ingesting {} leads", options.leads));
    let leads = desk.ingest_leads(ORG, options.leads, "hello", Duration::from_secs(300)).await?;
    for agent in (0..AGENTS).map(agent_name).chain([ALL_LEADS_AGENT.to_owned()]) {
        let request =
            pb::UpsertAgentRequest { org_id: ORG.into(), agent_id: agent.clone(), name: agent, ..Default::default() };
        assignment.clone().upsert_agent(request).await?;
    }
    leads.iter().map(|l| -> anyhow::Result<Uuid> { Ok(l.id.parse()?) }).collect()
}

fn closed_row(figures: &ClosedFigures) -> String {
    let service = stats(figures.service.samples.clone());
    let raw = stats(figures.raw.samples.clone());
    format!(
        "| {} | {} | {} | {} /s | {} | {} | {} /s | {} | {} | **{:.2}** |",
        figures.call.name(),
        figures.call.commits(),
        service.n,
        thousands(figures.service.rate()),
        ms(service.p50),
        ms(service.p99),
        thousands(figures.raw.rate()),
        ms(raw.p50),
        ms(raw.p99),
        figures.service.rate() / figures.raw.rate()
    )
}

fn paced_row(name: &str, paced: &Paced) -> String {
    let Paced { scheduled, failed, .. } = *paced;
    let commits = if paced.commits.is_empty() {
        "- | - | - | -".to_owned()
    } else {
        let bare = stats(paced.commits.iter().map(|&(_, took)| took).collect());
        let (under_way, others) = paced.beside_stalls();
        let others_p99 = if others.is_empty() { "-".to_owned() } else { ms(stats(others).p99) };
        format!("{} / {} | {} | {under_way} | {others_p99}", ms(bare.p99), ms(bare.max), paced.stalls().len())
    };
    match paced.stats() {
        Some(s) => format!(
            "| {name} | {scheduled} | {failed} | {} /s | {} | {} | {} | {commits} |",
            thousands(rate(paced.samples.len() as u64, paced.elapsed)),
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        ),
        None => format!("| {name} | {scheduled} | {failed} | - | - | - | - | {commits} |"),
    }
}

/// What the server's commit stalls did to a run, when there were any.
fn stall_note(paced: &Paced) -> String {
    let stalls = paced.stalls();
    let Some(longest) = stalls.iter().map(|&(from, to)| to - from).max() else {
        return String::new();
    };
    let (under_way, others) = paced.beside_stalls();
    let others_p99 = if others.is_empty() { "-".to_owned() } else { ms(stats(others).p99) };
    format!(
        " with {} bare commit{} stalled meanwhile (the longest {}), {under_way} calls under way in one, the \
         others' p99 {others_p99}",
        stalls.len(),
        if stalls.len() == 1 { "" } else { "s" },
        ms(longest)
    )
}

fn p50_p99(paced: &Paced) -> String {
    paced.stats().map_or_else(|| "-".into(), |s| format!("{} / {}", ms(s.p50), ms(s.p99)))
}

/// CPU per call of a closed-loop run beside its baseline's, and the ratio of their machine CPU.
fn cpu_row(closed: &ClosedFigures) -> String {
    let per_call = |cpu: f64, timed: &Timed| micros(cpu / timed.samples.len().max(1) as f64);
    let (service, raw) = (&closed.service_cpu, &closed.raw_cpu);
    let (service_machine, raw_machine) = (service.process + service.rest, raw.process + raw.rest);
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {:.2} |",
        closed.call.name(),
        per_call(service.process, &closed.service),
        per_call(service.rest, &closed.service),
        per_call(service_machine, &closed.service),
        per_call(raw.process, &closed.raw),
        per_call(raw.rest, &closed.raw),
        per_call(raw_machine, &closed.raw),
        (raw_machine / closed.raw.samples.len().max(1) as f64)
            / (service_machine / closed.service.samples.len().max(1) as f64)
    )
}

fn report(options: &DeskOptions, load: &str, figures: &Figures) -> (String, Vec<Target>) {
    let mut out = String::from("## 5. Desk calls: assignment, status changes and follow-ups\n\n");
    out.push_str(&format!("Load average before: {load}\n\n"));
    out.push_str(&format!(
        "{} leads in `{ORG}`, created through ingest, spread over {AGENTS} agents; services in this process \
         with the production connection pools, called over gRPC on loopback. Each call's raw baseline writes \
         the same rows with the same commits, one after the other as the services make them, into copies of \
         the services' tables (`raw_lead`, `raw_assignment`, `raw_followup`: `LIKE ... INCLUDING ALL`, their \
         data, foreign keys and triggers; both sides analysed), on a pool of {CALLERS}, {CALLERS} in flight \
         like the calls. Every assignment and status change really changes its lead.\n\n",
        thousands(f64::from(options.leads))
    ));
    out.push_str("| call | commits | rows written per call (per lead for a bulk), in the call and its baseline |\n");
    out.push_str("| --- | --- | --- |\n");
    for call in Call::ALL {
        out.push_str(&format!("| {} | {} | {} |\n", call.name(), call.commits(), call.rows()));
    }
    out.push_str("\nWhat the calls do besides, which the baselines do not:\n\n");
    for call in Call::ALL {
        out.push_str(&format!("- {}: {}.\n", call.name(), call.reads()));
    }
    out.push_str(
        "- After the answer, in every call and in none of the baselines: the outbox relay publishes and deletes \
         each event, and the other services' consumers apply it.\n\n",
    );

    out.push_str(&format!("Closed loop, {CALLERS} callers:\n\n"));
    out.push_str(
        "| call | commits | n | calls/s | p50 | p99 | raw same rows, calls/s | raw p50 | raw p99 | call / raw |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for closed in &figures.closed {
        out.push_str(&closed_row(closed));
        out.push('\n');
    }
    out.push_str(
        "\nThe machine's CPU per call over the same runs (the calls' until their events had left the outboxes, \
         so the relays and most of the consumers' work is in): this process (the services and the gRPC client; \
         the baseline's driver) and the rest of the machine (Postgres and nats-server).\n\n\
         | call | this process | the rest | the machine | raw: this process | raw: the rest | raw: the machine | \
         raw / call |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for closed in &figures.closed {
        out.push_str(&cpu_row(closed));
        out.push('\n');
    }

    out.push_str(&format!(
        "\nPaced, open loop: {PACED_RATE} calls/s started on schedule whatever the earlier ones do, {} s per \
         call and {} s per hop (the inner call as the outer service makes it, with the same arguments, on other \
         leads); each latency from the call's scheduled start. Beside every run a connection of its own \
         inserts a row of 2 KiB and commits it every {} ms (a bare commit: the table grows by a page every few \
         rows, and the commit is flushed to the WAL, as the calls' tables grow and their commits are flushed). \
         A bare commit over {} ms is a stall of the machine's disk or of the server, which holds up every \
         write under way; the calls under way in one, and the p99 of the others, are counted apart.\n\n",
        PACED_FOR.as_secs(),
        HOP_PACED_FOR.as_secs(),
        PROBE_EVERY.as_millis(),
        STALL.as_millis()
    ));
    out.push_str(
        "| call | started | failed | answered/s | p50 | p99 | max | bare commit meanwhile, p99 / max | \
         bare commits over the target | calls under way in one | p99 of the other calls |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut failures = String::new();
    for PacedCall { call, whole, raw, hops, .. } in &figures.paced {
        let rows = std::iter::once((call.name(), whole))
            .chain(std::iter::once(("- its raw baseline (same rows and commits)".to_owned(), raw)))
            .chain(hops.iter().map(|h| (format!("- hop: {}", h.hop.name()), &h.paced)));
        for (name, paced) in rows {
            out.push_str(&paced_row(&name, paced));
            out.push('\n');
            if let Some(error) = &paced.first_error {
                failures.push_str(&format!("- {name}: {} failed, the first with: {error}\n", paced.failed));
            }
        }
    }
    if !failures.is_empty() {
        out.push_str(&format!("\nFailed calls:\n\n{failures}"));
    }

    out.push_str(&format!(
        "\nWhere the time of a call that crosses services goes: the whole call and each call its service makes \
         to another, made directly (same arguments, other leads), {} one at a time with nothing else running, \
         and paced as above; the outer service's own part is the whole call's p50 less the hops' p50s.\n\n",
        ONE_AT_A_TIME.min(options.requests)
    ));
    out.push_str(&format!(
        "| part of the call | one at a time, p50 / p99 | at {PACED_RATE} calls/s, p50 / p99 |\n| --- | ---: | ---: |\n"
    ));
    for PacedCall { call, alone, whole, hops, .. } in &figures.paced {
        if hops.is_empty() {
            continue;
        }
        let alone_p50_p99 = |timed: &Timed| {
            let s = stats(timed.samples.clone());
            format!("{} / {}", ms(s.p50), ms(s.p99))
        };
        out.push_str(&format!("| **{}**, whole | {} | {} |\n", call.name(), alone_p50_p99(alone), p50_p99(whole)));
        for hop in hops {
            out.push_str(&format!(
                "| - {} | {} | {} |\n",
                hop.hop.name(),
                alone_p50_p99(&hop.alone),
                p50_p99(&hop.paced)
            ));
        }
        let alone_own = stats(alone.samples.clone()).p50.as_secs_f64()
            - hops.iter().map(|h| stats(h.alone.samples.clone()).p50.as_secs_f64()).sum::<f64>();
        let hops_paced_p50: Option<Duration> = hops.iter().map(|h| h.paced.stats().map(|s| s.p50)).sum();
        let paced_own = match (whole.stats().zip(hops_paced_p50), whole.kept_pace()) {
            (Some((w, h)), true) if w.p50 >= h => {
                format!("{:.2} ms", (w.p50.as_secs_f64() - h.as_secs_f64()) * 1000.0)
            }
            // Each hop is paced on its own, beside nothing else: under load its p50 can exceed
            // its share of the whole call's.
            (Some(_), true) => {
                "- (its hops, each paced on its own at this rate, took longer than the whole call)".into()
            }
            (Some(_), false) => format!(
                "- (the call answered {}/s: its latency is mostly waiting)",
                thousands(rate(whole.samples.len() as u64, whole.elapsed))
            ),
            (None, _) => "-".into(),
        };
        out.push_str(&format!(
            "| - the {} service's own | {:.2} ms | {paced_own} |\n",
            call.outer(),
            alone_own * 1000.0
        ));
    }

    let all = &figures.all_leads;
    out.push_str(&format!(
        "\n- BulkAssign of {} leads in one call: {} ({} leads/s); its raw baseline, the same rows in the same two \
         commits: {} ({:.2} of its speed).\n",
        thousands(all.leads as f64),
        ms(all.service),
        thousands(rate(all.leads as u64, all.service)),
        ms(all.raw),
        all.raw.as_secs_f64() / all.service.as_secs_f64()
    ));
    out.push_str(&format!(
        "- {} follow-ups due at one instant were all marked due and announced {} after it (the scheduler looks \
         every {} ms).\n\n",
        thousands(figures.due.total as f64),
        ms(figures.due.after),
        followup::DUE_TICK.as_millis()
    ));

    let mut targets = Vec::new();
    for closed in &figures.closed {
        let ratio = closed.service.rate() / closed.raw.rate();
        targets.push(Target {
            what: format!("{}, rate beside its raw baseline ({})", closed.call.name(), closed.call.commits()),
            target: format!(">= {RATIO_TARGET:.1}"),
            measured: format!(
                "{ratio:.2} ({} / {} calls/s)",
                thousands(closed.service.rate()),
                thousands(closed.raw.rate())
            ),
            met: Some(ratio >= RATIO_TARGET),
        });
    }
    for PacedCall { call, whole, raw, .. } in &figures.paced {
        targets.push(Target {
            what: format!("{}, p99 at {PACED_RATE} calls/s", call.name()),
            target: format!("< {} ms, none failed", P99_TARGET.as_millis()),
            measured: format!(
                "{} ({} failed){}; raw baseline {}{}",
                p50_p99(whole),
                whole.failed,
                stall_note(whole),
                p50_p99(raw),
                stall_note(raw)
            ),
            met: Some(whole.met()),
        });
    }
    (out, targets)
}
