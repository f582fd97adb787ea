//! The HIS side of the FHIR interface: a small mutual-TLS HTTP/1.1 client used by `medgate demo`,
//! the load generator and the tests, so all of them speak to the gateway exactly as an HIS would.
//!
//! Boundary: one keep-alive connection per client value, re-opened when the server closed it.
//! Every request has a deadline: a gateway that never answers is an error, not a wait forever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderMap;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

/// A response as the HIS sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// How long a request may take, from connecting (when the connection is not open yet) to the
/// answer's last byte, unless [`HisClient::answer_within`] says otherwise. The gateway answers
/// in milliseconds, and in seconds under the heaviest load a bench makes.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// A client holding one connection to the gateway.
#[derive(Debug)]
pub struct HisClient {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    sender: Option<SendRequest<Full<Bytes>>>,
    answer_within: Duration,
    /// Headers sent with every request (end user, role, purpose).
    pub default_headers: Vec<(String, String)>,
}

impl HisClient {
    pub fn new(addr: SocketAddr, server_name: &str, tls: Arc<rustls::ClientConfig>) -> Result<HisClient, String> {
        let server_name = ServerName::try_from(server_name.to_owned()).map_err(|e| format!("server name: {e}"))?;
        Ok(HisClient { addr, server_name, tls, sender: None, answer_within: ANSWER_WITHIN, default_headers: Vec::new() })
    }

    /// Sets how long a request (or [`HisClient::open`]) may take before it fails.
    pub fn answer_within(mut self, limit: Duration) -> HisClient {
        self.answer_within = limit;
        self
    }

    /// Sets the end user, role and purpose of use sent with every request.
    pub fn acting_as(mut self, user: &str, role: &str, purpose: &str) -> HisClient {
        self.default_headers = vec![
            ("x-medgate-user".into(), user.into()),
            ("x-medgate-role".into(), role.into()),
            ("x-medgate-purpose".into(), purpose.into()),
        ];
        self
    }

    /// Opens the connection now (TCP, the TLS handshake, HTTP/1.1) instead of at the first
    /// request.
    pub async fn open(&mut self) -> Result<(), String> {
        let limit = self.answer_within;
        match tokio::time::timeout(limit, self.connect()).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(format!("connect to {}: no TLS session within {} s", self.addr, limit.as_secs_f64())),
        }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| format!("connect {}: {e}", self.addr))?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS handshake with {}: {e}", self.addr))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| "no connection".to_owned())
    }

    /// Sends one request and reads the whole answer. A request not answered within the
    /// client's limit fails, and its connection is dropped (the next request opens another).
    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Reply, String> {
        let limit = self.answer_within;
        match tokio::time::timeout(limit, self.exchange(method, path, headers, body)).await {
            Ok(r) => r,
            Err(_) => {
                self.sender = None;
                Err(format!("{method} {path}: no answer from {} within {} s", self.addr, limit.as_secs_f64()))
            }
        }
    }

    async fn exchange(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Reply, String> {
        let mut builder = Request::builder().method(method).uri(path).header("host", "localhost");
        for (k, v) in &self.default_headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if !body.is_empty() {
            builder = builder.header("content-type", "application/fhir+json");
        }
        let req = builder.body(Full::new(Bytes::from(body))).map_err(|e| format!("request: {e}"))?;
        let sender = self.connect().await?;
        sender.ready().await.map_err(|e| format!("connection: {e}"))?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(format!("request failed: {e}"));
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(|e| format!("response body: {e}"))?.to_bytes();
        Ok(Reply { status, headers, body })
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.send("GET", path, &[], Vec::new()).await
    }

    pub async fn post_json(&mut self, path: &str, body: &serde_json::Value, headers: &[(&str, &str)]) -> Result<Reply, String> {
        self.send("POST", path, headers, serde_json::to_vec(body).map_err(|e| e.to_string())?).await
    }
}

/// Percent-encodes a query parameter value (everything but unreserved characters).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// A server that takes the TCP connection and never speaks: the client gives up at its
    /// limit with an error naming the request, and does not keep the connection.
    #[tokio::test]
    async fn a_server_that_never_answers_fails_the_request_at_the_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                open.push(listener.accept().await.unwrap().0);
            }
        });
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut c = HisClient::new(addr, "localhost", Arc::new(tls)).unwrap().answer_within(Duration::from_millis(200));
        let err = c.get("/metadata").await.expect_err("no answer");
        assert!(err.starts_with("GET /metadata: no answer from 127.0.0.1:") && err.ends_with("within 0.2 s"), "{err}");
        assert!(c.sender.is_none());
        let err = c.open().await.expect_err("no handshake");
        assert!(err.contains("no TLS session within 0.2 s"), "{err}");
        held.abort();
    }
}
