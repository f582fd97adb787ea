//! The FHIR form of a document (ITI-68 asked with `Accept: application/fhir+json` or
//! `_format=json`): a Binary resource carrying the bytes in base64.
//!
//! Boundary: bytes and what the gateway knows of them in, FHIR R4 JSON out. No I/O.

use base64::Engine;
use serde_json::{json, Value};

use super::primitives::BASE64_OUT as B64;

/// The Binary resource `id` (version `version`, stored at `last_updated`) of type
/// `content_type` holding `bytes`.
pub fn binary_resource(id: &str, version: &str, last_updated: &str, content_type: &str, bytes: &[u8]) -> Value {
    json!({
        "resourceType": "Binary",
        "id": id,
        "meta": {"versionId": version, "lastUpdated": last_updated},
        "contentType": content_type,
        "data": B64.encode(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bytes_travel_in_base64() {
        let b = binary_resource("r1", "1", "2026-01-01T00:00:00Z", "text/plain", b"Hello World");
        assert_eq!(b["data"], "SGVsbG8gV29ybGQ=");
        assert_eq!(b["meta"]["versionId"], "1");
        assert_eq!(b["contentType"], "text/plain");
    }
}
