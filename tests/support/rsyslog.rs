//! A real rsyslog (Debian `rsyslog` + `rsyslog-gnutls`) as the hospital's audit record
//! repository: RFC 5425 syslog over mutual TLS on a free loopback port, writing every message it
//! receives (`%rawmsg%`) as one line of `received.log`. It runs in the foreground (`-n`) with its
//! own configuration and work directory, is stopped by PID (SIGTERM, then waited for) and killed
//! by PID if a test ends while it runs.

#![allow(dead_code, reason = "each test binary uses a different part of the fixture")]
#![allow(clippy::unwrap_used, reason = "test fixture")]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
/// How long a test waits for something it can observe before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real rsyslog with its TLS driver (gtls), mutual TLS with `x509/name` and one permitted
/// peer, writing every message it receives (`%rawmsg%`) as one line of `received.log`.
pub struct Rsyslog {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    /// Starts rsyslog in `dir` with the repository's certificate and key (PEM), trusting `ca_pem`
    /// for clients and permitting only the client named `permitted`.
    pub fn start(dir: &Path, ca_pem: &str, cert_pem: &str, key_pem: &str, permitted: &str) -> Rsyslog {
        fs::create_dir_all(dir.join("work")).unwrap();
        fs::write(dir.join("ca.pem"), ca_pem).unwrap();
        fs::write(dir.join("server.pem"), cert_pem).unwrap();
        fs::write(dir.join("server.key"), key_pem).unwrap();
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            r#"global(
  workDirectory="{d}/work"
  maxMessageSize="64k"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="{d}/ca.pem"
  defaultNetstreamDriverCertFile="{d}/server.pem"
  defaultNetstreamDriverKeyFile="{d}/server.key"
)
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/name" permittedPeer=["{permitted}"])
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="arr") {{
  action(type="omfile" file="{d}/received.log" template="raw" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="arr")
*.* action(type="omfile" file="{d}/internal.log")
"#
        );
        fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let mut r = Rsyslog { dir: dir.to_owned(), port, child: None };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("rsyslogd.out")).unwrap();
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{RSYSLOGD}: {e} (Debian packages rsyslog and rsyslog-gnutls; scripts/install-deps.sh installs them)"));
        self.child = Some(child);
        // Ready when the TLS listener accepts connections.
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("rsyslogd exited with {status}:\n{}", self.diagnostics());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "rsyslogd did not listen on {} within {PATIENCE:?}:\n{}", self.port, self.diagnostics());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM by PID, then waits for the process to exit (rsyslog writes what it has read first).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + PATIENCE;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("rsyslogd did not stop on SIGTERM within {PATIENCE:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts it again on the same port, with the same configuration and output file.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "rsyslogd is still running");
        self.spawn();
    }

    /// The lines received so far (each one syslog message). Only complete lines: rsyslogd may
    /// be writing the last one while the file is read.
    pub fn received(&self) -> Vec<String> {
        let mut bytes = fs::read(self.dir.join("received.log")).unwrap_or_default();
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(complete);
        String::from_utf8(bytes).unwrap().lines().map(str::to_owned).collect()
    }

    /// Waits until at least `n` lines have been received.
    pub fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let lines = self.received();
            if lines.len() >= n {
                return lines;
            }
            assert!(Instant::now() < deadline, "{} of {n} messages received within {PATIENCE:?}:\n{}", lines.len(), self.diagnostics());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn diagnostics(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let tail = |s: String| s.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        format!("--- rsyslogd output\n{}\n--- rsyslog internal log\n{}", tail(read("rsyslogd.out")), tail(read("internal.log")))
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

