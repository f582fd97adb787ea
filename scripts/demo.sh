#!/usr/bin/env bash
# One hospital, end to end, on this machine: a throwaway HSM token with medgate's keys, a
# hospital CA, the gateway on loopback with mutual TLS, and a sample HIS that stores, finds and
# reads records, then shows the audit trail and verifies the ledger. Extra arguments go to
# `medgate demo` (for example `--workdir DIR` to keep everything for a closer look).
#
#   scripts/demo.sh [--hsm-module PATH] [medgate demo arguments]
#
# --hsm-module picks the PKCS#11 module (default: SoftHSM2, /usr/lib/softhsm/libsofthsm2.so).
# medgate initialises the token itself (`medgate keys init-token`'s code, PINs from files), so
# the module needs a slot with an uninitialised token:
# - kryoptic (/usr/local/lib/kryoptic/libkryoptic_pkcs11.so): this script writes a kryoptic
#   configuration with one empty sqlite slot in a private directory and exports KRYOPTIC_CONF.
# - openCryptoki: its soft token cannot hold the ledger, tls and kek keys (no elliptic curves,
#   no RFC 5649 or AES-GCM wrap; docs/HSM.md), so the demo stops here and shows the probe.
# - another module: its own tools must leave an uninitialised token in a slot first.
# The consortium demo (--consortium) runs on SoftHSM2 only.
set -euo pipefail
cd "$(dirname "$0")/.."
module=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --hsm-module) module=${2:?--hsm-module needs a path}; shift 2 ;;
    --hsm-module=*) module=${1#--hsm-module=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
scripts/install-deps.sh
cargo build --release --locked --bin medgate
if [ -n "$module" ]; then
  [ -f "$module" ] || { echo "PKCS#11 module $module not found" >&2; exit 1; }
  for a in "${args[@]}"; do
    [ "$a" = "--consortium" ] && { echo "the consortium demo runs on SoftHSM2 only; drop --hsm-module" >&2; exit 64; }
  done
  case "$(basename "$module")" in
    libsofthsm2.so) ;;
    libkryoptic_pkcs11.so)
      store=$(mktemp -d /tmp/medgate-demo-kryoptic.XXXXXX)
      chmod 700 "$store"
      printf '[[slots]]\nslot = 1\ndbtype = "sqlite"\ndbargs = "%s/token.sqlite"\n' "$store" >"$store/kryoptic.conf"
      export KRYOPTIC_CONF="$store/kryoptic.conf"
      echo "kryoptic token store: $store (KRYOPTIC_CONF=$KRYOPTIC_CONF)" >&2
      ;;
    libopencryptoki.so)
      echo "openCryptoki's soft token cannot hold medgate's ledger, tls and kek keys; its probe:" >&2
      state=${MEDGATE_OCK_STATE:-/var/lib/medgate-test/opencryptoki}
      hsm/opencryptoki-setup.sh "$state" medgate-test >&2
      cargo run --quiet --release --locked -p medgate-hsm --example probe -- "$module" medgate-test "$state/medgate-test.pin" >&2 || true
      echo "see docs/HSM.md, \"openCryptoki\": run the demo on SoftHSM2 or kryoptic" >&2
      exit 69
      ;;
  esac
  export MEDGATE_DEMO_HSM_MODULE="$module"
fi
status=0
target/release/medgate demo "${args[@]}" || status=$?
if [ -n "${store:-}" ]; then
  keep=no
  for a in "${args[@]}"; do case "$a" in --workdir|--workdir=*) keep=yes ;; esac; done
  if [ "$keep" = yes ]; then
    echo "kryoptic token kept in $store (KRYOPTIC_CONF=$store/kryoptic.conf)" >&2
  else
    rm -rf "$store"
  fi
fi
exit "$status"
