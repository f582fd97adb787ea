//! The HIS-facing FHIR HTTP interface: routing, headers, body limits, and the one place where a
//! refusal becomes an HTTP response (a FHIR OperationOutcome with the right status).
//!
//! Boundary: HTTP in, [`Gateway`] calls, HTTP out. The caller's identity comes from the TLS layer
//! (the verified client certificate); the end user, role and purpose come from headers the HIS
//! sets on every request:
//!
//! | header              | meaning                                                       |
//! |---------------------|---------------------------------------------------------------|
//! | `X-Medgate-User`    | the end user's id in the HIS (pseudonymised before recording) |
//! | `X-Medgate-Role`    | the end user's role, a code such as `physician`               |
//! | `X-Medgate-Purpose` | HL7 v3 PurposeOfUse: TREAT, ETREAT, BTG, ...                  |
//! | `Idempotency-Key`   | optional on creates: a retry with the same key is not stored twice |
//!
//! Logs name the route template, the status and the HIS system, never a query string (it holds
//! patient identifiers) or a body.
//!
//! Searches live in `search`, ITI-68 in `binary`, and how an answer is represented (format,
//! `_pretty`, `_summary`, `_elements`, absolute URLs against the public base URL) in
//! `representation`.

pub mod admission;
mod binary;
mod provide;
mod representation;
mod search;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode, Version};
use serde_json::Value;

use medgate_fhir::search::{AUDIT_EVENT, CONSENT, DOCUMENT_REFERENCE, LIST};
use medgate_fhir::FhirError;
use representation::{absolutize, check_json, rep_params, to_bytes, Rep};
use crate::gateway::{Caller, Gateway, PURPOSES};
use crate::tls::ClientIdentity;
use crate::GatewayError;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// The HTTP front of one gateway.
#[derive(Debug)]
pub struct Api {
    pub gateway: Gateway,
    /// Largest body accepted (`his.max_body_bytes`); a reload changes it.
    pub max_body: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Time a client has to send a whole request body.
    pub body_timeout: std::time::Duration,
    /// The base URL clients reach the FHIR interface at (`his.public_base_url`), without a
    /// trailing slash: every `fullUrl`, page link and attachment URL starts with it.
    pub public_base: String,
    /// The submissions prepared at once (`limits.max_submissions_preparing`).
    pub admission: Arc<admission::Admission>,
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: u16, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).unwrap_or_default())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    r
}

fn with_location(mut r: Resp, location: Option<String>, base: &str) -> Resp {
    let absolute = location.map(|l| if l.contains("://") { l } else { format!("{base}/{l}") });
    if let Some(loc) = absolute.and_then(|l| HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert(LOCATION, loc);
    }
    r
}

/// The one mapping of a refusal to the HIS: its status, its OperationOutcome (rendered by the
/// FHIR layer; internal details never reach the client), and the seconds after which a retry
/// may succeed (`Retry-After`), when the refusal says so.
pub fn outcome(e: &GatewayError) -> (u16, Value, Option<u32>) {
    let fhir = match e {
        GatewayError::Request(f) => return (f.status(), f.to_outcome(), f.retry_after()),
        GatewayError::Forbidden(m) => FhirError::Forbidden(m.clone()),
        GatewayError::NotFound(m) => FhirError::NotFound(m.clone()),
        GatewayError::Gone(m) => FhirError::Gone(m.clone()),
        GatewayError::Conflict(m) => FhirError::Conflict(m.clone()),
        GatewayError::InFlight(m) => FhirError::InFlight(m.clone()),
        GatewayError::BadRequest(m) => FhirError::BadParameter(m.clone()),
        GatewayError::Unavailable(m) => FhirError::Unavailable(m.clone()),
        GatewayError::Integrity(id) => FhirError::Integrity(id.clone()),
        GatewayError::Internal(m) => FhirError::Internal(m.clone()),
    };
    (fhir.status(), fhir.to_outcome(), fhir.retry_after())
}

/// A refusal as an HTTP response: OperationOutcome, status from the error, full text to the log.
pub fn error_response(e: &GatewayError) -> Resp {
    if e.status() >= 500 {
        tracing::error!(error = %e, "request failed");
    }
    let (status, body, retry_after) = outcome(e);
    let mut r = json_response(status, &body);
    if let Some(seconds) = retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    r
}

/// Header value as text, or a clear refusal.
fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Result<Option<&'a str>, FhirError> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| FhirError::BadParameter(format!("header {name} must be visible ASCII"))),
    }
}

fn is_code(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:/@+=|#~".contains(&b))
}

/// The end user, role and purpose asserted by the HIS, checked.
fn caller(req: &Request<Incoming>, client: &ClientIdentity) -> Result<Caller, FhirError> {
    let need = |name: &str, what: &str| -> Result<String, FhirError> {
        match header(req, name)? {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => Err(FhirError::BadParameter(format!("header {name} is required: {what}"))),
        }
    };
    let user = need("x-medgate-user", "the id of the end user on whose behalf the HIS asks")?;
    if user.len() > 256 {
        return Err(FhirError::BadParameter("header X-Medgate-User is longer than 256 characters".into()));
    }
    let role = need("x-medgate-role", "the end user's role, a code such as physician or nurse")?;
    if !is_code(&role) {
        return Err(FhirError::BadParameter(
            "header X-Medgate-Role must be a code: 1 to 128 letters, digits or - . _ : / @ + = | # ~".into(),
        ));
    }
    let purpose = need("x-medgate-purpose", "the HL7 v3 purpose of use, e.g. TREAT")?;
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(FhirError::BadParameter(format!("header X-Medgate-Purpose must be one of {}", PURPOSES.join(", "))));
    }
    Ok(Caller { client: client.clone(), user, role, purpose })
}

fn check_fhir_json(req: &Request<Incoming>) -> Result<(), FhirError> {
    let ct = header(req, "content-type")?.unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/fhir+json" || essence == "application/json" {
        Ok(())
    } else if essence == "application/fhir+xml" || essence.ends_with("/xml") {
        Err(FhirError::UnsupportedMediaType(
            "FHIR XML is not supported by this gateway; send the same resource as JSON with Content-Type: application/fhir+json".into(),
        ))
    } else {
        Err(FhirError::UnsupportedMediaType(
            "send Content-Type: application/fhir+json".into(),
        ))
    }
}

async fn body(req: Request<Incoming>, limit: usize, timeout: std::time::Duration) -> Result<Bytes, FhirError> {
    if let Some(len) = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        if len > limit as u64 {
            return Err(FhirError::TooLarge { limit });
        }
    }
    let collected = tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect())
        .await
        .map_err(|_| FhirError::MalformedJson(format!("the request body did not arrive within {} s", timeout.as_secs())))?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(FhirError::TooLarge { limit }),
        Err(e) => Err(FhirError::MalformedJson(format!("the request body could not be read: {e}"))),
    }
}

/// Route template of a request, for metrics and logs (no ids, no query).
fn route(method: &Method, path: &str) -> &'static str {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["metadata"]) => "GET /metadata",
        ("POST", [""]) => "POST /",
        ("POST", ["DocumentReference"]) => "POST /DocumentReference",
        ("GET", ["DocumentReference"]) => "GET /DocumentReference",
        ("POST", ["DocumentReference", "_search"]) => "POST /DocumentReference/_search",
        ("GET", ["DocumentReference", _]) => "GET /DocumentReference/{id}",
        ("DELETE", ["DocumentReference", _]) => "DELETE /DocumentReference/{id}",
        ("PATCH", ["DocumentReference", _]) => "PATCH /DocumentReference/{id}",
        ("GET", ["List"]) => "GET /List",
        ("POST", ["List", "_search"]) => "POST /List/_search",
        ("GET", ["List", _]) => "GET /List/{id}",
        ("GET", ["Patient", _]) => "GET /Patient/{id}",
        ("GET", ["Binary", _]) => "GET /Binary/{id}",
        ("GET", ["AuditEvent"]) => "GET /AuditEvent",
        ("POST", ["AuditEvent", "_search"]) => "POST /AuditEvent/_search",
        ("POST", ["Consent"]) => "POST /Consent",
        ("PUT", ["Consent", _]) => "PUT /Consent/{id}",
        ("GET", ["Consent"]) => "GET /Consent",
        ("POST", ["Consent", "_search"]) => "POST /Consent/_search",
        _ => "other",
    }
}

impl Api {
    /// Serves one request from a client whose certificate was verified during the handshake.
    pub async fn handle(self: Arc<Self>, client: Arc<ClientIdentity>, req: Request<Incoming>) -> Result<Resp, Infallible> {
        let started = Instant::now();
        let method = req.method().clone();
        let route = route(&method, self.local_path(req.uri().path()));
        let http1 = req.version() < Version::HTTP_2;
        let mut resp = match self.dispatch(route, &client, req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        if http1 && resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is not read, so the connection ends after this answer (the
            // server lingers until the client stops sending; see `crate::server`). Said so, the
            // client does not send its next request on it. HTTP/2 resets only the stream.
            resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let status = resp.status().as_u16();
        self.gateway.metrics.observe(route, status, started.elapsed());
        tracing::info!(route, status, his = %client.system, ms = started.elapsed().as_millis() as u64, "request");
        Ok(resp)
    }

    async fn dispatch(&self, route: &'static str, client: &ClientIdentity, req: Request<Incoming>) -> Result<Resp, GatewayError> {
        let path = self.local_path(req.uri().path()).trim_matches('/').to_owned();
        let id = path.split('/').nth(1).unwrap_or("").to_owned();
        let gw = &self.gateway;
        match route {
            "GET /metadata" => {
                let rep = self.read_rep(&req)?;
                let mut cs = medgate_fhir::capability_statement(env!("CARGO_PKG_VERSION"), &crate::clock::now_rfc3339(), &self.public_base);
                medgate_fhir::subset::subset(&mut cs, rep.summary, rep.elements.as_deref());
                Ok(self.fhir(200, cs, &rep))
            }
            "POST /" | "POST /DocumentReference" => self.provide(route, client, req).await,
            "GET /DocumentReference" | "POST /DocumentReference/_search" => self.find(&DOCUMENT_REFERENCE, client, req).await,
            "GET /AuditEvent" | "POST /AuditEvent/_search" => self.find(&AUDIT_EVENT, client, req).await,
            "GET /Consent" | "POST /Consent/_search" => self.find(&CONSENT, client, req).await,
            "GET /List" | "POST /List/_search" => self.find(&LIST, client, req).await,
            "GET /DocumentReference/{id}" => {
                let caller = caller(&req, client)?;
                let rep = self.read_rep(&req)?;
                let mut doc = gw.read_reference(&caller, &id).await?;
                medgate_fhir::subset::subset(&mut doc, rep.summary, rep.elements.as_deref());
                Ok(self.fhir(200, doc, &rep))
            }
            "DELETE /DocumentReference/{id}" => {
                let (caller, g) = (caller(&req, client)?, gw.clone());
                gw.writes.to_the_end(async move { g.erase(&caller, &id).await }).await?;
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NO_CONTENT;
                Ok(r)
            }
            "PATCH /DocumentReference/{id}" => self.patch_status(client, req, &id).await,
            "GET /List/{id}" | "GET /Patient/{id}" => self.read_submitted(route, client, req, &id).await,
            "GET /Binary/{id}" => {
                let caller = caller(&req, client)?;
                let pairs = medgate_fhir::search::decode_pairs(req.uri().query().unwrap_or(""))?;
                let rep = rep_params(&pairs, true)?;
                let accept = header(&req, "accept")?;
                let inm = header(&req, "if-none-match")?;
                self.retrieve(&caller, &id, &rep, accept, inm).await
            }
            "POST /Consent" | "PUT /Consent/{id}" => {
                let caller = caller(&req, client)?;
                check_fhir_json(&req)?;
                let idem = idempotency_key(&req)?;
                let bytes = body(req, self.body_limit(), self.body_timeout).await?;
                let sub = medgate_fhir::parse_consent(&bytes)?;
                let g = gw.clone();
                let done = gw
                    .writes
                    .to_the_end(async move {
                        if route == "POST /Consent" {
                            g.record_consent(&caller, &sub, idem.as_deref()).await
                        } else {
                            g.revoke_consent(&caller, &id, &sub).await
                        }
                    })
                    .await?;
                Ok(with_location(self.fhir(done.status, done.body, &Rep::default()), done.location, &self.public_base))
            }
            _ => {
                let known = ["", "metadata", "DocumentReference", "Binary", "AuditEvent", "Consent", "List", "Patient"];
                let first = path.split('/').next().unwrap_or("");
                if known.contains(&first) {
                    Err(FhirError::MethodNotAllowed(format!("{} on /{}", req.method(), first)).into())
                } else {
                    Err(FhirError::NotFound("no such endpoint; see GET /metadata".into()).into())
                }
            }
        }
    }
}

impl Api {
    /// The largest body accepted now (`his.max_body_bytes`, as last reloaded).
    fn body_limit(&self) -> usize {
        self.max_body.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A FHIR resource as the answer: relative URLs resolved against the public base, indented
    /// when `_pretty=true`.
    fn fhir(&self, status: u16, mut body: Value, rep: &Rep) -> Resp {
        absolutize(&mut body, &self.public_base);
        let bytes = to_bytes(&body, rep.pretty);
        Self::fhir_response(status, bytes)
    }

    /// [`Api::fhir`] for a body that carries a document: rendered into a buffer that is wiped
    /// once sent, and the resource's strings wiped once rendered.
    fn fhir_wiped(&self, status: u16, mut body: Value, rep: &Rep) -> Resp {
        absolutize(&mut body, &self.public_base);
        let bytes = representation::to_wiped_bytes(&mut body, rep.pretty);
        Self::fhir_response(status, bytes)
    }

    fn fhir_response(status: u16, bytes: Bytes) -> Resp {
        let mut r = Response::new(Full::new(bytes));
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        r
    }

    /// The representation a read asks for, checked against `Accept`.
    fn read_rep(&self, req: &Request<Incoming>) -> Result<Rep, FhirError> {
        let pairs = medgate_fhir::search::decode_pairs(req.uri().query().unwrap_or(""))?;
        let rep = rep_params(&pairs, true)?;
        check_json(&rep, header(req, "accept")?)?;
        Ok(rep)
    }

    /// The request path below the public base URL's path (`/fhir/metadata` → `/metadata` for
    /// a base `https://host/fhir`); a path outside it is served as it is.
    fn local_path<'a>(&self, path: &'a str) -> &'a str {
        let base_path = self.public_base.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..])).unwrap_or("");
        match path.strip_prefix(base_path) {
            Some(rest) if !base_path.is_empty() && (rest.is_empty() || rest.starts_with('/')) => rest,
            _ => path,
        }
    }
}

/// The optional `Idempotency-Key` header: 1 to 256 characters.
fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, FhirError> {
    let idem = header(req, "idempotency-key")?.map(str::to_owned);
    if idem.as_ref().is_some_and(|k| k.is_empty() || k.len() > 256) {
        return Err(FhirError::BadParameter("header Idempotency-Key must be 1 to 256 characters".into()));
    }
    Ok(idem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_runs_to_its_end_when_its_request_is_dropped() {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let writes = crate::gateway::Writes::default();
        let mut request = Box::pin(writes.to_the_end(async move {
            let _ = go_rx.await;
            let _ = done_tx.send("stored");
            Ok::<(), GatewayError>(())
        }));
        // The request starts its write, then its client goes away.
        std::future::poll_fn(|cx| {
            assert!(std::future::Future::poll(request.as_mut(), cx).is_pending(), "the write waits");
            std::task::Poll::Ready(())
        })
        .await;
        drop(request);
        go_tx.send(()).expect("the write is still running");
        assert_eq!(done_rx.await, Ok("stored"), "the write went on to its end without its request");
        assert!(writes.finished(std::time::Duration::from_secs(30)).await, "and a stop sees it finished");
    }

    #[tokio::test]
    async fn a_write_whose_client_left_keeps_what_its_request_held_until_it_ends() {
        let held: std::sync::Arc<dyn Send + Sync> = std::sync::Arc::new(());
        let place = std::sync::Arc::downgrade(&held);
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let writes = crate::gateway::Writes::default();
        let mut request = Box::pin(crate::gateway::Hold(held).around(writes.to_the_end(async move { go_rx.await.map_err(GatewayError::internal) })));
        std::future::poll_fn(|cx| {
            assert!(std::future::Future::poll(request.as_mut(), cx).is_pending(), "the write waits");
            std::task::Poll::Ready(())
        })
        .await;
        // The client goes away: its request is dropped, the write runs on and keeps the place.
        drop(request);
        assert!(place.upgrade().is_some(), "the write still holds its request's place");
        go_tx.send(()).expect("the write is still running");
        assert!(writes.finished(std::time::Duration::from_secs(30)).await);
        assert!(place.upgrade().is_none(), "given back when the write ended");
    }

    #[tokio::test]
    async fn a_request_answered_gives_back_what_it_held() {
        let held: std::sync::Arc<dyn Send + Sync> = std::sync::Arc::new(());
        let place = std::sync::Arc::downgrade(&held);
        let writes = crate::gateway::Writes::default();
        let stored = crate::gateway::Hold(held).around(writes.to_the_end(async { Ok::<_, GatewayError>("stored") })).await;
        assert_eq!(stored.expect("the write's result"), "stored");
        assert!(place.upgrade().is_none(), "nothing kept once the write and its request are done");
    }

    #[tokio::test]
    async fn a_stop_waits_for_the_writes_still_running() {
        let writes = crate::gateway::Writes::default();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn({
            let writes = writes.clone();
            async move {
                writes
                    .to_the_end(async move {
                        let _ = started_tx.send(());
                        go_rx.await.map_err(GatewayError::internal)
                    })
                    .await
            }
        });
        started_rx.await.expect("the write started");
        // It cannot finish before it is let go, however long the wait: not a race against time.
        assert!(!writes.finished(std::time::Duration::from_millis(1)).await, "a write still runs");
        go_tx.send(()).expect("the write waits");
        assert!(writes.finished(std::time::Duration::from_secs(30)).await);
        running.await.expect("task").expect("the write's own result");
    }

    #[test]
    fn routes_are_templates_without_ids() {
        assert_eq!(route(&Method::GET, "/Binary/abc"), "GET /Binary/{id}");
        assert_eq!(route(&Method::GET, "/DocumentReference/abc"), "GET /DocumentReference/{id}");
        assert_eq!(route(&Method::POST, "/"), "POST /");
        assert_eq!(route(&Method::DELETE, "/Binary/abc"), "other");
        assert_eq!(route(&Method::GET, "/Binary/a/b"), "other");
    }

    #[test]
    fn a_request_in_flight_is_told_when_to_retry() {
        let r = error_response(&GatewayError::InFlight("still being processed".into()));
        assert_eq!(r.status(), 409);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert_eq!(r.headers()[CONTENT_TYPE], FHIR_JSON);
        let other = error_response(&GatewayError::Conflict("other content".into()));
        assert_eq!(other.status(), 409);
        assert!(other.headers().get(RETRY_AFTER).is_none(), "retrying a real conflict changes nothing");
    }

    #[test]
    fn codes_are_short_and_without_spaces() {
        assert!(is_code("physician"));
        assert!(!is_code("head nurse"));
        assert!(!is_code(""));
        assert!(!is_code(&"a".repeat(129)));
    }
}

