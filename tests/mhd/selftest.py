#!/usr/bin/env python3
"""Self-test of the validation kit: every case of fixtures/cases.tsv must give its expected verdict
(and, for an invalid fixture, the expected error line), every fixture must be used by some case,
and no HL7 invariant may be left unevaluated by the FHIRPath engine."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.argv = [sys.argv[0]]  # validate.py reads its own command line when imported
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True
import validate  # noqa: E402  (re-executes this file under the kit's venv when needed)

import json  # noqa: E402


def main():
    fixtures = os.path.join(HERE, "fixtures")
    used = set()
    failures = []
    cases = 0
    for n, line in enumerate(open(os.path.join(fixtures, "cases.tsv")), 1):
        if not line.strip() or line.startswith("#"):
            continue
        expect, profile, fixture, request, needle = line.rstrip("\n").split("\t")
        cases += 1
        used.add(fixture)
        res = json.load(open(os.path.join(fixtures, fixture)))
        req = None
        if request != "-":
            used.add(request)
            req = json.load(open(os.path.join(fixtures, request)))
        report = validate.validate(res, profile, req, fixture)
        lines = [f"{p}: {m} [{c}]" for s, p, m, c in report.errors]
        where = f"cases.tsv:{n} ({profile} {fixture})"
        if expect == "valid" and lines:
            failures.append(f"{where}: expected valid, got:\n    " + "\n    ".join(lines))
        elif expect == "invalid":
            if not lines:
                failures.append(f"{where}: expected invalid, the kit found nothing")
            elif not any(needle in ln for ln in lines):
                failures.append(f"{where}: no error line contains {needle!r}; got:\n    " + "\n    ".join(lines))
    on_disk = {f"{d}/{f}" for d in ("good", "bad") for f in os.listdir(os.path.join(fixtures, d)) if f.endswith(".json")}
    for f in sorted(on_disk - used):
        failures.append(f"fixture {f} is used by no case of cases.tsv")
    for k in sorted(set(validate.KIT_FAILURES)):
        failures.append(f"fhirpathpy could not evaluate {k}")
    for f in failures:
        print("FAIL " + f)
    print(f"{cases - len(failures) if len(failures) <= cases else 0} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
