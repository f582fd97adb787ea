//! Integration test fixture: a real etcd 3.4 cluster (Debian `etcd-server`, `/usr/bin/etcd`) on
//! loopback, with mutual TLS on both the client and the peer listeners, every certificate issued
//! by a test CA. Each cluster owns a temporary directory (certificates, data dirs, member logs);
//! every member is a child process stopped by PID (SIGKILL) when the cluster is dropped.
//!
//! Include it with `#[path = "support/etcd.rs"] mod etcd;`.

#![allow(dead_code, reason = "each test binary uses a different part of the fixture")]
#![allow(clippy::unwrap_used, reason = "test fixture")]

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use medgate_gateway::pki::TestCa;

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// How long `start` (and `restart`, when a quorum can form) waits for the members to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard limit on one etcdctl run (its own --command-timeout is 5 s by default).
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of each member's log quoted in panic messages.
const LOG_TAIL_LINES: usize = 40;

#[derive(Debug)]
struct Member {
    name: String,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    log: PathBuf,
    /// The full etcd command line, reused unchanged on restart.
    args: Vec<OsString>,
    child: Option<Child>,
}

/// A running etcd cluster on 127.0.0.1 with mutual TLS.
#[derive(Debug)]
pub struct EtcdCluster {
    /// Client endpoints (`https://ADDR`), member `i` at index `i`.
    pub endpoints: Vec<SocketAddr>,
    /// The CA that issued every certificate of the cluster (server, peer, etcdctl client).
    pub ca_pem: String,
    /// The cluster token (`--initial-cluster-token`), unique per cluster.
    pub token: String,
    members: Vec<Member>,
    ca_file: PathBuf,
    /// Client certificate (CN `root`) and key used by `etcdctl`.
    client_cert: PathBuf,
    client_key: PathBuf,
    dir: tempfile::TempDir,
}

/// Why one start attempt failed, and whether a fresh attempt with new ports may succeed.
struct StartFailure {
    message: String,
    port_conflict: bool,
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// `2 * n` distinct free loopback ports: all listeners are held until every port is chosen, so
/// the members of one cluster never get the same port. (Another process may still take a port
/// between here and etcd's bind: `start` retries with new ports when a member says so.)
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn fresh_token() -> String {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    format!("medgate-test-{}", hex::encode(b))
}

/// Runs `cmd` with piped output and a hard deadline (SIGKILL by PID when it passes).
/// Returns (exit code, or -1 when killed by a signal; stdout; stderr).
fn run_with_deadline(mut cmd: Command, limit: Duration) -> (i32, String, String) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    let mut err = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    if timed_out {
        err.push_str(&format!("\n[harness: killed after {limit:?}]\n"));
    }
    (status.code().unwrap_or(-1), out, err)
}

impl EtcdCluster {
    /// Starts `n` members (named `m0`..) on free loopback ports with a fresh cluster token,
    /// client and peer mutual TLS (certificates issued by `ca`), pre-vote, and short raft timers
    /// (heartbeat 50 ms, election 500 ms). Returns once every member answers
    /// `etcdctl endpoint health`; panics with the members' logs after 30 s.
    pub fn start(n: usize, ca: &TestCa) -> EtcdCluster {
        assert!(n >= 1, "a cluster needs a member");
        let mut last = String::new();
        for _attempt in 0..3 {
            match Self::try_start(n, ca) {
                Ok(c) => return c,
                Err(f) if f.port_conflict => last = f.message,
                Err(f) => panic!("{}", f.message),
            }
        }
        panic!("etcd: port conflicts on three attempts; last:\n{last}")
    }

    fn try_start(n: usize, ca: &TestCa) -> Result<EtcdCluster, StartFailure> {
        let dir = tempfile::Builder::new().prefix("medgate-etcd-").tempdir().unwrap();
        let ca_pem = ca.cert.pem();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();

        // etcdctl's identity: a client certificate, CN root (the etcd user if auth is enabled).
        let now = time::OffsetDateTime::now_utc();
        let (cc, ck) = ca
            .issue_client("root", "etcd", now - time::Duration::minutes(5), now + time::Duration::days(30))
            .unwrap();
        let client_cert = dir.path().join("root.crt");
        let client_key = dir.path().join("root.key");
        std::fs::write(&client_cert, cc.pem()).unwrap();
        write_private(&client_key, &ck.serialize_pem());

        let token = fresh_token();
        let ports = free_ports(2 * n);
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let initial_cluster = names
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{name}=https://127.0.0.1:{}", ports[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");

        let mut members = Vec::with_capacity(n);
        for (i, name) in names.iter().enumerate() {
            let (client_port, peer_port) = (ports[2 * i], ports[2 * i + 1]);
            // One certificate per member, used as server and peer (client and server) certificate:
            // SAN DNS mN and IP 127.0.0.1, no extended key usage (valid for both uses in Go).
            let (cert, key) = ca.issue_server(name).unwrap();
            let cert_file = dir.path().join(format!("{name}.crt"));
            let key_file = dir.path().join(format!("{name}.key"));
            std::fs::write(&cert_file, cert.pem()).unwrap();
            write_private(&key_file, &key.serialize_pem());
            // etcd creates the data dir itself, with the 0700 mode it wants.
            let data_dir = dir.path().join(format!("{name}.data"));
            let log = dir.path().join(format!("{name}.log"));
            let client_url = format!("https://127.0.0.1:{client_port}");
            let peer_url = format!("https://127.0.0.1:{peer_port}");
            let mut args: Vec<OsString> = Vec::new();
            let mut arg = |k: &str, v: &dyn AsRef<std::ffi::OsStr>| {
                args.push(format!("--{k}").into());
                args.push(v.as_ref().to_owned());
            };
            arg("name", name);
            arg("data-dir", &data_dir);
            arg("listen-client-urls", &client_url);
            arg("advertise-client-urls", &client_url);
            arg("listen-peer-urls", &peer_url);
            arg("initial-advertise-peer-urls", &peer_url);
            arg("initial-cluster", &initial_cluster);
            arg("initial-cluster-state", &"new");
            arg("initial-cluster-token", &token);
            arg("cert-file", &cert_file);
            arg("key-file", &key_file);
            arg("trusted-ca-file", &ca_file);
            arg("peer-cert-file", &cert_file);
            arg("peer-key-file", &key_file);
            arg("peer-trusted-ca-file", &ca_file);
            arg("heartbeat-interval", &"50");
            arg("election-timeout", &"500");
            arg("logger", &"zap");
            arg("log-outputs", &"stderr");
            for flag in ["--client-cert-auth", "--peer-client-cert-auth", "--pre-vote"] {
                args.push(flag.into());
            }
            members.push(Member { name: name.clone(), data_dir, client_port, peer_port, log, args, child: None });
        }

        let endpoints = members.iter().map(|m| SocketAddr::from(([127, 0, 0, 1], m.client_port))).collect();
        let mut cluster = EtcdCluster { endpoints, ca_pem, token, members, ca_file, client_cert, client_key, dir };
        for i in 0..n {
            cluster.spawn(i);
        }
        let all: Vec<usize> = (0..n).collect();
        match cluster.wait_healthy(&all, READY_TIMEOUT) {
            Ok(()) => Ok(cluster),
            Err(e) => {
                let logs = cluster.logs();
                let port_conflict = logs.contains("address already in use");
                Err(StartFailure { message: format!("etcd cluster did not become healthy: {e}\n{logs}"), port_conflict })
            }
        }
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "etcd member {} is already running", m.name);
        let mut log = OpenOptions::new().create(true).append(true).open(&m.log).unwrap();
        writeln!(log, "==== harness: starting {} {} ====", m.name, if m.data_dir.exists() { "(existing data dir)" } else { "(new)" }).unwrap();
        let child = Command::new(ETCD)
            .args(&m.args)
            // etcd reads ETCD_* variables; start from an empty environment.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {ETCD} (apt-get install etcd-server): {e}"));
        m.child = Some(child);
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether member `i` has a process (it was not killed, or was restarted).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// The member's name (`m{i}`).
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// The member's process id, when running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// The member's data directory (kept across kill/restart).
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }

    /// `https://127.0.0.1:P` of member `i`.
    pub fn url(&self, i: usize) -> String {
        format!("https://{}", self.endpoints[i])
    }

    /// Comma-separated client URLs of all members (for `--endpoints`).
    pub fn urls(&self) -> String {
        (0..self.len()).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// Paths of the CA, and of the client certificate and key (CN `root`) that etcdctl uses:
    /// for other clients (etcd-client crate) in tests.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
    pub fn client_cert_file(&self) -> &Path {
        &self.client_cert
    }
    pub fn client_key_file(&self) -> &Path {
        &self.client_key
    }

    /// The temporary directory owning every file of the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL member `i` (by PID) and reap it; its data dir is kept.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut c = m.child.take().unwrap_or_else(|| panic!("etcd member {} is not running", m.name));
        let _ = c.kill();
        c.wait().unwrap();
    }

    /// Restarts a killed member with the same command line, data dir and ports. etcd 3.4 ignores
    /// `--initial-cluster*` when the data dir holds a WAL, so `--initial-cluster-state new` is kept.
    /// When the running members (this one included) are a majority, waits (30 s at most) until
    /// this member answers `endpoint health`; otherwise only starts the process.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        let running = (0..self.len()).filter(|&j| self.is_running(j)).count();
        if running > self.len() / 2 {
            if let Err(e) = self.wait_healthy(&[i], READY_TIMEOUT) {
                panic!("etcd member {} did not come back: {e}\n{}", self.name(i), self.logs());
            }
        }
    }

    /// Waits until each of `members` answers `etcdctl endpoint health` (a quorum read through it).
    /// Fails early if one of their processes exits.
    pub fn wait_healthy(&mut self, members: &[usize], timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        let deadline = start + timeout;
        let endpoints = members.iter().map(|&i| self.url(i)).collect::<Vec<_>>().join(",");
        loop {
            for &i in members {
                let m = &mut self.members[i];
                match m.child.as_mut() {
                    None => return Err(format!("member {} is not running", m.name)),
                    Some(c) => {
                        if let Some(st) = c.try_wait().unwrap() {
                            m.child = None;
                            return Err(format!("member {} exited: {st}", m.name));
                        }
                    }
                }
            }
            // Short timeouts first: a member that is not serving yet makes a poll wait the whole
            // timeout (its listener accepts before it serves) and a refused connection puts
            // etcdctl's gRPC into a 1 s reconnect backoff; longer ones later for a loaded machine.
            let slow = start.elapsed() > Duration::from_secs(5);
            let timeouts: &[&str] = if slow { &["--dial-timeout=2s", "--command-timeout=3s"] } else { &["--dial-timeout=300ms", "--command-timeout=500ms"] };
            let mut args = vec!["endpoint", "health"];
            args.extend_from_slice(timeouts);
            let (code, out, err) = self.etcdctl_endpoints(&endpoints, &args);
            if code == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not healthy after {timeout:?}; last `etcdctl endpoint health`: exit {code}\n{out}{err}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Index of the member every running member names as leader, if they agree and it is running.
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<usize> = (0..self.len()).filter(|&i| self.is_running(i)).collect();
        let endpoints = running.iter().map(|&i| self.url(i)).collect::<Vec<_>>().join(",");
        let (code, out, _) =
            self.etcdctl_endpoints(&endpoints, &["endpoint", "status", "-w", "json", "--dial-timeout=1s", "--command-timeout=2s"]);
        if code != 0 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let rows = v.as_array()?;
        if rows.len() != running.len() {
            return None;
        }
        let mut leader_id = None;
        let mut leader_idx = None;
        for row in rows {
            let status = &row["Status"];
            let l = status["leader"].as_u64()?;
            if l == 0 || leader_id.is_some_and(|x| x != l) {
                return None;
            }
            leader_id = Some(l);
            if status["header"]["member_id"].as_u64()? == l {
                let ep = row["Endpoint"].as_str()?;
                leader_idx = running.iter().copied().find(|&i| self.url(i) == ep);
            }
        }
        leader_idx
    }

    /// Waits until the running members agree on a running leader; returns its index.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            assert!(Instant::now() < deadline, "no etcd leader after {timeout:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `etcdctl --endpoints ALL --cacert --cert --key ARGS` (client certificate CN `root`).
    /// Returns (exit code, stdout, stderr); a run is killed after 30 s.
    pub fn etcdctl(&self, args: &[&str]) -> (i32, String, String) {
        self.etcdctl_endpoints(&self.urls(), args)
    }

    /// etcdctl against some members only.
    pub fn etcdctl_on(&self, members: &[usize], args: &[&str]) -> (i32, String, String) {
        let endpoints = members.iter().map(|&i| self.url(i)).collect::<Vec<_>>().join(",");
        self.etcdctl_endpoints(&endpoints, args)
    }

    fn etcdctl_endpoints(&self, endpoints: &str, args: &[&str]) -> (i32, String, String) {
        self.etcdctl_with(endpoints, &self.client_cert, &self.client_key, args)
    }

    /// etcdctl against every member with another client certificate (its CN is the etcd user
    /// when authentication is on).
    pub fn etcdctl_as(&self, cert: &Path, key: &Path, args: &[&str]) -> (i32, String, String) {
        self.etcdctl_with(&self.urls(), cert, key, args)
    }

    /// Runs `medgate consortium etcd-rbac` output: every `etcdctl ...` line, as root. Panics
    /// with the line and etcdctl's answer when one fails.
    pub fn apply_script(&self, script: &str) {
        for line in script.lines().filter_map(|l| l.strip_prefix("etcdctl ")) {
            let args: Vec<&str> = line.split_whitespace().collect();
            let (code, out, err) = self.etcdctl(&args);
            assert_eq!(code, 0, "etcdctl {line}: {out}{err}");
        }
    }

    fn etcdctl_with(&self, endpoints: &str, cert: &Path, key: &Path, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(ETCDCTL);
        // etcdctl refuses a flag that an ETCDCTL_* variable also sets: start from an empty environment.
        cmd.env_clear()
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg(format!("--cacert={}", self.ca_file.display()))
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()))
            .args(args);
        run_with_deadline(cmd, ETCDCTL_TIMEOUT)
    }

    /// The last lines of every member's log, for panic messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            s.push_str(&format!("---- {} ({}) log, last {} lines ----\n", m.name, m.log.display(), lines.len() - from));
            for l in &lines[from..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// The whole log of member `i`.
    pub fn log_text(&self, i: usize) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.members[i].log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
