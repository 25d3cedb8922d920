//! The `notifications` section: follow-ups coming due, told to a webhook receiver on loopback.
//! `--due-follow-ups` follow-ups (100,000 by default) fall due within one minute; two `leads
//! run --services followup,notifications` processes of the release binary mark them due, tell
//! them and deliver them, signed, to one endpoint. Measured: the lag from each follow-up's due
//! time to its webhook's arrival (p50, p99, max), every follow-up received, each with one id
//! once the receiver drops repeats, and the sustained delivery rate beside the same signed
//! POSTs sent raw to the same receiver through the same client at the same concurrency.

use super::{
    Args, production_env,
    qualification::{Child, leads_binary},
    report::{Report, loadavg, machine_cpu_seconds, ms, progress, rate, stats, thousands},
};
use chrono::{DateTime, Utc};
use leads_tests::{TestEnv, pb, receiver::Receiver};
use platform::ServiceName;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ORG: &str = "notify-org";
/// How far ahead of now the first follow-up falls due: room to seed them all first.
const LEAD_TIME: Duration = Duration::from_secs(20);
/// Over how long the follow-ups fall due.
const DUE_WITHIN: Duration = Duration::from_secs(60);
const SEED_BATCH: usize = 10_000;
/// Raw POSTs in the baseline.
const RAW_POSTS: usize = 20_000;

pub async fn notifications(report: &mut Report, args: &Args) -> anyhow::Result<()> {
    report.line("## Notifications: follow-ups due, told as webhooks\n");
    report.line(format!("Load average before: {}\n", loadavg()));
    let binary = leads_binary()?;
    let env = production_env().await?;
    let result = run(report, args, &env, &binary).await;
    env.cleanup().await?;
    result
}

async fn run(report: &mut Report, args: &Args, env: &TestEnv, binary: &std::path::PathBuf) -> anyhow::Result<()> {
    let count = args.due_follow_ups;
    let receiver = Receiver::accepting().await?;
    let concurrency = platform::Settings::default().notifications.webhook_concurrency_per_endpoint;
    let extra = [("LEADS_NOTIFICATIONS_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.1/32".to_owned())];
    let mut children = Vec::new();
    for _ in 0..2 {
        children.push(Child::spawn_with(env, binary, "followup,notifications", &extra)?);
    }
    for child in &mut children {
        child.ready().await?;
    }
    let addr = children[0].addr(ServiceName::Notifications).ok_or_else(|| anyhow::anyhow!("no notifications port"))?;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    pb::notification_service_client::NotificationServiceClient::new(channel)
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            org_id: ORG.into(),
            url: receiver.url(),
            event_types: vec!["followup.due".into()],
            ..Default::default()
        })
        .await?;

    // The follow-ups, written as the follow-up service keeps them (seeding through
    // CreateFollowUp would take minutes and is the desk section's measure).
    let admin = env.admin_pool().await?;
    let first_due = Utc::now() + chrono::Duration::from_std(LEAD_TIME)?;
    let step = DUE_WITHIN.as_secs_f64() / count as f64;
    let seeding = Instant::now();
    let mut due_of: HashMap<uuid::Uuid, DateTime<Utc>> = HashMap::with_capacity(count as usize);
    let ids: Vec<uuid::Uuid> = (0..count).map(|_| uuid::Uuid::now_v7()).collect();
    for (batch, chunk) in ids.chunks(SEED_BATCH).enumerate() {
        let base = batch * SEED_BATCH;
        let due: Vec<DateTime<Utc>> = (0..chunk.len())
            .map(|i| first_due + chrono::Duration::microseconds(((base + i) as f64 * step * 1e6) as i64))
            .collect();
        let leads: Vec<uuid::Uuid> = chunk.iter().map(|_| uuid::Uuid::new_v4()).collect();
        let agents: Vec<String> = (0..chunk.len()).map(|i| format!("agent-{:03}", (base + i) % 200)).collect();
        let phones: Vec<String> = (0..chunk.len()).map(|i| leads_tests::phone((base + i) as u32)).collect();
        sqlx::query(
            "INSERT INTO followup.follow_ups (id, org_id, lead_id, contact_id, phone, contact_name, due_at, note, \
               agent_id, state, created_by) \
             SELECT id, $2, lead, lead, phone, 'Ada Lovelace', due, 'call back', agent, 'pending', 'bench' \
             FROM unnest($1::uuid[], $3::uuid[], $4::text[], $5::timestamptz[], $6::text[]) \
                  AS t(id, lead, phone, due, agent)",
        )
        .bind(chunk)
        .bind(ORG)
        .bind(&leads)
        .bind(&phones)
        .bind(&due)
        .bind(&agents)
        .execute(&admin)
        .await?;
        due_of.extend(chunk.iter().copied().zip(due));
    }
    let seeded_in = seeding.elapsed();
    let until_first = (first_due - Utc::now()).to_std().unwrap_or_default();
    progress(format!(
        "notifications: {} follow-ups seeded in {:.1} s, the first due in {:.1} s",
        thousands(count as f64),
        seeded_in.as_secs_f64(),
        until_first.as_secs_f64()
    ));

    let cpu_before = machine_cpu_seconds();
    let deadline = Instant::now() + until_first + DUE_WITHIN + Duration::from_secs(300);
    let mut last_print = Instant::now();
    let received = loop {
        let received = receiver.received();
        let distinct = received.iter().map(|r| r.id.as_str()).collect::<std::collections::HashSet<_>>().len();
        if distinct as u64 >= count {
            break received;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {distinct} of {count} follow-ups were delivered within 5 minutes of the last due time"
        );
        if last_print.elapsed() >= Duration::from_secs(10) {
            progress(format!("notifications: {distinct} of {count} delivered"));
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cpu = machine_cpu_seconds() - cpu_before;

    // Each follow-up's first arrival, its ids, and the receiver's repeats.
    let mut first: HashMap<uuid::Uuid, DateTime<Utc>> = HashMap::new();
    let mut ids_of: HashMap<uuid::Uuid, std::collections::HashSet<String>> = HashMap::new();
    for request in &received {
        let body: serde_json::Value = serde_json::from_slice(&request.body)?;
        let id: uuid::Uuid = body["data"]["follow_up_id"].as_str().unwrap_or_default().parse()?;
        let at = first.entry(id).or_insert(request.wall);
        *at = (*at).min(request.wall);
        ids_of.entry(id).or_default().insert(request.id.clone());
    }
    let lags: Vec<Duration> = first.iter().map(|(id, at)| (*at - due_of[id]).to_std().unwrap_or_default()).collect();
    let lag = stats(lags);
    let one_id_each = ids_of.values().all(|ids| ids.len() == 1);
    let repeats = received.len() - first.len();
    let first_at = first.values().min().copied().unwrap_or_else(Utc::now);
    let last_at = first.values().max().copied().unwrap_or_else(Utc::now);
    let delivering = (last_at - first_at).to_std().unwrap_or_default().max(Duration::from_millis(1));

    // Raw: the same signed POSTs, to the same receiver, through the same client and concurrency.
    let raw_receiver = Receiver::accepting().await?;
    let raw = raw_posts(&raw_receiver, concurrency).await?;

    for child in children {
        child.stop().await?;
    }

    report.line(format!(
        "{} follow-ups fall due within {} s ({:.0}/s); two `leads run --services followup,notifications` \
         processes mark them due, tell them and deliver them to one webhook endpoint (a receiver on loopback \
         answering 204), {concurrency} deliveries in flight at once (`webhook_concurrency_per_endpoint`, the \
         default). Seeded straight into the follow-up service's table in {:.1} s.\n",
        thousands(count as f64),
        DUE_WITHIN.as_secs(),
        count as f64 / DUE_WITHIN.as_secs_f64(),
        seeded_in.as_secs_f64()
    ));
    report.line("| measure | value |\n| --- | ---: |");
    report.line(format!(
        "| follow-ups received / due | {} / {} |",
        thousands(first.len() as f64),
        thousands(count as f64)
    ));
    report.line(format!(
        "| ids per follow-up after the receiver's dedupe | {} |",
        if one_id_each { "1 each" } else { "MORE THAN ONE" }
    ));
    report.line(format!("| requests received more than once (at-least-once repeats) | {repeats} |"));
    report.line(format!(
        "| lag due -> webhook received, p50 / p99 / max | {} / {} / {} |",
        ms(lag.p50),
        ms(lag.p99),
        ms(lag.max)
    ));
    report.line(format!(
        "| delivered, first to last arrival | {}/s over {:.1} s |",
        thousands(rate(first.len() as u64, delivering)),
        delivering.as_secs_f64()
    ));
    report.line(format!(
        "| raw: the same signed POSTs through the same client, {concurrency} in flight | {}/s |",
        thousands(raw)
    ));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    let cpu_per_follow_up = cpu / count as f64;
    report.line(format!(
        "| machine CPU per follow-up told and delivered (every process) | {:.0} µs |",
        cpu_per_follow_up * 1e6
    ));
    report.line(format!(
        "| what this machine's CPU allows at that cost ({cores:.0} cores), beside the due rate | {}/s |\n",
        thousands(cores / cpu_per_follow_up)
    ));
    report.target(
        "follow-up due -> webhook received, p99",
        "< 2 s",
        ms(lag.p99),
        lag.p99 < Duration::from_secs(2) && first.len() as u64 == count && one_id_each,
    );
    Ok(())
}

/// Signed POSTs of a follow-up's size, sent to `receiver` through the platform's outbound client
/// with `concurrency` in flight; answers requests per second.
async fn raw_posts(receiver: &Receiver, concurrency: usize) -> anyhow::Result<f64> {
    use futures::StreamExt;
    let policy = platform::egress::EgressPolicy::allowing(&["127.0.0.1/32"])?;
    let client = platform::egress::GuardedClient::new(policy)?;
    let body = bytes::Bytes::from(serde_json::to_vec(&serde_json::json!({
        "id": "ntf_0", "type": "followup.due", "org_id": ORG, "occurred_at": Utc::now(),
        "data": { "agent_id": "agent-001", "lead_id": uuid::Uuid::nil(), "follow_up_id": uuid::Uuid::nil(),
                  "due_at": Utc::now(), "note": "call back", "contact": { "name": "Ada Lovelace", "phone": "+14155550100" } }
    }))?);
    let url = receiver.url();
    let started = Instant::now();
    let sent: Vec<bool> = futures::stream::iter(0..RAW_POSTS)
        .map(|n| {
            let (client, body, url) = (client.clone(), body.clone(), url.clone());
            async move {
                let id = format!("raw_{n}");
                let timestamp = Utc::now().timestamp();
                let signature = notifications::webhooks::signature_header(
                    &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
                    &id,
                    timestamp,
                    &body,
                );
                let request = hyper::Request::post(url)
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature)
                    .body(http_body_util::Full::new(body));
                match request {
                    Ok(request) => client.send(request, Duration::from_secs(15), 1000).await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    anyhow::ensure!(sent.iter().all(|ok| *ok), "a raw POST failed");
    Ok(rate(RAW_POSTS as u64, elapsed))
}
