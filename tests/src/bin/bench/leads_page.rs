//! Section 3: the Leads page at scale, a seeded organisation of `--leads` leads: ListLeads,
//! the total count, GetLead, GetLeadHistory and ExportLeads.

use super::{
    Args,
    events::{FIRST_NAMES, LAST_NAMES},
    report::{Report, RssSampler, loadavg, mib, ms, proc_status_kb, progress, rate, stats, thousands},
};
use anyhow::Context as _;
use leads_tests::{TestEnv, pb};
use platform::{ServiceName, Settings};
use std::time::{Duration, Instant};

pub async fn leads(report: &mut Report, args: &Args) -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.database_max_connections = Settings::default().database_max_connections;
    // Assignment too: the console's list page asks it for the agent filter's choices.
    let node = match env.start(&[ServiceName::Lead, ServiceName::Assignment]).await {
        Ok(node) => node,
        Err(error) => {
            env.cleanup().await?;
            return Err(error);
        }
    };
    let result = leads_in(report, args, &env, &node).await;
    let stopped = node.stop().await;
    if args.keep_leads_database {
        progress(format!("leads: database {} kept", env.database));
    } else {
        env.cleanup().await?;
    }
    result?;
    stopped
}

const BIG_ORG: &str = "big-org";

type LeadClient = pb::lead_service_client::LeadServiceClient<tonic::transport::Channel>;

/// Inserts `count` contacts and leads (one lead per contact) numbered from `from`, plus each
/// lead's opening interaction. Deterministic ids, random attributes.
async fn seed_chunk(admin: &sqlx::PgPool, org: &str, from: i64, to: i64) -> anyhow::Result<()> {
    let first = FIRST_NAMES.map(std::borrow::ToOwned::to_owned).to_vec();
    let last = LAST_NAMES.map(std::borrow::ToOwned::to_owned).to_vec();
    let mut tx = admin.begin().await?;
    sqlx::query(
        "INSERT INTO lead.contacts (id, org_id, phone, external_id, name, email, profile_at, created_at) \
         SELECT md5('c:' || $1 || ':' || i)::uuid, $1, '+1415' || lpad(i::text, 7, '0'), \
                CASE WHEN i % 3 = 0 THEN 'crm-' || i END, \
                f || ' ' || l, lower(f) || '.' || lower(l) || i || '@example.com', \
                now() - interval '400 days', now() - interval '400 days' \
         FROM (SELECT i, ($4::text[])[1 + (hashint8(i) & 1023) % 40] AS f, \
                         ($5::text[])[1 + ((hashint8(i) >> 10) & 1023) % 40] AS l \
               FROM generate_series($2::bigint, $3::bigint) AS g(i)) s",
    )
    .bind(org)
    .bind(from)
    .bind(to)
    .bind(&first)
    .bind(&last)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH s AS MATERIALIZED ( \
           SELECT i, random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5, \
                  random() AS r6, random() AS r7, random() AS r8, \
                  now() - random() * interval '365 days' AS created \
           FROM generate_series($2::bigint, $3::bigint) AS g(i)) \
         INSERT INTO lead.leads (id, org_id, contact_id, status, source_kind, channel, campaign_id, \
           broadcast_message_id, integration_name, integration_reference, score, score_source, score_version, \
           agent_id, interaction_count, last_message_preview, first_touch_at, last_interaction_at, created_at, \
           updated_at, version) \
         SELECT md5('l:' || $1 || ':' || i)::uuid, $1, md5('c:' || $1 || ':' || i)::uuid, \
           CASE WHEN r1 < 0.20 THEN 'new' WHEN r1 < 0.40 THEN 'contacted' WHEN r1 < 0.50 THEN 'qualifying' \
                WHEN r1 < 0.60 THEN 'qualified' WHEN r1 < 0.70 THEN 'follow_up' WHEN r1 < 0.80 THEN 'converted' \
                WHEN r1 < 0.92 THEN 'lost' ELSE 'archived' END, \
           CASE WHEN r2 < 0.6 THEN 'chat_message' WHEN r2 < 0.9 THEN 'broadcast_reply' ELSE 'integration' END, \
           'whatsapp', \
           CASE WHEN r2 >= 0.6 AND r2 < 0.9 THEN 'cmp-' || (i % 20) END, \
           CASE WHEN r2 >= 0.6 AND r2 < 0.9 THEN 'wamid.' || i END, \
           CASE WHEN r2 >= 0.9 THEN (ARRAY['shopify', 'hubspot', 'zapier'])[1 + i % 3] END, \
           CASE WHEN r2 >= 0.9 THEN 'ref-' || i END, \
           CASE WHEN r3 < 0.8 THEN floor(r4 * 101)::int END, \
           CASE WHEN r3 < 0.7 THEN 'ai' WHEN r3 < 0.8 THEN 'manual' END, \
           CASE WHEN r3 < 0.8 THEN 1 ELSE 0 END, \
           CASE WHEN r5 < 0.8 THEN 'agent-' || lpad(floor(r6 * 50)::int::text, 2, '0') END, \
           1 + floor(r7 * 40)::int, \
           'Hi, how much is the premium plan? We are a team of twelve and need it before the end of the month.', \
           created, least(created + r8 * interval '30 days', now()), created, created, 1 \
         FROM s",
    )
    .bind(org)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO lead.interactions (org_id, event_id, lead_id, contact_id, occurred_at, kind, direction, channel, \
           text, campaign_id, integration_name) \
         SELECT l.org_id, 'seed-' || g.i, l.id, l.contact_id, l.first_touch_at, l.source_kind, 'inbound', l.channel, \
           l.last_message_preview, l.campaign_id, l.integration_name \
         FROM generate_series($2::bigint, $3::bigint) AS g(i) \
         JOIN lead.leads l ON l.id = md5('l:' || $1 || ':' || g.i)::uuid",
    )
    .bind(org)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The seed's id of lead number `i` of `org`.
async fn lead_uuid(admin: &sqlx::PgPool, org: &str, i: i64) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar("SELECT md5('l:' || $1 || ':' || $2)::uuid::text").bind(org).bind(i).fetch_one(admin).await?)
}

/// The lead whose timeline is measured gets entries up to 500, dated within its lifetime.
async fn seed_history(admin: &sqlx::PgPool, lead_id: &str, entries: i64) -> anyhow::Result<()> {
    let interactions = entries * 4 / 5 - 1; // + the seeded opening one
    let status_changes = entries - interactions - 1;
    sqlx::query(
        "INSERT INTO lead.interactions (org_id, event_id, lead_id, contact_id, occurred_at, kind, direction, channel, text) \
         SELECT l.org_id, 'hist-' || g.i, l.id, l.contact_id, l.first_touch_at + g.i * interval '1 minute', \
           'chat_message', CASE WHEN g.i % 2 = 0 THEN 'inbound' ELSE 'outbound' END, 'whatsapp', \
           'Message number ' || g.i || ' of a long conversation about prices, delivery and the annual plan.' \
         FROM lead.leads l, generate_series(1, $2::bigint) AS g(i) WHERE l.id = $1::uuid",
    )
    .bind(lead_id)
    .bind(interactions)
    .execute(admin)
    .await?;
    sqlx::query(
        "INSERT INTO lead.status_changes (org_id, lead_id, from_status, to_status, actor, reason, lead_version, at) \
         SELECT l.org_id, l.id, CASE WHEN g.i % 2 = 0 THEN 'follow_up' ELSE 'qualifying' END, \
           CASE WHEN g.i % 2 = 0 THEN 'qualifying' ELSE 'follow_up' END, 'agent-07', 'bench', g.i, \
           l.first_touch_at + g.i * interval '7 minutes' \
         FROM lead.leads l, generate_series(1, $2::bigint) AS g(i) WHERE l.id = $1::uuid",
    )
    .bind(lead_id)
    .bind(status_changes)
    .execute(admin)
    .await?;
    Ok(())
}

struct Case {
    name: &'static str,
    filter: pb::LeadFilter,
}

fn cases() -> Vec<Case> {
    vec![
        Case { name: "no filter, sorted by last interaction", filter: pb::LeadFilter::default() },
        Case {
            name: "status in (new, contacted)",
            filter: pb::LeadFilter {
                statuses: vec![pb::LeadStatus::New as i32, pb::LeadStatus::Contacted as i32],
                ..Default::default()
            },
        },
        Case {
            name: "agent = agent-07",
            filter: pb::LeadFilter { agent_ids: vec!["agent-07".into()], ..Default::default() },
        },
        Case {
            name: "score 70-100, source ai",
            filter: pb::LeadFilter {
                min_score: Some(70),
                max_score: Some(100),
                score_source: pb::ScoreSource::Ai as i32,
                ..Default::default()
            },
        },
        Case {
            name: "search \"lovelace\" (1 name in 40)",
            filter: pb::LeadFilter { search: "lovelace".into(), ..Default::default() },
        },
        Case {
            name: "search \"Ada Lovelace\" (1 in 1,600)",
            filter: pb::LeadFilter { search: "Ada Lovelace".into(), ..Default::default() },
        },
        Case {
            name: "search \"ada lov\" while typing (1 in 1,600)",
            filter: pb::LeadFilter { search: "ada lov".into(), ..Default::default() },
        },
        Case {
            name: "search \"lovelace\", active, agent-07",
            filter: pb::LeadFilter {
                search: "lovelace".into(),
                active: pb::ActiveFilter::ActiveOnly as i32,
                agent_ids: vec!["agent-07".into()],
                ..Default::default()
            },
        },
    ]
}

fn list_request(filter: &pb::LeadFilter, token: String, skip_total: bool) -> pb::ListLeadsRequest {
    pb::ListLeadsRequest {
        org_id: BIG_ORG.into(),
        filter: Some(filter.clone()),
        page_size: 50,
        page_token: token,
        skip_total,
        ..Default::default()
    }
}

async fn leads_in(report: &mut Report, args: &Args, env: &TestEnv, node: &leads_tests::Node) -> anyhow::Result<()> {
    report.line("## 3. Leads page at scale\n");
    report.line(format!("Load average before: {}\n", loadavg()));
    let admin = env.admin_pool().await?;
    let history_lead = seed(report, args, &admin).await?;
    report.line(format!(
        "All requests over gRPC to the in-process LeadService, one at a time, page size 50, in `{BIG_ORG}`. First page: \
         {} requests after 3 warm-ups. Later pages: pages 2 to {} followed through next_page_token, one request each.\n",
        args.iterations,
        args.pages + 1
    ));
    let mut client = node.lead().await?;
    measure_transport_floor(report, args, node).await?;
    measure_list_leads(report, args, &mut client).await?;
    measure_list_leads_in_process(report, args, env).await?;
    measure_console_list(report, args, env, node, &mut client).await?;
    measure_get_lead_and_history(report, args, &admin, &mut client, &history_lead).await?;
    measure_export(report, &mut client, args.leads as i64).await?;
    admin.close().await;
    Ok(())
}

/// Seeds `BIG_ORG` and four smaller organisations with SQL, and a long history for one lead
/// of `BIG_ORG`, then reports what was seeded; answers that lead's id.
async fn seed(report: &mut Report, args: &Args, admin: &sqlx::PgPool) -> anyhow::Result<String> {
    let n = args.leads as i64;
    let small = (n / 20).max(1);
    let chunk = 100_000i64;
    let seed_started = Instant::now();
    let mut orgs = vec![(BIG_ORG.to_owned(), n)];
    orgs.extend((1..=4).map(|k| (format!("small-org-{k}"), small)));
    for (org, count) in &orgs {
        let mut from = 1;
        while from <= *count {
            let to = (from + chunk - 1).min(*count);
            seed_chunk(admin, org, from, to).await.with_context(|| format!("seeding {org} {from}..{to}"))?;
            progress(format!("leads: seeded {org} {to}/{count} ({:.0} s)", seed_started.elapsed().as_secs_f64()));
            from = to + 1;
        }
    }
    let history_lead = lead_uuid(admin, BIG_ORG, 1).await?;
    seed_history(admin, &history_lead, 500).await?;
    let seeded = seed_started.elapsed();
    let vacuumed = vacuum_analyze(admin).await?;
    let total_leads: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.leads").fetch_one(admin).await?;
    let sizes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.relname::text, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace \
         WHERE s.nspname = 'lead' AND c.relkind = 'r' AND c.relname IN ('leads', 'contacts', 'interactions') ORDER BY 1",
    )
    .fetch_all(admin)
    .await?;
    report.line(format!(
        "Seeded with SQL (generate_series, 100k-row transactions): `{BIG_ORG}` with {} leads and 4 smaller organisations \
         with {} each ({} leads in all), one contact and one opening interaction per lead. Status spread new 20%, \
         contacted 20%, qualifying/qualified/follow_up 10% each, converted 10%, lost 12%, archived 8%; 80% scored \
         (70% ai, 10% manual); 80% assigned among 50 agents; sources chat 60% / broadcast reply 30% over 20 \
         campaigns / integration 10%; created over the last 365 days, last interaction up to 30 days later; names \
         from 40 first x 40 last names. Seeding took {:.0} s, VACUUM ANALYZE {:.0} s. Sizes: {}.\n",
        thousands(n as f64),
        thousands(small as f64),
        thousands(total_leads as f64),
        seeded.as_secs_f64(),
        vacuumed.as_secs_f64(),
        sizes.iter().map(|(t, b)| format!("{t} {} MiB", b / (1024 * 1024))).collect::<Vec<_>>().join(", ")
    ));
    Ok(history_lead)
}

/// Planner statistics and visibility maps for the seeded tables, before anything is measured.
async fn vacuum_analyze(admin: &sqlx::PgPool) -> anyhow::Result<Duration> {
    progress("leads: VACUUM ANALYZE");
    let vacuum_started = Instant::now();
    for table in ["contacts", "leads", "interactions", "status_changes"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE lead.{table}"))).execute(admin).await?;
    }
    Ok(vacuum_started.elapsed())
}

/// The transport's own cost: the smallest request the lead service's gRPC server answers.
async fn measure_transport_floor(report: &mut Report, args: &Args, node: &leads_tests::Node) -> anyhow::Result<()> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(node.channel(ServiceName::Lead).await?);
    let mut floor = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let t = Instant::now();
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?;
        floor.push(t.elapsed());
    }
    let floor = stats(floor);
    report.line(format!(
        "Transport floor: `grpc.health.v1.Health/Check` on the lead service's server, {} requests: p50 {}, p99 {}.\n",
        floor.n,
        ms(floor.p50),
        ms(floor.p99)
    ));
    Ok(())
}

/// ListLeads over gRPC for each case: the first page after warm-ups, later pages through
/// next_page_token, and the first page with the total count.
async fn measure_list_leads(report: &mut Report, args: &Args, client: &mut LeadClient) -> anyhow::Result<()> {
    report.line("### ListLeads\n");
    report.line(
        "| case | matching | first page p50 | first page p99 | later pages p50 | later pages p99 | with total: p50 | with total: p99 |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    );
    let mut worst_page_p99 = Duration::ZERO;
    let mut worst_total_p99 = Duration::ZERO;
    for case in cases() {
        progress(format!("leads: ListLeads {}", case.name));
        for _ in 0..3 {
            client.list_leads(list_request(&case.filter, String::new(), true)).await?;
        }
        let mut first = Vec::with_capacity(args.iterations);
        for _ in 0..args.iterations {
            let t = Instant::now();
            client.list_leads(list_request(&case.filter, String::new(), true)).await?;
            first.push(t.elapsed());
        }
        let mut later = Vec::with_capacity(args.pages);
        let mut token =
            client.list_leads(list_request(&case.filter, String::new(), true)).await?.into_inner().next_page_token;
        while later.len() < args.pages && !token.is_empty() {
            let t = Instant::now();
            let page = client.list_leads(list_request(&case.filter, token, true)).await?.into_inner();
            later.push(t.elapsed());
            token = page.next_page_token;
        }
        let total_iterations = (args.iterations / 5).max(5);
        let mut with_total = Vec::with_capacity(total_iterations);
        let mut total = 0;
        for _ in 0..total_iterations {
            let t = Instant::now();
            total = client.list_leads(list_request(&case.filter, String::new(), false)).await?.into_inner().total_count;
            with_total.push(t.elapsed());
        }
        let (f, t) = (stats(first), stats(with_total));
        let l = (!later.is_empty()).then(|| stats(later));
        worst_page_p99 = worst_page_p99.max(f.p99).max(l.map(|l| l.p99).unwrap_or_default());
        worst_total_p99 = worst_total_p99.max(t.p99);
        report.line(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} (n={}) |",
            case.name,
            thousands(total as f64),
            ms(f.p50),
            ms(f.p99),
            l.map_or_else(|| "-".into(), |l| ms(l.p50)),
            l.map_or_else(|| "-".into(), |l| format!("{} (n={})", ms(l.p99), l.n)),
            ms(t.p50),
            ms(t.p99),
            t.n,
        ));
        report.target(
            format!("ListLeads p99, {}", case.name),
            "< 20 ms",
            format!(
                "first {} / later {} / with total {}",
                ms(f.p99),
                l.map_or_else(|| "-".into(), |l| ms(l.p99)),
                ms(t.p99)
            ),
            f.p99 < Duration::from_millis(20) && l.is_none_or(|l| l.p99 < Duration::from_millis(20)),
        );
    }
    report.line(format!(
        "\nWorst page p99 without the total: {}; worst p99 with the total (skip_total false): {}. The PASS/MISS below \
         judges the pages without the total; the total is a separate `count(*)` over every matching row.\n",
        ms(worst_page_p99),
        ms(worst_total_p99)
    ));
    Ok(())
}

/// The same queries without gRPC: the service's own read path, called in-process.
/// The console's query string for a case's filter.
fn console_query(filter: &pb::LeadFilter) -> String {
    let mut parts: Vec<String> = filter
        .statuses
        .iter()
        .filter_map(|s| contracts::lead::Status::from_proto(*s))
        .map(|s| format!("status={}", s.as_str()))
        .collect();
    if filter.active == pb::ActiveFilter::ActiveOnly as i32 {
        parts.push("active=active".into());
    }
    parts.extend(filter.agent_ids.iter().map(|a| format!("agent={a}")));
    parts.extend(filter.min_score.map(|s| format!("min_score={s}")));
    parts.extend(filter.max_score.map(|s| format!("max_score={s}")));
    if !filter.search.is_empty() {
        parts.push(format!("q={}", filter.search.replace(' ', "+")));
    }
    parts.join("&")
}

/// The console's list page (`GET /leads`, first page with its total, rendered) beside
/// ListLeads with the total for the same query, each request alone.
async fn measure_console_list(
    report: &mut Report,
    args: &Args,
    env: &TestEnv,
    node: &leads_tests::Node,
    client: &mut LeadClient,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    let mut settings = env.settings.clone();
    settings.endpoints.lead = format!("http://{}", node.addr(ServiceName::Lead));
    settings.endpoints.assignment = format!("http://{}", node.addr(ServiceName::Assignment));
    settings.console.port = 0;
    let stop = tokio_util::sync::CancellationToken::new();
    let console = leads::start_console(&settings, stop.clone()).await?;
    // Authentication is off in this environment: the services take any token, and the
    // console needs one it can read the holder from.
    let claims =
        serde_json::json!({"sub": "bench", "role": "operator", "exp": chrono::Utc::now().timestamp() + 86_400});
    let token = format!("e30.{}.x", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut browser = leads_tests::browserless::Browserless::new(console.addr);
    browser.cookies.insert(console::SESSION_COOKIE.into(), console::session_cookie_value(BIG_ORG, &token));
    report.line(format!(
        "\nThe console's list page (`GET /leads?...`: ListLeads with its total, ListAgents, the page rendered; \
         {} requests each after 3 warm-ups) beside ListLeads with the total for the same query:\n\n\
         | case | page p50 | page p95 | page p99 | ListLeads p50 | ListLeads p95 | ListLeads p99 | page size |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        args.iterations
    ));
    for case in cases() {
        let path = format!("/leads?{}", console_query(&case.filter));
        let mut size = 0;
        for _ in 0..3 {
            let page = browser.get(&path).await?;
            anyhow::ensure!(page.status == 200, "{path}: {} {}", page.status, page.body);
            size = page.body.len();
        }
        let mut pages = Vec::with_capacity(args.iterations);
        let mut lists = Vec::with_capacity(args.iterations);
        for _ in 0..args.iterations {
            let started = Instant::now();
            browser.get(&path).await?;
            pages.push(started.elapsed());
            let started = Instant::now();
            client.list_leads(list_request(&case.filter, String::new(), false)).await?;
            lists.push(started.elapsed());
        }
        let (p, l) = (stats(pages), stats(lists));
        report.line(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} KB |",
            case.name,
            ms(p.p50),
            ms(p.p95),
            ms(p.p99),
            ms(l.p50),
            ms(l.p95),
            ms(l.p99),
            size / 1024
        ));
        report.target(
            format!("console list page p95, {}", case.name),
            "< 50 ms",
            format!("{} (ListLeads {})", ms(p.p95), ms(l.p95)),
            p.p95 < Duration::from_millis(50),
        );
    }
    stop.cancel();
    console.task.await??;
    Ok(())
}

async fn measure_list_leads_in_process(report: &mut Report, args: &Args, env: &TestEnv) -> anyhow::Result<()> {
    progress("leads: ListLeads in-process, without gRPC");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(platform::db::service_options(&env.settings, ServiceName::Lead)?)
        .await?;
    report.line(
        "In-process, without gRPC (`lead::read::list_leads` on a pool of the lead role; the service's query and \
         row mapping, no transport, no protobuf):\n",
    );
    report.line(
        "| case | first page p50 | first page p99 | with total: p50 | with total: p99 |\n\
         | --- | ---: | ---: | ---: | ---: |",
    );
    for case in cases() {
        let query = lead::query::LeadQuery::parse(&list_request(&case.filter, String::new(), true))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for _ in 0..3 {
            lead::read::list_leads(&pool, &query, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let mut page = Vec::with_capacity(args.iterations);
        for _ in 0..args.iterations {
            let t = Instant::now();
            lead::read::list_leads(&pool, &query, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            page.push(t.elapsed());
        }
        let mut with_total = Vec::new();
        for _ in 0..(args.iterations / 5).max(5) {
            let t = Instant::now();
            lead::read::list_leads(&pool, &query, Some(Settings::default().lead.exact_total_up_to))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            with_total.push(t.elapsed());
        }
        let (p, t) = (stats(page), stats(with_total));
        report.line(format!("| {} | {} | {} | {} | {} |", case.name, ms(p.p50), ms(p.p99), ms(t.p50), ms(t.p99)));
    }
    pool.close().await;
    report.line("");
    Ok(())
}

/// GetLead of random leads, and GetLeadHistory of the seeded long history, by page and whole.
async fn measure_get_lead_and_history(
    report: &mut Report,
    args: &Args,
    admin: &sqlx::PgPool,
    client: &mut LeadClient,
    history_lead: &str,
) -> anyhow::Result<()> {
    progress("leads: GetLead / GetLeadHistory");
    let leads = args.leads as i64;
    report.line("### GetLead and GetLeadHistory\n");
    let mut get = Vec::new();
    for i in 0..args.iterations {
        let id = lead_uuid(admin, BIG_ORG, 1 + (i as i64 * 7919) % leads).await?;
        let t = Instant::now();
        client.get_lead(pb::GetLeadRequest { org_id: BIG_ORG.into(), lead_id: id }).await?;
        get.push(t.elapsed());
    }
    let history_request = |page_size: i32, token: String| pb::GetLeadHistoryRequest {
        org_id: BIG_ORG.into(),
        lead_id: history_lead.to_owned(),
        page_size,
        page_token: token,
    };
    let mut entries_total = 0usize;
    let mut token = String::new();
    loop {
        let page = client.get_lead_history(history_request(500, token)).await?.into_inner();
        entries_total += page.entries.len();
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let mut h100 = Vec::new();
    let mut h500 = Vec::new();
    for _ in 0..args.iterations {
        let t = Instant::now();
        client.get_lead_history(history_request(100, String::new())).await?;
        h100.push(t.elapsed());
        let t = Instant::now();
        client.get_lead_history(history_request(500, String::new())).await?;
        h500.push(t.elapsed());
    }
    let mut walk = Vec::new();
    for _ in 0..(args.iterations / 10).max(3) {
        let t = Instant::now();
        let mut token = String::new();
        loop {
            let page = client.get_lead_history(history_request(100, token)).await?.into_inner();
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        walk.push(t.elapsed());
    }
    report.line("| request | n | p50 | p99 | max |\n| --- | ---: | ---: | ---: | ---: |");
    for (name, samples) in [
        ("GetLead (random leads)".to_owned(), get),
        (format!("GetLeadHistory, lead with {entries_total} entries, first page of 100"), h100),
        (format!("GetLeadHistory, lead with {entries_total} entries, one page of 500"), h500),
        ("GetLeadHistory, all 5 pages of 100 in sequence".to_owned(), walk),
    ] {
        let s = stats(samples);
        report.line(format!("| {name} | {} | {} | {} | {} |", s.n, ms(s.p50), ms(s.p99), ms(s.max)));
    }
    report.line("");
    Ok(())
}

/// ExportLeads ALL of `BIG_ORG`'s `leads` leads: throughput and the memory it takes.
async fn measure_export(report: &mut Report, client: &mut LeadClient, leads: i64) -> anyhow::Result<()> {
    progress("leads: ExportLeads ALL");
    let rss_before = proc_status_kb("VmRSS").unwrap_or(0);
    let hwm_before = proc_status_kb("VmHWM").unwrap_or(0);
    let sampler = RssSampler::start();
    let started = Instant::now();
    let mut stream = client
        .export_leads(pb::ExportLeadsRequest {
            query: Some(pb::ListLeadsRequest { org_id: BIG_ORG.into(), skip_total: true, ..Default::default() }),
            scope: pb::ExportScope::All as i32,
        })
        .await?
        .into_inner();
    let mut rows = 0i64;
    let mut bytes = 0usize;
    let mut chunks = 0usize;
    let mut first_chunk = None;
    while let Some(chunk) = stream.message().await? {
        first_chunk.get_or_insert_with(|| started.elapsed());
        rows += chunk.rows;
        bytes += chunk.csv.len();
        chunks += 1;
    }
    let elapsed = started.elapsed();
    let peak = sampler.finish();
    let hwm_after = proc_status_kb("VmHWM").unwrap_or(0);
    let export_rate = rate(rows as u64, elapsed);
    let delta = peak.saturating_sub(rss_before);
    anyhow::ensure!(rows == leads, "the export returned {rows} rows, expected {leads}");
    report.line("### ExportLeads ALL\n");
    report.line(format!(
        "Every lead of `{BIG_ORG}`, no filter, as CSV over the gRPC server stream; the client counts and drops the chunks. \
         Memory: VmRSS of this process (service and client together) sampled every 5 ms during the export.\n"
    ));
    report.line("| measure | value |\n| --- | ---: |");
    report.line(format!(
        "| rows / chunks / CSV bytes | {} / {chunks} / {:.1} MiB |",
        thousands(rows as f64),
        bytes as f64 / 1048576.0
    ));
    report.line(format!("| time to first chunk | {} |", ms(first_chunk.unwrap_or_default())));
    report.line(format!("| total time | {:.2} s |", elapsed.as_secs_f64()));
    report.line(format!("| **throughput** | **{} rows/s** |", thousands(export_rate)));
    report.line(format!("| VmRSS before / peak during | {} / {} |", mib(rss_before), mib(peak)));
    report.line(format!("| **RSS growth during the export** | **{}** |", mib(delta)));
    report.line(format!("| VmHWM before / after (process lifetime peak) | {} / {} |", mib(hwm_before), mib(hwm_after)));
    report.line("");
    report.target(
        format!("ExportLeads ALL over {} leads", thousands(leads as f64)),
        ">= 200,000 rows/s",
        format!("{} rows/s", thousands(export_rate)),
        export_rate >= 200_000.0,
    );
    report.target(
        "ExportLeads memory",
        "< 100 MB",
        format!("+{} RSS (peak {})", mib(delta), mib(peak)),
        delta < 100 * 1000,
    );
    Ok(())
}
