//! Loopback ports for the demo's and the bench's gateways and etcd members, and for the tests'.
//!
//! A port is chosen by binding it and letting it go; its gateway binds it again later, in
//! another process. Between the two, another chooser could take the same port: a test running
//! beside another, or a `medgate demo` a test started. So every port handed out is reserved for
//! the life of the process that chose it, across processes too, by an advisory lock on
//! `$TMPDIR/medgate-ports-UID/PORT.lock` (the kernel releases it when the process exits). Where
//! that directory cannot be used (not ours, not writable), ports are chosen by the bind alone.
//! The directory keeps at most one empty file per port of the range.

use std::fs::{DirBuilder, File, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

use crate::exit::Failure;

/// The locks of the ports this process was given (held until it exits).
static HELD: Mutex<Vec<Flock<File>>> = Mutex::new(Vec::new());

/// A loopback port nobody listens on right now and no other live process has been given, below
/// Linux's ephemeral range (32768 and up): a port from that range can be taken by any outgoing
/// connection while its gateway is stopped, and the gateway could not listen on it again when
/// it restarts.
pub fn free_port() -> Result<SocketAddr, Failure> {
    let dir = lock_dir();
    let mut seed = [0u8; 2];
    for _ in 0..500 {
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        let port = 20_000 + u16::from_be_bytes(seed) % 12_000;
        let lock = match dir.as_deref().map(|d| reserve(d, port)) {
            Some(Reservation::Held(lock)) => Some(lock),
            Some(Reservation::Taken) => continue,
            Some(Reservation::Unavailable) | None => None,
        };
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            let addr = l.local_addr().map_err(|e| Failure::runtime(e.to_string()))?;
            if let Some(lock) = lock {
                HELD.lock().unwrap_or_else(|p| p.into_inner()).push(lock);
            }
            return Ok(addr);
        }
    }
    Err(Failure::runtime("no free loopback port between 20000 and 32000"))
}

/// This user's directory of port locks, made private if absent; None when it is not ours.
fn lock_dir() -> Option<PathBuf> {
    let uid = nix::unistd::Uid::effective().as_raw();
    let dir = std::env::temp_dir().join(format!("medgate-ports-{uid}"));
    let _ = DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && meta.uid() == uid && meta.mode() & 0o077 == 0).then_some(dir)
}

enum Reservation {
    /// This process now holds the port's lock.
    Held(Flock<File>),
    /// Another live process holds it (or this one does: a second lock on a new descriptor of
    /// the same file is refused too).
    Taken,
    /// The lock file cannot be made or locked here (a file system without flock, say): the
    /// bind alone decides.
    Unavailable,
}

fn reserve(dir: &Path, port: u16) -> Reservation {
    let opened = OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).custom_flags(nix::libc::O_NOFOLLOW).open(dir.join(format!("{port}.lock")));
    let Ok(file) = opened else { return Reservation::Unavailable };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Reservation::Held(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Reservation::Taken,
        Err(_) => Reservation::Unavailable,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_given_once_while_its_process_lives() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap().port()).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        assert!(ports.iter().all(|p| (20_000..32_000).contains(p)));
        // Another process (here: a new descriptor, which flock treats alike) cannot take them.
        let dir = lock_dir().expect("the lock directory is this user's");
        assert!(ports.iter().all(|p| matches!(reserve(&dir, *p), Reservation::Taken)), "a reserved port's lock was free");
    }
}
