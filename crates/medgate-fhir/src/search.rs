//! FHIR search as IHE MHD Document Consumers send it (ITI-66, ITI-67): the supported
//! parameters per resource type (`params`), the parsed request (`query`), matching (`matching`,
//! `date`), stable paging (`paging`), and the `searchset` Bundle of one page.
//!
//! Boundary: decoded query parameters and candidate resources in (the gateway decrypts a
//! patient's records in memory and hands them here), one page of FHIR R4 JSON out. Nothing is
//! stored and nothing is indexed: matching runs on the resources themselves. Links in the
//! Bundle are relative (`DocumentReference?...`); the HTTP layer resolves them, and every
//! `fullUrl`, against the gateway's public base URL.

mod date;
mod matching;
mod paging;
pub mod params;
mod query;

use serde_json::{json, Value};

pub use paging::{Candidate, Page};
pub use params::{ParamDef, ParamType, Path, ResourceSearch, AUDIT_EVENT, CONSENT, DOCUMENT_REFERENCE, LIST};
pub use query::{parse_query, Ignored, Query, DEFAULT_COUNT, MAX_COUNT, REPRESENTATION_PARAMS};

use crate::subset::{subset, Summary};
use paging::{Cursor, Dir};

/// A note for the client about how the search ran, carried by the Bundle's OperationOutcome
/// (`search.mode = outcome`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `warning` or `information`.
    pub severity: &'static str,
    /// An IssueType code, e.g. `not-supported`, `informational`.
    pub code: &'static str,
    pub text: String,
    /// Where it applies, e.g. `http.bogus` for a query parameter.
    pub location: Option<String>,
}

impl Query {
    /// Does `resource` satisfy every criterion of the query (the patient aside)?
    pub fn matches(&self, resource: &Value, now: i64) -> bool {
        matching::matches_all(resource, &self.criteria, now)
    }

    /// Does the query name `code` in a plain `status` criterion? (A search shows documents
    /// entered in error only when asked for them by status.)
    pub fn asks_status(&self, code: &str) -> bool {
        self.criteria.iter().any(|c| {
            c.def.name == "status"
                && c.modifier == query::Modifier::None
                && c.operands.iter().any(|o| matches!(o, query::Operand::Token { code: Some(x), .. } if x == code))
        })
    }

    /// Notes for the parameters this search ignored.
    pub fn ignored_notes(&self) -> Vec<Note> {
        self.ignored
            .iter()
            .map(|i| Note {
                severity: "warning",
                code: "not-supported",
                text: format!("parameter {} ignored: {}", i.name, i.reason),
                location: Some(format!("http.{}", i.name)),
            })
            .collect()
    }

    /// The time (microseconds since the epoch) that bounds what the search sees: the first
    /// page's, carried by the links, or `now` for a first page.
    pub fn snapshot(&self, now: i64) -> i64 {
        self.cursor.as_ref().map_or(now, |c| c.at)
    }
}

/// Filters `candidates` with `query`, keeps those inside its snapshot, sorts them and cuts the
/// page the query asks for. `now`: microseconds since the epoch.
pub fn run(query: &Query, candidates: Vec<Candidate>, now: i64) -> Page {
    let at = query.snapshot(now);
    let (sort, descending) = query.sort;
    let matches: Vec<(paging::Position, Value)> = candidates
        .into_iter()
        .filter(|c| c.stored_at.is_none_or(|t| t <= at))
        .filter(|c| query.matches(&c.resource, now))
        .map(|c| (paging::position(&c.resource, &sort), c.resource))
        .collect();
    let dir = query.cursor.as_ref().map_or(Dir::First, |c| c.dir.clone());
    let count = if query.summary == Summary::Count { 0 } else { query.count };
    paging::cut(matches, at, &dir, count, descending)
}

/// The `searchset` Bundle of one page: `total`, the `self`, `first`, `previous` and `next`
/// links, the matches reduced as `_summary`/`_elements` ask, and the notes as an
/// OperationOutcome entry whose `fullUrl` is `outcome_urn` (a `urn:uuid:`).
pub fn searchset(query: &Query, page: Page, notes: &[Note], outcome_urn: &str) -> Value {
    let rt = query.search.resource_type;
    let base = encode_pairs(&query.applied);
    let link = |cursor: Option<Cursor>| -> String {
        let mut q = base.clone();
        if let Some(c) = cursor {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str("_cursor=");
            q.push_str(&escape(&c.encode()));
        }
        format!("{rt}?{q}")
    };
    let mut links = vec![json!({"relation": "self", "url": link(query.cursor.clone())})];
    links.push(json!({"relation": "first", "url": link(Some(Cursor { at: page.at, dir: Dir::First }))}));
    if let Some(p) = page.previous {
        links.push(json!({"relation": "previous", "url": link(Some(Cursor { at: page.at, dir: Dir::Before(p) }))}));
    }
    if let Some(n) = page.next {
        links.push(json!({"relation": "next", "url": link(Some(Cursor { at: page.at, dir: Dir::After(n) }))}));
    }
    let mut entry: Vec<Value> = page
        .resources
        .into_iter()
        .map(|mut r| {
            subset(&mut r, query.summary, query.elements.as_deref());
            json!({"fullUrl": full_url(&r), "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    if !notes.is_empty() {
        entry.push(json!({"fullUrl": outcome_urn, "resource": outcome(notes), "search": {"mode": "outcome"}}));
    }
    let mut bundle = json!({"resourceType": "Bundle", "type": "searchset", "total": page.total, "link": links});
    if !entry.is_empty() {
        bundle["entry"] = Value::Array(entry);
    }
    bundle
}

/// `Type/id` of a resource, resolved against the public base by the HTTP layer.
fn full_url(r: &Value) -> String {
    match (r["resourceType"].as_str(), r["id"].as_str()) {
        (Some(t), Some(id)) => format!("{t}/{id}"),
        _ => String::new(),
    }
}

/// An OperationOutcome of notes.
pub fn outcome(notes: &[Note]) -> Value {
    let issue: Vec<Value> = notes
        .iter()
        .map(|n| {
            let mut i = json!({"severity": n.severity, "code": n.code, "diagnostics": n.text});
            if let Some(l) = &n.location {
                i["location"] = json!([l]);
            }
            i
        })
        .collect();
    json!({"resourceType": "OperationOutcome", "issue": issue})
}

/// Decodes a query string, or an `application/x-www-form-urlencoded` body (`POST
/// [type]/_search`), into (name, value) pairs: `%XX` is a byte and `+` a space, as form encoders
/// and most HTTP clients write them. A refusal never repeats a value.
pub fn decode_pairs(raw: &str) -> Result<Vec<(String, String)>, crate::FhirError> {
    let decode = |s: &str| crate::primitives::percent_decode(&s.replace('+', " "));
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(n).map_err(|reason| crate::FhirError::BadParameter(format!("a parameter name: {reason}")))?;
            let value = decode(v).map_err(|reason| {
                crate::FhirError::BadParameter(format!("{}: {reason}", name.chars().filter(|c| !c.is_control()).take(64).collect::<String>()))
            })?;
            Ok((name, value))
        })
        .collect()
}

/// `name=value&...`, percent-encoded.
fn encode_pairs(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(n, v)| format!("{}={}", escape(n), escape(v))).collect::<Vec<_>>().join("&")
}

/// Percent-encodes all but the unreserved characters and `:`, `,` and `/`, which query values
/// use freely.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:,/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    fn docs(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                resource: json!({"resourceType": "DocumentReference", "id": format!("d{i:02}"), "status": if i % 5 == 0 { "superseded" } else { "current" },
                                 "date": format!("2024-01-{:02}T10:00:00Z", i + 1)}),
                stored_at: Some(i as i64),
            })
            .collect()
    }

    fn follow(query_pairs: &[(&str, &str)], candidates: impl Fn() -> Vec<Candidate>) -> (Vec<String>, Vec<usize>) {
        let mut q = parse_query(&DOCUMENT_REFERENCE, &pairs(query_pairs), false).expect("query");
        let mut ids = Vec::new();
        let mut totals = Vec::new();
        loop {
            let page = run(&q, candidates(), 1000);
            let bundle = searchset(&q, page, &[], "urn:uuid:x");
            totals.push(bundle["total"].as_u64().expect("total") as usize);
            for e in bundle["entry"].as_array().into_iter().flatten() {
                ids.push(e["resource"]["id"].as_str().expect("id").to_owned());
                assert_eq!(e["fullUrl"], format!("DocumentReference/{}", e["resource"]["id"].as_str().expect("id")));
            }
            let Some(next) = bundle["link"].as_array().expect("links").iter().find(|l| l["relation"] == "next") else { break };
            let url = next["url"].as_str().expect("url");
            let query = url.split_once('?').expect("query").1;
            let decoded: Vec<(String, String)> = query
                .split('&')
                .map(|p| {
                    let (n, v) = p.split_once('=').expect("pair");
                    (crate::primitives::percent_decode(n).expect("n"), crate::primitives::percent_decode(v).expect("v"))
                })
                .collect();
            q = parse_query(&DOCUMENT_REFERENCE, &decoded, false).expect("next query");
        }
        (ids, totals)
    }

    #[test]
    fn paging_through_25_documents_two_by_two_sees_each_current_one_once() {
        let (ids, totals) = follow(&[("status", "current"), ("_count", "2")], || docs(25));
        assert_eq!(ids.len(), 20);
        assert!(totals.iter().all(|t| *t == 20), "{totals:?}");
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 20, "no repeats");
        assert_eq!(ids.first().map(String::as_str), Some("d24"), "newest first");
    }

    #[test]
    fn documents_stored_after_the_first_page_stay_out() {
        // The snapshot of the first page is at 1000; later candidates carry later store times.
        let (ids, totals) = follow(&[("_count", "3")], || {
            let mut d = docs(10);
            d.push(Candidate { resource: json!({"resourceType": "DocumentReference", "id": "late", "date": "2024-01-05T11:00:00Z"}), stored_at: Some(2000) });
            d
        });
        assert_eq!(ids.len(), 10);
        assert!(!ids.contains(&"late".to_owned()));
        assert!(totals.iter().all(|t| *t == 10));
    }

    #[test]
    fn the_bundle_carries_links_outcome_and_subsets() {
        let q = parse_query(&DOCUMENT_REFERENCE, &pairs(&[("patient.identifier", "urn:oid:1|42"), ("_count", "2"), ("_elements", "status"), ("bogus", "1")]), false).expect("query");
        let notes = q.ignored_notes();
        let bundle = searchset(&q, run(&q, docs(5), 1000), &notes, "urn:uuid:0b0e6c6e-0000-4000-8000-000000000001");
        assert_eq!(bundle["total"], 5);
        let links = bundle["link"].as_array().expect("links");
        assert_eq!(links[0]["url"], "DocumentReference?patient.identifier=urn:oid:1%7C42&_count=2&_elements=status");
        assert!(links.iter().any(|l| l["relation"] == "next"));
        assert!(!links.iter().any(|l| l["relation"] == "previous"));
        let entries = bundle["entry"].as_array().expect("entries");
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0]["resource"]["meta"]["tag"][0]["code"], "SUBSETTED");
        assert_eq!(entries[2]["search"]["mode"], "outcome");
        assert_eq!(entries[2]["resource"]["issue"][0]["location"][0], "http.bogus");
    }

    #[test]
    fn query_strings_and_form_bodies_decode_alike() {
        let pairs = decode_pairs("patient.identifier=urn%3Aoid%3A1.2%7C42&status=current&author.family=van+der+Berg&date=ge2024-01-01T00:00:00%2B01:00&&flag").expect("decodes");
        assert_eq!(pairs[0], ("patient.identifier".into(), "urn:oid:1.2|42".into()));
        assert_eq!(pairs[2].1, "van der Berg");
        assert_eq!(pairs[3].1, "ge2024-01-01T00:00:00+01:00");
        assert_eq!(pairs[4], ("flag".into(), String::new()));
        let e = decode_pairs("identifier=secret%ZZ").expect_err("malformed");
        assert!(e.to_string().starts_with("identifier:") && !e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn a_status_asked_for_is_recognised() {
        let q = parse_query(&DOCUMENT_REFERENCE, &pairs(&[("status", "current,entered-in-error")]), false).expect("query");
        assert!(q.asks_status("entered-in-error") && q.asks_status("current") && !q.asks_status("superseded"));
        let not = parse_query(&DOCUMENT_REFERENCE, &pairs(&[("status:not", "entered-in-error")]), false).expect("query");
        assert!(!not.asks_status("entered-in-error"));
    }

    #[test]
    fn summary_count_gives_total_and_no_entries() {
        let q = parse_query(&DOCUMENT_REFERENCE, &pairs(&[("_summary", "count")]), false).expect("query");
        let bundle = searchset(&q, run(&q, docs(7), 1000), &[], "urn:uuid:x");
        assert_eq!(bundle["total"], 7);
        assert!(bundle.get("entry").is_none());
    }
}
