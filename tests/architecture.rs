//! The workspace's arrows run one way, and stay so.
//!
//! - Crates: each crate depends only on the crates below it (binary → gateway → store →
//!   fhir, ledger, hsm, atna), read from the manifests.
//! - Modules: within each crate, no import cycle between top-level modules. An edge A → B is any
//!   `crate::B` path in A's code outside its `#[cfg(test)]` module (the same rule as the
//!   project's modcycles tool).
//! - Size: no file of the gateway service over 600 lines.

#![allow(clippy::unwrap_used, reason = "test")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace crates: (package name, directory).
fn crates() -> Vec<(String, PathBuf)> {
    let mut out = vec![("medgate".to_owned(), root()), ("medgate-hsm".to_owned(), root().join("hsm"))];
    for e in std::fs::read_dir(root().join("crates")).unwrap() {
        let dir = e.unwrap().path();
        out.push((dir.file_name().unwrap().to_string_lossy().into_owned(), dir));
    }
    out
}

/// The workspace crates a manifest names in its `[dependencies]`.
fn workspace_deps(dir: &Path) -> BTreeSet<String> {
    let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap().parse().unwrap();
    manifest.get("dependencies").and_then(|d| d.as_table()).map(|d| d.keys().filter(|k| k.starts_with("medgate")).cloned().collect()).unwrap_or_default()
}

#[test]
fn crates_depend_only_on_the_layers_below() {
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("medgate-ledger", &[][..]),
        ("medgate-fhir", &[][..]),
        ("medgate-hsm", &[][..]),
        ("medgate-atna", &[][..]),
        ("medgate-store", &["medgate-hsm", "medgate-ledger"][..]),
        ("medgate-gateway", &["medgate-hsm", "medgate-ledger", "medgate-fhir", "medgate-store", "medgate-atna"][..]),
        ("medgate", &["medgate-hsm", "medgate-ledger", "medgate-fhir", "medgate-store", "medgate-atna", "medgate-gateway"][..]),
    ]);
    let all = crates();
    assert_eq!(all.len(), allowed.len(), "a crate was added: give it its place here and in docs/ARCHITECTURE.md");
    for (name, dir) in all {
        let may: &[&str] = allowed.get(name.as_str()).unwrap_or_else(|| panic!("{name}: unknown crate"));
        for dep in workspace_deps(&dir) {
            assert!(may.contains(&dep.as_str()), "{name} depends on {dep}, which is not below it");
        }
    }
}

/// Source without comments, cut before its first `#[cfg(test)]` module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(i) if text[i..].trim_start_matches("#[cfg(test)]").trim_start().starts_with("mod ")
            || text[i..].trim_start_matches("#[cfg(test)]").trim_start().starts_with("pub(crate) mod ")
            || text[i..].trim_start_matches("#[cfg(test)]").trim_start().starts_with("#[allow") =>
        {
            &text[..i]
        }
        _ => &text[..],
    };
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module → the top-level modules its code names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            rust_files(&p, files.entry(name).or_default());
        } else if p.extension().is_some_and(|x| x == "rs") && name != "lib" && name != "main" {
            files.entry(name).or_default().push(p);
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (m, paths) in &files {
        let mut edges = BTreeSet::new();
        for p in paths {
            let text = code(p);
            // `crate::b`, and the heads of grouped `use crate::{b, c::x}`.
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + 7..];
                let heads: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group.split(['}', ';']).next().unwrap_or("").split(',').map(|h| h.trim().split("::").next().unwrap_or("")).collect(),
                    None => vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("")],
                };
                edges.extend(heads.into_iter().filter(|h| modules.contains(*h) && *h != m).map(str::to_owned));
            }
        }
        graph.insert(m.clone(), edges);
    }
    graph
}

/// The cycles: strongly connected components of more than one module.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            for n in &graph[&m] {
                if seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|m| (m, reach(m))).collect();
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for m in graph.keys() {
        let scc: BTreeSet<String> = graph.keys().filter(|n| *n == m || (reachable[m].contains(*n) && reachable[*n].contains(m))).cloned().collect();
        if scc.len() > 1 && !out.contains(&scc) {
            out.push(scc);
        }
    }
    out
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    for (name, dir) in crates() {
        let graph = module_graph(&dir.join("src"));
        assert!(!graph.is_empty(), "{name}: no modules found");
        assert_eq!(cycles(&graph), Vec::<BTreeSet<String>>::new(), "{name}: import cycle between top-level modules");
    }
}

#[test]
fn the_module_graph_sees_imports() {
    let gateway = module_graph(&root().join("crates/medgate-gateway/src"));
    assert!(gateway["server"].contains("api") && gateway["gateway"].contains("peer"), "{gateway:?}");
    assert!(!gateway["peer"].contains("gateway") && !gateway["shred"].contains("gateway"), "{gateway:?}");
    let binary = module_graph(&root().join("src"));
    assert!(binary["cli"].contains("exit") && !binary["exit"].contains("cli"), "{binary:?}");
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
        ("d".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(cycles(&graph), vec![BTreeSet::from(["a".to_owned(), "b".to_owned(), "c".to_owned()])]);
}

#[test]
fn no_file_of_the_gateway_service_is_over_600_lines() {
    let mut files = Vec::new();
    rust_files(&root().join("crates/medgate-gateway/src"), &mut files);
    for f in files {
        let n = std::fs::read_to_string(&f).unwrap().lines().count();
        assert!(n <= 600, "{}: {n} lines; split it by subject", f.display());
    }
}
