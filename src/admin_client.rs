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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::io::{Read as _, Write as _};

    /// A one-shot HTTP server on loopback that answers `answer` and hands back the request head.
    fn serve_once(answer: &'static [u8]) -> (std::net::SocketAddr, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            s.write_all(answer).unwrap();
            String::from_utf8(head).unwrap()
        });
        (addr, server)
    }

    #[test]
    fn chunked_answers_are_decoded_and_changes_carry_the_admin_header() {
        let (addr, server) = serve_once(b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n6\r\nnot a \r\n7\r\nmember\n\r\n0\r\n\r\n");
        assert_eq!(super::request(addr, "POST", "/consortium/proposals/ab/approve", b"").unwrap(), (409, "not a member\n".to_owned()));
        let head = server.join().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /consortium/proposals/ab/approve http/1.1\r\n"), "{head}");
        assert!(head.contains("x-medgate-admin: cli\r\n"), "{head}");
    }

    #[test]
    fn works_from_inside_an_async_runtime_and_reports_a_dead_listener() {
        let (addr, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        assert_eq!(rt.block_on(async { super::get(addr, "/healthz") }).unwrap(), (200, "ok\n".to_owned()));
        server.join().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert!(super::get(closed, "/healthz").is_err());
    }
}
