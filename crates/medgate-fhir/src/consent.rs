//! FHIR R4 Consent: what the HIS sends when a patient grants another hospital access to their
//! records (status `active`) or withdraws it (status `inactive`), and the resource medgate
//! answers with.
//!
//! Boundary: bytes in, a validated [`ConsentSubmission`] out; typed values in, FHIR JSON out.
//! medgate reads `patient`, `provision.actor` (exactly one grantee hospital, by identifier in
//! [`HOSPITAL_SYSTEM`]), `provision.period` (UTC instants) and `provision.data` (the
//! DocumentReferences covered; none means all of the patient's records here).

use serde_json::{json, Value};

use super::json::{as_object, child, item, opt_array, opt_obj, opt_str, parse_strict, req_obj, req_str, Object};
use super::resources::HOSPITAL_SYSTEM;
use super::{FhirError, PatientId};

/// A consent as the HIS submitted it, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentSubmission {
    /// `active` grants, `inactive` withdraws.
    pub active: bool,
    pub patient: PatientId,
    /// Hospital id of the grantee.
    pub grantee: String,
    /// DocumentReference ids covered; empty for all.
    pub record_ids: Vec<String>,
    pub start: Option<String>,
    pub end: Option<String>,
}

fn is_utc_instant(s: &str) -> bool {
    super::primitives::is_instant(s) && s.ends_with('Z')
}

/// Parses a Consent resource.
pub fn parse_consent(body: &[u8]) -> Result<ConsentSubmission, FhirError> {
    let value = parse_strict(body)?;
    let res = as_object(&value, "Consent")?;
    match opt_str(res, "resourceType", "Consent")? {
        Some("Consent") => {}
        Some(_) => return Err(FhirError::UnsupportedType { path: "resourceType".into(), reason: "must be 'Consent'".into() }),
        None => return Err(FhirError::required("resourceType")),
    }
    let active = match req_str(res, "status", "Consent")? {
        "active" => true,
        "inactive" => false,
        _ => return Err(FhirError::invalid("Consent.status", "must be 'active' (grant) or 'inactive' (withdraw)")),
    };
    let patient = read_patient(req_obj(res, "patient", "Consent")?, "Consent.patient")?;
    let provision = req_obj(res, "provision", "Consent")?;
    if let Some(t) = opt_str(provision, "type", "Consent.provision")? {
        if t != "permit" {
            return Err(FhirError::invalid("Consent.provision.type", "must be 'permit': medgate records grants, access is denied without one"));
        }
    }
    let grantee = read_grantee(provision)?;
    let (mut start, mut end) = (None, None);
    if let Some(period) = opt_obj(provision, "period", "Consent.provision")? {
        for (key, slot) in [("start", &mut start), ("end", &mut end)] {
            if let Some(t) = opt_str(period, key, "Consent.provision.period")? {
                if !is_utc_instant(t) {
                    return Err(FhirError::invalid(format!("Consent.provision.period.{key}"), "must be a UTC instant, e.g. 2026-12-01T00:00:00Z"));
                }
                *slot = Some(t.to_owned());
            }
        }
        if let (Some(s), Some(e)) = (&start, &end) {
            if e < s {
                return Err(FhirError::invalid("Consent.provision.period", "end is before start"));
            }
        }
    }
    let mut record_ids = Vec::new();
    for (i, d) in opt_array(provision, "data", "Consent.provision")?.unwrap_or(&[]).iter().enumerate() {
        let at = item("Consent.provision.data", i);
        let d = as_object(d, &at)?;
        let r = req_obj(d, "reference", &at)?;
        let reference = req_str(r, "reference", &child(&at, "reference"))?;
        let id = reference
            .strip_prefix("DocumentReference/")
            .filter(|id| !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| FhirError::invalid(child(&at, "reference.reference"), "must be DocumentReference/{id} of a record stored here"))?;
        record_ids.push(id.to_ascii_lowercase());
    }
    if record_ids.len() > 256 {
        return Err(FhirError::invalid("Consent.provision.data", "lists more than 256 records; grant all records instead"));
    }
    Ok(ConsentSubmission { active, patient, grantee, record_ids, start, end })
}

fn read_patient(p: &Object, at: &str) -> Result<PatientId, FhirError> {
    let ident = req_obj(p, "identifier", at)?;
    let ident_at = child(at, "identifier");
    let system = req_str(ident, "system", &ident_at)?;
    let value = req_str(ident, "value", &ident_at)?;
    super::primitives::check_identifier_parts(system, value).map_err(|(part, reason)| FhirError::invalid(child(&ident_at, part), reason))?;
    Ok(PatientId { system: system.to_owned(), value: value.to_owned() })
}

fn read_grantee(provision: &Object) -> Result<String, FhirError> {
    let actors = opt_array(provision, "actor", "Consent.provision")?.unwrap_or(&[]);
    if actors.len() != 1 {
        return Err(FhirError::invalid(
            "Consent.provision.actor",
            "name exactly one grantee hospital: actor[0].reference.identifier {system: \"urn:medgate:hospital\", value: hospital id}",
        ));
    }
    let at = "Consent.provision.actor[0]";
    let actor = as_object(&actors[0], at)?;
    let reference = req_obj(actor, "reference", at)?;
    let ident = req_obj(reference, "identifier", &child(at, "reference"))?;
    let ident_at = format!("{at}.reference.identifier");
    if req_str(ident, "system", &ident_at)? != HOSPITAL_SYSTEM {
        return Err(FhirError::invalid(child(&ident_at, "system"), format!("must be {HOSPITAL_SYSTEM}")));
    }
    let value = req_str(ident, "value", &ident_at)?;
    if value.is_empty() || value.len() > 128 || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
        return Err(FhirError::invalid(child(&ident_at, "value"), "must be a consortium hospital id"));
    }
    Ok(value.to_owned())
}

/// The Consent resource medgate answers with.
pub fn consent_resource(id: &str, c: &ConsentSubmission, custodian: &str, receipt: Option<&Value>) -> Value {
    let mut period = serde_json::Map::new();
    if let Some(s) = &c.start {
        period.insert("start".into(), json!(s));
    }
    if let Some(e) = &c.end {
        period.insert("end".into(), json!(e));
    }
    let data: Vec<Value> = c.record_ids.iter().map(|r| json!({"meaning": "instance", "reference": {"reference": format!("DocumentReference/{r}")}})).collect();
    let mut provision = json!({
        "type": "permit",
        "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"identifier": {"system": HOSPITAL_SYSTEM, "value": c.grantee}}
        }],
    });
    if !period.is_empty() {
        provision["period"] = Value::Object(period);
    }
    if !data.is_empty() {
        provision["data"] = json!(data);
    }
    let mut v = json!({
        "resourceType": "Consent",
        "id": id,
        "status": if c.active { "active" } else { "inactive" },
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        // ppc-1: a privacy consent names its policy; the patient opted in to this sharing.
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": c.patient.system, "value": c.patient.value}},
        "organization": [{"identifier": {"system": HOSPITAL_SYSTEM, "value": custodian}}],
        "provision": provision,
    });
    if let Some(r) = receipt {
        use base64::Engine as _;
        let bytes = serde_json::to_vec(r).unwrap_or_default();
        v["extension"] = json!([{
            "url": super::LEDGER_RECEIPT_EXTENSION,
            "valueAttachment": {"contentType": "application/json", "data": base64::engine::general_purpose::STANDARD.encode(bytes)}
        }]);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent() -> Value {
        json!({
            "resourceType": "Consent",
            "status": "active",
            "patient": {"identifier": {"system": "urn:oid:1.2", "value": "P-7"}},
            "provision": {
                "type": "permit",
                "period": {"start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"},
                "actor": [{"reference": {"identifier": {"system": "urn:medgate:hospital", "value": "hospital-b"}}}],
                "data": [{"meaning": "instance", "reference": {"reference": "DocumentReference/00ff"}}]
            }
        })
    }

    fn parse(v: &Value) -> Result<ConsentSubmission, FhirError> {
        parse_consent(&serde_json::to_vec(v).expect("json"))
    }

    #[test]
    fn a_full_consent_parses_and_renders_back() {
        let c = parse(&consent()).expect("valid");
        assert!(c.active);
        assert_eq!(c.grantee, "hospital-b");
        assert_eq!(c.record_ids, vec!["00ff".to_owned()]);
        assert_eq!(c.start.as_deref(), Some("2026-01-01T00:00:00Z"));
        let r = consent_resource("c1", &c, "hospital-a", None);
        assert_eq!(parse(&r).expect("round trip"), c);
    }

    /// A change to a valid Consent, and the element the refusal must name.
    type Case = (Box<dyn Fn(&mut Value)>, &'static str);

    #[test]
    fn refusals_name_the_element_and_never_echo_the_identifier() {
        let cases: Vec<Case> = vec![
            (Box::new(|v| v["status"] = json!("proposed")), "Consent.status"),
            (Box::new(|v| v["provision"]["type"] = json!("deny")), "Consent.provision.type"),
            (Box::new(|v| v["provision"]["actor"] = json!([])), "Consent.provision.actor"),
            (Box::new(|v| v["provision"]["actor"][0]["reference"]["identifier"]["system"] = json!("urn:x")), "system"),
            (Box::new(|v| v["provision"]["period"]["start"] = json!("2026-01-01T00:00:00+01:00")), "period.start"),
            (Box::new(|v| v["provision"]["period"]["end"] = json!("2025-01-01T00:00:00Z")), "Consent.provision.period"),
            (Box::new(|v| v["provision"]["data"][0]["reference"]["reference"] = json!("Binary/00ff")), "data[0]"),
            (Box::new(|v| v["patient"] = json!({"reference": "Patient/P-7"})), "Consent.patient"),
        ];
        for (edit, path) in cases {
            let mut v = consent();
            edit(&mut v);
            let e = parse(&v).expect_err(path);
            assert_eq!(e.status(), 422, "{path}: {e}");
            assert!(e.to_string().contains(path), "{path}: {e}");
            assert!(!e.to_outcome().to_string().contains("P-7"), "{e}");
        }
    }
}
