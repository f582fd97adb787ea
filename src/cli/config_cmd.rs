//! `medgate config check` and its other name `medgate doctor`: the checks live in
//! [`crate::doctor`].

use std::path::Path;

use clap::Subcommand;

use super::ConfigArg;
use crate::exit::Failure;

/// What `medgate config check --help` and `medgate doctor --help` say.
pub(crate) const CHECK_HELP: &str = "\
Tries what `medgate serve` will try, as the service's user when started as root (gateway.user,
else the owner of gateway.state_directory): reads every file the configuration names, logs in to the HSM with the
PIN the service gets (as root: $CREDENTIALS_DIRECTORY/hsm-pin, else /etc/medgate/hsm-pin beside
the configuration, the unit's credential, else [hsm] pin_file), finds every role's key, checks
that the certificates certify the HSM's tls key and are valid, that the CRLs are not past their
nextUpdate, that the state directory is writable and its ledger this hospital's, and tries to
bind every listen address. Each problem comes with what to do. Exit status: 0 when the gateway
would start and serve, 64 otherwise. One wrong PIN costs one login attempt, as a start would.";

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Check the configuration and everything the gateway needs, as the service will find it;
    /// print every problem with what to do (exit 0 or 64).
    #[command(after_long_help = CHECK_HELP)]
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub(crate) fn config_check(path: &Path) -> Result<(), Failure> {
    crate::doctor::check(path)
}
