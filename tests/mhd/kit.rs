//! The independent FHIR R4 / IHE MHD validator of `tests/mhd` (`validate.py`), called from Rust
//! integration tests: resources medgate returned go through HL7's R4 definitions and the MHD
//! profile rules in one `python3` process, none of it sharing code with medgate's own parser.
//! Include it with `#[path = "mhd/kit.rs"] mod kit;`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// One resource to check: the kit's profile name (`validate.py --list-profiles`), the resource,
/// and for an ITI-65 transaction-response the request Bundle it answers.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    pub profile: &'a str,
    pub resource: &'a serde_json::Value,
    pub request: Option<&'a serde_json::Value>,
}

/// Validates every resource in one process. `Err` holds one line per problem,
/// `stdin:<n>: error: <element path>: <message> [<checker>]`, n counting `checks` from 1.
/// Panics when the kit itself is missing or broken (exit status other than 0 or 1), so a test
/// never passes on a kit that did not run.
pub fn validate(checks: &[Check<'_>]) -> Result<(), String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mhd/validate.py");
    let mut input = Vec::new();
    for c in checks {
        let mut item = serde_json::json!({ "profile": c.profile, "resource": c.resource });
        if let Some(req) = c.request {
            item["request"] = req.clone();
        }
        serde_json::to_writer(&mut input, &item).expect("serialise a check");
        input.push(b'\n');
    }
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    child.stdin.take().expect("stdin").write_all(&input).expect("feed the validator");
    let out = child.wait_with_output().expect("wait for the validator");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(stdout),
        other => panic!(
            "the MHD validation kit failed (exit {other:?}); install it with scripts/install-deps.sh\n{stdout}{stderr}"
        ),
    }
}
