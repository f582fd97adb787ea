#!/usr/bin/env python3
"""An independent IHE MHD Document Source and Document Consumer, for medgate's integration tests.

It builds its resources with the fhir.resources R4 (4.0.1) models, talks to the server over HTTPS
with a client certificate (mutual TLS), and checks every response with validate.py (in-process),
the way a real MHD actor would meet the server on day one:

  provide     ITI-65: POST [base] a transaction Bundle (SubmissionSet List with the IHE extensions,
              DocumentReference with Minimal or Comprehensive metadata, Binary); optionally replacing
              an earlier DocumentReference (relatesTo replaces + the PATCH entry setting it superseded)
  find        ITI-67: GET [base]/DocumentReference?patient.identifier=...&status=current[&_count=N],
              following every `next` link; checks total, paging and every page
  find-lists  ITI-66: GET [base]/List?patient.identifier=...&code=submissionset&status=current
  retrieve    ITI-68: GET the attachment URL, raw or with Accept: application/fhir+json
  read        GET [base]/<Type>/<id>
  metadata    GET [base]/metadata, checked as an MHD Document Recipient and Responder statement

Common options: --base URL --cert FILE --key FILE --ca FILE (PEM files), --header 'NAME: VALUE'
(repeatable: headers a deployment adds to every request, e.g. the end user a gateway records).
Prints one JSON object on stdout: {"ok": bool, "problems": [...], "exchanges": [...], ...}.
Exit status: 0 when every exchange succeeded and validated, 1 otherwise, 2 on a usage or kit error.
"""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
_ARGV = sys.argv[1:]
sys.argv = [sys.argv[0]] + _ARGV  # validate.py re-executes this script under the kit's venv
import validate  # noqa: E402

import argparse  # noqa: E402
import base64  # noqa: E402
import hashlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import ssl  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from urllib.parse import urlencode, urljoin, urlsplit  # noqa: E402

from fhir.resources import construct_fhir_element  # noqa: E402

MHD = "https://profiles.ihe.net/ITI/MHD"
SD = MHD + "/StructureDefinition/"
LIST_TYPES = MHD + "/CodeSystem/MHDlistTypes"
FORMATCODE = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"


class Actor:
    def __init__(self, base, cert, key, ca, timeout=30.0, headers=None):
        self.base = base.rstrip("/")
        self.headers = dict(headers or {})
        self.exchanges = []
        self.problems = []
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca) if ca else ssl.create_default_context()
        if cert:
            ctx.load_cert_chain(cert, key)
        self.ctx = ctx
        self.timeout = timeout

    def problem(self, text):
        self.problems.append(text)

    def request(self, method, url, body=None, headers=None):
        """One HTTP exchange; a fresh connection each time, as many HIS clients do."""
        url = urljoin(self.base + "/", url)
        parts = urlsplit(url)
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=self.ctx, timeout=self.timeout)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=self.timeout)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        hdrs = {"User-Agent": "mhd-kit-actor"}
        hdrs.update(self.headers)
        hdrs.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            status, rheaders = resp.status, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        self.exchanges.append({"method": method, "url": url, "status": status,
                               "content_type": rheaders.get("content-type")})
        return status, rheaders, data

    def json_body(self, status, headers, data, what):
        ctype = headers.get("content-type", "")
        if "json" not in ctype:
            self.problem(f"{what}: HTTP {status} with Content-Type {ctype!r}, expected application/fhir+json")
        try:
            return json.loads(data)
        except ValueError:
            self.problem(f"{what}: HTTP {status}: body is not JSON ({len(data)} bytes)")
            return None

    def check(self, resource, profile, what, request=None):
        report = validate.validate(resource, profile, request, what)
        for sev, path, msg, checker in report.errors:
            self.problem(f"{what}: {path}: {msg} [{checker}]")
        return not report.errors


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _model(resource):
    """Round-trips a resource through the fhir.resources R4 model: what goes on the wire is what
    the model serialises, as a client built on it would send. fhir.resources 6.4.0 types FHIR `url`
    as pydantic's AnyUrl, which refuses the urn:uuid: references a transaction Bundle relies on
    (Attachment.url pointing at the Binary entry): such values go through the model as a
    placeholder URL and are put back afterwards."""
    import copy
    from pydantic import ValidationError
    work = copy.deepcopy(resource)
    restored = []
    for _ in range(16):
        try:
            obj = construct_fhir_element(work["resourceType"], work)
            break
        except ValidationError as e:
            fixed = False
            for err in e.errors():
                loc = [x for x in err["loc"] if x != "__root__"]
                value = validate._value_at(work, loc)
                if err["msg"] == "invalid or missing URL scheme" and str(value).startswith("urn:"):
                    parent = validate._value_at(work, loc[:-1])
                    parent[loc[-1]] = f"http://urn.placeholder.invalid/{len(restored)}"
                    restored.append((loc, value))
                    fixed = True
            if not fixed:
                raise
    out = json.loads(obj.json())
    for loc, value in restored:
        validate._value_at(out, loc[:-1])[loc[-1]] = value
    return out


def _oid():
    return "urn:oid:2.25." + str(uuid.uuid4().int)


def build_provide_bundle(args, content, content_type):
    """ITI-65 transaction Bundle, the way the IG's examples build it (provideBundle.fsh)."""
    system, _, value = args.patient.partition("|")
    patient_ref = args.patient_ref or None
    subject = {"reference": patient_ref} if patient_ref else {"identifier": {"system": system, "value": value}}
    u_ss, u_dr, u_bin = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    comprehensive = args.metadata == "comprehensive"
    level = {"minimal": "Minimal", "comprehensive": "Comprehensive"}[args.metadata]
    now = _now()
    sha1 = base64.b64encode(hashlib.sha1(content).digest()).decode()
    source_patient_id = "sp"
    dr = {
        "resourceType": "DocumentReference",
        "meta": {"profile": [SD + f"IHE.MHD.{level}.DocumentReference"]},
        "masterIdentifier": {"use": "usual", "system": "urn:ietf:rfc:3986", "value": _oid()},
        "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986", "value": u_dr}],
        "status": "current",
        "subject": subject,
        "date": now,
        "content": [{"attachment": {"contentType": content_type, "url": u_bin, "size": len(content), "hash": sha1,
                                    "title": args.title, "creation": now, "language": "en"},
                     "format": {"system": FORMATCODE, "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"}}],
    }
    if args.type_code:
        s, _, c = args.type_code.partition("|")
        dr["type"] = {"coding": [{"system": s, "code": c}]}
    if comprehensive:
        dr["meta"]["profile"] = [SD + "IHE.MHD.Comprehensive.DocumentReference"]
        dr.setdefault("type", {"coding": [{"system": "http://loinc.org", "code": "34133-9"}]})
        dr["category"] = [{"coding": [{"system": "http://loinc.org", "code": "11369-6"}]}]
        dr["securityLabel"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]}]
        dr["contained"] = [{"resourceType": "Patient", "id": source_patient_id,
                            "identifier": [{"system": system, "value": value}]},
                           {"resourceType": "Practitioner", "id": "author",
                            "name": [{"family": args.author_family, "given": [args.author_given]}]}]
        dr["author"] = [{"reference": "#author"}]
        dr["context"] = {"facilityType": {"coding": [{"system": "http://snomed.info/sct", "code": "22232009"}]},
                         "practiceSetting": {"coding": [{"system": "http://snomed.info/sct", "code": "394802001"}]},
                         "sourcePatientInfo": {"reference": "#" + source_patient_id}}
    entries = []
    ss = {
        "resourceType": "List",
        "meta": {"profile": [SD + f"IHE.MHD.{level}.SubmissionSet"]},
        "extension": [{"url": SD + "ihe-sourceId", "valueIdentifier": {"value": args.source_id}}],
        "identifier": [{"use": "usual", "system": "urn:ietf:rfc:3986", "value": _oid()},
                       {"use": "official", "system": "urn:ietf:rfc:3986", "value": u_ss}],
        "status": "current", "mode": "working",
        "code": {"coding": [{"system": LIST_TYPES, "code": "submissionset"}]},
        "subject": subject, "date": now,
        "entry": [{"item": {"reference": u_dr}}],
    }
    if comprehensive:
        ss["extension"].append({"url": SD + "ihe-designationType",
                                "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "34133-9"}]}})
    entries.append({"fullUrl": u_ss, "resource": ss, "request": {"method": "POST", "url": "List"}})
    if args.replaces:
        dr["relatesTo"] = [{"code": "replaces", "target": {"reference": f"DocumentReference/{args.replaces}"}}]
        if args.replace_style == "patch":
            entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}",
                            "resource": {"resourceType": "Parameters", "meta": {"profile": [SD + "IHE.MHD.Patch.Parameters"]},
                                         "parameter": [{"name": "operation", "part": [
                                             {"name": "type", "valueCode": "replace"},
                                             {"name": "path", "valueString": "DocumentReference.status"},
                                             {"name": "value", "valueCode": "superseded"}]}]},
                            "request": {"method": "PATCH", "url": f"DocumentReference/{args.replaces}"}})
    entries.append({"fullUrl": u_dr, "resource": dr, "request": {"method": "POST", "url": "DocumentReference"}})
    entries.append({"fullUrl": u_bin, "resource": {"resourceType": "Binary", "contentType": content_type,
                                                   "data": base64.b64encode(content).decode()},
                    "request": {"method": "POST", "url": "Binary"}})
    bundle = {"resourceType": "Bundle", "meta": {"profile": [SD + f"IHE.MHD.{level}.ProvideBundle"]},
              "type": "transaction", "timestamp": now, "entry": entries}
    return _model(bundle)


def cmd_provide(actor, args):
    if args.content_file:
        content = open(args.content_file, "rb").read()
    else:
        content = args.content.encode()
    bundle = build_provide_bundle(args, content, args.content_type)
    profile = f"mhd-{'comprehensive' if args.metadata == 'comprehensive' else 'minimal'}-provide-bundle"
    if not actor.check(bundle, profile, "request"):
        return {"request": bundle}
    if args.dry_run:
        return {"request": bundle}
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    status, rh, data = actor.request("POST", actor.base, json.dumps(bundle).encode(), headers)
    out = {"request": bundle, "status": status}
    body = actor.json_body(status, rh, data, "ITI-65 response")
    out["response"] = body
    if status != 200:
        actor.problem(f"ITI-65: HTTP {status}, expected 200 (ITI-65 2:3.65.4.2.2)")
        return out
    if body is not None:
        actor.check(body, "mhd-provide-bundle-response", "ITI-65 response", bundle)
        out["locations"] = [(e.get("response") or {}).get("location") for e in body.get("entry", []) or []]
    return out


def _search(actor, args, rtype, params, profile):
    """Runs a search and follows `next` to the end; checks each page and the paging as a whole."""
    headers = {"Accept": "application/fhir+json"}
    if args.prefer:
        headers["Prefer"] = args.prefer
    if args.post:
        status, rh, data = actor.request("POST", f"{rtype}/_search", urlencode(params).encode(),
                                         {**headers, "Content-Type": "application/x-www-form-urlencoded"})
    else:
        status, rh, data = actor.request("GET", f"{rtype}?{urlencode(params)}", None, headers)
    pages, ids, full_urls, totals = 0, [], [], set()
    out = {"status": status}
    seen_next = set()
    while True:
        body = actor.json_body(status, rh, data, f"{rtype} search page {pages + 1}")
        if status != 200 or body is None:
            actor.problem(f"{rtype} search page {pages + 1}: HTTP {status}")
            out["body"] = body
            break
        pages += 1
        actor.check(body, profile, f"page {pages}")
        if "total" in body:
            totals.add(body["total"])
        for e in body.get("entry", []) or []:
            r = e.get("resource") or {}
            if r.get("resourceType") == rtype and (e.get("search") or {}).get("mode", "match") == "match":
                ids.append(r.get("id"))
                full_urls.append(e.get("fullUrl"))
        if args.count is not None and sum(1 for e in body.get("entry", []) or []
                                          if (e.get("search") or {}).get("mode", "match") == "match") > args.count:
            actor.problem(f"page {pages}: more matches than _count={args.count}")
        nxt = [ln.get("url") for ln in body.get("link", []) or [] if ln.get("relation") == "next"]
        if not nxt or pages >= args.max_pages:
            break
        if nxt[0] in seen_next:
            actor.problem(f"page {pages}: next link {nxt[0]!r} repeats an earlier one")
            break
        seen_next.add(nxt[0])
        status, rh, data = actor.request("GET", nxt[0], None, headers)
    out.update({"pages": pages, "ids": ids, "fullUrls": full_urls, "total": sorted(totals)})
    if len(totals) > 1:
        actor.problem(f"total changes from page to page: {sorted(totals)}")
    if len(set(ids)) != len(ids):
        actor.problem(f"paging returned some resource twice: {sorted(i for i in set(ids) if ids.count(i) > 1)}")
    if totals and pages < args.max_pages and len(ids) != next(iter(totals)):
        actor.problem(f"{len(ids)} matches over {pages} pages, but total = {next(iter(totals))}")
    return out


def _patient_params(args):
    params = []
    if args.patient_identifier:
        params.append(("patient.identifier", args.patient_identifier))
    if args.patient:
        params.append(("patient", args.patient))
    return params


def cmd_find(actor, args):
    params = _patient_params(args)
    if args.status:
        params.append(("status", args.status))
    if args.count is not None:
        params.append(("_count", str(args.count)))
    for p in args.param:
        k, _, v = p.partition("=")
        params.append((k, v))
    profile = "mhd-find-documentreferences-comprehensive-response" if args.comprehensive else "mhd-find-documentreferences-response"
    return _search(actor, args, "DocumentReference", params, profile)


def cmd_find_lists(actor, args):
    params = _patient_params(args) + [("code", args.code)]
    if args.status:
        params.append(("status", args.status))
    if args.count is not None:
        params.append(("_count", str(args.count)))
    for p in args.param:
        k, _, v = p.partition("=")
        params.append((k, v))
    return _search(actor, args, "List", params, "mhd-find-lists-response")


def cmd_retrieve(actor, args):
    headers = {}
    url = args.url
    if args.fhir_json:
        headers["Accept"] = "application/fhir+json"
    elif args.accept:
        headers["Accept"] = args.accept
    if args.format_json:
        url += ("&" if "?" in url else "?") + "_format=json"
    if args.if_none_match:
        headers["If-None-Match"] = args.if_none_match
    status, rh, data = actor.request("GET", url, None, headers)
    out = {"status": status, "content_type": rh.get("content-type"), "etag": rh.get("etag"),
           "last_modified": rh.get("last-modified")}
    if status == 304:
        if data:
            actor.problem("ITI-68: a 304 carries no body")
        return out
    if status != 200:
        actor.problem(f"ITI-68: HTTP {status}")
        return out
    if args.fhir_json or args.format_json:
        body = actor.json_body(status, rh, data, "ITI-68 Binary")
        if body is None:
            return out
        if body.get("resourceType") != "Binary":
            actor.problem(f"ITI-68 with a FHIR format asked: got {body.get('resourceType')!r}, expected a Binary resource")
            return out
        actor.check(body, "r4", "ITI-68 Binary")
        content = base64.b64decode(body.get("data", ""))
        out["binary_content_type"] = body.get("contentType")
    else:
        content = data
    out["size"] = len(content)
    out["sha1"] = base64.b64encode(hashlib.sha1(content).digest()).decode()
    return out


def cmd_read(actor, args):
    status, rh, data = actor.request("GET", args.path, None, {"Accept": "application/fhir+json"})
    body = actor.json_body(status, rh, data, f"read {args.path}")
    out = {"status": status, "etag": rh.get("etag"), "resource": body}
    if status != 200:
        actor.problem(f"read {args.path}: HTTP {status}")
    elif body is not None:
        actor.check(body, args.profile, f"read {args.path}")
    return out


def cmd_metadata(actor, args):
    status, rh, data = actor.request("GET", "metadata", None, {"Accept": "application/fhir+json"})
    body = actor.json_body(status, rh, data, "metadata")
    if status != 200 or body is None:
        actor.problem(f"metadata: HTTP {status}")
        return {"status": status}
    for profile in ("capability-statement", "mhd-document-recipient-capability", "mhd-document-responder-capability"):
        actor.check(body, profile, f"metadata as {profile}")
    return {"status": status, "resource": body}


def main(argv):
    ap = argparse.ArgumentParser(description="Independent IHE MHD Document Source / Consumer (tests/mhd)")
    ap.add_argument("--base", required=True, help="FHIR base URL, e.g. https://127.0.0.1:8443/fhir")
    ap.add_argument("--cert", help="client certificate (PEM)")
    ap.add_argument("--key", help="client private key (PEM)")
    ap.add_argument("--ca", help="CA certificate(s) that sign the server's certificate (PEM)")
    ap.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                    help="a header sent with every request, as a deployment adds its own (repeatable)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("provide")
    p.add_argument("--patient", required=True, help="patient identifier SYSTEM|VALUE")
    p.add_argument("--patient-ref", help="literal Reference for subject (default: a logical reference by identifier)")
    p.add_argument("--metadata", choices=["minimal", "comprehensive"], default="minimal")
    p.add_argument("--content", default="Hello World")
    p.add_argument("--content-file")
    p.add_argument("--content-type", default="text/plain")
    p.add_argument("--title", default="MHD kit document")
    p.add_argument("--type-code", help="DocumentReference.type as SYSTEM|CODE")
    p.add_argument("--author-given", default="Ada")
    p.add_argument("--author-family", default="Lovelace")
    p.add_argument("--source-id", default="urn:oid:1.3.6.1.4.1.21367.13.80.110")
    p.add_argument("--replaces", help="id of the DocumentReference this document replaces")
    p.add_argument("--replace-style", choices=["patch", "relates-only"], default="patch")
    p.add_argument("--idempotency-key")
    p.add_argument("--dry-run", action="store_true", help="build and check the Bundle, send nothing")

    for name in ("find", "find-lists"):
        p = sub.add_parser(name)
        p.add_argument("--patient-identifier", help="SYSTEM|VALUE")
        p.add_argument("--patient", help="patient reference")
        p.add_argument("--status", default="current", help="'' to leave it out")
        p.add_argument("--count", type=int)
        p.add_argument("--param", action="append", default=[], help="extra NAME=VALUE")
        p.add_argument("--post", action="store_true", help="POST [type]/_search with a form body")
        p.add_argument("--prefer", help="Prefer header, e.g. handling=strict")
        p.add_argument("--max-pages", type=int, default=1000)
        if name == "find":
            p.add_argument("--comprehensive", action="store_true", help="check entries as Comprehensive")
        else:
            p.add_argument("--code", default="submissionset")

    p = sub.add_parser("retrieve")
    p.add_argument("url")
    p.add_argument("--fhir-json", action="store_true", help="Accept: application/fhir+json")
    p.add_argument("--format-json", action="store_true", help="add _format=json")
    p.add_argument("--accept")
    p.add_argument("--if-none-match")

    p = sub.add_parser("read")
    p.add_argument("path", help="Type/id")
    p.add_argument("--profile", default="r4")

    sub.add_parser("metadata")
    args = ap.parse_args(argv)
    if args.cmd == "provide" and args.dry_run:
        actor = Actor("https://dry-run.invalid", None, None, None)
    else:
        headers = {}
        for h in args.header:
            name, sep, value = h.partition(":")
            if not sep or not name.strip():
                ap.error(f"--header {h!r}: expected 'NAME: VALUE'")
            headers[name.strip()] = value.strip()
        actor = Actor(args.base, args.cert, args.key, args.ca, headers=headers)
    try:
        out = {"provide": cmd_provide, "find": cmd_find, "find-lists": cmd_find_lists, "retrieve": cmd_retrieve,
               "read": cmd_read, "metadata": cmd_metadata}[args.cmd](actor, args)
    except (OSError, http.client.HTTPException, ssl.SSLError) as e:
        actor.problem(f"connection: {type(e).__name__}: {e}")
        out = {}
    out["ok"] = not actor.problems
    out["problems"] = actor.problems
    out["exchanges"] = actor.exchanges
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(_ARGV))
