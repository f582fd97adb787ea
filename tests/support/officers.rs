//! Officers for the integration tests: three officers with key files (alice, bob, carol),
//! enrolled on a site with a quorum of two, as the README's key ceremony does it, and requests
//! they approve.

use std::path::{Path, PathBuf};

use medgate::demo::Site;

use super::run_medgate;

pub const NAMES: [&str; 3] = ["alice", "bob", "carol"];

pub struct Officers {
    pub dir: PathBuf,
    pub config: String,
    pub softhsm_conf: PathBuf,
    /// Each officer's key file, in [`NAMES`] order.
    pub keys: Vec<PathBuf>,
    /// Each officer's card.
    pub cards: Vec<PathBuf>,
    n: std::cell::Cell<usize>,
}

impl Officers {
    /// Three officers' key files and cards for `site`, not enrolled yet.
    pub fn new(site: &Site) -> Officers {
        let dir = site.dir.join("officers");
        std::fs::create_dir_all(&dir).unwrap();
        let mut o = Officers {
            dir: dir.clone(),
            config: site.config.to_str().unwrap().to_owned(),
            softhsm_conf: site.softhsm_conf.clone(),
            keys: Vec::new(),
            cards: Vec::new(),
            n: std::cell::Cell::new(0),
        };
        for name in NAMES {
            let (key, card) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.card")));
            let (code, out, err) = run_medgate(
                &["keys", "--config", &o.config, "officer-key", "--name", name, "--out", key.to_str().unwrap(), "--card-out", card.to_str().unwrap()],
                &o.softhsm_conf,
            );
            assert_eq!(code, 0, "{err}");
            assert!(out.contains(name), "{out}");
            o.keys.push(key);
            o.cards.push(card);
        }
        o
    }

    /// Three officers enrolled on `site` with a quorum of two.
    pub fn enrol(site: &Site) -> Officers {
        let o = Officers::new(site);
        let mut args = vec!["officers-init", "--quorum", "2"];
        for c in &o.cards {
            args.extend(["--officer-card", c.to_str().unwrap()]);
        }
        let file = o.approved(&args, 3);
        let (code, out, err) = o.keys(&["officers", "init", "--approvals", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("3 officers enrolled"), "{out}");
        o
    }

    /// `medgate keys --config CFG ARGS`.
    pub fn keys(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["keys", "--config", self.config.as_str()];
        all.extend_from_slice(args);
        run_medgate(&all, &self.softhsm_conf)
    }

    /// A fresh request file: `medgate keys request ARGS --out FILE`.
    pub fn request(&self, args: &[&str]) -> PathBuf {
        self.n.set(self.n.get() + 1);
        let file = self.dir.join(format!("request-{}.json", self.n.get()));
        let mut all = vec!["request"];
        all.extend_from_slice(args);
        all.extend(["--out", file.to_str().unwrap()]);
        let (code, _, err) = self.keys(&all);
        assert_eq!(code, 0, "request {args:?}: {err}");
        file
    }

    /// Officer `i` approves `file`.
    pub fn approve(&self, file: &Path, i: usize) {
        let (code, out, err) = self.keys(&["approve", file.to_str().unwrap(), "--officer-key", self.keys[i].to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("approved by {}", NAMES[i])), "{out}");
    }

    /// A request approved by the first `n` officers.
    pub fn approved(&self, args: &[&str], n: usize) -> PathBuf {
        let file = self.request(args);
        for i in 0..n {
            self.approve(&file, i);
        }
        file
    }

    /// `--officer-key FILE` of officer `i`, for everyday operations.
    pub fn key_arg(&self, i: usize) -> [&str; 2] {
        ["--officer-key", self.keys[i].to_str().unwrap()]
    }
}
