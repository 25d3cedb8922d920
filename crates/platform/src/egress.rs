//! Outbound HTTP to URLs that people type in (an organisation's OpenID Connect issuer, its
//! webhooks), which must never become a way into the platform's own network: private,
//! loopback, link-local (the cloud metadata address 169.254.169.254 among them), unique-local,
//! CGNAT, multicast, unspecified, documentation, benchmark and reserved addresses are refused,
//! and so are the IPv6 forms that carry such an IPv4 address (IPv4-mapped, IPv4-compatible,
//! NAT64, 6to4), unless the operator allows the network (`EgressPolicy`).
//!
//! Every address a name resolves to is checked, and the connection goes to the checked
//! addresses themselves, so a name that resolves elsewhere the second time (DNS rebinding)
//! gains nothing. Redirects are never followed: a 3xx is the caller's answer, to record.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, dns::Name},
    },
    rt::{TokioExecutor, TokioTimer},
};
use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

/// Why `ip` may not be reached from the platform, or None for a public address. IPv6 forms
/// that embed an IPv4 address are judged by it, their reason prefixed with the form
/// ("ipv4-mapped loopback").
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4, Embedding::Plain),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

/// How an IPv4 address is carried: the index of its reason in `V4Range::reasons`.
#[derive(Clone, Copy)]
enum Embedding {
    Plain = 0,
    Mapped = 1,
    Compatible = 2,
    Nat64 = 3,
    SixToFour = 4,
}

struct V4Range {
    network: u32,
    prefix: u8,
    reasons: [&'static str; 5],
}

macro_rules! v4_range {
    ([$a:literal, $b:literal, $c:literal, $d:literal] / $prefix:literal, $reason:literal) => {
        V4Range {
            network: u32::from_be_bytes([$a, $b, $c, $d]),
            prefix: $prefix,
            reasons: [
                $reason,
                concat!("ipv4-mapped ", $reason),
                concat!("ipv4-compatible ", $reason),
                concat!("nat64 ", $reason),
                concat!("6to4 ", $reason),
            ],
        }
    };
}

/// The IPv4 special-purpose ranges (RFC 6890 and its registry) that are not the public
/// internet; the first that holds an address names its reason, so the narrower come first.
const V4_RANGES: [V4Range; 16] = [
    v4_range!([0, 0, 0, 0] / 8, "unspecified"),
    v4_range!([10, 0, 0, 0] / 8, "private"),
    v4_range!([100, 64, 0, 0] / 10, "cgnat"),
    v4_range!([127, 0, 0, 0] / 8, "loopback"),
    v4_range!([169, 254, 0, 0] / 16, "link-local"),
    v4_range!([172, 16, 0, 0] / 12, "private"),
    v4_range!([192, 0, 0, 0] / 24, "reserved"),
    v4_range!([192, 0, 2, 0] / 24, "documentation"),
    v4_range!([192, 88, 99, 0] / 24, "reserved"),
    v4_range!([192, 168, 0, 0] / 16, "private"),
    v4_range!([198, 18, 0, 0] / 15, "benchmark"),
    v4_range!([198, 51, 100, 0] / 24, "documentation"),
    v4_range!([203, 0, 113, 0] / 24, "documentation"),
    v4_range!([224, 0, 0, 0] / 4, "multicast"),
    v4_range!([255, 255, 255, 255] / 32, "broadcast"),
    v4_range!([240, 0, 0, 0] / 4, "reserved"),
];

/// IPv6 ranges besides the ones that embed IPv4, narrower first; beyond them, anything
/// outside the global unicast 2000::/3 is reserved.
const V6_RANGES: [(u128, u8, &str); 9] = [
    (0x0064_ff9b_0001 << 80, 48, "nat64 local-use"),
    (0x2001_0002 << 96, 48, "benchmark"),
    (0x2001_0000 << 96, 32, "teredo"),
    (0x2001_0db8 << 96, 32, "documentation"),
    (0x3fff << 112, 20, "documentation"),
    (0x2001 << 112, 23, "reserved"),
    (0xfc00 << 112, 7, "unique-local"),
    (0xfe80 << 112, 10, "link-local"),
    (0xfec0 << 112, 10, "site-local"),
];
const NAT64: u128 = 0x0064_ff9b << 96;
const SIX_TO_FOUR: u128 = 0x2002 << 112;
const GLOBAL_UNICAST: u128 = 0x2000 << 112;

fn v4_reason(ip: Ipv4Addr, embedding: Embedding) -> Option<&'static str> {
    let bits = ip.to_bits();
    V4_RANGES
        .iter()
        .find(|range| in_v4_prefix(bits, range.network, range.prefix))
        .map(|range| range.reasons[embedding as usize])
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = ip.to_bits();
    let octets = ip.octets();
    let last_four = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4, Embedding::Mapped);
    }
    if bits >> 32 == 0 {
        return match bits {
            0 => Some("unspecified"),
            1 => Some("loopback"),
            _ => v4_reason(last_four, Embedding::Compatible),
        };
    }
    if in_v6_prefix(bits, NAT64, 96) {
        return v4_reason(last_four, Embedding::Nat64);
    }
    if in_v6_prefix(bits, SIX_TO_FOUR, 16) {
        let embedded = Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]);
        return v4_reason(embedded, Embedding::SixToFour);
    }
    if ip.is_multicast() {
        return Some("multicast");
    }
    V6_RANGES
        .iter()
        .find(|(network, prefix, _)| in_v6_prefix(bits, *network, *prefix))
        .map(|(_, _, reason)| *reason)
        .or_else(|| (!in_v6_prefix(bits, GLOBAL_UNICAST, 3)).then_some("reserved"))
}

fn in_v4_prefix(bits: u32, network: u32, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    bits & mask == network & mask
}

fn in_v6_prefix(bits: u128, network: u128, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    bits & mask == network & mask
}

/// A network in CIDR notation (`10.20.0.0/16`, `fd00::/8`), or one address (`10.0.0.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

/// An allowed network that does not parse, naming the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} {reason}")]
pub struct NetworkError {
    pub entry: String,
    pub reason: &'static str,
}

impl FromStr for Network {
    type Err = NetworkError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let refused = |reason| NetworkError { entry: entry.to_owned(), reason };
        let (address, prefix) = match entry.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (entry.trim(), None),
        };
        let address: IpAddr =
            address.parse().map_err(|_| refused("is not an IP address or a CIDR network such as 10.20.0.0/16"))?;
        let longest = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => longest,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= longest)
                .ok_or_else(|| refused("has a prefix length that is not a number up to the address's bits"))?,
        };
        let network = Self { address, prefix };
        // 10.0.0.1/8 is most likely a typo for a host or for 10.0.0.0/8: which is not guessed.
        if !network.contains(address) || network.truncated() != address {
            return Err(refused("has address bits set beyond its prefix length"));
        }
        Ok(network)
    }
}

impl Network {
    /// Whether `ip` is inside; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => in_v4_prefix(ip.to_bits(), network.to_bits(), self.prefix),
            (IpAddr::V6(network), IpAddr::V6(ip)) => in_v6_prefix(ip.to_bits(), network.to_bits(), self.prefix),
            (IpAddr::V6(network), IpAddr::V4(ip)) => {
                in_v6_prefix(ip.to_ipv6_mapped().to_bits(), network.to_bits(), self.prefix)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }

    fn truncated(&self) -> IpAddr {
        match self.address {
            IpAddr::V4(ip) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from_bits(ip.to_bits() & mask))
            }
            IpAddr::V6(ip) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from_bits(ip.to_bits() & mask))
            }
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Where outbound requests may go besides the public internet.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Destinations inside these pass even when `forbidden_reason` has one: an operator's own
    /// internal service, or the tests' servers on loopback.
    pub allowed_networks: Vec<Network>,
}

impl EgressPolicy {
    /// A policy allowing `entries` (as settings hold them); the first that does not parse is
    /// the error.
    pub fn allowing(entries: &[impl AsRef<str>]) -> Result<Self, NetworkError> {
        let allowed_networks = entries.iter().map(|entry| entry.as_ref().parse()).collect::<Result<_, _>>()?;
        Ok(Self { allowed_networks })
    }

    /// Whether `ip` is inside an allowed network.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allowed_networks.iter().any(|network| network.contains(ip))
    }

    /// Why `ip` may not be reached under this policy, or None when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        forbidden_reason(ip).filter(|_| !self.allows(ip))
    }
}

/// What a destination answered: its status and headers, and the start of its body.
#[derive(Debug, Clone)]
pub struct EgressResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The first `keep_bytes` of the body.
    pub body_excerpt: Bytes,
    /// The body was longer than `body_excerpt`; the rest was not read.
    pub truncated: bool,
    /// From the call of `send` to the end of what was read of the body.
    pub elapsed: Duration,
}

/// Why a request got no answer. The texts are for an admin reading a delivery log: they name
/// the host and address, nothing of the platform's own network or code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("{}: outbound requests may not go there", where_forbidden(host, *address, reason))]
    Forbidden { host: String, address: IpAddr, reason: &'static str },
    #[error("the name {0} does not resolve")]
    Resolve(String),
    #[error("no complete answer within the time allowed")]
    Timeout,
    #[error("the connection failed: {0}")]
    Connect(String),
    #[error("the URL {0}")]
    InvalidUrl(String),
}

/// "10.0.0.1 is private" for an address given as such, "intranet.example resolves to
/// 10.0.0.1, which is private" for a name.
fn where_forbidden(host: &str, address: IpAddr, reason: &str) -> String {
    if host.trim_start_matches('[').trim_end_matches(']').parse() == Ok(address) {
        format!("{address} is {reason}")
    } else {
        format!("{host} resolves to {address}, which is {reason}")
    }
}

/// An HTTP(S) client that reaches only what its `EgressPolicy` allows; clones share the
/// connection pool.
#[derive(Clone)]
pub struct GuardedClient {
    inner: Arc<Guarded>,
}

struct Guarded {
    policy: Arc<EgressPolicy>,
    client: Client<HttpsConnector<HttpConnector<CheckingResolver>>, Full<Bytes>>,
}

impl GuardedClient {
    pub fn new(policy: EgressPolicy) -> anyhow::Result<Self> {
        let policy = Arc::new(policy);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
            Ok(tls) => tls,
            Err(error) => {
                tracing::info!(%error, "no system certificate authorities, trusting mozilla's for outbound requests");
                hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_webpki_roots(provider)?
            }
        };
        let mut http = HttpConnector::new_with_resolver(CheckingResolver { policy: policy.clone() });
        // The https connector wrapping it sends https URLs through it too.
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = tls.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self { inner: Arc::new(Guarded { policy, client }) })
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.inner.policy
    }

    /// Sends `request` and reads the answer's first `keep_bytes`, all within `timeout`
    /// (connecting included). A longer body is cut and its connection dropped rather than
    /// read on. Redirects come back as they are.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
        keep_bytes: usize,
    ) -> Result<EgressResponse, EgressError> {
        let started = Instant::now();
        let host = self.check_url(request.uri())?;
        let exchange = async {
            let response = self.inner.client.request(request).await.map_err(|error| refusal_or_failure(&error))?;
            let (parts, mut body) = response.into_parts();
            let mut excerpt = BytesMut::with_capacity(keep_bytes.min(64 * 1024));
            let mut truncated = false;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|error| EgressError::Connect(format!("the answer broke off: {error}")))?;
                let Ok(data) = frame.into_data() else { continue };
                let room = keep_bytes - excerpt.len();
                if data.len() > room {
                    excerpt.extend_from_slice(&data[..room]);
                    truncated = true;
                    break;
                }
                excerpt.extend_from_slice(&data);
            }
            Ok(EgressResponse {
                status: parts.status,
                headers: parts.headers,
                body_excerpt: excerpt.freeze(),
                truncated,
                elapsed: started.elapsed(),
            })
        };
        let answer = tokio::time::timeout(timeout, exchange).await.map_err(|_| EgressError::Timeout)?;
        if let Err(error) = &answer {
            tracing::debug!(%host, %error, "outbound request failed");
        }
        answer
    }

    /// The host of `uri` once it is an absolute http(s) URL without credentials whose host,
    /// when an address, may be reached. Names are checked once resolved (`CheckingResolver`);
    /// addresses never reach the resolver.
    fn check_url(&self, uri: &Uri) -> Result<String, EgressError> {
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(EgressError::InvalidUrl("must start with http:// or https://".into()));
        }
        let authority = uri.authority().ok_or_else(|| EgressError::InvalidUrl("has no host".into()))?;
        if authority.as_str().contains('@') {
            return Err(EgressError::InvalidUrl("must not hold a user name or password".into()));
        }
        let host = authority.host();
        if let Ok(address) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>()
            && let Some(reason) = self.inner.policy.refusal(address)
        {
            return Err(EgressError::Forbidden { host: host.to_owned(), address, reason });
        }
        Ok(host.to_owned())
    }
}

/// The resolver's refusal when the client's error holds one, else what failed, told by its
/// innermost cause (the socket's or TLS's error, not the client's wrapping of it).
fn refusal_or_failure(error: &hyper_util::client::legacy::Error) -> EgressError {
    let mut cause: &(dyn StdError + 'static) = error;
    loop {
        if let Some(refusal) = cause.downcast_ref::<Refusal>() {
            return refusal.0.clone();
        }
        match cause.source() {
            Some(source) => cause = source,
            None => return EgressError::Connect(cause.to_string()),
        }
    }
}

/// An `EgressError` carried through the connector's boxed errors.
#[derive(Debug)]
struct Refusal(EgressError);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for Refusal {}

/// Resolves names for the connector, refusing a name when any of its addresses may not be
/// reached; the connector then connects to exactly the addresses checked.
#[derive(Clone)]
struct CheckingResolver {
    policy: Arc<EgressPolicy>,
}

impl tower_service::Service<Name> for CheckingResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Refusal;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str();
            let unresolved = || Refusal(EgressError::Resolve(host.to_owned()));
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host, 0)).await.map_err(|_| unresolved())?.collect();
            if addresses.is_empty() {
                return Err(unresolved());
            }
            // One forbidden address refuses the name: trying only the others would leave
            // which one is reached to the name's owner.
            for address in &addresses {
                if let Some(reason) = policy.refusal(address.ip()) {
                    let host = host.to_owned();
                    return Err(Refusal(EgressError::Forbidden { host, address: address.ip(), reason }));
                }
            }
            Ok(addresses.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::mpsc,
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|_| panic!("{text} is no address"))
    }

    #[test]
    fn every_special_ipv4_range_is_refused_to_its_edges() {
        for (address, expected) in [
            ("0.0.0.0", Some("unspecified")),
            ("0.255.255.255", Some("unspecified")),
            ("1.0.0.0", None),
            ("8.8.8.8", None),
            ("9.255.255.255", None),
            ("10.0.0.0", Some("private")),
            ("10.255.255.255", Some("private")),
            ("11.0.0.0", None),
            ("100.63.255.255", None),
            ("100.64.0.0", Some("cgnat")),
            ("100.127.255.255", Some("cgnat")),
            ("100.128.0.0", None),
            ("126.255.255.255", None),
            ("127.0.0.0", Some("loopback")),
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.255", Some("loopback")),
            ("128.0.0.0", None),
            ("169.253.255.255", None),
            ("169.254.0.0", Some("link-local")),
            ("169.254.169.254", Some("link-local")),
            ("169.254.255.255", Some("link-local")),
            ("169.255.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some("private")),
            ("172.31.255.255", Some("private")),
            ("172.32.0.0", None),
            ("192.0.0.0", Some("reserved")),
            ("192.0.0.255", Some("reserved")),
            ("192.0.1.0", None),
            ("192.0.2.0", Some("documentation")),
            ("192.0.2.255", Some("documentation")),
            ("192.0.3.0", None),
            ("192.88.99.1", Some("reserved")),
            ("192.167.255.255", None),
            ("192.168.0.0", Some("private")),
            ("192.168.255.255", Some("private")),
            ("192.169.0.0", None),
            ("198.17.255.255", None),
            ("198.18.0.0", Some("benchmark")),
            ("198.19.255.255", Some("benchmark")),
            ("198.20.0.0", None),
            ("198.51.100.0", Some("documentation")),
            ("198.51.100.255", Some("documentation")),
            ("198.51.101.0", None),
            ("203.0.112.255", None),
            ("203.0.113.0", Some("documentation")),
            ("203.0.113.255", Some("documentation")),
            ("203.0.114.0", None),
            ("223.255.255.255", None),
            ("224.0.0.0", Some("multicast")),
            ("239.255.255.255", Some("multicast")),
            ("240.0.0.0", Some("reserved")),
            ("255.255.255.254", Some("reserved")),
            ("255.255.255.255", Some("broadcast")),
        ] {
            assert_eq!(forbidden_reason(ip(address)), expected, "{address}");
        }
    }

    #[test]
    fn every_special_ipv6_range_is_refused_to_its_edges_and_embedded_ipv4_by_its_own() {
        for (address, expected) in [
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("::2", Some("ipv4-compatible unspecified")),
            ("::127.0.0.1", Some("ipv4-compatible loopback")),
            ("::8.8.8.8", None),
            ("::ffff:127.0.0.1", Some("ipv4-mapped loopback")),
            ("::ffff:a9fe:a9fe", Some("ipv4-mapped link-local")),
            ("::ffff:10.1.2.3", Some("ipv4-mapped private")),
            ("::ffff:100.64.0.1", Some("ipv4-mapped cgnat")),
            ("::ffff:8.8.8.8", None),
            ("::1:0:0:0", Some("reserved")),
            ("64:ff9b::7f00:1", Some("nat64 loopback")),
            ("64:ff9b::192.168.1.1", Some("nat64 private")),
            ("64:ff9b::8.8.8.8", None),
            ("64:ff9b:1::1", Some("nat64 local-use")),
            ("64:ff9b:1:ffff::", Some("nat64 local-use")),
            ("100::1", Some("reserved")),
            ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("reserved")),
            ("2000::", None),
            ("2001::", Some("teredo")),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Some("teredo")),
            ("2001:1::1", Some("reserved")),
            ("2001:2::", Some("benchmark")),
            ("2001:2:0:ffff::", Some("benchmark")),
            ("2001:2:1::", Some("reserved")),
            ("2001:1ff:ffff::", Some("reserved")),
            ("2001:200::", None),
            ("2001:db7:ffff::", None),
            ("2001:db8::", Some("documentation")),
            ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", Some("documentation")),
            ("2001:db9::", None),
            ("2002:7f00:1::", Some("6to4 loopback")),
            ("2002:a9fe:a9fe::1", Some("6to4 link-local")),
            ("2002:c0a8:101::", Some("6to4 private")),
            ("2002:808:808::", None),
            ("2606:4700:4700::1111", None),
            ("3ffe:ffff::", None),
            ("3fff::", Some("documentation")),
            ("3fff:fff:ffff::", Some("documentation")),
            ("3fff:1000::", None),
            ("4000::", Some("reserved")),
            ("fbff:ffff::", Some("reserved")),
            ("fc00::", Some("unique-local")),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("unique-local")),
            ("fe7f:ffff::", Some("reserved")),
            ("fe80::", Some("link-local")),
            ("febf:ffff::", Some("link-local")),
            ("fec0::", Some("site-local")),
            ("feff:ffff::", Some("site-local")),
            ("ff00::", Some("multicast")),
            ("ff02::1", Some("multicast")),
        ] {
            assert_eq!(forbidden_reason(ip(address)), expected, "{address}");
        }
    }

    #[test]
    fn allowed_networks_parse_strictly_and_let_their_addresses_through() {
        let policy = EgressPolicy::allowing(&["127.0.0.1/32", "10.20.0.0/16", "fd00::/8", "192.168.1.7"]).unwrap();
        assert_eq!(policy.refusal(ip("127.0.0.1")), None);
        assert_eq!(policy.refusal(ip("::ffff:127.0.0.1")), None, "an ipv4-mapped address is its ipv4 one");
        assert_eq!(policy.refusal(ip("127.0.0.2")), Some("loopback"));
        assert_eq!(policy.refusal(ip("10.20.255.255")), None);
        assert_eq!(policy.refusal(ip("10.21.0.0")), Some("private"));
        assert_eq!(policy.refusal(ip("fdab::1")), None);
        assert_eq!(policy.refusal(ip("fc00::1")), Some("unique-local"));
        assert_eq!(policy.refusal(ip("192.168.1.7")), None);
        assert_eq!(policy.refusal(ip("192.168.1.8")), Some("private"));
        assert_eq!(policy.refusal(ip("::1")), Some("loopback"));
        assert_eq!(EgressPolicy::default().refusal(ip("127.0.0.1")), Some("loopback"));
        assert!(EgressPolicy::allowing(&["0.0.0.0/0"]).unwrap().allows(ip("169.254.169.254")));
        assert_eq!("fd00::/8".parse::<Network>().unwrap().to_string(), "fd00::/8");
        for (entry, says) in [
            ("10.0.0.1/8", "beyond its prefix"),
            ("10.0.0.0/33", "prefix length"),
            ("fd00::/129", "prefix length"),
            ("10.0.0.0/", "prefix length"),
            ("intranet", "not an IP address"),
            ("10.0.0.0/8/8", "prefix length"),
        ] {
            let error = EgressPolicy::allowing(&["127.0.0.1/32", entry]).expect_err(entry).to_string();
            assert!(error.contains(entry) && error.contains(says), "{entry}: {error}");
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn get(url: &str) -> Request<Full<Bytes>> {
        Request::get(url).body(Full::new(Bytes::new())).expect("a request")
    }

    fn loopback_allowed() -> GuardedClient {
        GuardedClient::new(EgressPolicy::allowing(&["127.0.0.1/32"]).unwrap()).unwrap()
    }

    /// A server on 127.0.0.1 that answers each request with `answer` (never, when None),
    /// sending each request line it reads.
    async fn serve(answer: Option<Vec<u8>>) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (requests, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (answer, requests) = (answer.clone(), requests.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => head.extend_from_slice(&buffer[..read]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let _ = requests.send(head.lines().next().unwrap_or_default().to_owned());
                    match answer {
                        Some(answer) => {
                            let _ = stream.write_all(&answer).await;
                        }
                        None => std::future::pending().await,
                    }
                });
            }
        });
        (address, received)
    }

    #[tokio::test]
    async fn internal_destinations_are_refused_however_they_are_named() {
        let client = GuardedClient::new(EgressPolicy::default()).unwrap();
        for (url, address, reason) in [
            ("http://127.0.0.1/", "127.0.0.1", "loopback"),
            ("http://127.0.0.1:8080/admin", "127.0.0.1", "loopback"),
            ("http://[::1]/", "::1", "loopback"),
            ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "link-local"),
            ("https://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1", "ipv4-mapped loopback"),
            ("http://[::ffff:a9fe:a9fe]/", "::ffff:a9fe:a9fe", "ipv4-mapped link-local"),
            ("http://10.1.2.3/", "10.1.2.3", "private"),
            ("https://192.168.0.1/", "192.168.0.1", "private"),
            ("http://100.64.0.1/", "100.64.0.1", "cgnat"),
            ("http://0.0.0.0/", "0.0.0.0", "unspecified"),
        ] {
            match client.send(get(url), TIMEOUT, 1024).await {
                Err(error @ EgressError::Forbidden { .. }) => {
                    let EgressError::Forbidden { address: refused, reason: why, .. } = &error else { unreachable!() };
                    assert_eq!((*refused, *why), (ip(address), reason), "{url}");
                    assert!(error.to_string().starts_with(&format!("{} is {reason}: ", ip(address))), "{error}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        // A name is refused for what it resolves to: localhost is loopback (127.0.0.1 or ::1).
        match client.send(get("http://localhost:1/"), TIMEOUT, 1024).await {
            Err(error @ EgressError::Forbidden { .. }) => {
                let EgressError::Forbidden { host, address, reason } = &error else { unreachable!() };
                assert_eq!((host.as_str(), *reason), ("localhost", "loopback"));
                assert!(address.is_loopback(), "{address}");
                let told = format!("localhost resolves to {address}, which is loopback: outbound requests may not");
                assert!(error.to_string().starts_with(&told), "{error}");
            }
            other => panic!("localhost: {other:?}"),
        }
        // Allowing 127.0.0.1 alone does not allow a name that may also be ::1.
        let only_v4 = loopback_allowed();
        let (server, _) = serve(Some(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec())).await;
        match only_v4.send(get(&format!("http://localhost:{}/", server.port())), TIMEOUT, 1024).await {
            Err(EgressError::Forbidden { address, .. }) => assert_eq!(address, ip("::1")),
            Ok(response) => assert_eq!(response.status, StatusCode::NO_CONTENT, "localhost is 127.0.0.1 alone here"),
            Err(other) => panic!("localhost: {other:?}"),
        }
    }

    #[tokio::test]
    async fn urls_that_are_not_plain_http_are_refused() {
        let client = GuardedClient::new(EgressPolicy::default()).unwrap();
        for (url, says) in [
            ("ftp://example.com/", "http:// or https://"),
            ("http://user:secret@example.com/", "user name or password"),
            ("/relative", "http:// or https://"),
        ] {
            match client.send(get(url), TIMEOUT, 1024).await {
                Err(error @ EgressError::InvalidUrl(_)) => assert!(error.to_string().contains(says), "{url}: {error}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        match client.send(get("http://no-such-host.invalid/"), TIMEOUT, 1024).await {
            Err(EgressError::Resolve(host)) => assert_eq!(host, "no-such-host.invalid"),
            other => panic!("an unresolvable name: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_redirect_is_the_answer_and_is_not_followed() {
        let (server, mut requests) =
            serve(Some(b"HTTP/1.1 302 Found\r\nLocation: /followed\r\nContent-Length: 5\r\n\r\nmoved".to_vec())).await;
        let client = loopback_allowed();
        let response = client.send(get(&format!("http://{server}/hook")), TIMEOUT, 1024).await.unwrap();
        assert_eq!(response.status, StatusCode::FOUND);
        assert_eq!(response.headers.get("location").unwrap(), "/followed");
        assert_eq!((&response.body_excerpt[..], response.truncated), (&b"moved"[..], false));
        assert!(response.elapsed < TIMEOUT);
        assert_eq!(requests.recv().await.unwrap(), "GET /hook HTTP/1.1");
        // A redirect followed would have been sent before the answer came back.
        assert!(requests.try_recv().is_err(), "the redirect was followed");
    }

    #[tokio::test]
    async fn the_timeout_covers_an_answer_that_never_comes() {
        let (server, mut requests) = serve(None).await;
        let client = loopback_allowed();
        let started = Instant::now();
        let answer = client.send(get(&format!("http://{server}/slow")), Duration::from_millis(300), 1024).await;
        assert_eq!(answer.unwrap_err(), EgressError::Timeout);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(requests.recv().await.unwrap(), "GET /slow HTTP/1.1", "the request was sent");
    }

    #[tokio::test]
    async fn only_the_first_bytes_of_a_large_body_are_kept() {
        let size = 4 * 1024 * 1024;
        let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes();
        answer.extend(std::iter::repeat_n(b'x', size));
        let (server, _) = serve(Some(answer)).await;
        let client = loopback_allowed();
        let response = client.send(get(&format!("http://{server}/big")), TIMEOUT, 1000).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.body_excerpt.len(), 1000);
        assert!(response.body_excerpt.iter().all(|byte| *byte == b'x'));
        assert!(response.truncated);

        let (server, _) = serve(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789".to_vec())).await;
        let response = client.send(get(&format!("http://{server}/exact")), TIMEOUT, 10).await.unwrap();
        assert_eq!((&response.body_excerpt[..], response.truncated), (&b"0123456789"[..], false));
    }

    #[tokio::test]
    async fn a_refused_connection_is_told_as_such() {
        // A port just freed: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        match loopback_allowed().send(get(&format!("http://127.0.0.1:{port}/")), TIMEOUT, 10).await {
            Err(EgressError::Connect(reason)) => assert!(reason.to_lowercase().contains("refused"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
