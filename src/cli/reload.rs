//! `medgate reload`: asks the running gateway to re-read its configuration and waits for the
//! answer, so that the unit's `ExecReload=` (and `systemctl reload medgate`) fails when the
//! gateway refused the new configuration and kept its previous settings.

use std::net::SocketAddr;
use std::path::Path;

use crate::exit::{self, Failure};

/// The admin listener's address as the file names it. Read leniently: a file that the gateway
/// would refuse must still tell `medgate reload` where to ask, so that the gateway itself says
/// what is wrong.
fn admin_address(path: &Path) -> Result<SocketAddr, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::config(format!("{}: cannot be read: {e}", path.display())))?;
    let default = medgate_gateway::config::Admin::default().listen;
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(default);
    };
    match table.get("admin").and_then(|a| a.get("listen")).and_then(|l| l.as_str()) {
        Some(s) => s.parse().map_err(|_| Failure::config(format!("{}: admin.listen: {s:?} is not IP:port", path.display()))),
        None => Ok(default),
    }
}

pub(crate) fn reload(path: &Path) -> Result<(), Failure> {
    let addr = admin_address(path)?;
    match crate::admin_client::request(addr, "POST", "/reload", b"") {
        Ok((200, body)) => {
            print!("{body}");
            println!("reloaded: {}", path.display());
            Ok(())
        }
        Ok((422, body)) => Err(Failure::config(body.trim_end().to_owned())),
        Ok((status, body)) => Err(Failure::runtime(format!("the gateway answered {status}: {}", body.trim_end()))),
        Err(e) => Err(Failure { code: exit::UNAVAILABLE, message: format!("the gateway's admin listener {addr} did not answer ({e}); is medgate running?") }),
    }
}
