//! Prometheus text metrics, kept in process: request counts by route and status, latency
//! histograms by route, by step of a cross-hospital read and by step of the ledger writer,
//! event counters, plus families
//! read at scrape time: counters kept
//! elsewhere (the HSM's), and gauges (ledger height, outbox, certificate and CRL expiry, the
//! last reload). Every family is typed as what it is, so `promtool check metrics` accepts the
//! page: a name ending in `_total` is a counter, and only a counter ends so. No label ever
//! carries a patient identifier or a record id.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// From 100 µs (an HSM signature, a flush on a fast disk) to 10 s (a request that timed out).
const BUCKETS: [f64; 15] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn add(&mut self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

/// Writes a histogram family, one series per value of `label`.
fn render_histograms(out: &mut String, name: &str, help: &str, label: &str, series: &BTreeMap<String, Histogram>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (value, h) in series {
        let v = escape(value);
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{label}=\"{v}\",le=\"{b}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{{label}=\"{v}\",le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{label}=\"{v}\"}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{label}=\"{v}\"}} {}", h.count);
    }
}

/// A family read at scrape time: name, help text, and (labels, value) samples.
pub type Gauge<'a> = (&'a str, &'a str, Vec<(String, f64)>);

/// A counter family read at scrape time (its name ends in `_total`): same shape as a gauge.
pub type Counter<'a> = Gauge<'a>;

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    steps: Mutex<BTreeMap<String, Histogram>>,
    ledger_steps: Mutex<BTreeMap<String, Histogram>>,
    events: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// Counts one finished request on `route` (a route template such as `GET /Binary/{id}`).
    pub fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((route.to_owned(), status)).or_default() += 1;
        self.latency.lock().unwrap_or_else(|p| p.into_inner()).entry(route.to_owned()).or_default().add(elapsed);
    }

    /// Times one step of a granted cross-hospital read: at the requester `custodian` (the call,
    /// its answer included) and `unwrap` (the shared key in this HSM); at the custodian
    /// `access_entry` (flushed here and held by the ordering service) and `rewrap` (the data key
    /// for the requester's sharing key, alongside).
    pub fn observe_step(&self, step: &str, elapsed: Duration) {
        self.steps.lock().unwrap_or_else(|p| p.into_inner()).entry(step.to_owned()).or_default().add(elapsed);
    }

    /// Counts a named event (`tls_handshake_failures`, `ledger_batches`, ...).
    pub fn incr(&self, name: &str) {
        *self.events.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_owned()).or_default() += 1;
    }

    /// Counts `n` named events at once.
    pub fn add(&self, name: &str, n: u64) {
        *self.events.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_owned()).or_default() += n;
    }

    pub fn event(&self, name: &str) -> u64 {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).get(name).copied().unwrap_or(0)
    }

    /// Renders the counters kept here, then the given counters and gauges (name, help, samples).
    pub fn render(&self, counters: &[Counter<'_>], gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP medgate_http_requests_total HIS requests by route and status.");
        let _ = writeln!(out, "# TYPE medgate_http_requests_total counter");
        for ((route, status), n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "medgate_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", escape(route));
        }
        for (name, help, label, series) in [
            ("medgate_http_request_duration_seconds", "HIS request latency by route.", "route", &self.latency),
            ("medgate_peer_read_step_seconds", "Steps of granted cross-hospital reads, at the requester and at the custodian.", "step", &self.steps),
            (
                "medgate_ledger_step_seconds",
                "Steps of the ledger writer: sign (a batch's HSM signature and its check), submit (until the ordering service holds a batch), flush (the store's flush of a group).",
                "step",
                &self.ledger_steps,
            ),
        ] {
            render_histograms(&mut out, name, help, label, &series.lock().unwrap_or_else(|p| p.into_inner()));
        }
        let _ = writeln!(out, "# HELP medgate_events_total Gateway events by kind.");
        let _ = writeln!(out, "# TYPE medgate_events_total counter");
        for (name, n) in self.events.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "medgate_events_total{{kind=\"{}\"}} {n}", escape(name));
        }
        for (kind, families) in [("counter", counters), ("gauge", gauges)] {
            for (name, help, values) in families {
                debug_assert_eq!(name.ends_with("_total"), kind == "counter", "{name}: only counters end in _total");
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                for (labels, v) in values {
                    if labels.is_empty() {
                        let _ = writeln!(out, "{name} {v}");
                    } else {
                        let _ = writeln!(out, "{name}{{{labels}}} {v}");
                    }
                }
            }
        }
        out
    }
}

impl medgate_store::Events for Metrics {
    fn incr(&self, name: &str) {
        Metrics::incr(self, name);
    }

    fn writer_step(&self, step: &str, elapsed: Duration) {
        self.ledger_steps.lock().unwrap_or_else(|p| p.into_inner()).entry(step.to_owned()).or_default().add(elapsed);
    }
}

/// A label value as the text format wants it (backslash, quote and newline escaped).
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_text_is_well_formed() {
        let m = Metrics::default();
        m.observe("GET /metadata", 200, Duration::from_millis(3));
        m.observe("GET /metadata", 200, Duration::from_millis(300));
        m.observe("POST /", 422, Duration::from_millis(1));
        m.observe_step("unwrap", Duration::from_micros(2_700));
        m.observe_step("unwrap", Duration::from_micros(4_000));
        medgate_store::Events::writer_step(&m, "submit", Duration::from_micros(3_000));
        medgate_store::Events::writer_step(&m, "sign", Duration::from_micros(400));
        let t = m.render(&[("medgate_hsm_operations_total", "Ops.", vec![("op=\"wrap\"".into(), 2.0)])], &[("medgate_ledger_height", "Height.", vec![(String::new(), 4.0)])]);
        assert!(t.contains("medgate_http_requests_total{route=\"GET /metadata\",status=\"200\"} 2"), "{t}");
        assert!(t.contains("medgate_http_request_duration_seconds_bucket{route=\"GET /metadata\",le=\"0.005\"} 1"), "{t}");
        assert!(t.contains("medgate_http_request_duration_seconds_bucket{route=\"GET /metadata\",le=\"0.5\"} 2"), "{t}");
        assert!(t.contains("medgate_ledger_height 4"), "{t}");
        assert!(t.contains("# TYPE medgate_peer_read_step_seconds histogram\n"), "{t}");
        assert!(t.contains("medgate_peer_read_step_seconds_bucket{step=\"unwrap\",le=\"0.0025\"} 0\n"), "{t}");
        assert!(t.contains("medgate_peer_read_step_seconds_bucket{step=\"unwrap\",le=\"0.005\"} 2\n"), "{t}");
        assert!(t.contains("medgate_peer_read_step_seconds_sum{step=\"unwrap\"} 0.0067"), "{t}");
        assert!(t.contains("medgate_peer_read_step_seconds_count{step=\"unwrap\"} 2\n"), "{t}");
        assert!(t.contains("# TYPE medgate_ledger_step_seconds histogram\n"), "{t}");
        assert!(t.contains("medgate_ledger_step_seconds_bucket{step=\"submit\",le=\"0.0025\"} 0\n"), "{t}");
        assert!(t.contains("medgate_ledger_step_seconds_bucket{step=\"submit\",le=\"0.005\"} 1\n"), "{t}");
        assert!(t.contains("medgate_ledger_step_seconds_count{step=\"submit\"} 1\n"), "{t}");
        assert!(t.contains("medgate_ledger_step_seconds_bucket{step=\"sign\",le=\"0.00025\"} 0\n"), "{t}");
        assert!(t.contains("medgate_ledger_step_seconds_bucket{step=\"sign\",le=\"0.0005\"} 1\n"), "{t}");
        assert!(t.contains("# TYPE medgate_hsm_operations_total counter\nmedgate_hsm_operations_total{op=\"wrap\"} 2\n"), "{t}");
        assert!(t.contains("# TYPE medgate_ledger_height gauge\n"), "{t}");
        // Only counters end in _total (promtool: "non-counter metrics should not have _total suffix").
        let mut kind = std::collections::BTreeMap::new();
        for line in t.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let (name, k) = line.split_once(' ').expect("name kind");
            kind.insert(name.to_owned(), k.to_owned());
        }
        for (name, k) in &kind {
            assert_eq!(name.ends_with("_total"), k == "counter", "{name} is typed {k}");
        }
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name value");
            value.parse::<f64>().expect("numeric value");
        }
    }
}
