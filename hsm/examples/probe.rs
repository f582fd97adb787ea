//! Prints the probe report of a PKCS#11 module, as `medgate keys probe` does:
//!
//!     cargo run -p medgate-hsm --example probe -- MODULE TOKEN_LABEL [PIN_FILE] [--json]
//!
//! Without a PIN file the template attributes and the keys are not checked.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let rest: Vec<&String> = args.iter().filter(|a| *a != "--json").collect();
    let (Some(module), Some(label)) = (rest.first(), rest.get(1)) else {
        eprintln!("usage: probe MODULE TOKEN_LABEL [PIN_FILE] [--json]");
        return ExitCode::from(64);
    };
    let pin = match rest.get(2).map(|p| medgate_hsm::Pin::from_file(&PathBuf::from(p))) {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
        None => None,
    };
    match medgate_hsm::probe(&PathBuf::from(module), label, pin.as_ref()) {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{report}");
            }
            if report.refusals().is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(69)
        }
    }
}
