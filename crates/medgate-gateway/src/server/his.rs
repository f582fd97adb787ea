//! The HIS listener's connections: the TLS handshake (bounded in time), the client's identity
//! from its certificate, its share of the listener ([`super::limits`]), HTTP/1.1 or HTTP/2 with
//! their header and stream limits, and a lingering close.
//!
//! Boundary: one accepted TCP connection to a served HTTP connection; requests go to
//! [`Api::handle`]. Refusals before the API (a client over its share, an audit queue full with
//! `on_full = "refuse"`) are OperationOutcomes made by the API's one mapping.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONNECTION, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use medgate_fhir::FhirError;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::limits::{client_key, Limiter, Refusal};
use super::{linger, DRAIN_TIMEOUT};
use crate::api::{error_response, Api};
use crate::tls::{ClientIdentity, Reloadable};
use crate::GatewayError;

/// What every HIS connection shares.
#[derive(Debug)]
pub(super) struct His {
    pub(super) tls: Arc<Reloadable>,
    pub(super) api: Arc<Api>,
    pub(super) limiter: Arc<Limiter>,
    /// Time a client has to send a whole request body (and the bound of a lingering close).
    pub(super) request_timeout: Duration,
    /// With `[atna] on_full = "refuse"`: the exporter whose full queue refuses new requests.
    pub(super) audit_gate: Option<Arc<medgate_atna::Exporter>>,
}

type Resp = Response<Full<Bytes>>;

/// A 429 for a client over its share: OperationOutcome, `Retry-After`.
fn too_many(r: &Refusal, close: bool) -> Resp {
    let mut resp = error_response(&GatewayError::Request(FhirError::TooManyRequests { message: r.message.clone(), retry_after: r.retry_after }));
    if close {
        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A 503 while the audit queue is full and the site chose to refuse rather than serve.
fn audit_full() -> Resp {
    let mut resp = error_response(&GatewayError::Unavailable("the audit record repository is unreachable and the audit queue is full; new requests are refused until it drains".into()));
    resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(30u32));
    resp
}

fn builder(his: &His) -> Builder<TokioExecutor> {
    let limits = his.limiter.settings();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(limits.header_timeout())
        .max_buf_size(limits.max_header_list_bytes as usize)
        .timer(TokioTimer::new());
    builder
        .http2()
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_bytes)
        // A client that keeps opening and cancelling streams (rapid reset) is cut off.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        .timer(TokioTimer::new());
    builder
}

pub(super) async fn serve(listener: TcpListener, his: Arc<His>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder(&his));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some(slot) = his.limiter.accept() else {
            tracing::warn!(%peer, max = his.limiter.settings().max_connections, "HIS listener full; connection closed");
            continue;
        };
        let his = his.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let acceptor = tokio_rustls::TlsAcceptor::from(his.tls.get());
            let handshake = his.limiter.settings().header_timeout();
            let stream = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    his.api.gateway.metrics.incr("tls_handshake_failures");
                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    his.api.gateway.metrics.incr("tls_handshake_failures");
                    tracing::info!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
            let Some((identity, key)) = leaf.and_then(|der| ClientIdentity::from_der(&der).map(|id| (id, client_key(&der)))) else {
                tracing::info!(%peer, "client certificate has no usable subject CN; connection closed");
                return;
            };
            let identity = Arc::new(identity);
            let connection = his.limiter.connect(key);
            if let Err(r) = &connection {
                tracing::info!(%peer, his = %identity.system, reason = %r.message, "connection over the client's share; answered 429");
            }
            let connection = Arc::new(connection);
            let served = his.clone();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let his = served.clone();
                let identity = identity.clone();
                let connection = connection.clone();
                async move {
                    let key = match connection.as_ref() {
                        Ok(c) => *c.key(),
                        Err(r) => return Ok(too_many(r, true)),
                    };
                    let in_flight = match his.limiter.request(&key) {
                        Ok(g) => g,
                        Err(r) => {
                            his.api.gateway.metrics.observe("refused: client over its share", 429, Duration::ZERO);
                            return Ok(too_many(&r, false));
                        }
                    };
                    if his.audit_gate.as_ref().is_some_and(|x| x.is_full()) && req.uri().path() != "/metadata" {
                        return Ok(audit_full());
                    }
                    // Held until the request is answered, and by any write it leaves running.
                    crate::gateway::Hold(Arc::new(in_flight)).around(his.api.clone().handle(identity, req)).await
                }
            });
            // Closed lingering: a client still sending when the answer is out gets to read it.
            let stream = linger::Lingering::new(stream, his.request_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after {} s; closing them", DRAIN_TIMEOUT.as_secs());
    }
}
