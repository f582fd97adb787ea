//! Logs: one line per event on stderr, which systemd sends to the journal. The filter is
//! `MEDGATE_LOG` when set (tracing filter syntax), else `[log] level` of the configuration once
//! `medgate serve` has read it (and again at each reload), else `info`. No PHI and no secret is
//! ever a field.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// The handle that swaps the filter in use.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

pub fn init() {
    let filter = EnvFilter::try_from_env("MEDGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // Under systemd the journal adds its own timestamps.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let layer = fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(false);
    let registry = tracing_subscriber::registry().with(filter);
    let done = if journald { registry.with(layer.without_time()).try_init() } else { registry.with(layer).try_init() };
    if done.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Makes the configuration's `[log] level` the filter, unless `MEDGATE_LOG` is set.
pub fn set_level(level: &str) -> Result<(), String> {
    if std::env::var_os("MEDGATE_LOG").is_some() {
        return Ok(());
    }
    let filter = EnvFilter::try_new(level).map_err(|e| format!("{level:?}: {e}"))?;
    match FILTER.get() {
        Some(h) => h.reload(filter).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// The logger as a reload sees it.
#[derive(Debug)]
pub struct Control;

impl medgate_gateway::reload::LogControl for Control {
    fn set(&self, filter: &str) -> Result<(), String> {
        set_level(filter)
    }
}
