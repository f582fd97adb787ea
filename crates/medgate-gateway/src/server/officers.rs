//! The admin socket: a Unix socket (mode 0660, in the runtime directory) that carries every admin
//! action — ledger compaction, membership proposals and approvals, the break-glass review, the
//! consortium's members — and nothing else listens for them. Each connection is authorised on
//! the peer's credentials as the kernel reports them (`SO_PEERCRED`): root, the service's own
//! user, or a member of the officers' group (`[admin] officers_group`, read from the system's
//! group database at each connection, so a membership change needs no restart). Anyone else is
//! answered 403 on every request and logged. The file mode is the first gate, the credentials
//! the second: a socket made world-writable by mistake still refuses strangers.
//!
//! Boundary: the socket and who may use it; the actions are [`super::admin::action`].

use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nix::unistd::{Gid, Group, Uid, User};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::admin::{action, text, AdminState};

/// Mode of the socket file: the service's user and the officers' group.
const SOCKET_MODE: u32 = 0o660;

/// Binds the admin socket at `path`: a stale socket left by a stopped gateway is replaced, a live
/// one (another gateway answers on it) or any other file is an error. The socket is made 0660,
/// and its group the officers' group when that group exists and this process may give it
/// (systemd's runtime directory, set-group-ID to that group, already does).
pub fn bind(path: &Path, officers: Option<&str>) -> io::Result<UnixListener> {
    // Outside systemd (whose tmpfiles.d makes /run/medgate), the directory may not exist yet:
    // made here as systemd makes it, set-group-ID to the officers' group so that they can
    // reach the socket (the daemon gives it to the service user when it drops root).
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o750).create(dir)?;
        if let Some(Ok(Some(g))) = officers.map(Group::from_name) {
            // Not root and not in that group: the directory stays the service user's alone.
            match std::os::unix::fs::chown(dir, None, Some(g.gid.as_raw())) {
                Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2750))?,
                Err(e) => tracing::warn!(error = %e, dir = %dir.display(), "the admin socket's directory could not be given to the officers' group; officers cannot reach the socket"),
            }
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket; refusing to replace it"));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, "another gateway answers on this socket"));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    if let Some(group) = officers {
        match Group::from_name(group) {
            Ok(Some(g)) if std::fs::metadata(path)?.gid() != g.gid.as_raw() => {
                if let Err(e) = std::os::unix::fs::chown(path, None, Some(g.gid.as_raw())) {
                    tracing::warn!(group, error = %e, socket = %path.display(), "the admin socket's group could not be set to the officers' group; officers cannot reach it until its directory gives that group (see the systemd unit)");
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => tracing::warn!(group, "officers' group does not exist: only root and the service's user may use the admin socket"),
            Err(e) => tracing::warn!(group, error = %e, "officers' group could not be looked up"),
        }
    }
    Ok(listener)
}

/// Who is on the other end of an admin connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// The user name, when the system knows the uid.
    pub name: Option<String>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {} ({})", self.uid, self.name.as_deref().unwrap_or("unknown user"))?;
        if let Some(pid) = self.pid {
            write!(f, ", pid {pid}")?;
        }
        Ok(())
    }
}

/// Why a peer may act, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Root,
    ServiceUser,
    Officer,
    Refused(String),
}

/// The peer's credentials as the kernel gives them.
pub fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let name = User::from_uid(Uid::from_raw(cred.uid())).ok().flatten().map(|u| u.name);
    Ok(Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid(), name })
}

/// Root, the user this gateway runs as, or a member of the officers' group (its primary group,
/// or listed as a member in the group database). Everyone else is refused.
pub fn authorize(peer: &Peer, officers: Option<&str>) -> Verdict {
    if peer.uid == 0 {
        return Verdict::Root;
    }
    if peer.uid == Uid::effective().as_raw() {
        return Verdict::ServiceUser;
    }
    let Some(group) = officers else {
        return Verdict::Refused("only root and the service's user may act (no officers' group is configured)".into());
    };
    match Group::from_name(group) {
        Ok(Some(g)) => {
            let listed = peer.name.as_ref().is_some_and(|n| g.mem.iter().any(|m| m == n));
            if g.gid == Gid::from_raw(peer.gid) || listed {
                Verdict::Officer
            } else {
                Verdict::Refused(format!("not root, not the service's user, not a member of the officers' group {group}"))
            }
        }
        Ok(None) => Verdict::Refused(format!("the officers' group {group} does not exist on this system")),
        Err(e) => Verdict::Refused(format!("the officers' group {group} could not be looked up: {e}")),
    }
}

/// Serves the admin socket until `stop`.
pub(super) async fn serve(listener: UnixListener, state: Arc<AdminState>, officers: Option<String>, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        let officers = officers.clone();
        tokio::spawn(async move {
            let (peer, verdict) = match peer_of(&stream) {
                Ok(p) => {
                    let v = authorize(&p, officers.as_deref());
                    (Some(p), v)
                }
                Err(e) => (None, Verdict::Refused(format!("peer credentials unavailable: {e}"))),
            };
            let who = peer.as_ref().map_or_else(|| "unknown peer".to_owned(), ToString::to_string);
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let state = state.clone();
                let verdict = verdict.clone();
                let who = who.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    if let Verdict::Refused(why) = &verdict {
                        tracing::warn!(peer = %who, method = %req.method(), %path, reason = %why, "admin action refused");
                        return Ok::<_, std::convert::Infallible>(text(hyper::StatusCode::FORBIDDEN, format!("refused: {why}\n"), "text/plain; charset=utf-8"));
                    }
                    tracing::info!(peer = %who, as_ = ?verdict, method = %req.method(), %path, "admin action");
                    Ok(action(&state, req).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, name: &str) -> Peer {
        Peer { uid, gid, pid: None, name: Some(name.to_owned()) }
    }

    #[test]
    fn root_and_the_service_user_may_act_others_only_through_the_group() {
        assert_eq!(authorize(&peer(0, 0, "root"), None), Verdict::Root);
        let me = Uid::effective().as_raw();
        if me != 0 {
            assert_eq!(authorize(&peer(me, 12345, "me"), None), Verdict::ServiceUser);
        }
        assert!(matches!(authorize(&peer(54321, 54321, "stranger"), None), Verdict::Refused(_)));
        assert!(matches!(authorize(&peer(54321, 54321, "stranger"), Some("no-such-group-medgate")), Verdict::Refused(_)));
        // Group 0 exists everywhere: a peer whose primary group it is counts as a member.
        let root_group = Group::from_gid(Gid::from_raw(0)).ok().flatten().map(|g| g.name).unwrap_or_else(|| "root".into());
        assert_eq!(authorize(&peer(54321, 0, "stranger"), Some(&root_group)), Verdict::Officer);
        assert!(matches!(authorize(&peer(54321, 54321, "stranger"), Some(&root_group)), Verdict::Refused(_)));
    }

    #[tokio::test]
    async fn a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("admin.sock");
        let first = bind(&path, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).ok(), Some(0o660));
        assert_eq!(bind(&path, None).map(|_| ()).map_err(|e| e.kind()), Err(io::ErrorKind::AddrInUse));
        drop(first);
        bind(&path, None).unwrap_or_else(|e| panic!("a stale socket is replaced: {e}"));
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bind(&file, None).map(|_| ()).map_err(|e| e.kind()), Err(io::ErrorKind::AlreadyExists));
    }
}
