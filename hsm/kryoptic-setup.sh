#!/usr/bin/env bash
# Creates a throwaway kryoptic token for development, tests and the demo.
#
#   hsm/kryoptic-setup.sh DIR [LABEL]
#
# DIR gets its own kryoptic.conf with one sqlite slot per LABEL (DIR/LABEL.sqlite), plus
# LABEL.pin (the user PIN) and LABEL.so-pin (the security officer PIN), both random and mode
# 0600. Run it again with another LABEL to add a token to the same DIR. Use the tokens with:
#   export KRYOPTIC_CONF=DIR/kryoptic.conf
# and the module /usr/local/lib/kryoptic/libkryoptic_pkcs11.so (scripts/install-deps.sh).
# kryoptic reads its configuration at C_Initialize: add every token before a process loads it.
#
# pkcs11-tool only takes PINs as arguments; that is acceptable for a throwaway token in a
# private directory (as in softhsm-setup.sh), and is why production tokens are initialised with
# `medgate keys init-token`, which reads both PINs from files.
set -euo pipefail
dir=${1:?usage: kryoptic-setup.sh DIR [LABEL]}
label=${2:-medgate}
module=${KRYOPTIC_MODULE:-/usr/local/lib/kryoptic/libkryoptic_pkcs11.so}
[ -f "$module" ] || { echo "kryoptic module $module not found: run scripts/install-deps.sh" >&2; exit 1; }
command -v pkcs11-tool >/dev/null || { echo "pkcs11-tool not found: run scripts/install-deps.sh (opensc)" >&2; exit 1; }
mkdir -p "$dir"
chmod 700 "$dir"
dir=$(cd "$dir" && pwd)
conf="$dir/kryoptic.conf"
umask 077
if [ -f "$dir/$label.pin" ]; then
  echo "token $label already set up in $dir" >&2
  exit 0
fi
slot=$(( $(grep -c '^\[\[slots\]\]' "$conf" 2>/dev/null || true) + 1 ))
cat >>"$conf" <<CONF
[[slots]]
slot = $slot
dbtype = "sqlite"
dbargs = "$dir/$label.sqlite"

CONF
# kryoptic wants PINs of at least 8 characters.
head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/$label.pin"
head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/$label.so-pin"
export KRYOPTIC_CONF="$conf"
pkcs11-tool --module "$module" --slot "$slot" --init-token --label "$label" --so-pin "$(cat "$dir/$label.so-pin")" >/dev/null
pkcs11-tool --module "$module" --slot "$slot" --login --login-type so --so-pin "$(cat "$dir/$label.so-pin")" \
  --init-pin --pin "$(cat "$dir/$label.pin")" >/dev/null
echo "KRYOPTIC_CONF=$conf"
echo "token $label ready in slot $slot; user PIN in $dir/$label.pin"
