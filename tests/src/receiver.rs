//! A webhook receiver on loopback for the notification tests and the bench: it keeps every
//! request it is sent (its `webhook-*` headers and body) and answers as the test scripts it,
//! by how many times it has seen the message's `webhook-id`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    /// This message's attempts so far, this one included.
    pub attempt: usize,
    pub at: Instant,
    pub wall: chrono::DateTime<chrono::Utc>,
}

/// What to answer: status, extra headers and body, after a delay.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: std::time::Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: String::new(), delay: std::time::Duration::ZERO }
    }

    /// Answers only after `delay`, as a slow receiver does.
    pub fn after(mut self, delay: std::time::Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn with_body(mut self, body: &str) -> Self {
        body.clone_into(&mut self.body);
        self
    }
}

type Script = dyn Fn(&Received) -> Answer + Send + Sync;

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// (slow answers being given now, the most there ever were at once)
    in_flight: Arc<Mutex<(usize, usize)>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl Receiver {
    /// Listens on 127.0.0.1 and answers each request as `script` says.
    pub async fn start(script: impl Fn(&Received) -> Answer + Send + Sync + 'static) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let in_flight: Arc<Mutex<(usize, usize)>> = Arc::default();
        let attempts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let (kept, counting) = (received.clone(), in_flight.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = State { kept: kept.clone(), attempts: attempts.clone(), in_flight: counting.clone() };
                let script = script.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, state, script).await;
                });
            }
        });
        Ok(Self { addr, received, in_flight, task: Arc::new(task) })
    }

    /// Answers 200 to everything.
    pub async fn accepting() -> anyhow::Result<Self> {
        Self::start(|_| Answer::status(200)).await
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("not poisoned").clone()
    }

    /// The most slow answers (`Answer::after`) it was ever giving at once.
    pub fn most_at_once(&self) -> usize {
        self.in_flight.lock().expect("not poisoned").1
    }
}

struct State {
    kept: Arc<Mutex<Vec<Received>>>,
    attempts: Arc<Mutex<HashMap<String, usize>>>,
    in_flight: Arc<Mutex<(usize, usize)>>,
}

/// Serves the requests of one connection until the client closes it.
async fn serve(stream: TcpStream, state: State, script: Arc<Script>) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut headers: HashMap<String, String> = HashMap::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        let id = headers.get("webhook-id").cloned().unwrap_or_default();
        let attempt = {
            let mut attempts = state.attempts.lock().expect("not poisoned");
            let count = attempts.entry(id.clone()).or_default();
            *count += 1;
            *count
        };
        let request = Received {
            id,
            timestamp: headers.get("webhook-timestamp").cloned().unwrap_or_default(),
            signature: headers.get("webhook-signature").cloned().unwrap_or_default(),
            body,
            attempt,
            at: Instant::now(),
            wall: chrono::Utc::now(),
        };
        let answer = script(&request);
        state.kept.lock().expect("not poisoned").push(request);
        if !answer.delay.is_zero() {
            {
                let mut in_flight = state.in_flight.lock().expect("not poisoned");
                in_flight.0 += 1;
                in_flight.1 = in_flight.1.max(in_flight.0);
            }
            tokio::time::sleep(answer.delay).await;
            state.in_flight.lock().expect("not poisoned").0 -= 1;
        }
        let mut response = format!("HTTP/1.1 {} X\r\ncontent-length: {}\r\n", answer.status, answer.body.len());
        for (name, value) in &answer.headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&answer.body);
        reader.get_mut().write_all(response.as_bytes()).await?;
    }
}
