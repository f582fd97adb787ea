//! The CapabilityStatement medgate publishes at `GET /metadata`: a running server (`kind =
//! instance`, so `implementation` with the public base URL, cpb-14), instantiating the IHE MHD
//! Document Recipient and Document Responder statements, listing per resource exactly the
//! interactions and search parameters the gateway serves. The search parameters come from the
//! tables the searches themselves use (`search::params`), so the two cannot disagree.
//!
//! Boundary: the software version, a date and the public base URL in, FHIR R4 JSON out. No I/O.

use serde_json::{json, Value};

use crate::search::params::{ResourceSearch, AUDIT_EVENT, CONSENT, DOCUMENT_REFERENCE, LIST};

const MHD: &str = "https://profiles.ihe.net/ITI/MHD";

/// The parameters every search accepts besides its resource's own (R4 search.html "result
/// parameters" and http.html's `_format` and `_pretty`).
const GENERAL: &[(&str, &str, &str)] = &[
    ("_count", "number", "matches per page (default 100, at most 1000); 0 gives the total only"),
    ("_sort", "special", "date or _lastUpdated, - to descend (default -date for DocumentReference and List)"),
    ("_summary", "token", "true, text, data, count or false; summarised resources are tagged SUBSETTED"),
    ("_elements", "special", "top-level elements to return, comma-separated; mandatory elements are always returned"),
    ("_format", "token", "json, application/json or application/fhir+json (overrides Accept); XML is not served (406)"),
    ("_pretty", "token", "true indents the JSON"),
    ("_cursor", "special", "set by the gateway in the first, previous and next links of a searchset: keyset pages inside the first page's snapshot, so paging never repeats or skips a resource"),
];

fn search_params(s: &ResourceSearch) -> Vec<Value> {
    s.params
        .iter()
        .map(|p| {
            let mut sp = json!({"name": p.name, "type": p.ty.code(), "documentation": p.documentation});
            if !p.definition.is_empty() {
                sp["definition"] = json!(p.definition);
            }
            sp
        })
        .collect()
}

fn interactions(codes: &[(&str, &str)]) -> Vec<Value> {
    codes
        .iter()
        .map(|(code, doc)| if doc.is_empty() { json!({"code": code}) } else { json!({"code": code, "documentation": doc}) })
        .collect()
}

/// What the gateway supports, for `GET /metadata`; `base` is the public base URL.
pub fn capability_statement(version: &str, date: &str, base: &str) -> Value {
    let general: Vec<Value> = GENERAL.iter().map(|(n, t, d)| json!({"name": n, "type": t, "documentation": d})).collect();
    json!({
        "resourceType": "CapabilityStatement",
        "name": "MedgateGateway",
        "title": "medgate gateway",
        "status": "active",
        "date": date,
        "publisher": "medgate",
        "kind": "instance",
        "instantiates": [format!("{MHD}/CapabilityStatement/IHE.MHD.DocumentRecipient"), format!("{MHD}/CapabilityStatement/IHE.MHD.DocumentResponder")],
        "software": {"name": "medgate", "version": version},
        "implementation": {"description": "medgate: this hospital's gateway to the consortium, an IHE MHD 4.2.3 Document Recipient and Document Responder", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "implementationGuide": [format!("{MHD}/ImplementationGuide/ihe.iti.mhd")],
        "rest": [{
            "mode": "server",
            "documentation": "Mutual TLS with a client certificate from the hospital CA (CN = HIS system, OU = role: his or his-read). Headers X-Medgate-User, X-Medgate-Role and X-Medgate-Purpose assert the end user, role and purpose of use; they are recorded pseudonymised on the ledger. Idempotency-Key makes a create safe to retry. Searches run GET [type]?... or POST [type]/_search (form body); an unsupported parameter is ignored and reported in an OperationOutcome entry (search.mode outcome), or refused with 400 under Prefer: handling=strict. Every search, read and retrieve is one ledger entry.",
            "security": {"cors": false, "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "Certificates"}]}]},
            "interaction": [
                {"code": "transaction", "documentation": format!("ITI-65 Provide Document Bundle: {MHD}/StructureDefinition/IHE.MHD.Minimal.ProvideBundle")},
                {"code": "transaction", "documentation": format!("ITI-65 Provide Document Bundle: {MHD}/StructureDefinition/IHE.MHD.UnContained.Comprehensive.ProvideBundle")},
                {"code": "transaction", "documentation": format!("ITI-65 Provide Document Bundle: {MHD}/StructureDefinition/IHE.MHD.Comprehensive.ProvideBundle")}
            ],
            "searchParam": general,
            "resource": [
                {
                    "type": "DocumentReference",
                    "supportedProfile": [format!("{MHD}/StructureDefinition/IHE.MHD.Minimal.DocumentReference")],
                    "documentation": "ITI-67 Find Document References. Metadata is decrypted in the gateway's memory and matched there. In consortium mode, documents other hospitals hold are found through the ledger, which knows only their id, status, type of content, size, hash and custodian: a filter on other metadata leaves them out, and the Bundle's OperationOutcome says how many.",
                    "interaction": interactions(&[
                        ("create", ""),
                        ("read", ""),
                        ("search-type", "ITI-67"),
                        ("patch", "FHIRPath Patch of DocumentReference.status to entered-in-error, by the custodian"),
                        ("delete", "crypto-shredding by the custodian: key material destroyed, the hash stays on the ledger"),
                    ]),
                    "conditionalCreate": true,
                    "searchParam": search_params(&DOCUMENT_REFERENCE)
                },
                {
                    "type": "List",
                    "supportedProfile": [
                        format!("{MHD}/StructureDefinition/IHE.MHD.Minimal.SubmissionSet"),
                        format!("{MHD}/StructureDefinition/IHE.MHD.UnContained.Comprehensive.SubmissionSet"),
                        format!("{MHD}/StructureDefinition/IHE.MHD.Comprehensive.SubmissionSet")
                    ],
                    "documentation": "ITI-66 Find Document Lists: the SubmissionSets of ITI-65 submissions (Folders are not kept). In consortium mode, SubmissionSets other hospitals hold are found through the ledger, which knows their id, code and the documents they name: a filter on other metadata leaves them out, and the Bundle's OperationOutcome says how many.",
                    "interaction": interactions(&[("read", ""), ("search-type", "ITI-66")]),
                    "searchParam": search_params(&LIST)
                },
                {"type": "Patient", "documentation": "The Patient resource an ITI-65 submission carried, under its SubmissionSet's id.", "interaction": interactions(&[("read", "")])},
                {
                    "type": "Binary",
                    "documentation": "ITI-68 Retrieve Document: the bytes with their own Content-Type, or a Binary resource for Accept: application/fhir+json or _format=json. ETag W/\"1\" (a stored document never changes); If-None-Match with it answers 304, recorded on the ledger as a not-modified read.",
                    "interaction": interactions(&[("read", "ITI-68")])
                },
                {"type": "AuditEvent", "documentation": "The patient's audit trail from the ledger (IHE BALP).", "interaction": interactions(&[("search-type", "")]), "searchParam": search_params(&AUDIT_EVENT)},
                {
                    "type": "Consent",
                    "documentation": "POST records a patient's grant to another hospital (provision.actor: urn:medgate:hospital identifier; provision.data: DocumentReferences, or none for all; provision.period in UTC). PUT /Consent/{id} with status inactive withdraws it.",
                    "interaction": interactions(&[("create", ""), ("update", ""), ("search-type", "")]),
                    "searchParam": search_params(&CONSENT)
                }
            ]
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_parameter_is_listed_once_per_resource() {
        let cs = capability_statement("1.0", "2026-01-01T00:00:00Z", "https://gw.example/fhir");
        assert_eq!(cs["implementation"]["url"], "https://gw.example/fhir");
        let dr = &cs["rest"][0]["resource"][0];
        assert_eq!(dr["type"], "DocumentReference");
        let names: Vec<&str> = dr["searchParam"].as_array().expect("params").iter().filter_map(|p| p["name"].as_str()).collect();
        for p in DOCUMENT_REFERENCE.params {
            assert_eq!(names.iter().filter(|n| **n == p.name).count(), 1, "{}", p.name);
        }
        assert_eq!(names.len(), DOCUMENT_REFERENCE.params.len());
    }
}
