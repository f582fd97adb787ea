//! The HIS listener's edges, over real mutual TLS against `medgate serve`: a body over the limit
//! is answered with the 413 OperationOutcome, however fast the client is still sending, on
//! HTTP/1.1 and on HTTP/2, with and without a Content-Length.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::{rt, Gw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Far over the gateway's default limit (10 MiB).
const BODY: usize = 32 << 20;
const ROUNDS: usize = 50;

/// A request body of `left` bytes, handed to the connection as fast as it takes them, with no
/// length announced (HTTP/1.1 sends it chunked).
struct Streamed {
    chunk: Bytes,
    left: usize,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len());
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

/// The two ways a client sends the same too-large body: with its Content-Length, or streamed.
enum Sent {
    Sized(Full<Bytes>),
    Streamed(Streamed),
}

impl Body for Sent {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Sent::Sized(b) => Pin::new(b).poll_frame(cx),
            Sent::Streamed(b) => Pin::new(b).poll_frame(cx),
        }
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Sent::Sized(b) => b.size_hint(),
            Sent::Streamed(b) => b.size_hint(),
        }
    }
}

fn bodies(big: &Bytes) -> [(&'static str, Sent); 2] {
    [
        ("with Content-Length", Sent::Sized(Full::new(big.clone()))),
        ("streamed", Sent::Streamed(Streamed { chunk: big.slice(..256 * 1024), left: big.len() })),
    ]
}

fn post(body: Sent) -> Request<Sent> {
    Request::post("https://localhost/")
        .header("content-type", "application/fhir+json")
        .header("x-medgate-user", "dr.edge")
        .header("x-medgate-role", "physician")
        .header("x-medgate-purpose", "TREAT")
        .body(body)
        .unwrap()
}

async fn tls(gw: &Gw, alpn: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut cfg = (*gw.site.his_tls().unwrap()).clone();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.site.his_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
    stream
}

/// The answer must be the 413 OperationOutcome, read whole.
async fn assert_too_long(what: &str, resp: Result<Response<Incoming>, hyper::Error>) {
    let resp = resp.unwrap_or_else(|e| panic!("{what}: no answer, the client saw: {e:?}"));
    assert_eq!(resp.status(), 413, "{what}");
    let body = resp.into_body().collect().await.unwrap_or_else(|e| panic!("{what}: answer cut short: {e:?}")).to_bytes();
    let outcome: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&body)));
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}: {outcome}");
    assert_eq!(outcome["issue"][0]["code"], "too-long", "{what}: {outcome}");
}

#[test]
fn a_body_over_the_limit_gets_the_413_outcome_over_http1_however_fast_the_client_sends() {
    let gw = Gw::new("edges-h1");
    let big = Bytes::from(vec![b' '; BODY]);
    rt().block_on(async {
        for round in 0..ROUNDS {
            for (how, body) in bodies(&big) {
                // The gateway closes the connection after such an answer: one connection each.
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls(&gw, b"http/1.1").await)).await.unwrap();
                tokio::spawn(conn);
                let what = format!("HTTP/1.1 round {round}, 32 MiB {how}");
                assert_too_long(&what, send.send_request(post(body)).await).await;
            }
        }
    });
    // Nothing of it was stored.
    assert_eq!(gw.metric("medgate_vault_records"), Some(0.0));
    assert_eq!(gw.metric("medgate_http_requests_total{route=\"POST /\",status=\"413\"}"), Some((2 * ROUNDS) as f64));
}

#[test]
fn a_body_over_the_limit_gets_the_413_outcome_over_http2_however_fast_the_client_sends() {
    let gw = Gw::new("edges-h2");
    let big = Bytes::from(vec![b' '; BODY]);
    rt().block_on(async {
        // One connection throughout: each refused stream is reset, the connection goes on.
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls(&gw, b"h2").await)).await.unwrap();
        tokio::spawn(conn);
        for round in 0..ROUNDS {
            for (how, body) in bodies(&big) {
                let what = format!("HTTP/2 round {round}, 32 MiB {how}");
                send.ready().await.unwrap_or_else(|e| panic!("{what}: connection lost: {e:?}"));
                assert_too_long(&what, send.send_request(post(body)).await).await;
            }
        }
    });
    assert_eq!(gw.metric("medgate_vault_records"), Some(0.0));
    assert_eq!(gw.metric("medgate_http_requests_total{route=\"POST /\",status=\"413\"}"), Some((2 * ROUNDS) as f64));
}

/// A client that announces its length and waits for `100 Continue` before sending the body gets
/// the 413 straight away: the body is refused before any of it is read.
#[test]
fn a_body_announced_over_the_limit_is_refused_before_it_is_sent() {
    let gw = Gw::new("edges-expect");
    rt().block_on(async {
        let mut s = tls(&gw, b"http/1.1").await;
        let head = format!(
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/fhir+json\r\nX-Medgate-User: dr.edge\r\n\
             X-Medgate-Role: physician\r\nX-Medgate-Purpose: TREAT\r\nExpect: 100-continue\r\nContent-Length: {BODY}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        // Not one byte of the body is sent; the gateway answers and closes.
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
        assert!(!text.contains("100 Continue"), "{text}");
        assert!(text.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{text}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let outcome: Value = serde_json::from_str(body).unwrap();
        assert_eq!(outcome["issue"][0]["code"], "too-long", "{outcome}");
    });
}
