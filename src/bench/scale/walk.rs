//! The HIS side of the scale measurement, over mutual TLS against the gateway in this process:
//! one patient's documents stored through the real ITI-65 API, and searches walked page by
//! page, following the Bundle's `next` links to the end.

use std::time::{Duration, Instant};

use medgate_fhir::{PatientId, SampleDocument};
use serde_json::Value;

use crate::bench::load::{percentile, Target};
use crate::client::{query_escape, HisClient};

/// Stores `n` documents of `size` bytes for `patient` with `concurrency` clients (ITI-65, each
/// with its SubmissionSet).
pub async fn store_documents(target: &Target, patient: &PatientId, n: usize, concurrency: usize, size: usize) -> Result<(), String> {
    let per_client = n.div_ceil(concurrency.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let k = per_client.min(n.saturating_sub(w * per_client));
        let (mut client, patient) = (target.client()?, patient.clone());
        tasks.spawn(async move {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 + w) as u8).collect();
            let doc = SampleDocument::new("application/pdf", &data);
            for _ in 0..k {
                let body = serde_json::to_vec(&doc.transaction(&patient, None)).map_err(|e| e.to_string())?;
                let r = client.send("POST", "/", &[], body).await?;
                if r.status != 200 {
                    return Err(format!("storing a document: status {}: {}", r.status, String::from_utf8_lossy(&r.body)));
                }
            }
            Ok::<(), String>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Every page's latency and every walk's time, over several walks of the same search.
#[derive(Debug, Clone, Default)]
pub struct Walks {
    /// Sorted.
    pub pages: Vec<Duration>,
    /// Sorted.
    pub walks: Vec<Duration>,
    /// Resources of the searched type on all the pages of one walk.
    pub found: usize,
}

impl Walks {
    pub fn page_ms(&self, p: f64) -> f64 {
        percentile(&self.pages, p).as_secs_f64() * 1e3
    }
    pub fn walk_ms(&self, p: f64) -> f64 {
        percentile(&self.walks, p).as_secs_f64() * 1e3
    }
    pub fn pages_per_walk(&self) -> usize {
        self.pages.len() / self.walks.len().max(1)
    }
}

/// The first page of a search of `resource` for `patient`, `count` per page.
pub fn first_page(resource: &str, patient: &PatientId, count: usize) -> String {
    format!("/{resource}?patient.identifier={}&_count={count}", query_escape(&format!("{}|{}", patient.system, patient.value)))
}

/// Walks the search starting at `first` `walks` times, each to its last page; every walk must
/// find `expect` resources of type `resource`.
pub async fn walk(target: &Target, first: &str, resource: &str, walks: usize, expect: usize) -> Result<Walks, String> {
    let mut client: HisClient = target.client()?;
    let mut out = Walks::default();
    for _ in 0..walks {
        let started = Instant::now();
        let (mut path, mut found) = (Some(first.to_owned()), 0);
        while let Some(p) = path.take() {
            let t = Instant::now();
            let r = client.get(&p).await?;
            out.pages.push(t.elapsed());
            if r.status != 200 {
                return Err(format!("{p}: status {}: {}", r.status, String::from_utf8_lossy(&r.body)));
            }
            let bundle = r.json();
            found += bundle["entry"].as_array().into_iter().flatten().filter(|e| e["resource"]["resourceType"] == resource).count();
            path = next_link(&bundle);
        }
        out.walks.push(started.elapsed());
        if found != expect {
            return Err(format!("a walk of {first} found {found} {resource}s, not {expect}"));
        }
        out.found = found;
    }
    out.pages.sort();
    out.walks.sort();
    Ok(out)
}

/// The `next` link of a searchset Bundle, as a path on this server.
fn next_link(bundle: &Value) -> Option<String> {
    let url = bundle["link"].as_array()?.iter().find(|l| l["relation"] == "next")?["url"].as_str()?;
    let path = match url.find("://") {
        Some(i) => url[i + 3..].find('/').map_or("/", |j| &url[i + 3 + j..]),
        None => url.trim_start_matches('/'),
    };
    Some(if path.starts_with('/') { path.to_owned() } else { format!("/{path}") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn next_links_become_paths_on_this_server() {
        let b = |url: &str| json!({"link": [{"relation": "self", "url": "x"}, {"relation": "next", "url": url}]});
        assert_eq!(next_link(&b("DocumentReference?a=1&_cursor=x")).as_deref(), Some("/DocumentReference?a=1&_cursor=x"));
        assert_eq!(next_link(&b("https://gw.example:8443/fhir/AuditEvent?b=2")).as_deref(), Some("/fhir/AuditEvent?b=2"));
        assert_eq!(next_link(&json!({"link": [{"relation": "self", "url": "x"}]})), None);
    }
}
