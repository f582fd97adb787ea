//! `_summary` and `_elements` (R4 search.html "Summary" and "Elements"): a resource reduced to
//! some of its top-level elements, marked `SUBSETTED`.
//!
//! Boundary: a resource in, the same resource reduced out. Mandatory elements (R4 min ≥ 1, and
//! those the MHD Minimal profiles require) and modifier extensions are always kept, so a
//! subset of a conformant resource still conforms.

use serde_json::{json, Map, Value};

/// The `_summary` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// The whole resource (also when `_summary` is absent).
    False,
    /// The elements R4 marks as summary.
    True,
    /// `text`, `id`, `meta` and the mandatory elements.
    Text,
    /// Everything but `text`.
    Data,
    /// Searches only: the count, no resources.
    Count,
}

impl Summary {
    pub fn parse(s: &str) -> Option<Summary> {
        Some(match s {
            "false" => Summary::False,
            "true" => Summary::True,
            "text" => Summary::Text,
            "data" => Summary::Data,
            "count" => Summary::Count,
            _ => return None,
        })
    }
}

/// The `SUBSETTED` tag (R4: a resource returned with some of its elements left out).
const SUBSETTED: (&str, &str) = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED");

/// Top-level elements R4 marks as summary (`_summary=true`), and those every subset keeps (R4
/// min ≥ 1, and what the MHD Minimal profiles require), besides `id` and `meta`.
fn element_sets(resource_type: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match resource_type {
        "DocumentReference" => (
            &[
                "implicitRules", "masterIdentifier", "identifier", "status", "docStatus", "type", "category", "subject", "date", "author",
                "relatesTo", "description", "securityLabel", "content", "context",
            ],
            &["status", "content", "masterIdentifier"],
        ),
        "List" => (&["implicitRules", "status", "mode", "title", "code", "subject", "date", "source"], &["status", "mode", "code", "date", "extension"]),
        "AuditEvent" => (
            &["implicitRules", "type", "subtype", "action", "recorded", "outcome", "outcomeDesc", "purposeOfEvent"],
            &["type", "recorded", "agent", "source"],
        ),
        "Consent" => (
            &[
                "implicitRules", "identifier", "status", "scope", "category", "patient", "dateTime", "performer", "organization",
                "sourceAttachment", "sourceReference", "policyRule", "verification", "provision",
            ],
            &["status", "scope", "category"],
        ),
        "Binary" => (&["implicitRules", "contentType", "securityContext"], &["contentType"]),
        _ => (&[], &[]),
    }
}

/// Backbone elements whose children R4 marks summary one by one.
const SUMMARY_CHILDREN: &[(&str, &str, &[&str])] = &[
    ("DocumentReference", "relatesTo", &["code", "target", "modifierExtension"]),
    ("DocumentReference", "content", &["attachment", "format", "modifierExtension"]),
    ("DocumentReference", "context", &["period", "modifierExtension"]),
];

/// Reduces `resource` as `_summary` / `_elements` ask. Returns whether anything was left out
/// (the resource is then tagged `SUBSETTED`).
pub fn subset(resource: &mut Value, summary: Summary, elements: Option<&[String]>) -> bool {
    let Some(obj) = resource.as_object_mut() else { return false };
    let rt = obj.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
    let (summary_set, mandatory) = element_sets(&rt);
    if mandatory.is_empty() && summary != Summary::Data {
        // A type whose mandatory elements are not listed here is returned whole.
        return false;
    }
    // `contained` is kept here and then cut down to what the kept elements still reference.
    let always = |k: &str| matches!(k, "resourceType" | "id" | "meta" | "modifierExtension" | "contained") || mandatory.contains(&k);
    let before = obj.len();
    let mut pruned = false;
    match (summary, elements) {
        (Summary::True, _) if !summary_set.is_empty() => {
            obj.retain(|k, _| always(k) || summary_set.contains(&k.as_str()));
            for (t, backbone, keep) in SUMMARY_CHILDREN {
                if *t == rt {
                    pruned |= retain_children(obj, backbone, keep);
                }
            }
        }
        (Summary::Text, _) => obj.retain(|k, _| always(k) || k == "text"),
        (Summary::Data, _) => {
            obj.remove("text");
        }
        (Summary::False, Some(names)) => obj.retain(|k, _| always(k) || names.iter().any(|n| n == k)),
        _ => {}
    }
    if matches!(summary, Summary::True | Summary::Text) || (summary == Summary::False && elements.is_some()) {
        pruned |= keep_referenced_contained(obj);
    }
    let subsetted = pruned || obj.len() < before;
    if subsetted {
        tag_subsetted(obj);
    }
    subsetted
}

fn retain_children(obj: &mut Map<String, Value>, backbone: &str, keep: &[&str]) -> bool {
    let mut pruned = false;
    let mut prune = |v: &mut Value| {
        if let Some(o) = v.as_object_mut() {
            let n = o.len();
            o.retain(|k, _| keep.contains(&k.as_str()));
            pruned |= o.len() < n;
        }
    };
    match obj.get_mut(backbone) {
        Some(Value::Array(items)) => items.iter_mut().for_each(&mut prune),
        Some(v) => prune(v),
        None => {}
    }
    pruned
}

/// Drops the contained resources no kept element references (dom-3), so that neither a
/// dangling `#id` (ref-1) nor an orphan contained resource is left. Returns whether any went.
fn keep_referenced_contained(obj: &mut Map<String, Value>) -> bool {
    let Some(Value::Array(contained)) = obj.remove("contained") else { return false };
    let mut refs = Vec::new();
    for v in obj.values() {
        local_references(v, &mut refs);
    }
    let before = contained.len();
    let kept: Vec<Value> = contained
        .into_iter()
        .filter(|c| c.get("id").and_then(Value::as_str).is_some_and(|id| refs.iter().any(|r| r == id)))
        .collect();
    let pruned = kept.len() < before;
    if !kept.is_empty() {
        obj.insert("contained".into(), Value::Array(kept));
    }
    pruned
}

/// The ids of every `#id` reference in `v`.
fn local_references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x.as_str().and_then(|r| r.strip_prefix('#'))) {
                    ("reference", Some(id)) => out.push(id.to_owned()),
                    _ => local_references(x, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| local_references(x, out)),
        _ => {}
    }
}

fn tag_subsetted(obj: &mut Map<String, Value>) {
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(tags) = tags.as_array_mut() {
            if !tags.iter().any(|t| t["code"] == SUBSETTED.1 && t["system"] == SUBSETTED.0) {
                tags.push(json!({"system": SUBSETTED.0, "code": SUBSETTED.1, "display": "Resource encoded in summary mode"}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        json!({
            "resourceType": "DocumentReference", "id": "d", "meta": {"lastUpdated": "2025-01-01T00:00:00Z"},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "extension": [{"url": "urn:x", "valueString": "receipt"}],
            "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1"},
            "status": "current", "description": "d", "custodian": {"display": "h"},
            "content": [{"id": "c", "attachment": {"contentType": "text/plain", "url": "Binary/d"}}],
            "context": {"period": {"start": "2024"}, "facilityType": {"text": "f"}}
        })
    }

    #[test]
    fn summary_true_keeps_summary_and_mandatory_elements() {
        let mut d = doc();
        assert!(subset(&mut d, Summary::True, None));
        let keys: Vec<&str> = d.as_object().expect("object").keys().map(String::as_str).collect();
        for k in ["resourceType", "id", "meta", "masterIdentifier", "status", "description", "content", "context"] {
            assert!(keys.contains(&k), "{k} kept: {keys:?}");
        }
        for k in ["text", "extension", "custodian"] {
            assert!(!keys.contains(&k), "{k} dropped: {keys:?}");
        }
        assert!(d["context"].get("facilityType").is_none() && d["context"].get("period").is_some());
        assert!(d["content"][0].get("id").is_none());
        assert_eq!(d["meta"]["tag"][0]["code"], "SUBSETTED");
        assert_eq!(d["meta"]["lastUpdated"], "2025-01-01T00:00:00Z");
    }

    #[test]
    fn elements_keep_the_named_and_the_mandatory() {
        let mut d = doc();
        assert!(subset(&mut d, Summary::False, Some(&["description".to_owned()])));
        let mut keys: Vec<&str> = d.as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["content", "description", "id", "masterIdentifier", "meta", "resourceType", "status"]);
    }

    #[test]
    fn contained_resources_follow_the_references_that_stay() {
        let full = json!({
            "resourceType": "DocumentReference", "id": "d", "status": "current", "content": [],
            "masterIdentifier": {"value": "x"},
            "contained": [{"resourceType": "Practitioner", "id": "a"}, {"resourceType": "Patient", "id": "sp"}],
            "author": [{"reference": "#a"}],
            "context": {"sourcePatientInfo": {"reference": "#sp"}, "facilityType": {"text": "f"}}
        });
        let mut d = full.clone();
        assert!(subset(&mut d, Summary::True, None));
        let ids: Vec<&str> = d["contained"].as_array().expect("contained").iter().filter_map(|c| c["id"].as_str()).collect();
        assert_eq!(ids, ["a"], "context.sourcePatientInfo is not summary, author is");
        let mut d = full.clone();
        assert!(subset(&mut d, Summary::False, Some(&["description".to_owned()])));
        assert!(d.get("contained").is_none());
        let mut d = full;
        assert!(!subset(&mut d, Summary::Data, None), "nothing to leave out");
        assert_eq!(d["contained"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn text_data_and_false() {
        let mut d = doc();
        assert!(subset(&mut d, Summary::Data, None));
        assert!(d.get("text").is_none() && d.get("custodian").is_some());
        let mut d = doc();
        assert!(subset(&mut d, Summary::Text, None));
        assert!(d.get("text").is_some() && d.get("description").is_none() && d.get("status").is_some());
        let mut d = doc();
        assert!(!subset(&mut d, Summary::False, None));
        assert_eq!(d, doc());
        // Nothing to leave out: no tag.
        let mut small = json!({"resourceType": "DocumentReference", "status": "current", "content": []});
        assert!(!subset(&mut small, Summary::Data, None));
        assert!(small.get("meta").is_none());
    }
}
