//! The ceilings printed beside the gateway's figures, measured in the same run: the HSM's raw
//! rates (`medgate_hsm::ceiling`), the store's write+flush rate (`medgate_store::ceiling`), and
//! a null endpoint: hyper + rustls with the gateway's own TLS configuration (its key in the
//! HSM, client certificates checked against the hospital CA), answering 201 to every request
//! once it has read the body, without doing anything else. The load generator is the same, so
//! the null endpoint's rate is what TLS, HTTP and the generator itself cost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use medgate_hsm::ceiling::RawOp;
use medgate_hsm::Hsm;
use serde::Serialize;
use tokio::sync::watch;

/// The HSM's raw rates (operations per second) on one and two sessions.
#[derive(Debug, Clone, Serialize)]
pub struct HsmCeilings {
    /// (operation, rate with 1 thread, rate with 2 threads); `None` where the module lacks it.
    pub rows: Vec<(&'static str, Option<f64>, Option<f64>)>,
}

impl HsmCeilings {
    /// Measures each hot-path operation for `seconds` per thread count.
    pub fn measure(hsm: &Hsm, seconds: f64) -> HsmCeilings {
        let d = Duration::from_secs_f64(seconds);
        let rows = [RawOp::WrapRfc5649, RawOp::WrapAesGcm, RawOp::WrapSiteKek, RawOp::Sign]
            .into_iter()
            .map(|op| (op.name(), hsm.raw_rate(op, 1, d).ok(), hsm.raw_rate(op, 2, d).ok()))
            .collect();
        HsmCeilings { rows }
    }

    /// The best rate of operation `name` (1 or 2 threads).
    pub fn best(&self, name: &str) -> Option<f64> {
        self.rows.iter().find(|(n, _, _)| *n == name).and_then(|(_, a, b)| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(*b)),
            (a, b) => a.or(*b),
        })
    }
}

/// A null endpoint, stopped when dropped.
#[derive(Debug)]
pub struct NullEndpoint {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Drop for NullEndpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

const NULL_ANSWER: &[u8] = br#"{"resourceType":"Bundle","type":"transaction-response"}"#;

impl NullEndpoint {
    /// Serves on a free loopback port with `tls` (the gateway's server configuration).
    pub async fn start(tls: Arc<rustls::ServerConfig>) -> Result<NullEndpoint, String> {
        let listener = medgate_gateway::server::bind_tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            let builder = Arc::new(Builder::new(TokioExecutor::new()));
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => continue },
                    _ = stopped.changed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, builder) = (acceptor.clone(), builder.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        let mut r = Response::new(Full::new(Bytes::from_static(NULL_ANSWER)));
                        *r.status_mut() = hyper::StatusCode::CREATED;
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(NullEndpoint { addr, stop })
    }
}

/// Resident memory of this process in MiB (VmRSS), if the kernel says.
pub fn rss_mib() -> Option<f64> {
    status_mib("VmRSS:")
}

/// The most memory this process has had resident from a point on (the kernel's VmHWM).
pub struct PeakRss {
    /// Whether the kernel took the reset: otherwise its high-water mark counts from the start
    /// of the process, and no peak is given.
    counted: bool,
}

impl PeakRss {
    /// Starts the peak afresh from what is resident now (writing 5 to `/proc/self/clear_refs`,
    /// Linux 4.0 and later).
    pub fn start() -> PeakRss {
        PeakRss { counted: std::fs::write("/proc/self/clear_refs", "5").is_ok() }
    }

    /// The peak since [`PeakRss::start`] in MiB; None when the kernel refused the reset.
    pub fn mib(&self) -> Option<f64> {
        if self.counted {
            status_mib("VmHWM:")
        } else {
            None
        }
    }
}

/// A field of `/proc/self/status` given in kB, in MiB.
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix(field))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

/// Load average over the last minute, as `uptime` prints it.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}
