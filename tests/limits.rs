//! The HIS listener's limits, over real mutual TLS against `medgate serve`: a client certificate
//! over its share (connections, requests in flight, requests per second) gets 429 with
//! `Retry-After` and an OperationOutcome while another certificate is served; slow headers,
//! slow bodies and slow handshakes are cut off; HTTP/2 announces its stream and header-list
//! limits and HTTP/1.1 refuses an oversized header block.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use medgate::client::{HisClient, Reply};
use medgate_fhir::{sample_transaction, PatientId};
use support::{rt, Gw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway with `[limits]` set to `limits` (TOML lines) and `his` lines added to `[his]`.
fn gateway(name: &str, limits: &str, his: &str) -> Gw {
    Gw::with_config(name, |t| format!("{}\n[limits]\n{limits}\n", t.replace("\n[his]\n", &format!("\n[his]\n{his}\n"))))
}

/// An HIS client with a second certificate from the hospital CA: another client, another share.
fn other_client(gw: &Gw) -> HisClient {
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = gw.site.ca.issue_client("his-lab", "his", now - time::Duration::days(1), now + time::Duration::days(30)).unwrap();
    let tls = medgate_gateway::tls::client_config(gw.site.ca_pem.as_bytes(), Some((cert.pem().as_bytes(), key.serialize_pem().as_bytes()))).unwrap();
    HisClient::new(gw.site.his_addr, "localhost", tls).unwrap().acting_as("dr.lab", "physician", "TREAT")
}

/// The answer must be 429 with Retry-After and a `throttled` OperationOutcome.
fn assert_throttled(what: &str, r: &Reply) {
    assert_eq!(r.status, 429, "{what}: {}", String::from_utf8_lossy(&r.body));
    let retry: u32 = r.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{what}: no Retry-After"));
    assert!(retry >= 1, "{what}");
    let o = r.json();
    assert_eq!(o["resourceType"], "OperationOutcome", "{what}: {o}");
    assert_eq!(o["issue"][0]["code"], "throttled", "{what}: {o}");
}

async fn metadata(c: &mut HisClient) -> Reply {
    c.get("/metadata").await.unwrap()
}

#[test]
fn a_client_over_its_request_rate_gets_429_while_another_is_served() {
    let gw = gateway("limits-rate", "requests_per_second_per_client = 1\nburst_per_client = 3", "");
    rt().block_on(async {
        let mut flood = gw.client();
        let mut other = other_client(&gw);
        let mut statuses = Vec::new();
        let mut throttled = None;
        for _ in 0..30 {
            let r = metadata(&mut flood).await;
            statuses.push(r.status);
            if r.status == 429 {
                throttled.get_or_insert(r);
            }
        }
        assert!(statuses[..3].iter().all(|s| *s == 200), "the burst passes: {statuses:?}");
        assert_throttled("over the rate", &throttled.unwrap_or_else(|| panic!("never throttled: {statuses:?}")));
        assert!(statuses.iter().filter(|s| **s == 200).count() < 30);
        assert_eq!(metadata(&mut other).await.status, 200, "another certificate has its own bucket");
    });
    assert!(gw.metric("medgate_his_refused_total{limit=\"requests_per_second_per_client\"}").unwrap() >= 1.0);
}

#[test]
fn a_client_over_its_connections_gets_429_while_another_is_served() {
    let gw = gateway("limits-connections", "max_connections_per_client = 2", "");
    rt().block_on(async {
        let mut a1 = gw.client();
        let mut a2 = gw.client();
        assert_eq!(metadata(&mut a1).await.status, 200);
        assert_eq!(metadata(&mut a2).await.status, 200);
        let mut a3 = gw.client();
        let r = metadata(&mut a3).await;
        assert_throttled("a third connection", &r);
        assert_eq!(r.headers.get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
        let mut other = other_client(&gw);
        assert_eq!(metadata(&mut other).await.status, 200, "another certificate has its own connections");
        // A connection closed gives its place back.
        drop(a1);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut a4 = gw.client();
            if metadata(&mut a4).await.status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "the closed connection's place never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metadata(&mut a2).await.status, 200);
    });
}

/// A request body that sends its first bytes and then nothing more: the request stays in flight.
struct Stalled(Option<Bytes>);

impl Body for Stalled {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None => Poll::Pending,
        }
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(1000)
    }
}

async fn stalled_post(gw: &Gw, path: &str) -> tokio::task::JoinHandle<()> {
    let tls = tls_stream(gw, b"http/1.1").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/fhir+json")
        .header("x-medgate-user", "dr.slow")
        .header("x-medgate-role", "physician")
        .header("x-medgate-purpose", "TREAT")
        .body(Stalled(Some(Bytes::from_static(b"{\"resourceType\":"))))
        .unwrap();
    tokio::spawn(async move {
        let _ = sender.send_request(req).await;
    })
}

async fn tls_stream(gw: &Gw, alpn: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut cfg = (*gw.site.his_tls().unwrap()).clone();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.site.his_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap()
}

fn wait_metric(gw: &Gw, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.metric(name) != Some(want) {
        assert!(Instant::now() < deadline, "{name} never reached {want}: {:?}", gw.metric(name));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_over_its_requests_in_flight_gets_429_and_a_stalled_body_times_out() {
    let gw = gateway("limits-in-flight", "max_requests_in_flight_per_client = 2", "request_timeout_seconds = 3");
    let rt = rt();
    let stalled: Vec<_> = rt.block_on(async { vec![stalled_post(&gw, "/Consent").await, stalled_post(&gw, "/Consent").await] });
    wait_metric(&gw, "medgate_his_requests_in_flight ", 2.0);
    rt.block_on(async {
        let mut third = gw.client();
        assert_throttled("a third request in flight", &metadata(&mut third).await);
        let mut other = other_client(&gw);
        assert_eq!(metadata(&mut other).await.status, 200, "another certificate is served");
    });
    // The stalled bodies hit his.request_timeout_seconds: the requests end, the places come back.
    wait_metric(&gw, "medgate_his_requests_in_flight ", 0.0);
    rt.block_on(async {
        for s in stalled {
            s.await.unwrap();
        }
        let mut again = gw.client();
        assert_eq!(metadata(&mut again).await.status, 200);
    });
    // Answered 400 (body not received in time) after his.request_timeout_seconds.
    gw.wait_log("route=\"POST /Consent\" status=400");
}

#[test]
fn slow_headers_and_silent_handshakes_are_cut_off() {
    let gw = gateway("limits-slow", "header_timeout_seconds = 1", "");
    rt().block_on(async {
        // Headers that never end: the connection is closed once the header time is up.
        let mut tls = tls_stream(&gw, b"http/1.1").await;
        tls.write_all(b"GET /metadata HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "the connection was never closed");
        assert!(started.elapsed() < Duration::from_secs(15));
        assert!(rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&rest));
        // A TCP connection that never starts its TLS handshake is closed too.
        let mut tcp = tokio::net::TcpStream::connect(gw.site.his_addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf)).await.expect("never closed");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    });
    gw.wait_log("TLS handshake timed out");
}

#[test]
fn http2_announces_its_limits_and_oversized_headers_are_refused() {
    let gw = gateway("limits-h2", "http2_max_concurrent_streams = 3\nmax_header_list_bytes = 16384", "");
    rt().block_on(async {
        let tls = tls_stream(&gw, b"h2").await;
        let (client, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.unwrap();
        // The server's SETTINGS arrive with its first frames; one request makes sure they did.
        let req = hyper::Request::get("https://localhost/metadata").body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);
        assert_eq!(client.current_max_send_streams(), 3, "SETTINGS_MAX_CONCURRENT_STREAMS");
        // A header block over the limit is not served; the connection's next request is.
        let mut client = client.ready().await.unwrap();
        let big = "x".repeat(20_000);
        let req = hyper::Request::get("https://localhost/metadata").header("x-padding", big.as_str()).body(()).unwrap();
        let refused = match client.send_request(req, true) {
            Ok((resp, _)) => match resp.await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            },
            Err(_) => 0,
        };
        assert!(refused == 0 || refused == 431, "an oversized header block got {refused}");
        // HTTP/1.1: 431 Request Header Fields Too Large.
        let mut tls = tls_stream(&gw, b"http/1.1").await;
        tls.write_all(format!("GET /metadata HTTP/1.1\r\nHost: localhost\r\nX-Padding: {big}\r\n\r\n").as_bytes()).await.unwrap();
        let mut head = vec![0u8; 64];
        let n = tls.read(&mut head).await.unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&head[..n]));
        let mut fresh = gw.client();
        assert_eq!(metadata(&mut fresh).await.status, 200);
    });
}

/// With one preparation slot (`limits.max_submissions_preparing = 1`): a submission still
/// uploading its body holds no slot, every way a submission ends gives the slot back (stored, a
/// repeat, a conflict, a refused bundle), submissions sent together are all stored in turn, and
/// a read is not held behind them. A slot kept by any of those paths would leave every later
/// submission waiting, and the client's deadline would fail the test.
#[test]
fn one_preparation_slot_is_given_back_by_every_submission_and_a_slow_upload_holds_none() {
    let gw = gateway("limits-preparing", "max_submissions_preparing = 1", "request_timeout_seconds = 600");
    assert_eq!(gw.metric("medgate_his_submissions_preparing_max "), Some(1.0));
    let rt = rt();
    let patient = |i: usize| PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: format!("{}", 7000 + i) };
    let stalled = rt.block_on(stalled_post(&gw, "/"));
    wait_metric(&gw, "medgate_his_requests_in_flight ", 1.0);
    rt.block_on(async {
        let mut c = gw.client().answer_within(Duration::from_secs(30));
        // Stored while the slow upload is still in flight.
        let first = sample_transaction(&patient(0), "text/plain", b"first", Some(("urn:ietf:rfc:3986", "urn:oid:1.2.3.7001")));
        let r = c.post_json("/", &first, &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        // A repeat (answered from the first), a conflict and a refused bundle give the slot back.
        let r = c.post_json("/", &first, &[]).await.unwrap();
        assert_eq!((r.status, &r.json()["entry"][0]["response"]["status"]), (200, &serde_json::json!("200 OK")));
        let clash = sample_transaction(&patient(0), "text/plain", b"other", Some(("urn:ietf:rfc:3986", "urn:oid:1.2.3.7001")));
        assert_eq!(c.post_json("/", &clash, &[]).await.unwrap().status, 409);
        let mut bad = sample_transaction(&patient(0), "text/plain", b"bad", None);
        bad["entry"][0]["resource"]["masterIdentifier"] = serde_json::json!({"system": "urn:ietf:rfc:3986"});
        assert_eq!(c.post_json("/", &bad, &[]).await.unwrap().status, 422);

        // Twelve at once over four connections: each waits its turn, all are stored.
        let mut sent = Vec::new();
        for k in 0..4 {
            let mut c = gw.client().answer_within(Duration::from_secs(60));
            sent.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for j in 0..3 {
                    let t = sample_transaction(&patient(1 + 3 * k + j), "text/plain", format!("note {k} {j}").as_bytes(), None);
                    statuses.push(c.post_json("/", &t, &[]).await.unwrap().status);
                }
                statuses
            }));
        }
        // A read meanwhile: the slot is for submissions only.
        let r = c.get(&format!("/DocumentReference?patient.identifier={}|7000", "urn:oid:1.2.250.1.213.1.4.8")).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["total"], 1, "{}", r.json());
        for s in sent {
            assert_eq!(s.await.unwrap(), vec![200, 200, 200]);
        }
    });
    assert_eq!(gw.metric("medgate_vault_records"), Some(13.0));
    assert_eq!(gw.metric("medgate_his_submissions_preparing "), Some(0.0));
    assert_eq!(gw.metric("medgate_his_submissions_waiting "), Some(0.0));
    // The slow upload is still in flight: it never took the slot.
    assert_eq!(gw.metric("medgate_his_requests_in_flight "), Some(1.0));
    stalled.abort();
}
