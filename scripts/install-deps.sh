#!/usr/bin/env bash
# Installs the system packages that medgate's demo, tests and benchmarks need on Debian 12:
# SoftHSM2 (the development HSM), OpenSC (pkcs11-tool, for officers' cross-checks), etcd
# (the consortium ordering service), protoc and the well-known .proto files (needed to build
# the etcd client), OpenSSL (to verify signatures and CSRs the way a third party would).
#
# Two more PKCS#11 implementations, so that medgate is tested against more than one HSM
# (docs/HSM.md):
# - openCryptoki's soft token (Debian package opencryptoki; its slot daemon pkcsslotd is
#   started by hsm/opencryptoki-setup.sh, not here, because a container has no systemd);
# - kryoptic, a soft token written in Rust, built from crates.io as a PKCS#11 module against
#   Debian's OpenSSL 3.0 (libssl-dev; bindgen needs libclang-dev) and installed as
#   $KRYOPTIC_MODULE. The build is skipped when that file is already the pinned version.
set -euo pipefail

# --- Python/npm: the independent FHIR R4 / IHE MHD validation kit (tests/mhd) ---------------------
# A Python venv (fhir.resources R4, jsonschema, fhirpathpy; pinned with hashes) and HL7's R4
# definitions (npm, lockfile integrity) under ${XDG_CACHE_HOME:-$HOME/.cache}/medgate-test-tools,
# for the integration tests that check medgate's FHIR output. Quick and silent once installed.
"$(dirname "$0")/../tests/mhd/install.sh"
# --- end of the validation kit block ----------------------------------------------------------------
KRYOPTIC_VERSION=1.5.4
KRYOPTIC_DIR=/usr/local/lib/kryoptic
KRYOPTIC_MODULE=$KRYOPTIC_DIR/libkryoptic_pkcs11.so

pkgs=(softhsm2 opensc etcd-server etcd-client protobuf-compiler libprotobuf-dev openssl ca-certificates build-essential pkg-config
  opencryptoki libclang-dev libssl-dev procps)
# --- IHE ATNA audit export (crates/medgate-atna) --------------------------------------------
# rsyslog with its GnuTLS network stream driver plays the hospital's audit record repository
# (syslog over TLS, RFC 5425, with mutual TLS) in the medgate-atna tests. The tests start their
# own rsyslogd in the foreground on a free loopback port with a temporary configuration and stop
# it by PID; they never use or reconfigure the system's rsyslog (which Debian starts for local
# logging only, with no network input).
pkgs+=(rsyslog rsyslog-gnutls)
# --- end of the ATNA block --------------------------------------------------------------------
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The etcd-server package enables a system-wide etcd on 2379; medgate's tests start their own
  # members on free loopback ports and do not need it.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

# --- The administrator's tools: promtool, lintian, cargo-deb (tests/debian/readme-debian.sh) ----
# promtool (Prometheus's own checker, for /metrics and packaging/prometheus/medgate-alerts.yml)
# comes from Debian's prometheus package. The package itself is not installed: it is large (96 MB,
# a web UI's JavaScript libraries) and its maintainer scripts start a Prometheus server on port
# 9090, medgate's default admin port. Its .deb is fetched with apt and only /usr/bin/promtool is
# taken out of it, as /usr/local/bin/promtool (about 15 s). lintian checks the Debian package,
# which cargo-deb builds (pinned, from crates.io; skipped when that version is installed); curl is
# what README.Debian asks /readyz with.
CARGO_DEB_VERSION=3.8.0
admin_missing=()
for p in lintian curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || admin_missing+=("$p")
done
if [ ${#admin_missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${admin_missing[@]}" >/dev/null
fi
if ! command -v promtool >/dev/null 2>&1; then
  promdir=$(mktemp -d)
  (cd "$promdir" && { apt-get download prometheus >/dev/null 2>&1 || { $SUDO apt-get update -qq && apt-get download prometheus >/dev/null; }; })
  dpkg-deb --fsys-tarfile "$promdir"/prometheus_*.deb | tar -x -C "$promdir" ./usr/bin/promtool
  $SUDO install -m 755 "$promdir/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$promdir"
  echo "promtool installed from Debian's prometheus package: $(promtool --version 2>&1 | head -n 1)" >&2
fi
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
  echo "installing cargo-deb $CARGO_DEB_VERSION (a few minutes, once)" >&2
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet
fi
# --- end of the administrator's tools block ---------------------------------------------------

# openCryptoki: Debian's configuration lists five token libraries (TPM, ICA, CCA, soft, EP11);
# this machine has only the soft token, and the TPM library crashes C_Initialize (in libitm) in a
# process that has loaded another PKCS#11 module before. Keep slot 3, the soft token, alone.
# pkcsslotd reads this file when it starts; a running one keeps the old list until restarted.
ock_conf=/etc/opencryptoki/opencryptoki.conf
if [ -f "$ock_conf" ] && grep -q 'libpkcs11_tpm.so' "$ock_conf"; then
  $SUDO cp "$ock_conf" "$ock_conf.medgate-orig"
  printf '%s\n' 'version opencryptoki-3.1' '' \
    '# The soft token only (medgate scripts/install-deps.sh; the original is beside this file).' \
    'slot 3' '{' 'stdll = libpkcs11_sw.so' '}' | $SUDO tee "$ock_conf" >/dev/null
  if pgrep -x pkcsslotd >/dev/null; then
    echo "note: pkcsslotd is running with the old slot list; restart it to use $ock_conf" >&2
  fi
fi

# kryoptic: crates.io publishes it as a cdylib crate with its own Cargo.lock, which `cargo install`
# cannot install (it installs binaries only). Fetch the pinned version through a throwaway
# manifest, build it with its lock file, and install the module with a VERSION file beside it.
if [ "$(cat "$KRYOPTIC_DIR/VERSION" 2>/dev/null)" != "$KRYOPTIC_VERSION" ] || [ ! -f "$KRYOPTIC_MODULE" ]; then
  command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
  echo "building kryoptic $KRYOPTIC_VERSION (a few minutes on a small machine)" >&2
  start=$(date +%s)
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/fetch/src"
  cat >"$work/fetch/Cargo.toml" <<TOML
[package]
name = "fetch-kryoptic"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
kryoptic = { version = "=$KRYOPTIC_VERSION", default-features = false }
TOML
  : >"$work/fetch/src/lib.rs"
  (cd "$work/fetch" && cargo fetch --quiet)
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"kryoptic-$KRYOPTIC_VERSION" | head -n 1)
  [ -f "$src/Cargo.lock" ] || { echo "kryoptic $KRYOPTIC_VERSION source not found after cargo fetch" >&2; exit 1; }
  cp -r "$src" "$work/kryoptic"
  # minimal: the mechanisms medgate uses (EC P-256, RSA, AES incl. RFC 5649 wrap, SHA-2, HMAC) and
  # the sqlite store; kryoptic-lib/dynamic: link Debian's libcrypto 3.0 instead of building OpenSSL.
  (cd "$work/kryoptic" && CARGO_TARGET_DIR="$work/target" cargo build --release --locked --quiet \
    --no-default-features --features minimal,kryoptic-lib/dynamic)
  $SUDO install -d -m 755 "$KRYOPTIC_DIR"
  $SUDO install -m 755 "$work/target/release/libkryoptic_pkcs11.so" "$KRYOPTIC_MODULE"
  echo "$KRYOPTIC_VERSION" | $SUDO tee "$KRYOPTIC_DIR/VERSION" >/dev/null
  echo "kryoptic $KRYOPTIC_VERSION installed as $KRYOPTIC_MODULE in $(( $(date +%s) - start )) s" >&2
fi
