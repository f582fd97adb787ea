//! The CapabilityStatement medgate publishes at `GET /metadata`.
//!
//! Boundary: the software version and a date in, FHIR R4 JSON out. No I/O.

use serde_json::{json, Value};

/// What the gateway supports, for `GET /metadata`.
pub fn capability_statement(version: &str, date: &str) -> Value {
    let search_patient = json!({"name": "patient", "type": "token",
        "documentation": "system|value of the patient identifier; the gateway pseudonymises it before it reaches the ledger"});
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "kind": "instance",
        "software": {"name": "medgate", "version": version},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "implementationGuide": ["https://profiles.ihe.net/ITI/MHD/ImplementationGuide/ihe.iti.mhd"],
        "rest": [{
            "mode": "server",
            "documentation": "Mutual TLS with a client certificate from the hospital CA (CN = HIS system, OU = role: his or his-read). Headers X-Medgate-User, X-Medgate-Role and X-Medgate-Purpose assert the end user, role and purpose of use; they are recorded pseudonymised on the ledger. Idempotency-Key makes a create safe to retry.",
            "security": {"cors": false, "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "Certificates"}]}]},
            "interaction": [{"code": "transaction", "documentation": "ITI-65 style: DocumentReference + Binary"}],
            "resource": [
                {
                    "type": "DocumentReference",
                    "interaction": [{"code": "create"}, {"code": "read"}, {"code": "search-type"}, {"code": "delete", "documentation": "crypto-shredding by the custodian: key material destroyed, the hash stays on the ledger"}],
                    "conditionalCreate": true,
                    "searchParam": [search_patient.clone()]
                },
                {"type": "Binary", "interaction": [{"code": "read"}]},
                {"type": "AuditEvent", "interaction": [{"code": "search-type"}], "searchParam": [search_patient.clone()]},
                {
                    "type": "Consent",
                    "documentation": "POST records a patient's grant to another hospital (provision.actor: urn:medgate:hospital identifier; provision.data: DocumentReferences, or none for all; provision.period in UTC). PUT /Consent/{id} with status inactive withdraws it.",
                    "interaction": [{"code": "create"}, {"code": "update"}, {"code": "search-type"}],
                    "searchParam": [search_patient]
                }
            ]
        }]
    })
}
