//! The operators' client for a running gateway: its admin socket (`medgate ledger compact`,
//! `medgate consortium members|propose|approve`, `medgate audit break-glass`) and its monitoring
//! listener (the demo's and tests' health checks and metrics). Plain HTTP/1.1 through hyper,
//! which decodes chunked and length-delimited answers alike. On the admin socket the gateway
//! knows who is calling from the kernel (the peer's uid and groups); nothing in the request
//! proves anything.
//!
//! Boundary: blocking calls usable from any thread, inside an async runtime or not (each runs
//! on a small runtime of its own, on a thread of its own).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Time to connect to the listener.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for the whole answer (a membership change waits for its block).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a gateway answers: its admin socket (every action) or its monitoring listener
/// (`/healthz`, `/readyz`, `/metrics` only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The admin socket (`[admin] socket`).
    Socket(PathBuf),
    /// The monitoring listener (`[admin] listen`).
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Socket(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Endpoint {
        Endpoint::Tcp(a)
    }
}

impl From<PathBuf> for Endpoint {
    fn from(p: PathBuf) -> Endpoint {
        Endpoint::Socket(p)
    }
}

impl From<&Path> for Endpoint {
    fn from(p: &Path) -> Endpoint {
        Endpoint::Socket(p.to_path_buf())
    }
}

impl From<&PathBuf> for Endpoint {
    fn from(p: &PathBuf) -> Endpoint {
        Endpoint::Socket(p.clone())
    }
}

/// The admin socket named by the configuration file `config`. Only `[admin]` is read, so an
/// officer needs no access to the HSM PIN or the TLS files; a file the caller may not read gives
/// the default socket. `Err` is the configuration's own message (file, key, reason).
pub fn socket_of(config: &Path) -> Result<PathBuf, String> {
    medgate_gateway::config::Admin::socket_of(config).map_err(|e| e.to_string())
}

/// `GET path`: (status, body).
pub fn get(to: impl Into<Endpoint>, path: &str) -> Result<(u16, String), String> {
    request(to, "GET", path, b"")
}

/// `method path` with a JSON `body` (empty for none): (status, body).
pub fn request(to: impl Into<Endpoint>, method: &str, path: &str, body: &[u8]) -> Result<(u16, String), String> {
    let to = to.into();
    let (method, path, body) = (method.to_owned(), path.to_owned(), Bytes::copy_from_slice(body));
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async move {
                tokio::time::timeout(ANSWER_TIMEOUT, send(&to, &method, &path, body))
                    .await
                    .map_err(|_| format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()))?
            })
        })
        .join()
        .map_err(|_| "the admin request thread failed".to_owned())?
    })
}

async fn send(to: &Endpoint, method: &str, path: &str, body: Bytes) -> Result<(u16, String), String> {
    let timed_out = || format!("connecting to {to} timed out");
    match to {
        Endpoint::Tcp(addr) => {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await.map_err(|_| timed_out())?.map_err(|e| e.to_string())?;
            exchange(TokioIo::new(tcp), method, path, body).await
        }
        Endpoint::Socket(p) => {
            let unix = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(p))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| format!("{}: {e}", p.display()))?;
            exchange(TokioIo::new(unix), method, path, body).await
        }
    }
}

async fn exchange<T>(io: T, method: &str, path: &str, body: Bytes) -> Result<(u16, String), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
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
    fn chunked_answers_are_decoded() {
        let (addr, server) = serve_once(b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n6\r\nnot a \r\n7\r\nmember\n\r\n0\r\n\r\n");
        assert_eq!(super::request(addr, "POST", "/consortium/proposals/ab/approve", b"").unwrap(), (409, "not a member\n".to_owned()));
        let head = server.join().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /consortium/proposals/ab/approve http/1.1\r\n"), "{head}");
    }

    #[test]
    fn speaks_over_a_unix_socket_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 8\r\n\r\nrefused\n").unwrap();
            String::from_utf8(head).unwrap()
        });
        assert_eq!(super::get(&path, "/audit/break-glass").unwrap(), (403, "refused\n".to_owned()));
        assert!(server.join().unwrap().starts_with("GET /audit/break-glass HTTP/1.1\r\n"));
        assert!(super::get(dir.path().join("none.sock"), "/healthz").is_err());
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
