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
            // A refusal never repeats the identifier it was given: the same token with every
            // ASCII letter and digit changed is refused in the same words. (Looking for the
            // input in the message cannot tell: "atient: " is in every refusal's "patient: ".)
            let shifted: String = text
                .chars()
                .map(|c| match c {
                    'a'..='y' | 'A'..='Y' | '0'..='8' => char::from(c as u8 + 1),
                    'z' => 'a',
                    'Z' => 'A',
                    '9' => '0',
                    c => c,
                })
                .collect();
            match PatientId::parse_token(&shifted) {
                Err(again) => assert_eq!(e.to_string(), again.to_string(), "the refusal depends on the identifier's letters"),
                Ok(id) => panic!("{shifted:?} parses as {id:?} where {text:?} was refused"),
            }
        }
    }
});
