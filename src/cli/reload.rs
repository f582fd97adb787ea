//! `medgate reload`: asks the running gateway to re-read its configuration and waits for the
//! answer, so that the unit's `ExecReload=` (and `systemctl reload medgate`) fails when the
//! gateway refused the new configuration and kept its previous settings.

use std::path::{Path, PathBuf};

use crate::exit::{self, Failure};

/// The admin socket as the file names it. Read leniently: a file that the gateway would refuse
/// must still tell `medgate reload` where to ask, so that the gateway itself says what is wrong.
/// A file the caller may not read (an officer) gives the default socket.
fn admin_socket(path: &Path) -> Result<PathBuf, Failure> {
    let default = medgate_gateway::config::Admin::default().socket;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(default),
        Err(e) => return Err(Failure::config(format!("{}: cannot be read: {e}", path.display()))),
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(default);
    };
    match table.get("admin").and_then(|a| a.get("socket")) {
        Some(toml::Value::String(s)) if Path::new(s).is_absolute() => Ok(PathBuf::from(s)),
        Some(other) => Err(Failure::config(format!("{}: admin.socket: {other} is not an absolute path", path.display()))),
        None => Ok(default),
    }
}

pub(crate) fn reload(path: &Path) -> Result<(), Failure> {
    let socket = admin_socket(path)?;
    match crate::admin_client::request(&socket, "POST", "/reload", b"") {
        Ok((200, body)) => {
            print!("{body}");
            println!("reloaded: {}", path.display());
            Ok(())
        }
        Ok((422, body)) => Err(Failure::config(body.trim_end().to_owned())),
        Ok((status, body)) => Err(Failure::runtime(format!("the gateway answered {status}: {}", body.trim_end()))),
        Err(e) => Err(Failure { code: exit::UNAVAILABLE, message: format!("the gateway's admin socket {} did not answer ({e}); is medgate running?", socket.display()) }),
    }
}
