//! The `patient` search parameter as it arrives in the query string (percent-encoded) and
//! decoded: the FHIR token `system|value` with its escapes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_fhir::PatientId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = PatientId::from_query(text) {
        assert!(!id.system.is_empty() && !id.value.is_empty());
    }
    match PatientId::parse_token(text) {
        Ok(id) => {
            assert!(!id.system.is_empty() && !id.value.is_empty());
            let _ = id.canonical();
        }
        Err(e) => {
            assert_eq!(e.status(), 400);
            // A refusal never repeats the identifier it was given.
            if text.len() >= 8 && !text.contains("patient") {
                assert!(!e.to_string().contains(text), "refusal echoes the input");
            }
        }
    }
});
