//! Search results: the `searchset` Bundles medgate answers searches with.
//!
//! Boundary: resources in, FHIR R4 JSON out. No I/O.

use serde_json::{json, Value};

/// A `searchset` Bundle of `resources`, all of them matches.
pub fn searchset(resources: Vec<Value>, self_link: &str) -> Value {
    let total = resources.len();
    let entry: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let full = match (r["resourceType"].as_str(), r["id"].as_str()) {
                (Some(t), Some(id)) => format!("{t}/{id}"),
                _ => String::new(),
            };
            json!({"fullUrl": full, "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": self_link}],
        "entry": entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searchset_counts_and_links() {
        let b = searchset(vec![json!({"resourceType": "DocumentReference", "id": "x"})], "DocumentReference?patient=s|v");
        assert_eq!(b["total"], 1);
        assert_eq!(b["entry"][0]["fullUrl"], "DocumentReference/x");
        assert_eq!(b["type"], "searchset");
    }
}
