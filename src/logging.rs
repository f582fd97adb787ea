//! Logs: one line per event on stderr, which systemd sends to the journal. Level from
//! `MEDGATE_LOG` (tracing filter syntax), else the command's default (`info`; `warn` for the
//! load generator). No PHI and no secret is ever a field.

use tracing_subscriber::EnvFilter;

pub fn init(default: &str) {
    let filter = EnvFilter::try_from_env("MEDGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Under systemd the journal adds its own timestamps.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = if journald {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}
