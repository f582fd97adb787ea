#!/usr/bin/env bash
# Runs medgate's whole test suite: unit tests, and the integration tests against real SoftHSM2
# tokens, real mutual TLS and real sled stores. Installs the system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Every target compiles, benches included (the tests do not run them).
cargo build --workspace --all-targets --locked
# Smoke-run the load generator: a short run in which every request must succeed (ITI-65: 200).
timeout 300 cargo run --quiet --locked --bin medgate -- bench --records 40 --concurrency 1,8 --ceiling-seconds 0.2
timeout 300 cargo run --quiet --locked --bin medgate -- bench --consortium --records 40 --concurrency 4
cargo test --workspace --locked
# README.Debian's "First start", as written, on the package built with cargo-deb and installed
# (lintian must find no error and no warning); the package is purged again afterwards.
tests/debian/readme-debian.sh
# Every fuzz target for a few seconds, from the committed seeds, so that a parser that now
# crashes fails the run (scripts/fuzz.sh installs the pinned cargo-fuzz once per machine and
# keeps its instrumented build in fuzz/target). The long campaign: fuzz/README.md.
scripts/fuzz.sh "${MEDGATE_FUZZ_SECONDS:-15}"
