#!/usr/bin/env bash
# One hospital, end to end, on this machine: a throwaway SoftHSM2 token with medgate's keys, a
# hospital CA, the gateway on loopback with mutual TLS, and a sample HIS that stores, finds and
# reads records, then shows the audit trail and verifies the ledger. Extra arguments go to
# `medgate demo` (for example `--workdir DIR` to keep everything for a closer look).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked --bin medgate
exec target/release/medgate demo "$@"
