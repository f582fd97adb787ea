#!/usr/bin/env bash
# Prepares openCryptoki's soft token (Debian package opencryptoki) for tests and the demo.
#
#   hsm/opencryptoki-setup.sh STATE_DIR [LABEL]
#
# openCryptoki has one soft token per machine (slot 3 in Debian's opencryptoki.conf, data in
# /var/lib/opencryptoki/swtok), served by the slot daemon pkcsslotd, which this script starts
# when it is not running. The first run initialises the factory-new token (factory SO PIN
# 87654321) with LABEL, gives it a random SO PIN (STATE_DIR/so-pin) and a random user PIN
# (STATE_DIR/LABEL.pin), both 0600. Later runs with the same STATE_DIR and LABEL only check that
# the token is the one they made. They do not initialise it again: openCryptoki 3.8 loses its
# SO PIN on a second C_InitToken (the SO login then fails with CKR_FUNCTION_FAILED, and the
# factory PIN is refused). Removing medgate's objects between uses is the caller's job (the
# test fixture does it through PKCS#11).
#
# PINs reach pkcsconf on its standard input, never on a command line. openCryptoki takes PINs of
# 4 to 8 characters, so these are 8 hexadecimal digits.
# Module: /usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so
set -euo pipefail
state=${1:?usage: opencryptoki-setup.sh STATE_DIR [LABEL]}
label=${2:-medgate}
slot=${MEDGATE_OCK_SLOT:-3}
factory_so_pin=87654321
command -v pkcsconf >/dev/null || { echo "pkcsconf not found: run scripts/install-deps.sh (Debian package opencryptoki)" >&2; exit 1; }
mkdir -p "$state"
chmod 700 "$state"
umask 077
if ! pgrep -x pkcsslotd >/dev/null; then
  # pkcsslotd daemonises itself; it must run as root or as a member of the pkcs11 group.
  pkcsslotd
fi
for _ in $(seq 300); do
  pkcsconf -s -c "$slot" >/dev/null 2>&1 && break
  sleep 0.1
done
flags=$(pkcsconf -t -c "$slot" | sed -n 's/^[[:space:]]*Flags: //p')
pin8() { head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
reset_help="To start again from the factory state (this destroys the token's objects): stop pkcsslotd,
remove /var/lib/opencryptoki/swtok/{NVTOK.DAT,MK_SO,MK_USER}, /var/lib/opencryptoki/swtok/TOK_OBJ/*
and /dev/shm/var.lib.opencryptoki.swtok, and run this again."
if ! grep -q TOKEN_INITIALIZED <<<"$flags"; then
  printf '%s\n%s\n' "$factory_so_pin" "$label" | pkcsconf -I -c "$slot" >/dev/null
  so_pin=$(pin8)
  printf '%s\n%s\n%s\n' "$factory_so_pin" "$so_pin" "$so_pin" | pkcsconf -P -c "$slot" >/dev/null
  printf '%s' "$so_pin" >"$state/so-pin"
  user_pin=$(pin8)
  if ! printf '%s\n%s\n%s\n' "$so_pin" "$user_pin" "$user_pin" | pkcsconf -u -c "$slot" >/dev/null; then
    echo "setting the user PIN failed; the token is initialised without one. $reset_help" >&2
    exit 1
  fi
  printf '%s' "$user_pin" >"$state/$label.pin"
elif [ ! -s "$state/so-pin" ] || [ ! -s "$state/$label.pin" ]; then
  current=$(pkcsconf -t -c "$slot" | sed -n 's/^[[:space:]]*Label: //p' | sed 's/[[:space:]]*$//')
  echo "the openCryptoki soft token in slot $slot is initialised (label \"$current\"), but not by $state for label $label. $reset_help" >&2
  exit 1
elif ! grep -q USER_PIN_INITIALIZED <<<"$flags"; then
  echo "the openCryptoki soft token in slot $slot has no user PIN. $reset_help" >&2
  exit 1
fi
echo "openCryptoki token $label ready in slot $slot; user PIN in $state/$label.pin"
