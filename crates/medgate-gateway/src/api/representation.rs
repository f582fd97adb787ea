//! How an answer is represented (R4 http.html): the format (`_format`, which overrides
//! `Accept`), `_pretty`, `_summary` and `_elements` on reads, the two forms of a Binary
//! (ITI-68), and every relative URL of a resource or Bundle resolved against the gateway's
//! public base URL.
//!
//! Boundary: request parameters and headers in, a decision or a rendered body out. The gateway
//! answers FHIR in JSON only: a client that accepts only XML gets 406 with an OperationOutcome
//! (in JSON, the one format there is).

use bytes::Bytes;
use medgate_fhir::subset::Summary;
use medgate_fhir::FhirError;
use serde_json::Value;

/// The JSON media types of FHIR R4 (and the DSTU2 name some clients still send).
const FHIR_JSON_TYPES: [&str; 2] = ["application/fhir+json", "application/json+fhir"];
const XML_TYPES: [&str; 4] = ["application/fhir+xml", "application/xml+fhir", "application/xml", "text/xml"];

/// What the request asks of the representation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rep {
    pub format: Option<String>,
    pub pretty: bool,
    /// Reads only (a search carries them in its query).
    pub summary: Summary,
    pub elements: Option<Vec<String>>,
}

impl Default for Rep {
    fn default() -> Self {
        Rep { format: None, pretty: false, summary: Summary::False, elements: None }
    }
}

/// Reads `_format` and `_pretty`, and for a read (`read`) `_summary` and `_elements` (a
/// search reads those itself); other parameters are not this module's business.
pub(crate) fn rep_params(pairs: &[(String, String)], read: bool) -> Result<Rep, FhirError> {
    let mut rep = Rep::default();
    for (name, value) in pairs {
        match name.as_str() {
            "_summary" | "_elements" if !read => {}
            "_format" => rep.format = Some(value.clone()),
            "_pretty" => {
                rep.pretty = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(FhirError::BadParameter("_pretty: must be true or false".into())),
                }
            }
            "_summary" => {
                rep.summary = Summary::parse(value).filter(|s| *s != Summary::Count).ok_or_else(|| {
                    FhirError::BadParameter("_summary: a read takes true, false, text or data".into())
                })?
            }
            "_elements" => rep.elements = Some(value.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()),
            _ => {}
        }
    }
    Ok(rep)
}

/// One media range of an `Accept` header: its lower-cased essence and its weight.
#[derive(Debug)]
struct MediaRange {
    essence: String,
    q: f32,
}

fn media_ranges(accept: &str) -> Vec<MediaRange> {
    accept
        .split(',')
        .filter_map(|r| {
            let mut parts = r.split(';');
            let essence = parts.next()?.trim().to_ascii_lowercase();
            let mut q = 1.0;
            for p in parts {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.trim().parse().unwrap_or(0.0),
                    // This gateway speaks R4 (4.0) only.
                    "fhirversion" if !v.trim().trim_matches('"').starts_with("4.0") => q = 0.0,
                    _ => {}
                }
            }
            (!essence.is_empty()).then_some(MediaRange { essence, q })
        })
        .collect()
}

/// The essence of a `_format` value: `json` and `xml` stand for the FHIR types.
fn format_essence(format: &str) -> String {
    let e = format.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match e.as_str() {
        "json" => "application/fhir+json".into(),
        "xml" => "application/fhir+xml".into(),
        _ => e,
    }
}

fn not_acceptable(what: &str) -> FhirError {
    FhirError::NotAcceptable(format!("{what}; this gateway answers in FHIR JSON (application/fhir+json) only"))
}

/// Checks that a FHIR resource in JSON is acceptable to the client.
pub(crate) fn check_json(rep: &Rep, accept: Option<&str>) -> Result<(), FhirError> {
    if let Some(f) = &rep.format {
        let e = format_essence(f);
        return if FHIR_JSON_TYPES.contains(&e.as_str()) || e == "application/json" {
            Ok(())
        } else if XML_TYPES.contains(&e.as_str()) {
            Err(not_acceptable("_format asks for XML"))
        } else {
            Err(not_acceptable("_format names no FHIR format"))
        };
    }
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else { return Ok(()) };
    let ok = media_ranges(accept).iter().any(|r| {
        r.q > 0.0 && (FHIR_JSON_TYPES.contains(&r.essence.as_str()) || matches!(r.essence.as_str(), "application/json" | "application/*" | "*/*"))
    });
    if ok {
        Ok(())
    } else {
        Err(not_acceptable("Accept names no JSON type"))
    }
}

/// The two forms of `GET /Binary/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryForm {
    /// The document's bytes with its own Content-Type.
    Raw,
    /// A FHIR Binary resource, the bytes in `data`.
    Resource,
}

/// Which form of a document of type `content_type` the client asked for (R4 binary.html): the
/// Binary resource when `_format` names FHIR JSON or `Accept` names it (no lower than the
/// document's own type), the bytes otherwise, and 406 when neither is acceptable.
pub(crate) fn binary_form(rep: &Rep, accept: Option<&str>, content_type: &str) -> Result<BinaryForm, FhirError> {
    if rep.format.is_some() {
        return check_json(rep, None).map(|()| BinaryForm::Resource);
    }
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else { return Ok(BinaryForm::Raw) };
    let own = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let own_major = own.split('/').next().unwrap_or_default().to_owned();
    let (mut fhir_q, mut exact_q, mut wild_q) = (0.0_f32, 0.0_f32, 0.0_f32);
    for r in media_ranges(accept) {
        let e = r.essence.as_str();
        if e == own {
            exact_q = exact_q.max(r.q);
        } else if FHIR_JSON_TYPES.contains(&e) || e == "application/json" {
            fhir_q = fhir_q.max(r.q);
        } else if e == "*/*" || e.strip_suffix("/*") == Some(own_major.as_str()) {
            wild_q = wild_q.max(r.q);
        }
    }
    if fhir_q > 0.0 && fhir_q >= exact_q {
        Ok(BinaryForm::Resource)
    } else if exact_q > 0.0 || wild_q > 0.0 {
        Ok(BinaryForm::Raw)
    } else {
        Err(FhirError::NotAcceptable(format!("Accept names neither the document's type ({own}) nor application/fhir+json")))
    }
}

fn is_absolute(url: &str) -> bool {
    let mut chars = url.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && url.split_once(':').is_some_and(|(scheme, _)| scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)))
}

fn resolve(slot: &mut Value, base: &str) {
    if let Some(u) = slot.as_str().filter(|u| !u.is_empty() && !is_absolute(u)) {
        *slot = Value::String(format!("{base}/{}", u.trim_start_matches('/')));
    }
}

/// Resolves the relative URLs the gateway builds against `base` (no trailing slash): a
/// Bundle's `fullUrl`s and links, and a DocumentReference's attachment URLs, in nested
/// resources too.
pub(crate) fn absolutize(v: &mut Value, base: &str) {
    match v.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => {
            if let Some(links) = v.get_mut("link").and_then(Value::as_array_mut) {
                for l in links {
                    if let Some(u) = l.get_mut("url") {
                        resolve(u, base);
                    }
                }
            }
            if let Some(entries) = v.get_mut("entry").and_then(Value::as_array_mut) {
                for e in entries {
                    if let Some(u) = e.get_mut("fullUrl") {
                        resolve(u, base);
                    }
                    if let Some(r) = e.get_mut("resource") {
                        absolutize(r, base);
                    }
                }
            }
        }
        Some("DocumentReference") => {
            if let Some(contents) = v.get_mut("content").and_then(Value::as_array_mut) {
                for c in contents {
                    if let Some(u) = c.get_mut("attachment").and_then(|a| a.get_mut("url")) {
                        resolve(u, base);
                    }
                }
            }
        }
        _ => {}
    }
}

/// The JSON text of a resource, indented when `_pretty=true`.
pub(crate) fn to_bytes(v: &Value, pretty: bool) -> Bytes {
    let out = if pretty { serde_json::to_vec_pretty(v) } else { serde_json::to_vec(v) };
    Bytes::from(out.unwrap_or_default())
}

/// [`to_bytes`] for a body that carries a document (the Binary resource form): the JSON is
/// written once into a buffer of its exact size (so no outgrown copy is left behind), which
/// is wiped when hyper drops it, and every string of `v` is wiped once written.
pub(crate) fn to_wiped_bytes(v: &mut Value, pretty: bool) -> Bytes {
    /// Counts what serde_json writes.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let write = |w: &mut dyn std::io::Write, v: &Value| if pretty { serde_json::to_writer_pretty(w, v) } else { serde_json::to_writer(w, v) };
    let mut count = Count(0);
    let mut out = zeroize::Zeroizing::new(Vec::new());
    if write(&mut count, v).is_ok() {
        out.reserve_exact(count.0);
        if write(&mut *out, v).is_err() {
            out.clear();
        }
    }
    wipe_strings(v);
    Bytes::from_owner(out)
}

/// Overwrites every string in `v` (keys stay: they are element names).
pub(crate) fn wipe_strings(v: &mut Value) {
    match v {
        Value::String(s) => zeroize::Zeroize::zeroize(s),
        Value::Array(a) => a.iter_mut().for_each(wipe_strings),
        Value::Object(o) => o.values_mut().for_each(wipe_strings),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rep(pairs: &[(&str, &str)]) -> Rep {
        rep_params(&pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect::<Vec<_>>(), true).expect("rep")
    }

    #[test]
    fn a_wiped_body_is_the_same_json_and_the_value_keeps_no_string() {
        for pretty in [false, true] {
            let mut v = json!({"resourceType": "Binary", "id": "r1", "data": "SGVsbG8gV29ybGQ=", "meta": {"tag": ["a", 1]}});
            let plain = to_bytes(&v, pretty);
            assert_eq!(to_wiped_bytes(&mut v, pretty), plain);
            assert_eq!(v["data"], "", "{v}");
            assert_eq!((v["resourceType"].as_str(), v["meta"]["tag"][0].as_str(), &v["meta"]["tag"][1]), (Some(""), Some(""), &json!(1)));
        }
    }

    #[test]
    fn json_is_served_to_whoever_accepts_it() {
        let none = rep(&[]);
        for accept in [None, Some(""), Some("application/fhir+json"), Some("application/fhir+json; fhirVersion=4.0"), Some("application/json"), Some("text/html, */*;q=0.8"), Some("application/json+fhir")] {
            assert!(check_json(&none, accept).is_ok(), "{accept:?}");
        }
        for accept in ["application/fhir+xml", "application/fhir+json; fhirVersion=3.0", "text/html", "application/fhir+json;q=0"] {
            assert_eq!(check_json(&none, Some(accept)).expect_err(accept).status(), 406, "{accept}");
        }
        // _format overrides Accept.
        assert!(check_json(&rep(&[("_format", "json")]), Some("application/fhir+xml")).is_ok());
        assert!(check_json(&rep(&[("_format", "application/fhir+json")]), None).is_ok());
        assert_eq!(check_json(&rep(&[("_format", "xml")]), Some("application/fhir+json")).expect_err("xml").status(), 406);
    }

    #[test]
    fn binary_forms_follow_accept_and_format() {
        let none = rep(&[]);
        let pdf = "application/pdf";
        assert_eq!(binary_form(&none, None, pdf).expect("raw"), BinaryForm::Raw);
        assert_eq!(binary_form(&none, Some("*/*"), pdf).expect("raw"), BinaryForm::Raw);
        assert_eq!(binary_form(&none, Some("application/pdf"), pdf).expect("raw"), BinaryForm::Raw);
        assert_eq!(binary_form(&none, Some("application/*"), pdf).expect("raw"), BinaryForm::Raw);
        assert_eq!(binary_form(&none, Some("application/fhir+json"), pdf).expect("fhir"), BinaryForm::Resource);
        assert_eq!(binary_form(&none, Some("application/fhir+json;q=1.0, application/json+fhir;q=0.9"), pdf).expect("hapi"), BinaryForm::Resource);
        assert_eq!(binary_form(&none, Some("application/fhir+json, */*;q=0.1"), pdf).expect("fhir"), BinaryForm::Resource);
        assert_eq!(binary_form(&none, Some("application/pdf, application/fhir+json;q=0.5"), pdf).expect("pdf"), BinaryForm::Raw);
        assert_eq!(binary_form(&rep(&[("_format", "json")]), Some("application/pdf"), pdf).expect("format"), BinaryForm::Resource);
        assert_eq!(binary_form(&none, Some("image/png"), pdf).expect_err("406").status(), 406);
        assert_eq!(binary_form(&rep(&[("_format", "xml")]), None, pdf).expect_err("xml").status(), 406);
        // A document that is JSON itself is served raw to a client asking application/json.
        assert_eq!(binary_form(&none, Some("application/json"), "application/json").expect("raw"), BinaryForm::Raw);
    }

    #[test]
    fn read_parameters_are_checked() {
        assert!(rep(&[("_pretty", "true")]).pretty);
        for bad in [("_pretty", "yes"), ("_summary", "count"), ("_summary", "x")] {
            let pairs = vec![(bad.0.to_owned(), bad.1.to_owned())];
            assert_eq!(rep_params(&pairs, true).expect_err("bad").status(), 400, "{bad:?}");
        }
        let count = vec![("_summary".to_owned(), "count".to_owned())];
        assert!(rep_params(&count, false).is_ok(), "a search reads _summary itself");
    }

    #[test]
    fn relative_urls_become_absolute_and_absolute_ones_stay() {
        let mut b = json!({"resourceType": "Bundle", "link": [{"relation": "self", "url": "DocumentReference?status=current"}],
            "entry": [
                {"fullUrl": "DocumentReference/a", "resource": {"resourceType": "DocumentReference", "content": [{"attachment": {"url": "Binary/a"}}]}},
                {"fullUrl": "urn:uuid:0b0e6c6e-0000-4000-8000-000000000001", "resource": {"resourceType": "OperationOutcome"}},
                {"fullUrl": "https://other.example/fhir/List/x", "response": {"location": "List/x/_history/1"}}
            ]});
        absolutize(&mut b, "https://gw.example/fhir");
        assert_eq!(b["link"][0]["url"], "https://gw.example/fhir/DocumentReference?status=current");
        assert_eq!(b["entry"][0]["fullUrl"], "https://gw.example/fhir/DocumentReference/a");
        assert_eq!(b["entry"][0]["resource"]["content"][0]["attachment"]["url"], "https://gw.example/fhir/Binary/a");
        assert_eq!(b["entry"][1]["fullUrl"], "urn:uuid:0b0e6c6e-0000-4000-8000-000000000001");
        assert_eq!(b["entry"][2]["fullUrl"], "https://other.example/fhir/List/x");
        assert_eq!(b["entry"][2]["response"]["location"], "List/x/_history/1", "a location may stay relative");
    }
}
