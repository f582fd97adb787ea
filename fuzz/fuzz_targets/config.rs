//! The configuration file, `/etc/medgate/medgate.toml`: parse, shape check, validation. Every
//! refusal names the file and a key.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use medgate_gateway::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = Config::parse(text, Path::new("/etc/medgate/medgate.toml")) {
        assert!(!e.problems.is_empty(), "a refusal with no problem named");
        let shown = e.to_string();
        assert!(shown.starts_with("/etc/medgate/medgate.toml: "));
        for p in &e.problems {
            assert!(!p.key.is_empty() && !p.reason.is_empty());
        }
    }
});
