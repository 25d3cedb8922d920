//! A minimal HTTP client for the console's pages, keeping cookies as a browser does: enough to
//! check what the server answers (headers, cookies, escaping, CSRF) without a browser.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use std::collections::BTreeMap;

pub struct Page {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The first hidden `_csrf` field of the page.
    pub fn csrf(&self) -> String {
        let marker = "name=\"_csrf\" value=\"";
        let start = self.body.find(marker).map(|i| i + marker.len()).expect("a form with a CSRF token");
        self.body[start..].split('"').next().unwrap_or_default().to_owned()
    }
}

pub struct Browserless {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    pub cookies: BTreeMap<String, String>,
    /// The `Set-Cookie` lines of the last answer, as sent.
    pub set_cookies: Vec<String>,
}

impl Browserless {
    pub fn new(addr: std::net::SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
            cookies: BTreeMap::new(),
            set_cookies: Vec::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<String>) -> anyhow::Result<Page> {
        let mut request = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            let line: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request = request.header("cookie", line.join("; "));
        }
        if body.is_some() {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = self.client.request(request).await?;
        let (parts, body) = response.into_parts();
        self.set_cookies.clear();
        for value in parts.headers.get_all("set-cookie") {
            let line = value.to_str()?.to_owned();
            if let Some((name, rest)) = line.split(';').next().and_then(|pair| pair.split_once('=')) {
                if line.contains("Max-Age=0") || rest.is_empty() {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), rest.to_owned());
                }
            }
            self.set_cookies.push(line);
        }
        let body = String::from_utf8_lossy(&body.collect().await?.to_bytes()).into_owned();
        Ok(Page { status: parts.status.as_u16(), headers: parts.headers, body })
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<Page> {
        self.send("GET", path, None).await
    }

    /// Posts a form of `fields`, urlencoded.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> anyhow::Result<Page> {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
        self.send("POST", path, Some(body.join("&"))).await
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
