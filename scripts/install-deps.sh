#!/usr/bin/env bash
# Installs the system packages that medgate's demo, tests and benchmarks need on Debian:
# SoftHSM2 (the development HSM), OpenSC (pkcs11-tool, for officers' cross-checks), etcd
# (the consortium ordering service), protoc and the well-known .proto files (needed to build
# the etcd client), OpenSSL (to verify signatures and CSRs the way a third party would).
set -euo pipefail

# --- Python/npm: the independent FHIR R4 / IHE MHD validation kit (tests/mhd) ---------------------
# A Python venv (fhir.resources R4, jsonschema, fhirpathpy; pinned with hashes) and HL7's R4
# definitions (npm, lockfile integrity) under ${XDG_CACHE_HOME:-$HOME/.cache}/medgate-test-tools,
# for the integration tests that check medgate's FHIR output. Quick and silent once installed.
"$(dirname "$0")/../tests/mhd/install.sh"
# --- end of the validation kit block ----------------------------------------------------------------
pkgs=(softhsm2 opensc etcd-server etcd-client protobuf-compiler libprotobuf-dev openssl ca-certificates build-essential pkg-config)
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
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The etcd-server package enables a system-wide etcd on 2379; medgate's tests start their own
# members on free loopback ports and do not need it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi
