#!/usr/bin/env bash
# Runs packaging/README.Debian's "First start" as written, on this machine, as root: builds the
# Debian package with cargo-deb, checks it with lintian (no error, no warning), installs it, then
# runs every command of the installed README.Debian's "First start" in order (the key ceremony,
# the hospital PKI, the check, the start by hand where systemd is absent or with systemctl where
# it runs, /readyz and a request from the HIS, a reload, the stop). Afterwards it purges the
# package and removes what the steps created, so that the next run starts fresh again.
#
# Commands in README.Debian are the lines indented by four spaces that start with "# " (a root
# prompt) inside "First start". A paragraph that starts with "With systemd" or "Without systemd"
# chooses the commands that follow it; any other paragraph ends that choice. They run in one
# shell (a job started with & is waited for by a later command), with "~" a temporary home
# directory, removed at the end.
#
#   tests/debian/readme-debian.sh            the package from a debug build (what CI runs)
#   tests/debian/readme-debian.sh --release  the package as README.md builds it (optimised)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
profile=dev
[ "${1:-}" = "--release" ] && profile=release
[ "$(id -u)" -eq 0 ] || { echo "readme-debian: run as root (it installs a package)" >&2; exit 1; }
start=$(date +%s)
say() { echo "readme-debian: $*" >&2; }

for port in 8443 9090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    say "port $port is in use on this machine; README.Debian's configuration needs it"; exit 1
  fi
done

# --- Build and check the package ------------------------------------------------------------
outdir=$root/target/debian
cargo build --locked --profile "$profile" --bin medgate
bin=$root/target/$([ "$profile" = dev ] && echo debug || echo release)/medgate
"$bin" generate-docs --out "$root/target/assets" >&2
rm -f "$outdir"/medgate_*.deb
cargo deb --no-build --locked --profile "$profile" -p medgate --output "$outdir" >&2
deb=$(ls "$outdir"/medgate_*.deb)
say "built $deb in $(( $(date +%s) - start )) s"
# lintian warns that it runs as root; its verdict is the same.
lintian_rc=0
lintian_out=$(lintian --fail-on error,warning --tag-display-limit 0 "$deb" 2>&1) || lintian_rc=$?
lintian_out=$(grep -v '^running with root privileges' <<<"$lintian_out" || true)
[ "$lintian_rc" -eq 0 ] || { echo "$lintian_out" >&2; say "lintian failed"; exit 1; }
say "lintian: ${lintian_out:-no error, no warning}"

# --- A fresh machine, and back to it afterwards ---------------------------------------------
tokens_before=$(ls /var/lib/softhsm/tokens 2>/dev/null || true)
home=$(mktemp -d)
cleanup() {
  local rc=$?
  if [ -f /run/medgate.pid ] && kill -0 "$(cat /run/medgate.pid)" 2>/dev/null; then
    kill -TERM "$(cat /run/medgate.pid)" || true
  fi
  if [ -d /run/systemd/system ]; then systemctl stop medgate 2>/dev/null || true; fi
  MEDGATE_PURGE_DATA=yes DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq medgate >/dev/null 2>&1 || true
  for t in $(ls /var/lib/softhsm/tokens 2>/dev/null); do
    grep -qxF "$t" <<<"$tokens_before" || rm -rf "/var/lib/softhsm/tokens/$t"
  done
  rm -rf "$home" /run/medgate-credentials /run/medgate.pid
  [ "$rc" -eq 0 ] || { say "FAILED (exit $rc); the gateway's log:"; cat /var/log/medgate.log >&2 2>/dev/null || true; }
  rm -f /var/log/medgate.log
  exit "$rc"
}
trap cleanup EXIT
# This machine must not run a real medgate: the steps below would take its configuration, and the
# cleanup purges it. What a run of this script left behind (killed before its cleanup) carries
# its marker and is removed.
marker=/var/lib/medgate/.readme-debian-test
if dpkg-query -W -f='${Status}' medgate 2>/dev/null | grep -q "install ok installed" || [ -d /var/lib/medgate ]; then
  [ -f "$marker" ] || { trap - EXIT; rm -rf "$home"; say "medgate is installed here (or /var/lib/medgate exists) and not by this script: refusing to touch it"; exit 1; }
  say "removing what an interrupted run left"
  MEDGATE_PURGE_DATA=yes DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq medgate >/dev/null || true
  rm -rf /var/lib/medgate
  if id medgate >/dev/null 2>&1; then
    find /var/lib/softhsm/tokens -mindepth 1 -maxdepth 1 -user medgate -exec rm -rf {} +
  fi
  tokens_before=$(ls /var/lib/softhsm/tokens 2>/dev/null || true)
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >/dev/null
touch "$marker"
say "installed $(dpkg-query -W -f='${Package} ${Version}' medgate)"

# --- README.Debian's First start, as the package installed it -------------------------------
readme=/usr/share/doc/medgate/README.Debian
[ -f "$readme" ] || readme=$readme.gz
mode=nosystemd
[ -d /run/systemd/system ] && mode=systemd
steps=$(zcat -f "$readme" | awk -v mode="$mode" '
  /^-+$/ { if (prev == "First start") on = 1; else if (on) exit; prev = $0; next }
  { prev = $0 }
  !on { next }
  /^    # / { if (choice == "" || choice == mode) print substr($0, 7); para = 0; next }
  /^[[:space:]]*$/ { para = 1; next }
  para {
    line = $0; sub(/^[[:space:]]+/, "", line); sub(/^[0-9]+\. /, "", line)
    if (line ~ /^With systemd/) choice = "systemd"
    else if (line ~ /^Without systemd/) choice = "nosystemd"
    else choice = ""
    para = 0
  }')
[ -n "$steps" ] || { say "no commands found in $readme"; exit 1; }
n=$(wc -l <<<"$steps")
say "$n commands from $readme ($mode), run in one shell as root, ~ being $home:"
script=$home/first-start.sh
{
  echo 'set -euo pipefail'
  i=0
  while IFS= read -r cmd; do
    i=$((i + 1))
    printf 'echo %q >&2\n' "  [$i] # $cmd"
    printf '%s\n' "$cmd"
  done <<<"$steps"
} >"$script"
HOME=$home bash "$script" </dev/null >&2 || { say "a command of README.Debian failed (the last one shown above)"; exit 1; }
grep -q "configuration reloaded" /var/log/medgate.log 2>/dev/null || [ "$mode" = systemd ] || { say "the reload is not in the log"; exit 1; }
say "README.Debian's First start passed: $n commands, $(( $(date +%s) - start )) s in all"
