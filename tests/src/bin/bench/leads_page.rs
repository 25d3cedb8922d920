//! Section 3: the Leads page at scale, a seeded organisation of `--leads` leads: ListLeads,
//! the total count, GetLead, GetLeadHistory and ExportLeads.

use super::{
    Args,
    leads_seed::{self, BUSY_AGENT, QUIET_AGENT, SeededKind, seeded_id},
    report::{CpuSpent, Report, RssSampler, Stats, loadavg, mib, ms, proc_status_kb, progress, rate, stats, thousands},
};
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
    /// A search: its target is 50 ms rather than 20.
    search: bool,
}

/// The cases measured in an organisation of `leads` leads.
fn cases(leads: u64) -> Vec<Case> {
    // The first five digits of the middle lead's number: about a hundred phones.
    let digits = format!("1415{}", &format!("{:07}", leads / 2)[..5]);
    let filter = |name, filter| Case { name, filter, search: false };
    let search = |name, text: &str| Case {
        name,
        filter: pb::LeadFilter { search: text.into(), ..Default::default() },
        search: true,
    };
    vec![
        filter("no filter", pb::LeadFilter::default()),
        filter(
            "status in (new, contacted)",
            pb::LeadFilter {
                statuses: vec![pb::LeadStatus::New as i32, pb::LeadStatus::Contacted as i32],
                ..Default::default()
            },
        ),
        filter("busy agent (11%)", pb::LeadFilter { agent_ids: vec![BUSY_AGENT.into()], ..Default::default() }),
        filter("quiet agent (0.2%)", pb::LeadFilter { agent_ids: vec![QUIET_AGENT.into()], ..Default::default() }),
        filter("unassigned", pb::LeadFilter { unassigned: true, ..Default::default() }),
        filter("score >= 70", pb::LeadFilter { min_score: Some(70), ..Default::default() }),
        search("search \"lovelace\" (1 name in 40)", "lovelace"),
        search("search \"Ada Lovelace\" (1 in 1,600)", "Ada Lovelace"),
        Case {
            name: "search by phone digits (about 100)",
            filter: pb::LeadFilter { search: digits, ..Default::default() },
            search: true,
        },
        Case {
            name: "search \"lovelace\", active, busy agent",
            filter: pb::LeadFilter {
                search: "lovelace".into(),
                active: pb::ActiveFilter::ActiveOnly as i32,
                agent_ids: vec![BUSY_AGENT.into()],
                ..Default::default()
            },
            search: true,
        },
    ]
}

const SORTS: [(pb::LeadSortField, &str); 3] = [
    (pb::LeadSortField::LastInteraction, "last interaction"),
    (pb::LeadSortField::Created, "created"),
    (pb::LeadSortField::Score, "score"),
];

fn list_request(filter: &pb::LeadFilter, token: String, skip_total: bool) -> pb::ListLeadsRequest {
    sorted_request(filter, pb::LeadSortField::LastInteraction, token, skip_total)
}

fn sorted_request(
    filter: &pb::LeadFilter,
    sort: pb::LeadSortField,
    token: String,
    skip_total: bool,
) -> pb::ListLeadsRequest {
    pb::ListLeadsRequest {
        org_id: BIG_ORG.into(),
        filter: Some(filter.clone()),
        sort: sort as i32,
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
        "All requests over gRPC to the in-process LeadService, one at a time, page size 50, in `{BIG_ORG}`. Each case \
         and sort: the first page {} times without its total and {} times with it (as the console asks), after 3 \
         warm-ups; then page 50, its token reached through next_page_token, {} times with its total.\n",
        args.iterations, args.iterations, args.iterations
    ));
    let mut client = node.lead().await?;
    measure_transport_floor(report, args, node).await?;
    measure_list_leads(report, args, &mut client).await?;
    measure_list_leads_in_process(report, args, env).await?;
    measure_console_list(report, args, env, node, &mut client).await?;
    measure_get_lead_and_history(report, args, &mut client, &history_lead).await?;
    measure_export(report, &mut client, env, args.leads as i64, export_rounds(args.leads)).await?;
    admin.close().await;
    Ok(())
}

/// Seeds `BIG_ORG` and four smaller organisations with `COPY`, and a long history for one
/// lead of `BIG_ORG`, then reports what was seeded; answers that lead's id.
async fn seed(report: &mut Report, args: &Args, admin: &sqlx::PgPool) -> anyhow::Result<String> {
    let n = args.leads;
    let small = (n / 20).max(1);
    let mut orgs = vec![(BIG_ORG.to_owned(), n)];
    orgs.extend((1..=4).map(|k| (format!("small-org-{k}"), small)));
    let seeded = leads_seed::seed(admin, &orgs).await?;
    let history_lead = seeded_id(SeededKind::Lead, 0, 1).to_string();
    seed_history(admin, &history_lead, 500).await?;
    let vacuumed = vacuum_analyze(admin).await?;
    let total_leads: i64 = sqlx::query_scalar("SELECT count(*) FROM lead.leads").fetch_one(admin).await?;
    let shares: Vec<(String, f64)> = sqlx::query_as(
        "SELECT label, round(100.0 * count(*) / (SELECT count(*) FROM lead.leads WHERE org_id = $1), 1)::float8 FROM ( \
           SELECT CASE WHEN NOT active THEN 'closed' WHEN agent_id IS NULL THEN 'active, unassigned' \
             ELSE 'active, assigned' END AS label FROM lead.leads WHERE org_id = $1 \
           UNION ALL SELECT CASE WHEN agent_id = $2 THEN 'busy agent' WHEN agent_id = $3 THEN 'quiet agent' \
             ELSE 'other' END FROM lead.leads WHERE org_id = $1 AND agent_id IN ($2, $3)) s GROUP BY label ORDER BY 1",
    )
    .bind(BIG_ORG)
    .bind(BUSY_AGENT)
    .bind(QUIET_AGENT)
    .fetch_all(admin)
    .await?;
    let sizes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.relname::text, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace \
         WHERE s.nspname = 'lead' AND c.relkind = 'r' AND c.relname IN ('leads', 'contacts') ORDER BY 1",
    )
    .fetch_all(admin)
    .await?;
    report.line(format!(
        "Seeded with `COPY ... FROM STDIN` on two connections (rows generated by the bench, 200,000 per statement; \
         the {} secondary indexes of contacts and leads dropped before and built after, two at a time; the service's \
         triggers on): `{BIG_ORG}` with {} leads and 4 smaller organisations with {} each ({} leads in all), one \
         contact per lead. Status spread: 80% closed (converted 15%, lost 45%, archived 20%), new 7%, contacted 5%, \
         qualifying/qualified 3% each, follow-up 2%; 12% unassigned, and of the assigned 60% held by 5 busy agents, \
         40% by 195 others; 80% scored (70% ai, 10% manual); sources chat 60% / broadcast reply 30% over 20 \
         campaigns / integration 10%; created over the last 730 days, last interaction up to 30 days later; names \
         from 40 first x 40 last names. Copying took {:.0} s, building the indexes {:.0} s, VACUUM ANALYZE {:.0} s. \
         Shares of `{BIG_ORG}`'s leads (the busy and the quiet agent: every lead they hold): {}. Sizes: {}.\n",
        seeded.indexes,
        thousands(n as f64),
        thousands(small as f64),
        thousands(total_leads as f64),
        seeded.copied.as_secs_f64(),
        seeded.indexed.as_secs_f64(),
        vacuumed.as_secs_f64(),
        shares.iter().map(|(label, share)| format!("{label} {share}%")).collect::<Vec<_>>().join(", "),
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

/// ListLeads over gRPC for each case and sort, as the console asks (with the total): the first
/// page and page 50 (reached through next_page_token, then asked again and again), and the
/// first page without its total.
async fn measure_list_leads(report: &mut Report, args: &Args, client: &mut LeadClient) -> anyhow::Result<()> {
    report.line("### ListLeads\n");
    report.line(
        "| case | sorted by | matching | first page, no total: p50 / p99 | first page with total: p50 / p99 | \
         page 50 with total: p50 / p99 |\n| --- | --- | ---: | ---: | ---: | ---: |",
    );
    for case in cases(args.leads) {
        let target = Duration::from_millis(if case.search { 50 } else { 20 });
        let mut worst = Duration::ZERO;
        for (sort, sort_name) in SORTS {
            progress(format!("leads: ListLeads {}, sorted by {sort_name}", case.name));
            let request = |token: &str, skip_total| sorted_request(&case.filter, sort, token.to_owned(), skip_total);
            for _ in 0..3 {
                client.list_leads(request("", false)).await?;
            }
            let mut bare = Vec::with_capacity(args.iterations);
            let mut first = Vec::with_capacity(args.iterations);
            let mut total = None;
            for _ in 0..args.iterations {
                let t = Instant::now();
                client.list_leads(request("", true)).await?;
                bare.push(t.elapsed());
                let t = Instant::now();
                let page = client.list_leads(request("", false)).await?.into_inner();
                first.push(t.elapsed());
                total = Some((page.total_count, page.total_is_estimate));
            }
            let mut token = String::new();
            for _ in 1..50 {
                token = client.list_leads(request(&token, true)).await?.into_inner().next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            let mut fiftieth = Vec::with_capacity(args.iterations);
            if !token.is_empty() {
                for _ in 0..args.iterations {
                    let t = Instant::now();
                    client.list_leads(request(&token, false)).await?;
                    fiftieth.push(t.elapsed());
                }
            }
            let (b, f) = (stats(bare), stats(first));
            let l = (!fiftieth.is_empty()).then(|| stats(fiftieth));
            worst = worst.max(f.p99).max(l.map(|l| l.p99).unwrap_or_default());
            let (count, estimated) = total.unwrap_or_default();
            report.line(format!(
                "| {} | {sort_name} | {}{} | {} / {} | {} / {} | {} |",
                case.name,
                if estimated { "about " } else { "" },
                thousands(count as f64),
                ms(b.p50),
                ms(b.p99),
                ms(f.p50),
                ms(f.p99),
                l.map_or_else(|| "- (fewer than 50 pages)".into(), |l| format!("{} / {}", ms(l.p50), ms(l.p99))),
            ));
        }
        report.target(
            format!("ListLeads with its total p99, {}, every sort, first page and page 50", case.name),
            format!("< {} ms", target.as_millis()),
            ms(worst),
            worst < target,
        );
    }
    report.line("");
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
    if filter.unassigned {
        parts.push("unassigned=1".into());
    }
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
    for case in cases(args.leads) {
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
         row mapping, no transport, no protobuf); beside it the raw part, the first page's statement alone as \
         Postgres answers it on the same connection (for a search of words the faster of the two ways the \
         service chooses between, through the contacts' index or along the leads in the page's order):\n",
    );
    report.line(
        "| case | first page p50 | first page p99 | with total: p50 | with total: p99 | the statement alone: p50 / p99 |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |",
    );
    let defaults = Settings::default().lead;
    let totals = lead::read::Totals {
        exact_up_to: defaults.exact_total_up_to,
        budget: Duration::from_millis(defaults.exact_total_budget_ms),
        max_count_cost: defaults.exact_total_max_cost,
    };
    for case in cases(args.leads) {
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
            lead::read::list_leads(&pool, &query, Some(totals)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            with_total.push(t.elapsed());
        }
        let statement = statement_alone(&pool, &query, (args.iterations / 5).max(5)).await?;
        let (p, t) = (stats(page), stats(with_total));
        report.line(format!(
            "| {} | {} | {} | {} | {} | {} / {} |",
            case.name,
            ms(p.p50),
            ms(p.p99),
            ms(t.p50),
            ms(t.p99),
            ms(statement.p50),
            ms(statement.p99)
        ));
    }
    pool.close().await;
    report.line("");
    Ok(())
}

/// The first page's statement, run `times` times after a warm-up with nothing around it: for a
/// search of words each of the two ways of matching them, and the faster one's figures.
async fn statement_alone(pool: &sqlx::PgPool, query: &lead::query::LeadQuery, times: usize) -> anyhow::Result<Stats> {
    use lead::query::WordsOn;
    let ways: &[WordsOn] = match &query.search {
        lead::query::Search { words: Some(_), digits: None } => &[WordsOn::Contacts, WordsOn::Leads],
        _ => &[WordsOn::Contacts],
    };
    let mut fastest: Option<Stats> = None;
    for &way in ways {
        let mut took = Vec::with_capacity(times);
        for round in 0..=times {
            let mut sql = query.page_sql(way).map_err(|e| anyhow::anyhow!("{e}"))?;
            let t = Instant::now();
            sql.build().fetch_all(pool).await?;
            if round > 0 {
                took.push(t.elapsed());
            }
        }
        let way_stats = stats(took);
        if fastest.as_ref().is_none_or(|f| way_stats.p50 < f.p50) {
            fastest = Some(way_stats);
        }
    }
    fastest.ok_or_else(|| anyhow::anyhow!("no way of matching"))
}

/// GetLead of random leads, and GetLeadHistory of the seeded long history, by page and whole.
async fn measure_get_lead_and_history(
    report: &mut Report,
    args: &Args,
    client: &mut LeadClient,
    history_lead: &str,
) -> anyhow::Result<()> {
    progress("leads: GetLead / GetLeadHistory");
    let leads = args.leads;
    report.line("### GetLead and GetLeadHistory\n");
    let mut get = Vec::new();
    for i in 0..args.iterations {
        let id = seeded_id(SeededKind::Lead, 0, 1 + (i as u64 * 7919) % leads).to_string();
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

/// A raw `COPY (SELECT ...) TO STDOUT` of the export's columns, rows and order, as CSV, on a
/// connection of the lead service's role: what Postgres alone takes to hand the same data over.
struct RawCopy {
    rows: u64,
    bytes: usize,
    first_bytes: Duration,
    elapsed: Duration,
    /// The same without the page's order.
    unordered: Duration,
    /// CPU over the ordered `COPY`: this process's (reading the stream) and the rest of the
    /// machine's (Postgres), in seconds.
    cpu: CpuSpent,
}

async fn measure_raw_copy(env: &TestEnv) -> anyhow::Result<RawCopy> {
    use sqlx::Connection as _;
    progress("leads: raw COPY TO STDOUT");
    let mut conn =
        sqlx::postgres::PgConnection::connect_with(&platform::db::service_options(&env.settings, ServiceName::Lead)?)
            .await?;
    let select = format!(
        "SELECT {} FROM leads l JOIN contacts c ON c.id = l.contact_id WHERE l.org_id = '{BIG_ORG}'",
        lead::export::CSV_COLUMNS
    );
    let order = " ORDER BY l.last_interaction_at DESC, l.id DESC";
    let started = CpuSpent::start();
    let (rows, bytes, first_bytes, elapsed) = copy_out(&mut conn, &format!("{select}{order}")).await?;
    let cpu = CpuSpent::since(started);
    let (_, _, _, unordered) = copy_out(&mut conn, &select).await?;
    Ok(RawCopy { rows, bytes, first_bytes, elapsed, unordered, cpu })
}

/// `COPY (select) TO STDOUT` as CSV: rows, bytes, the time to its first bytes and to its end.
async fn copy_out(conn: &mut sqlx::PgConnection, select: &str) -> anyhow::Result<(u64, usize, Duration, Duration)> {
    use futures::TryStreamExt as _;
    let started = Instant::now();
    let mut stream = conn.copy_out_raw(&format!("COPY ({select}) TO STDOUT (FORMAT csv)")).await?;
    let (mut rows, mut bytes, mut first_bytes) = (0u64, 0usize, None);
    while let Some(chunk) = stream.try_next().await? {
        first_bytes.get_or_insert_with(|| started.elapsed());
        bytes += chunk.len();
        rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    Ok((rows, bytes, first_bytes.unwrap_or_default(), started.elapsed()))
}

/// How often the export and its raw `COPY` each run, alternating, where a run takes seconds:
/// single runs of both gave ratios from 0.74 to 0.86 on the same code.
fn export_rounds(leads: u64) -> usize {
    if leads <= 2_000_000 { 3 } else { 1 }
}

/// The run of the middle time among `runs`.
fn median_by<T>(mut runs: Vec<T>, elapsed: impl Fn(&T) -> Duration) -> anyhow::Result<T> {
    runs.sort_by_key(|run| elapsed(run));
    let middle = runs.len() / 2;
    runs.into_iter().nth(middle).ok_or_else(|| anyhow::anyhow!("no run"))
}

/// One ExportLeads ALL, as the client saw it.
struct ExportRun {
    rows: i64,
    bytes: usize,
    chunks: usize,
    first_chunk: Option<Duration>,
    elapsed: Duration,
    cpu: CpuSpent,
    rss_before: u64,
    peak: u64,
}

/// ExportLeads ALL of `BIG_ORG`: the client counts and drops the chunks.
async fn export_once(client: &mut LeadClient) -> anyhow::Result<ExportRun> {
    progress("leads: ExportLeads ALL");
    let rss_before = proc_status_kb("VmRSS").unwrap_or(0);
    let sampler = RssSampler::start();
    let cpu_started = CpuSpent::start();
    let started = Instant::now();
    let mut stream = client
        .export_leads(pb::ExportLeadsRequest {
            query: Some(pb::ListLeadsRequest { org_id: BIG_ORG.into(), skip_total: true, ..Default::default() }),
            scope: pb::ExportScope::All as i32,
        })
        .await?
        .into_inner();
    let (mut rows, mut bytes, mut chunks, mut first_chunk) = (0i64, 0usize, 0usize, None);
    while let Some(chunk) = stream.message().await? {
        first_chunk.get_or_insert_with(|| started.elapsed());
        rows += chunk.rows;
        bytes += chunk.csv.len();
        chunks += 1;
    }
    let elapsed = started.elapsed();
    let cpu = CpuSpent::since(cpu_started);
    let peak = sampler.finish();
    Ok(ExportRun { rows, bytes, chunks, first_chunk, elapsed, cpu, rss_before, peak })
}

/// ExportLeads ALL of `BIG_ORG`'s `leads` leads beside the raw `COPY` of the same rows, each
/// run `rounds` times in turn: the middle runs' throughput, and the most memory any export took.
async fn measure_export(
    report: &mut Report,
    client: &mut LeadClient,
    env: &TestEnv,
    leads: i64,
    rounds: usize,
) -> anyhow::Result<()> {
    let hwm_before = proc_status_kb("VmHWM").unwrap_or(0);
    let (mut raws, mut exports) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        raws.push(measure_raw_copy(env).await?);
        exports.push(export_once(client).await?);
    }
    let hwm_after = proc_status_kb("VmHWM").unwrap_or(0);
    let most_growth = exports.iter().map(|e| e.peak.saturating_sub(e.rss_before)).max().unwrap_or(0);
    let raw = median_by(raws, |r| r.elapsed)?;
    let ExportRun { rows, bytes, chunks, first_chunk, elapsed, cpu, rss_before, peak } =
        median_by(exports, |e| e.elapsed)?;
    let export_rate = rate(rows as u64, elapsed);
    let delta = most_growth;
    anyhow::ensure!(rows == leads, "the export returned {rows} rows, expected {leads}");
    report.line("### ExportLeads ALL\n");
    report.line(format!(
        "Every lead of `{BIG_ORG}`, no filter, as CSV over the gRPC server stream; the client counts and drops the chunks. \
         The export and the raw `COPY` ran {rounds} time(s) each, in turn: the run of the middle time of each. \
         Memory: VmRSS of this process (service and client together) sampled every 5 ms during each export, the \
         largest growth of any.\n"
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
    let raw_rate = rate(raw.rows, raw.elapsed);
    report.line(format!(
        "| raw `COPY (SELECT the export's columns ... ORDER BY the page's order) TO STDOUT (FORMAT csv)`: rows / \
         MiB / first bytes / total | {} / {:.1} MiB / {} / {:.2} s ({} rows/s; unordered {:.2} s) |",
        thousands(raw.rows as f64),
        raw.bytes as f64 / 1048576.0,
        ms(raw.first_bytes),
        raw.elapsed.as_secs_f64(),
        thousands(raw_rate),
        raw.unordered.as_secs_f64()
    ));
    report.line(format!("| **throughput / the raw COPY's** | **{:.2}** |", export_rate / raw_rate));
    report.line(format!("| CPU, the export | {} |", cpu.describe(rows as u64, elapsed)));
    report.line(format!("| CPU, the raw ordered `COPY` | {} |", raw.cpu.describe(raw.rows, raw.elapsed)));
    report.line(format!("| VmRSS before / peak during | {} / {} |", mib(rss_before), mib(peak)));
    report.line(format!("| **RSS growth during an export, the largest** | **{}** |", mib(delta)));
    report.line(format!("| VmHWM before / after (process lifetime peak) | {} / {} |", mib(hwm_before), mib(hwm_after)));
    report.line("");
    report.target(
        format!("ExportLeads ALL over {} leads", thousands(leads as f64)),
        ">= 200,000 rows/s",
        format!("{} rows/s", thousands(export_rate)),
        export_rate >= 200_000.0,
    );
    report.target(
        "ExportLeads ALL / a raw COPY TO STDOUT of the same rows and columns",
        ">= 0.8",
        format!("{:.2} ({} / {} rows/s)", export_rate / raw_rate, thousands(export_rate), thousands(raw_rate)),
        export_rate / raw_rate >= 0.8,
    );
    report.target(
        "ExportLeads ALL, first rows",
        "< 1 s",
        ms(first_chunk.unwrap_or_default()),
        first_chunk.is_some_and(|first| first < Duration::from_secs(1)),
    );
    report.target(
        "ExportLeads memory",
        "< 100 MB",
        format!("+{} RSS (peak {})", mib(delta), mib(peak)),
        delta < 100 * 1000,
    );
    Ok(())
}
