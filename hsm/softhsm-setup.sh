#!/usr/bin/env bash
# Creates a throwaway SoftHSM2 token for development, tests and the demo.
#
#   hsm/softhsm-setup.sh DIR [LABEL]
#
# DIR gets its own softhsm2.conf and tokens/ directory (so nothing touches /etc/softhsm or
# /var/lib/softhsm), plus LABEL.pin (the user PIN) and LABEL.so-pin (the security officer PIN),
# both random and mode 0600. Run it again with another LABEL to add a token to the same DIR.
# Use the token with:  export SOFTHSM2_CONF=DIR/softhsm2.conf
#
# softhsm2-util only takes PINs as arguments; that is acceptable for a throwaway token in a
# private directory, and is why production tokens are initialised with `medgate keys init-token`,
# which reads both PINs from files.
set -euo pipefail
dir=${1:?usage: softhsm-setup.sh DIR [LABEL]}
label=${2:-medgate}
command -v softhsm2-util >/dev/null || { echo "softhsm2-util not found: run scripts/install-deps.sh" >&2; exit 1; }
mkdir -p "$dir/tokens"
chmod 700 "$dir" "$dir/tokens"
dir=$(cd "$dir" && pwd)
conf="$dir/softhsm2.conf"
if [ ! -f "$conf" ]; then
  cat >"$conf" <<CONF
# SoftHSM2 configuration for a throwaway medgate token
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
fi
umask 077
if [ -f "$dir/$label.pin" ]; then
  echo "token $label already set up in $dir" >&2
  exit 0
fi
head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/$label.pin"
head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/$label.so-pin"
SOFTHSM2_CONF="$conf" softhsm2-util --init-token --free --label "$label" \
  --so-pin "$(cat "$dir/$label.so-pin")" --pin "$(cat "$dir/$label.pin")" >/dev/null
echo "SOFTHSM2_CONF=$conf"
echo "token $label ready; user PIN in $dir/$label.pin"
