//! The IHE MHD 4.2.3 profiles' required elements, per option, for the resources of a Provide
//! Document Bundle (`input/fsh/documentReference.fsh`, `submissionSet.fsh`, `mhdList.fsh`,
//! `provideBundle.fsh` of the IG). Every problem is collected, so one OperationOutcome names
//! them all.
//!
//! Boundary: JSON in, [`Issue`]s out. Only elements' presence, fixed codes and reference shapes
//! are checked here; the elements medgate uses are read (with their own checks) by `ingest`.

use serde_json::Value;

use super::super::{Issue, MhdOption};

/// The MHD list type code system.
pub(super) const LIST_TYPES: &str = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes";
const SD: &str = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/";
const RFC3986: &str = "urn:ietf:rfc:3986";

/// Whether an element is present: not absent, not an empty array.
fn has(obj: &Value, key: &str) -> bool {
    match obj.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

/// How many values an element has (an array's length, 1 for a single value, 0 when absent).
fn count(obj: &Value, key: &str) -> usize {
    match obj.get(key) {
        None | Some(Value::Null) => 0,
        Some(Value::Array(a)) => a.len(),
        Some(_) => 1,
    }
}

/// `min..=max` values of `key` under `obj` (at `at`), as `why` requires.
fn card(issues: &mut Vec<Issue>, obj: &Value, key: &str, at: &str, min: usize, max: Option<usize>, why: &str) {
    let n = count(obj, key);
    // Formatted only for an issue: a conforming resource passes a dozen of these.
    let path = || format!("{at}.{key}");
    if n < min {
        issues.push(Issue::required(path(), why));
    } else if max.is_some_and(|m| n > m) {
        let reason = match max {
            Some(0) => format!("not allowed by {why}"),
            Some(m) => format!("{why} allows at most {m}, found {n}"),
            None => String::new(),
        };
        issues.push(Issue::invalid(path(), reason));
    }
}

/// The extensions of `obj` with this URL.
fn extensions<'a>(obj: &'a Value, url: &str) -> Vec<&'a Value> {
    obj.get("extension").and_then(Value::as_array).map_or_else(Vec::new, |a| a.iter().filter(|e| e.get("url").and_then(Value::as_str) == Some(url)).collect())
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A local reference (`#id`) that names a resource in `res.contained`.
fn is_contained(res: &Value, reference: &Value) -> bool {
    let Some(id) = str_at(reference, "reference").and_then(|r| r.strip_prefix('#')) else { return false };
    res.get("contained").and_then(Value::as_array).is_some_and(|c| c.iter().any(|r| str_at(r, "id") == Some(id)))
}

fn level(option: MhdOption) -> &'static str {
    match option {
        MhdOption::Minimal => "Minimal",
        MhdOption::UnContainedComprehensive => "UnContained.Comprehensive",
        MhdOption::Comprehensive => "Comprehensive",
    }
}

/// `IHE.MHD.{Minimal,UnContained.Comprehensive,Comprehensive}.DocumentReference`, plus ITI-65's
/// "subject shall be populated" and medgate's "a new document is current".
pub(super) fn document_reference(res: &Value, at: &str, option: MhdOption, issues: &mut Vec<Issue>) {
    let why = format!("IHE.MHD.{}.DocumentReference", level(option));
    let why = why.as_str();
    card(issues, res, "modifierExtension", at, 0, Some(0), why);
    card(issues, res, "masterIdentifier", at, 1, Some(1), why);
    if let Some(mi) = res.get("masterIdentifier") {
        card(issues, mi, "system", &format!("{at}.masterIdentifier"), 1, Some(1), why);
        card(issues, mi, "value", &format!("{at}.masterIdentifier"), 1, Some(1), why);
    }
    entry_uuid_identifiers(res, at, why, issues);
    card(issues, res, "status", at, 1, Some(1), why);
    if let Some(status) = str_at(res, "status") {
        if status != "current" {
            issues.push(Issue::invalid(format!("{at}.status"), "a document submitted is 'current'; an earlier one becomes superseded through relatesTo 'replaces'"));
        }
    }
    card(issues, res, "docStatus", at, 0, Some(0), why);
    card(issues, res, "subject", at, 1, Some(1), "ITI-65 (every DocumentReference.subject shall be populated)");
    card(issues, res, "content", at, 1, Some(1), why);
    let content_at = format!("{at}.content[0]");
    let content = res.get("content").and_then(|c| c.get(0)).cloned().unwrap_or(Value::Null);
    let att_at = format!("{content_at}.attachment");
    card(issues, &content, "attachment", &content_at, 1, Some(1), why);
    let att = content.get("attachment").cloned().unwrap_or(Value::Null);
    card(issues, &att, "contentType", &att_at, 1, Some(1), why);
    card(issues, &att, "data", &att_at, 0, Some(0), &format!("{why} (the document goes in a Binary entry)"));
    card(issues, &att, "url", &att_at, 1, Some(1), why);
    if option == MhdOption::Minimal {
        return;
    }
    for key in ["type", "category", "context"] {
        card(issues, res, key, at, 1, Some(1), why);
    }
    card(issues, res, "securityLabel", at, 1, None, why);
    card(issues, &att, "language", &att_at, 1, Some(1), why);
    card(issues, &att, "creation", &att_at, 1, Some(1), why);
    card(issues, &content, "format", &content_at, 1, Some(1), why);
    let ctx = res.get("context").cloned().unwrap_or(Value::Null);
    for key in ["facilityType", "practiceSetting", "sourcePatientInfo"] {
        card(issues, &ctx, key, &format!("{at}.context"), 1, Some(1), why);
    }
    if option == MhdOption::Comprehensive {
        let contained = |issues: &mut Vec<Issue>, reference: &Value, path: String| {
            if !is_contained(res, reference) {
                issues.push(Issue::invalid(path, format!("{why} requires a reference to a contained resource (#id)")));
            }
        };
        for (i, a) in res.get("author").and_then(Value::as_array).into_iter().flatten().enumerate() {
            contained(issues, a, format!("{at}.author[{i}]"));
        }
        if let Some(a) = res.get("authenticator") {
            contained(issues, a, format!("{at}.authenticator"));
        }
        if let Some(spi) = ctx.get("sourcePatientInfo") {
            contained(issues, spi, format!("{at}.context.sourcePatientInfo"));
        }
    }
}

/// The `entryUUID` identifier slice (4.2.3: `use = official`): system `urn:ietf:rfc:3986`, a
/// `urn:uuid:` value.
fn entry_uuid_identifiers(res: &Value, at: &str, why: &str, issues: &mut Vec<Issue>) {
    for (i, ident) in res.get("identifier").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if str_at(ident, "use") != Some("official") {
            continue;
        }
        if str_at(ident, "system") != Some(RFC3986) {
            issues.push(Issue::invalid(format!("{at}.identifier[{i}].system"), format!("{why} identifier:entryUUID: system must be {RFC3986}")));
        }
        if !str_at(ident, "value").is_some_and(|v| v.starts_with("urn:uuid:")) {
            issues.push(Issue::invalid(format!("{at}.identifier[{i}].value"), format!("{why} identifier:entryUUID: value must start with urn:uuid:")));
        }
    }
}

/// `IHE.MHD.{Minimal,UnContained.Comprehensive,Comprehensive}.SubmissionSet` (and
/// `IHE.MHD.List`), plus ITI-65's "List.subject shall be populated".
pub(super) fn submission_set(res: &Value, at: &str, option: MhdOption, issues: &mut Vec<Issue>) {
    let why = format!("IHE.MHD.{}.SubmissionSet", level(option));
    let why = why.as_str();
    card(issues, res, "modifierExtension", at, 0, Some(0), why);
    if str_at(res, "status") != Some("current") {
        issues.push(Issue::invalid(format!("{at}.status"), format!("{why} fixes status to 'current'")));
    }
    if str_at(res, "mode") != Some("working") {
        issues.push(Issue::invalid(format!("{at}.mode"), format!("{why} fixes mode to 'working'")));
    }
    let source_ids = extensions(res, &format!("{SD}ihe-sourceId"));
    if source_ids.len() != 1 || !source_ids.iter().all(|e| e.get("valueIdentifier").is_some_and(|v| has(v, "value"))) {
        issues.push(Issue::required(format!("{at}.extension:sourceId"), &format!("{why} (exactly one ihe-sourceId extension with valueIdentifier.value)")));
    }
    let designations = extensions(res, &format!("{SD}ihe-designationType"));
    let (min_designation, _) = if option == MhdOption::Minimal { (0, 1) } else { (1, 1) };
    if designations.len() < min_designation {
        issues.push(Issue::required(format!("{at}.extension:designationType"), why));
    } else if designations.len() > 1 {
        issues.push(Issue::invalid(format!("{at}.extension:designationType"), format!("{why} allows at most 1")));
    }
    card(issues, res, "date", at, 1, Some(1), why);
    card(issues, res, "subject", at, 1, Some(1), "ITI-65 (every List.subject shall be populated)");
    for key in ["encounter", "orderedBy", "emptyReason"] {
        card(issues, res, key, at, 0, Some(0), why);
    }
    card(issues, res, "entry", at, 1, None, "a submission (the SubmissionSet lists its documents)");
    for (i, e) in res.get("entry").and_then(Value::as_array).into_iter().flatten().enumerate() {
        for key in ["flag", "deleted", "date"] {
            card(issues, e, key, &format!("{at}.entry[{i}]"), 0, Some(0), why);
        }
    }
    for (i, ident) in res.get("identifier").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if str_at(ident, "use") == Some("usual") && (str_at(ident, "system") != Some(RFC3986) || !str_at(ident, "value").is_some_and(|v| v.starts_with("urn:oid:"))) {
            issues.push(Issue::invalid(format!("{at}.identifier[{i}]"), format!("{why} identifier:uniqueId: system {RFC3986} and a urn:oid: value")));
        }
    }
    entry_uuid_identifiers(res, at, why, issues);
    if option == MhdOption::Comprehensive {
        if let Some(source) = res.get("source") {
            if !is_contained(res, source) {
                issues.push(Issue::invalid(format!("{at}.source"), format!("{why} requires a reference to a contained resource (#id)")));
            }
        }
    }
}

/// `IHE.MHD.Patch.Parameters`: one `operation` with type `replace`, path
/// `DocumentReference.status`, value `superseded`.
pub(super) fn patch_parameters(res: &Value, at: &str, issues: &mut Vec<Issue>) {
    let why = "IHE.MHD.Patch.Parameters";
    let ops: Vec<&Value> = res.get("parameter").and_then(Value::as_array).into_iter().flatten().filter(|p| str_at(p, "name") == Some("operation")).collect();
    let [op] = ops.as_slice() else {
        issues.push(Issue::invalid(format!("{at}.parameter"), format!("{why} holds exactly one 'operation' parameter, found {}", ops.len())));
        return;
    };
    let part = |name: &str| op.get("part").and_then(Value::as_array).and_then(|parts| parts.iter().find(|p| str_at(p, "name") == Some(name)));
    let value = |name: &str, key: &str| part(name).and_then(|p| str_at(p, key));
    if value("type", "valueCode") != Some("replace") {
        issues.push(Issue::invalid(format!("{at}.parameter[0].part:type"), format!("{why}: type must be 'replace'")));
    }
    if value("path", "valueString") != Some("DocumentReference.status") {
        issues.push(Issue::invalid(format!("{at}.parameter[0].part:path"), format!("{why}: path must be 'DocumentReference.status'")));
    }
    if value("value", "valueCode") != Some("superseded") {
        issues.push(Issue::invalid(format!("{at}.parameter[0].part:value"), format!("{why}: value must be 'superseded'")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues_of(f: impl FnOnce(&mut Vec<Issue>)) -> Vec<String> {
        let mut v = Vec::new();
        f(&mut v);
        v.into_iter().map(|i| format!("{} {}", i.code, i.path)).collect()
    }

    #[test]
    fn each_option_asks_its_own_elements() {
        let minimal = json!({"resourceType": "DocumentReference", "masterIdentifier": {"system": RFC3986, "value": "urn:oid:1.2"},
            "status": "current", "subject": {"identifier": {"system": "s", "value": "v"}},
            "content": [{"attachment": {"contentType": "text/plain", "url": "urn:uuid:1"}}]});
        assert!(issues_of(|i| document_reference(&minimal, "D", MhdOption::Minimal, i)).is_empty());
        let comprehensive = issues_of(|i| document_reference(&minimal, "D", MhdOption::Comprehensive, i));
        for want in [
            "required D.type", "required D.category", "required D.context", "required D.securityLabel",
            "required D.content[0].attachment.language", "required D.content[0].attachment.creation", "required D.content[0].format",
            "required D.context.facilityType", "required D.context.practiceSetting", "required D.context.sourcePatientInfo",
        ] {
            assert!(comprehensive.contains(&want.to_owned()), "{want}: {comprehensive:?}");
        }
        let mut bare = minimal.clone();
        for key in ["masterIdentifier", "subject", "status"] {
            bare.as_object_mut().map(|o| o.remove(key));
        }
        bare["content"][0]["attachment"] = json!({"contentType": "text/plain", "data": "aGk="});
        let got = issues_of(|i| document_reference(&bare, "D", MhdOption::Minimal, i));
        assert_eq!(got, ["required D.masterIdentifier", "required D.status", "required D.subject", "invalid D.content[0].attachment.data", "required D.content[0].attachment.url"]);
    }

    #[test]
    fn comprehensive_wants_contained_authors() {
        let mut d = json!({"contained": [{"resourceType": "Practitioner", "id": "a"}], "author": [{"reference": "#a"}, {"reference": "Practitioner/9"}]});
        let got = issues_of(|i| document_reference(&d, "D", MhdOption::Comprehensive, i));
        assert!(got.contains(&"invalid D.author[1]".to_owned()) && !got.contains(&"invalid D.author[0]".to_owned()), "{got:?}");
        d["author"] = json!([{"reference": "#a"}]);
        assert!(!issues_of(|i| document_reference(&d, "D", MhdOption::UnContainedComprehensive, i)).iter().any(|g| g.contains("author")));
    }

    #[test]
    fn submission_set_rules() {
        let ss = json!({"resourceType": "List", "status": "current", "mode": "working",
            "extension": [{"url": format!("{SD}ihe-sourceId"), "valueIdentifier": {"value": "urn:oid:1.2"}}],
            "code": {"coding": [{"system": LIST_TYPES, "code": "submissionset"}]}, "date": "2026-01-01T00:00:00Z",
            "subject": {"identifier": {"system": "s", "value": "v"}}, "entry": [{"item": {"reference": "urn:uuid:1"}}],
            "identifier": [{"use": "usual", "system": RFC3986, "value": "urn:oid:1.2.3"}]});
        assert!(issues_of(|i| submission_set(&ss, "L", MhdOption::Minimal, i)).is_empty());
        assert_eq!(issues_of(|i| submission_set(&ss, "L", MhdOption::UnContainedComprehensive, i)), ["required L.extension:designationType"]);
        let mut bad = ss.clone();
        bad["mode"] = json!("snapshot");
        bad["extension"] = json!([]);
        bad["identifier"][0]["value"] = json!("1.2.3");
        bad.as_object_mut().map(|o| o.remove("date"));
        assert_eq!(
            issues_of(|i| submission_set(&bad, "L", MhdOption::Minimal, i)),
            ["invalid L.mode", "required L.extension:sourceId", "required L.date", "invalid L.identifier[0]"]
        );
    }

    #[test]
    fn the_status_patch_is_the_one_mhd_defines() {
        let p = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "DocumentReference.status"}, {"name": "value", "valueCode": "superseded"}]}]});
        assert!(issues_of(|i| patch_parameters(&p, "P", i)).is_empty());
        let mut other = p.clone();
        other["parameter"][0]["part"][1]["valueString"] = json!("DocumentReference.description");
        other["parameter"][0]["part"][2]["valueCode"] = json!("current");
        assert_eq!(issues_of(|i| patch_parameters(&other, "P", i)), ["invalid P.parameter[0].part:path", "invalid P.parameter[0].part:value"]);
        assert_eq!(issues_of(|i| patch_parameters(&json!({"parameter": []}), "P", i)), ["invalid P.parameter"]);
    }
}
