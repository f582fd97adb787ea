//! The operators' client for a running gateway's admin listener (`medgate ledger compact`,
//! `medgate consortium members|propose|approve`, `medgate audit break-glass`, and the demo's and
//! tests' health checks): plain HTTP/1.1 on loopback through hyper, which decodes chunked and
//! length-delimited answers alike. Every request carries the admin header the listener requires
//! for changes.
//!
//! Boundary: blocking calls usable from any thread, inside an async runtime or not (each runs
//! on a small runtime of its own, on a thread of its own).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use medgate_gateway::server::ADMIN_HEADER;

/// Time to connect to the listener.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for the whole answer (a membership change waits for its block).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET path`: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    request(addr, "GET", path, b"")
}

/// `method path` with a JSON `body` (empty for none): (status, body).
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Result<(u16, String), String> {
    let (method, path, body) = (method.to_owned(), path.to_owned(), Bytes::copy_from_slice(body));
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async move {
                tokio::time::timeout(ANSWER_TIMEOUT, send(addr, &method, &path, body))
                    .await
                    .map_err(|_| format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()))?
            })
        })
        .join()
        .map_err(|_| "the admin request thread failed".to_owned())?
    })
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: Bytes) -> Result<(u16, String), String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .header(ADMIN_HEADER, "cli")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
