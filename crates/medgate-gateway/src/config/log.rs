//! `[log]`: what the gateway logs, checked here so that a reload with a filter the logger
//! would not take is refused before anything changes.

use serde::Deserialize;

use super::Problem;

/// What the gateway logs. `MEDGATE_LOG` in the environment, when set, wins over it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `info`, or a list of `[target=]level` such as `"info,medgate_store=debug"`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: default_log_level() }
    }
}

impl Log {
    pub(super) fn check(&self, p: &mut Vec<Problem>) {
        if let Err(reason) = check_log_level(&self.level) {
            p.push(Problem { key: "log.level".into(), reason });
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// The levels a log filter may name.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a log filter: comma-separated `level` or `target=level` items.
fn check_log_level(filter: &str) -> Result<(), String> {
    let bad = || format!("{filter:?} is not a log filter: use one of {} or a list such as \"info,medgate_store=debug\"", LOG_LEVELS.join(", "));
    if filter.trim().is_empty() {
        return Err(bad());
    }
    for item in filter.split(',').map(str::trim) {
        let (target, level) = item.rsplit_once('=').unwrap_or(("", item));
        let target_ok = target.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if !target_ok || !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_are_levels_or_target_levels() {
        for good in ["info", "debug", "info,medgate_store=debug", "WARN", "medgate_gateway::server=trace"] {
            assert!(check_log_level(good).is_ok(), "{good}");
        }
        for bad in ["", "loud", "info,medgate store=debug", "x=verbose"] {
            assert!(check_log_level(bad).expect_err(bad).contains("not a log filter"), "{bad}");
        }
    }
}
