#!/usr/bin/env bash
# Self-test of the independent FHIR R4 / IHE MHD kit: the fixture cases in-process, the command
# line the Rust tests use (files, NDJSON on stdin, exit codes), and the MHD actor over mutual TLS. Fails when the kit is not
# installed (scripts/install-deps.sh installs it); it never downloads anything itself.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
v="$here/validate.py"
fx="$here/fixtures"

python3 "$here/selftest.py"

fail() { echo "FAIL cli: $*"; exit 1; }
out=$(python3 "$v" --profile mhd-minimal-provide-bundle "$fx/good/ig-minimal-provide-bundle.json" 2>&1) \
  || fail "a valid ITI-65 bundle was refused: $out"
set +e
out=$(python3 "$v" "$fx/bad/searchset-relative-fullurl.json" 2>/dev/null); rc=$?
set -e
[ "$rc" -eq 1 ] || fail "exit $rc for an invalid resource, expected 1"
grep -qF "$fx/bad/searchset-relative-fullurl.json: error: Bundle.entry[0].fullUrl: " <<<"$out" \
  || fail "the error line names no element path: $out"
# Several resources in one process, each with its own profile, as NDJSON on stdin.
ndjson=$(python3 - "$fx" <<'PY'
import json, sys
fx = sys.argv[1]
load = lambda p: json.load(open(f"{fx}/{p}"))
print(json.dumps({"profile": "mhd-provide-bundle-response", "resource": load("good/ig-minimal-provide-bundle-response.json"),
                  "request": load("good/ig-minimal-provide-bundle.json")}))
print(json.dumps({"profile": "capability-statement", "resource": load("bad/capability-instance-without-implementation.json")}))
print(json.dumps(load("good/binary-resource.json")))
PY
)
set +e
out=$(python3 "$v" <<<"$ndjson" 2>&1); rc=$?
set -e
[ "$rc" -eq 1 ] || fail "exit $rc for NDJSON with one invalid resource, expected 1: $out"
grep -q "^stdin:2: error: CapabilityStatement: cpb-14: " <<<"$out" || fail "NDJSON line 2 not reported: $out"
if grep -q "^stdin:[13]: error" <<<"$out"; then fail "a valid NDJSON line was reported: $out"; fi
grep -q "^2 valid, 1 invalid$" <<<"$out" || fail "summary line missing: $out"
set +e
python3 "$v" --profile no-such-profile "$fx/good/binary-resource.json" >/dev/null 2>&1; rc=$?
set -e
[ "$rc" -eq 2 ] || fail "exit $rc for an unknown profile, expected 2"
echo "cli: 4 passed, 0 failed"
# The MHD Document Source / Consumer (actor.py) against a loopback stub over mutual TLS.
python3 "$here/actor_selftest.py"
