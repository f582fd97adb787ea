//! `medgate config`: checks of the configuration file.

use std::path::Path;

use clap::Subcommand;
use medgate_gateway::config::Config;

use super::ConfigArg;
use crate::exit::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Parse and validate the configuration; print every problem with file, key and reason.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub(crate) fn config_check(path: &Path) -> Result<(), Failure> {
    let cfg = Config::load(path).map_err(|e| Failure::config(e.to_string()))?;
    for d in cfg.dangerous_settings() {
        println!("warning: [dangerous] {d}");
    }
    println!("{}: OK", path.display());
    Ok(())
}

