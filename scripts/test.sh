#!/usr/bin/env bash
# Runs medgate's whole test suite: unit tests, and the integration tests against real SoftHSM2
# tokens, real mutual TLS and real sled stores. Installs the system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --locked
