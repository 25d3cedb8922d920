//! Qualification through a language model: with `qualification.llm_url` set, leads are scored
//! by an OpenAI-compatible chat-completions endpoint (here a small HTTP/1.1 server of the
//! test's own) from their latest messages, with its reasons; when it answers garbage, does not
//! answer in time or the rate limit is reached, the built-in scorer's score stands.

use leads_proto::v1::{
    lead_service_client::LeadServiceClient, qualification_service_client::QualificationServiceClient,
};
use leads_tests::{TestEnv, chat_event, eventually, pb, phone};
use platform::ServiceName;
use serde_json::{Value, json};
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(60);
const ORG: &str = "acme";
const MODEL: &str = "test-model";
const KEY: &str = "sk-test-0123";
const LLM_VERSION: &str = "llm:test-model";

type Leads = LeadServiceClient<Channel>;
type Qualification = QualificationServiceClient<Channel>;

/// How the fake endpoint answers.
const SCORE: u8 = 0;
const GARBAGE: u8 = 1;
const SILENT: u8 = 2;

/// An OpenAI-compatible chat-completions endpoint: checks the key, the model and the request's
/// shape, and scores 91 a conversation that says "comprar", 12 any other.
#[derive(Default)]
struct FakeLlm {
    mode: AtomicU8,
    /// Requests that were not what the service must send.
    refused: AtomicUsize,
    /// The user message of every request.
    transcripts: Mutex<Vec<String>>,
}

impl FakeLlm {
    async fn start() -> anyhow::Result<(Arc<Self>, String)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/v1/chat/completions", listener.local_addr()?);
        let llm = Arc::new(Self::default());
        let serving = llm.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serving.clone().connection(stream));
            }
        });
        Ok((llm, url))
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Answers the requests of one (kept-alive) connection in turn.
    async fn connection(self: Arc<Self>, stream: TcpStream) {
        let mut stream = BufReader::new(stream);
        loop {
            let (mut request_line, mut length, mut authorization) = (String::new(), 0, None);
            loop {
                let mut line = String::new();
                if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                if request_line.is_empty() {
                    request_line = line;
                } else if let Some((name, value)) = line.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        "authorization" => authorization = Some(value.trim().to_owned()),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            if stream.read_exact(&mut body).await.is_err() {
                return;
            }
            if self.mode.load(Ordering::SeqCst) == SILENT {
                // No answer: wait until the client gives up and closes the connection.
                let _ = stream.read(&mut [0; 1]).await;
                return;
            }
            let (status, reply) = self.answer(&request_line, authorization.as_deref(), &body);
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                reply.len()
            );
            if stream.get_mut().write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn answer(&self, request_line: &str, authorization: Option<&str>, body: &[u8]) -> (&'static str, String) {
        let expected_auth = format!("Bearer {KEY}");
        if !request_line.starts_with("POST /v1/chat/completions ") || authorization != Some(expected_auth.as_str()) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return ("401 Unauthorized", r#"{"error": "unauthorized"}"#.into());
        }
        let request: Value = serde_json::from_slice(body).unwrap_or_default();
        let transcript = request["messages"][1]["content"].as_str().unwrap_or_default().to_owned();
        let well_formed = request["model"] == MODEL
            && request["temperature"] == 0
            && request["response_format"]["type"] == "json_object"
            && request["messages"][0]["role"] == "system"
            && request["messages"][0]["content"].as_str().is_some_and(|s| s.contains("\"score\""))
            && request["messages"][1]["role"] == "user"
            && transcript.lines().all(|l| l.starts_with("contact: ") || l.starts_with("business: "));
        if !well_formed {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return ("400 Bad Request", r#"{"error": "bad request"}"#.into());
        }
        self.transcripts.lock().unwrap().push(transcript.clone());
        let content = match self.mode.load(Ordering::SeqCst) {
            GARBAGE => "I would say this lead looks promising".to_owned(),
            _ if transcript.contains("comprar") => {
                json!({ "score": 91, "reasons": ["asks to buy", "wants it today"] }).to_string()
            }
            _ => json!({ "score": 12, "reasons": ["no sign of wanting to buy"] }).to_string(),
        };
        let completion = json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [{ "index": 0, "finish_reason": "stop",
                          "message": { "role": "assistant", "content": content } }],
        });
        ("200 OK", completion.to_string())
    }
}

async fn lead_id(leads: &Leads, phone: &str) -> String {
    eventually(DEADLINE, "the lead", || async {
        let mut leads = leads.clone();
        let all = leads_tests::all_leads(&mut leads, ORG).await.ok()?;
        all.into_iter().find(|l| l.contact.as_ref().is_some_and(|c| c.phone == phone)).map(|l| l.id)
    })
    .await
}

async fn qualification(client: &Qualification, lead_id: &str) -> Option<pb::Qualification> {
    let request = pb::GetQualificationRequest { org_id: ORG.into(), lead_id: lead_id.into() };
    client.clone().get_qualification(request).await.ok().map(|r| r.into_inner())
}

/// Waits for the lead's qualification to satisfy `check`.
async fn qualified(
    client: &Qualification,
    lead_id: &str,
    what: &str,
    check: impl Fn(&pb::Qualification) -> bool,
) -> pb::Qualification {
    eventually(DEADLINE, what, || async { qualification(client, lead_id).await.filter(|q| check(q)) }).await
}

async fn requalify(client: &Qualification, lead_id: &str) -> anyhow::Result<pb::Qualification> {
    let request = pb::RequalifyRequest { org_id: ORG.into(), lead_id: lead_id.into() };
    Ok(client.clone().requalify(request).await?.into_inner())
}

/// Scored by the built-in prior, with its reasons: each factor with its signed points.
fn built_in(q: &pb::Qualification) -> bool {
    q.model_version == "prior-v1"
        && !q.reasons.is_empty()
        && q.reasons.iter().all(|r| r.rsplit_once(' ').is_some_and(|(_, p)| p.parse::<i32>().is_ok()))
}

#[tokio::test]
async fn the_language_model_scores_with_its_reasons_and_the_built_in_scorer_stands_in_when_it_fails()
-> anyhow::Result<()> {
    let (llm, url) = FakeLlm::start().await?;
    let key_file = std::env::temp_dir().join(format!("llm-key-{}", uuid::Uuid::new_v4()));
    std::fs::write(&key_file, format!("{KEY}\n"))?;
    let mut env = TestEnv::new().await?;
    let q = &mut env.settings.qualification;
    q.llm_url = Some(url);
    q.llm_model = MODEL.into();
    q.llm_api_key_file = Some(key_file.clone());
    q.llm_timeout_ms = 1500;
    q.llm_max_per_second = 1000;
    env.settings.validate()?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let leads = node.lead().await?;
    let client: Qualification = QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?);

    // The model's score and reasons, on the qualification and on the lead.
    env.publish_interaction(ORG, &chat_event("k-0", &phone(1), "Hola, quiero comprar el plan hoy")).await?;
    env.publish_interaction(ORG, &chat_event("c-0", &phone(2), "hello, just looking around")).await?;
    let keen = lead_id(&leads, &phone(1)).await;
    let idle = lead_id(&leads, &phone(2)).await;
    let q = qualified(&client, &keen, "the keen lead scored by the model", |q| q.model_version == LLM_VERSION).await;
    assert_eq!((q.score, q.source()), (91, pb::ScoreSource::Ai));
    assert_eq!(q.reasons, ["asks to buy", "wants it today"]);
    let q = qualified(&client, &idle, "the idle lead scored by the model", |q| q.model_version == LLM_VERSION).await;
    assert_eq!((q.score, q.reasons.as_slice()), (12, ["no sign of wanting to buy".to_owned()].as_slice()));
    eventually(DEADLINE, "the model's score on the lead", || async {
        let mut leads = leads.clone();
        let all = leads_tests::all_leads(&mut leads, ORG).await.ok()?;
        all.into_iter().find(|l| l.id == keen && l.score == Some(91)).map(|_| ())
    })
    .await;

    // Garbage from the model: the built-in score and its own reasons.
    llm.set(GARBAGE);
    env.publish_interaction(ORG, &chat_event("k-1", &phone(1), "¿cuánto cuesta?")).await?;
    let q = qualified(&client, &keen, "the built-in score after garbage", |q| q.model_version == "prior-v1").await;
    assert!(built_in(&q), "{q:?}");
    assert!(q.reasons.iter().any(|r| r.starts_with("intent")), "{:?}", q.reasons);

    // Requalify asks the model again, about the whole conversation, oldest message first.
    llm.set(SCORE);
    let q = requalify(&client, &keen).await?;
    assert_eq!((q.model_version.as_str(), q.score), (LLM_VERSION, 91));
    let transcripts = llm.transcripts.lock().unwrap().clone();
    assert_eq!(
        transcripts.last().map(String::as_str),
        Some("contact: Hola, quiero comprar el plan hoy\ncontact: ¿cuánto cuesta?")
    );

    // No answer within the timeout: the built-in score, from the consumer and from Requalify.
    llm.set(SILENT);
    env.publish_interaction(ORG, &chat_event("c-1", &phone(2), "ok thanks")).await?;
    let q = qualified(&client, &idle, "the built-in score after the timeout", |q| q.model_version == "prior-v1").await;
    assert!(built_in(&q), "{q:?}");
    let started = Instant::now();
    let q = requalify(&client, &keen).await?;
    assert!(built_in(&q), "{q:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());

    assert_eq!(llm.refused.load(Ordering::SeqCst), 0, "every request had the key, the model and the right shape");
    node.stop().await?;
    std::fs::remove_file(key_file)?;
    env.cleanup().await
}

#[tokio::test]
async fn beyond_the_rate_limit_leads_get_the_built_in_score() -> anyhow::Result<()> {
    let (llm, url) = FakeLlm::start().await?;
    let mut env = TestEnv::new().await?;
    let q = &mut env.settings.qualification;
    q.llm_url = Some(url);
    q.llm_model = MODEL.into();
    q.llm_api_key = Some(KEY.into());
    q.llm_max_per_second = 1;
    env.settings.validate()?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let leads = node.lead().await?;
    let client: Qualification = QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?);
    const LEADS: u32 = 8;
    for n in 0..LEADS {
        env.publish_interaction(ORG, &chat_event(&format!("r-{n}"), &phone(n), "quiero comprar hoy")).await?;
    }
    let mut versions = Vec::new();
    for n in 0..LEADS {
        let id = lead_id(&leads, &phone(n)).await;
        let q = qualified(&client, &id, "every lead scored", |_| true).await;
        if q.model_version == LLM_VERSION {
            assert_eq!(q.score, 91);
        } else {
            assert!(built_in(&q), "{q:?}");
        }
        versions.push(q.model_version);
    }
    let by_llm = versions.iter().filter(|v| *v == LLM_VERSION).count();
    assert!(by_llm >= 1, "the first request is within the limit: {versions:?}");
    assert!(by_llm < LEADS as usize, "one request a second: {versions:?}");
    assert!(llm.transcripts.lock().unwrap().len() < LEADS as usize, "no request beyond the limit");
    assert_eq!(llm.refused.load(Ordering::SeqCst), 0);
    node.stop().await?;
    env.cleanup().await
}
