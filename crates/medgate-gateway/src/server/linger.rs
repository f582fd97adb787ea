//! Lingering close of an HIS connection. When the server is done with a connection while the
//! client is still sending (a body over the limit refused from its Content-Length, a request
//! refused on its headers), closing the socket with unread bytes in it makes the kernel answer
//! with a TCP reset, and a reset can destroy the refusal in the client's receive buffer before the
//! client reads it: the client sees "connection reset" instead of the OperationOutcome.
//!
//! Boundary: one TLS connection's transport. [`Lingering`] passes reads and writes through; when
//! the HTTP connection drops it, the write side is shut down (the TLS close_notify was sent by
//! the HTTP layer's shutdown) and what the client still sends is read and discarded, until the
//! client closes its side or a bound is reached; only then is the socket closed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Longest pause in the client's sending after which a lingering close gives up.
const IDLE: Duration = Duration::from_secs(5);

/// A server-side TLS connection that closes lingering.
#[derive(Debug)]
pub struct Lingering {
    /// `None` only once dropped.
    stream: Option<TlsStream<TcpStream>>,
    /// Longest a lingering close lasts in all.
    bound: Duration,
}

impl Lingering {
    /// Wraps `stream`; its lingering close lasts `bound` at most (the time a client has to send
    /// a whole request).
    pub fn new(stream: TlsStream<TcpStream>, bound: Duration) -> Lingering {
        Lingering { stream: Some(stream), bound }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TlsStream<TcpStream>>> {
        self.stream.as_mut().map(Pin::new).ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Lingering {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else { return };
        // Outside a runtime (never in the server) the socket is simply closed.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(linger(stream.into_inner().0, self.bound));
        }
    }
}

/// Stops sending, then reads and discards until the client closes, pauses for [`IDLE`], or
/// `bound` has passed; the socket closes when this returns.
async fn linger(mut tcp: TcpStream, bound: Duration) {
    // The HTTP layer has usually shut the write side down already (after the TLS close_notify);
    // a second shutdown changes nothing.
    let _ = tcp.shutdown().await;
    let deadline = tokio::time::Instant::now() + bound;
    let mut sink = vec![0u8; 64 * 1024];
    loop {
        let idle = tokio::time::Instant::now() + IDLE;
        match tokio::time::timeout_at(idle.min(deadline), tcp.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            // The client closed its side, the connection failed, or it took too long.
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lingering_close_reads_until_the_client_stops() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            // Sends far more than the socket buffers hold: a plain close on the other side
            // would reset the connection before all of it is taken.
            let chunk = vec![7u8; 1 << 20];
            for _ in 0..16 {
                c.write_all(&chunk).await.expect("every byte is taken by the lingering close");
            }
            // The server said nothing and stopped sending.
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.expect("orderly end");
            rest.len()
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        linger(tcp, Duration::from_secs(30)).await;
        assert_eq!(client.await.expect("client"), 0);
    }
}
