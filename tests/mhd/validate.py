#!/usr/bin/env python3
"""Independent FHIR R4 (4.0.1) and IHE MHD 4.2.x validator for medgate's integration tests.

Nothing here shares code with medgate. Each resource goes through:
  fhir.resources   the fhir.resources 6.4.0 R4 4.0.1 pydantic models (a third-party model generated
                   from HL7's definitions): structure, data types, primitive formats, required
                   elements, unknown elements.
  json-schema      HL7's official R4 JSON Schema (fhir.schema.json) with the jsonschema package:
                   structure, unknown elements, primitive patterns, codes of required bindings.
  r4-sd            HL7's R4 StructureDefinitions (profiles-resources.json, profiles-types.json):
                   cardinality and unknown elements, walked by this file.
  r4-invariant     every error-level constraint (bdl-*, cpb-*, dom-*, ref-1, per-1, ...) of those
                   StructureDefinitions, evaluated by the fhirpathpy FHIRPath engine.
  r4-rule          R4 rules written in prose rather than as invariants (absolute fullUrl, fullUrl
                   agreeing with Resource.id, transaction-response pairing), written here.
  mhd              the IHE MHD 4.2.3 profile rules picked with --profile, written here from the
                   IG's FSH (file named beside each rule).

Usage:
  validate.py [--profile NAME] [--request FILE] [--warnings] [FILE ...]
  validate.py --list-profiles
Inputs: each FILE (or stdin when none, or '-') holds one resource, a JSON array of resources, or
NDJSON. An item may also be {"profile": NAME, "resource": {...}, "request": {...}} to give its
own profile (and, for a transaction-response, the request Bundle it answers).
Output: one line per problem, "<input>: <severity>: <element path>: <message> [<checker>]".
Exit status: 0 when no error, 1 when some resource has an error, 2 when the kit or the
command line is broken.
"""

import os
import sys

CACHE = os.environ.get("MEDGATE_TEST_TOOLS") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "medgate-test-tools"
)
VENV = os.path.join(CACHE, "venv")
DEFS = os.path.join(CACHE, "npm", "node_modules", "@medplum", "definitions", "dist", "fhir", "r4")
INDEX = os.path.join(CACHE, "r4")


def _ensure_venv():
    """Re-runs this file under the kit's venv, whatever python3 started it."""
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        print(f"mhd kit: not installed in {CACHE}: run scripts/install-deps.sh "
              "(or tests/mhd/install.sh)", file=sys.stderr)
        sys.exit(2)
    os.execv(py, [py, os.path.abspath(sys.argv[0])] + sys.argv[1:])


_ensure_venv()

import base64  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Building the index of HL7's R4 definitions (run once by install.sh)
# ---------------------------------------------------------------------------------------------


def build_index():
    info = open(os.path.join(DEFS, "version.info")).read()
    if "FhirVersion=4.0.1-9346c8cc45" not in info:
        sys.exit(f"mhd kit: {DEFS} is not the FHIR 4.0.1 (build 9346c8cc45) definitions")
    types = {}
    for name in ("profiles-types.json", "profiles-resources.json"):
        bundle = json.load(open(os.path.join(DEFS, name)))
        for entry in bundle["entry"]:
            sd = entry["resource"]
            if sd.get("resourceType") != "StructureDefinition":
                continue
            if not sd["url"].startswith("http://hl7.org/fhir/StructureDefinition/"):
                continue  # additions of the package's publisher: not FHIR R4
            if sd.get("fhirVersion") != "4.0.1":
                continue  # a later FHIR's definition the package added (SubscriptionStatus, 4.3.0)
            if sd.get("derivation") == "constraint":
                continue  # profiles (SimpleQuantity, vitalsigns, ...): not base types
            elements = []
            for el in sd["snapshot"]["element"]:
                elements.append({
                    "path": el["path"],
                    "min": el.get("min", 0),
                    "max": el.get("max", "*"),
                    "types": [t["code"] for t in el.get("type", [])],
                    "contentReference": el.get("contentReference"),
                    "constraints": [
                        {"key": c["key"], "severity": c["severity"], "human": c.get("human", ""),
                         "expression": c["expression"]}
                        for c in el.get("constraint", [])
                        if c.get("expression") and c["key"] != "ele-1"
                    ],
                })
            types[sd["type"]] = {"kind": sd["kind"], "abstract": sd.get("abstract", False),
                                 "base": sd.get("baseDefinition", "").rsplit("/", 1)[-1],
                                 "elements": elements}
    resources = sorted(t for t, d in types.items() if d["kind"] == "resource" and not d["abstract"])
    schema = json.load(open(os.path.join(DEFS, "fhir.schema.json")))
    schema["oneOf"] = [{"$ref": f"#/definitions/{r}"} for r in resources]
    # Contained and entry resources are validated on their own, against their own definition, so
    # that an error names the resource it is in instead of failing a 146-way oneOf.
    schema["definitions"]["ResourceList"] = {"type": "object", "required": ["resourceType"]}
    os.makedirs(INDEX, exist_ok=True)
    json.dump({"types": types, "resources": resources}, open(os.path.join(INDEX, "index.json"), "w"))
    json.dump(schema, open(os.path.join(INDEX, "fhir.schema.json"), "w"))


if "--build-index" in sys.argv[1:]:
    build_index()
    sys.exit(0)

import fhirpathpy  # noqa: E402
import jsonschema  # noqa: E402
from fhir.resources import construct_fhir_element  # noqa: E402
from fhirpathpy.models import models as _fp_models  # noqa: E402
from pydantic import ValidationError  # noqa: E402

try:
    _IDX = json.load(open(os.path.join(INDEX, "index.json")))
    _SCHEMA = json.load(open(os.path.join(INDEX, "fhir.schema.json")))
except OSError as e:
    print(f"mhd kit: index missing ({e}): run tests/mhd/install.sh", file=sys.stderr)
    sys.exit(2)
TYPES = _IDX["types"]
RESOURCES = set(_IDX["resources"])
_SCHEMA_VALIDATOR = jsonschema.Draft6Validator(_SCHEMA)
PRIMITIVES = {t for t, d in TYPES.items() if d["kind"] == "primitive-type"}


class Report:
    """Problems found in one input item."""

    def __init__(self, label):
        self.label = label
        self.items = []
        self.seen = set()

    def add(self, severity, path, message, checker):
        key = (severity, path, message, checker)
        if key not in self.seen:
            self.seen.add(key)
            self.items.append(key)

    def error(self, path, message, checker):
        self.add("error", path, message, checker)

    def warning(self, path, message, checker):
        self.add("warning", path, message, checker)

    @property
    def errors(self):
        return [i for i in self.items if i[0] == "error"]


# ---------------------------------------------------------------------------------------------
# fhir.resources (R4 4.0.1 models)
# ---------------------------------------------------------------------------------------------


def _value_at(obj, loc):
    for p in loc:
        try:
            obj = obj[p]
        except (KeyError, IndexError, TypeError):
            return None
    return obj


def check_model(res, report, base):
    try:
        construct_fhir_element(res["resourceType"], res)
    except ValidationError as e:
        for err in e.errors():
            loc = [p for p in err["loc"] if p != "__root__"]
            if err["msg"] == "invalid or missing URL scheme" and ABSOLUTE.match(str(_value_at(res, loc))):
                # fhir.resources 6.4.0 types `url` as pydantic's AnyUrl, which refuses URNs such as
                # urn:uuid:...; FHIR R4's url (and the JSON Schema's ^\S*$) allows any URI.
                continue
            path = base
            for p in loc:
                path += f"[{p}]" if isinstance(p, int) else f".{p}"
            report.error(path, err["msg"], "fhir.resources")
    except (KeyError, LookupError, TypeError, ValueError) as e:
        report.error(base, f"model could not read the resource: {e}", "fhir.resources")


# ---------------------------------------------------------------------------------------------
# HL7 JSON Schema
# ---------------------------------------------------------------------------------------------


def check_schema(res, report, base):
    sub = {"$ref": f"#/definitions/{res['resourceType']}", "definitions": _SCHEMA["definitions"]}
    for err in jsonschema.Draft6Validator(sub).iter_errors(res):
        path = base
        for p in err.absolute_path:
            path += f"[{p}]" if isinstance(p, int) else f".{p}"
        msg = err.message if len(err.message) < 300 else err.message[:297] + "..."
        report.error(path, msg, "json-schema")


# ---------------------------------------------------------------------------------------------
# Walking a resource along HL7's StructureDefinitions
# ---------------------------------------------------------------------------------------------


def _children(type_name, path):
    """Direct child elements of `path` in the StructureDefinition of `type_name`."""
    sd = TYPES[type_name]
    prefix = path + "."
    return [el for el in sd["elements"]
            if el["path"].startswith(prefix) and "." not in el["path"][len(prefix):]]


def _element(type_name, path):
    for el in TYPES[type_name]["elements"]:
        if el["path"] == path:
            return el
    return None


_FP_KEYWORDS = {"div", "mod", "as", "is", "in", "and", "or", "xor", "implies", "contains", "true", "false"}


def _fp_name(name):
    """An element name as a FHIRPath identifier (`div`, `contains` and other keywords quoted)."""
    return f"`{name}`" if name in _FP_KEYWORDS else name


def _fp_sub(sub):
    return "".join("." + _fp_name(part) for part in sub.split(".")[1:]) if sub else ""


class Node:
    """A value found in the resource: its concrete path (with indexes), its FHIRPath path (no
    indexes, relative to its resource), and its FHIR type."""

    __slots__ = ("value", "path", "fp", "type")

    def __init__(self, value, path, fp, type_):
        self.value, self.path, self.fp, self.type = value, path, fp, type_


def walk(res, base, report, typed, resources):
    """Checks cardinality and unknown elements of `res` against HL7's definitions, collects every
    complex-typed node into `typed` and every nested resource into `resources`."""
    rt = res["resourceType"]
    _walk_obj(res, rt, rt, base, rt, report, typed, resources, top=True)


def _walk_obj(obj, sd_type, sd_path, path, fp, report, typed, resources, top=False):
    kids = _children(sd_type, sd_path)
    known = {}
    for el in kids:
        name = el["path"].rsplit(".", 1)[-1]
        if name.endswith("[x]"):
            stem = name[:-3]
            for t in el["types"]:
                known[stem + t[0].upper() + t[1:]] = (el, t, f"{stem}.ofType({t})")
        else:
            known[name] = (el, None, _fp_name(name))
    for key in obj:
        if top and key == "resourceType":
            continue
        k = key[1:] if key.startswith("_") else key
        if k not in known:
            report.error(f"{path}.{key}", f"unknown element '{key}' in {sd_path}", "r4-sd")
    for el in kids:
        name = el["path"].rsplit(".", 1)[-1]
        present = [k for k, v in known.items() if v[0] is el and (k in obj or "_" + k in obj)]
        if name.endswith("[x]") and len(present) > 1:
            report.error(f"{path}.{name}", f"more than one type given for {name}: {present}", "r4-sd")
        count = 0
        for k in present:
            val = obj.get(k)
            ext = obj.get("_" + k)
            n = len(val) if isinstance(val, list) else (1 if val is not None else 0)
            if n == 0 and ext is not None:
                n = len(ext) if isinstance(ext, list) else 1
            count += n
            if el["max"] == "1" and (isinstance(val, list) or isinstance(ext, list)):
                report.error(f"{path}.{k}", f"{el['path']} has max cardinality 1 but is an array", "r4-sd")
            if el["max"] != "1" and val is not None and not isinstance(val, list):
                report.error(f"{path}.{k}", f"{el['path']} repeats (max {el['max']}) and must be an array", "r4-sd")
            if val is None:
                continue
            _, choice_type, fp_name = known[k]
            t = choice_type or (el["types"][0] if el["types"] else None)
            items = val if isinstance(val, list) else [val]
            for i, item in enumerate(items):
                ipath = f"{path}.{k}[{i}]" if isinstance(val, list) else f"{path}.{k}"
                ifp = f"{fp}.{fp_name}"
                _walk_value(item, el, t, ipath, ifp, report, typed, resources)
        if count < el["min"]:
            report.error(f"{path}.{name}", f"{el['path']}: minimum cardinality {el['min']}, found {count}", "r4-sd")
        if el["max"] not in ("*",) and count > int(el["max"]):
            report.error(f"{path}.{name}", f"{el['path']}: maximum cardinality {el['max']}, found {count}", "r4-sd")


def _walk_value(item, el, t, path, fp, report, typed, resources):
    if item is None or item == {} or item == []:
        report.error(path, "empty value: every element must have a value or children (ele-1)", "r4-sd")
        return
    if el.get("contentReference"):
        ref = el["contentReference"].lstrip("#")
        root = ref.split(".")[0]
        if not isinstance(item, dict):
            report.error(path, f"{el['path']} must be an object", "r4-sd")
            return
        _walk_obj(item, root, ref, path, fp, report, typed, resources)
        return
    if t is None:
        return
    if t in ("Resource", "DomainResource") or (t in RESOURCES):
        if not isinstance(item, dict) or item.get("resourceType") not in RESOURCES:
            report.error(path, f"not a FHIR R4 resource (resourceType {item.get('resourceType') if isinstance(item, dict) else None!r})", "r4-sd")
            return
        resources.append((item, path, el["path"]))
        return
    if t in PRIMITIVES or t.startswith("http://hl7.org/fhirpath/"):
        if isinstance(item, (dict, list)):
            report.error(path, f"{el['path']} is a primitive ({t}) but holds a JSON {type(item).__name__}", "r4-sd")
        return
    if not isinstance(item, dict):
        report.error(path, f"{el['path']} is of type {t} and must be a JSON object", "r4-sd")
        return
    if t in ("BackboneElement", "Element"):
        _walk_obj(item, el["path"].split(".")[0], el["path"], path, fp, report, typed, resources)
        return
    if t not in TYPES:
        return
    typed.append(Node(item, path, fp, t))
    _walk_obj(item, t, t, path, fp, report, typed, resources)


# ---------------------------------------------------------------------------------------------
# Invariants with fhirpathpy
# ---------------------------------------------------------------------------------------------

# Rewrites of HL7 R4 expressions that fhirpathpy cannot run as written, with the same meaning.
OVERRIDES = {
    # dom-3 applies as() to collections, which FHIRPath N1 forbids and fhirpathpy refuses; ofType()
    # is the filter the expression means.
    "dom-3": lambda e: e.replace(".as(canonical)", ".ofType(canonical)")
                        .replace(".as(uri)", ".ofType(uri)")
                        .replace(".as(url)", ".ofType(url)")
                        .replace("as(canonical) = '#'", "ofType(canonical) = '#'"),
    # per-1 compares two dateTime elements; fhirpathpy compares element values as strings, so the
    # values are converted with toDateTime() (timezones and precision then count, as FHIRPath says).
    "per-1": lambda e: e.replace("(start <= end)", "(start.toDateTime() <= end.toDateTime())"),
}

_FP_OPTIONS = {
    "userInvocationTable": {
        # hasValue() (FHIR's FHIRPath extension) is missing from fhirpathpy 2.2.4.
        "hasValue": {"fn": lambda inputs: [len(inputs) == 1 and not isinstance(inputs[0], (dict, list))],
                     "arity": {0: []}},
        # htmlChecks() (txt-1, txt-2) is FHIR's too: see _html_checks.
        "htmlChecks": {"fn": lambda inputs: [all(_html_checks(i) for i in inputs)], "arity": {0: []}},
    },
    "traceFn": lambda *args: None,
}
_COMPILED = {}


def _html_checks(div):
    """narrative.html#xhtml: an XHTML <div> with no script, forms, event attributes or
    external-entity tricks; the text must be well formed."""
    import xml.etree.ElementTree as ET
    if not isinstance(div, str):
        return False
    try:
        root = ET.fromstring(div)
    except ET.ParseError:
        return False
    if root.tag != "{http://www.w3.org/1999/xhtml}div":
        return False
    for node in root.iter():
        tag = node.tag.split("}")[-1]
        if tag in ("script", "form", "input", "object", "embed", "iframe", "base", "link", "style", "head", "body", "html"):
            return False
        if any(a.split("}")[-1].lower().startswith("on") for a in node.attrib):
            return False
    # txt-2: some non-whitespace content (text, or an element such as an image).
    return bool("".join(root.itertext()).strip()) or len(list(root)) > 0
KIT_FAILURES = []


def _fp(expr):
    f = _COMPILED.get(expr)
    if f is None:
        f = fhirpathpy.compile(expr, _fp_models["r4"], _FP_OPTIONS)
        _COMPILED[expr] = f
    return f


def _eval_constraint(resource, fp_path, c, ctx):
    expr = OVERRIDES.get(c["key"], lambda e: e)(c["expression"])
    wrapped = f"{fp_path}.select(iif(({expr}).not(), 'F', 'T'))"
    return _fp(wrapped)(resource, ctx)


def check_invariants(res, base, typed, report, root):
    rt = res["resourceType"]
    ctx = {"resource": res, "rootResource": root, "context": res, "ucum": "http://unitsofmeasure.org"}
    jobs = []  # (fhirpath path, constraint, concrete paths or None)
    for el in TYPES[rt]["elements"]:
        if el["constraints"] and "[x]" not in el["path"]:
            for c in el["constraints"]:
                jobs.append((rt + _fp_sub(el["path"][len(rt):]), c, None))
    groups = {}
    for n in typed:
        groups.setdefault((n.fp, n.type), []).append(n.path)
    for (fp, t), paths in groups.items():
        for el in TYPES[t]["elements"]:
            for c in el["constraints"]:
                sub = el["path"][len(t):]
                if "[x]" in sub:
                    continue
                jobs.append((fp + _fp_sub(sub), c, paths if not sub else None))
    for fp, c, paths in jobs:
        try:
            out = _eval_constraint(res, fp, c, ctx)
        except Exception as e:  # noqa: BLE001 - an engine failure is reported, never hidden
            KIT_FAILURES.append(f"{c['key']} at {fp}: {type(e).__name__}: {e}")
            report.warning(base + fp[len(rt):].replace("`", ""), f"{c['key']} could not be evaluated by fhirpathpy ({type(e).__name__})", "r4-invariant")
            continue
        for i, r in enumerate(out):
            if r != "F":
                continue
            where = paths[i] if paths and len(paths) == len(out) else base + fp[len(rt):].replace("`", "")
            msg = f"{c['key']}: {c['human']}"
            if c["severity"] == "error":
                report.error(where, msg, "r4-invariant")
            else:
                report.warning(where, msg, "r4-invariant")


# ---------------------------------------------------------------------------------------------
# R4 rules written in prose
# ---------------------------------------------------------------------------------------------

ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
RESTFUL = re.compile(r"^(https?://\S+/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")


def check_r4_rules(res, base, report):
    rt = res["resourceType"]
    if rt == "Bundle":
        btype = res.get("type")
        for i, e in enumerate(res.get("entry", []) or []):
            p = f"{base}.entry[{i}]"
            full = e.get("fullUrl")
            r = e.get("resource")
            if full is not None and not ABSOLUTE.match(str(full)):
                # Bundle.entry.fullUrl (bundle.html#bundle-unique, profiles-resources.json): "The
                # Absolute URL for the resource"; relative references are resolved against it.
                report.error(p + ".fullUrl", f"fullUrl {full!r} is not an absolute URI", "r4-rule")
            if full is None and r is not None and btype in ("searchset", "history", "document", "collection"):
                # Bundle.entry.fullUrl: "SHALL have a value" except on a POST and for results that
                # are not identified.
                report.error(p + ".fullUrl", f"an entry of a {btype} Bundle carrying a resource needs a fullUrl", "r4-rule")
            if full and isinstance(r, dict) and r.get("id"):
                m = RESTFUL.match(str(full))
                if m and m.group(1) and (m.group(2) != r.get("resourceType") or m.group(3) != r["id"]):
                    report.error(p + ".fullUrl", f"fullUrl {full!r} disagrees with the resource ({r.get('resourceType')}/{r['id']})", "r4-rule")
            resp = e.get("response")
            if isinstance(resp, dict) and resp.get("status") is not None:
                if not re.match(r"^[1-5][0-9][0-9]( .*)?$", str(resp["status"])):
                    report.error(p + ".response.status", f"status {resp['status']!r} must start with a 3-digit HTTP code", "r4-rule")
        if btype == "searchset":
            rels = [ln.get("relation") for ln in res.get("link", []) or []]
            if "self" not in rels:
                report.warning(base + ".link", "a searchset should carry its self link (search.html#conformance)", "r4-rule")
            for ln in res.get("link", []) or []:
                if ln.get("url") and not ABSOLUTE.match(ln["url"]):
                    report.warning(base + ".link", f"link {ln.get('relation')!r} url {ln['url']!r} is not absolute (http.html#paging)", "r4-rule")
    if rt == "CapabilityStatement":
        if res.get("fhirVersion") not in (None, "4.0.1"):
            report.error(base + ".fhirVersion", f"fhirVersion {res.get('fhirVersion')!r}: an R4 (4.0.1) statement must say 4.0.1", "r4-rule")


def check_transaction_pair(response, request, report, base="Bundle"):
    """http.html#transaction-response: one entry per request entry, in the same order."""
    req_entries = request.get("entry", []) or []
    resp_entries = response.get("entry", []) or []
    if response.get("type") != "transaction-response":
        report.error(base + ".type", f"type {response.get('type')!r}: a transaction is answered by a transaction-response", "r4-rule")
    if len(req_entries) != len(resp_entries):
        report.error(base + ".entry", f"{len(resp_entries)} response entries for {len(req_entries)} request entries: a transaction-response has one entry per request entry, in order", "r4-rule")
    for i, (q, a) in enumerate(zip(req_entries, resp_entries)):
        p = f"{base}.entry[{i}].response"
        method = (q.get("request") or {}).get("method")
        rtype = (q.get("resource") or {}).get("resourceType") or str((q.get("request") or {}).get("url", "")).split("/")[0].split("?")[0]
        resp = a.get("response") or {}
        status = str(resp.get("status", ""))
        if method == "POST" and not status.startswith("201"):
            report.error(p + ".status", f"request entry {i} is a create (POST {rtype}): expected 201, got {status!r}", "r4-rule")
        loc = resp.get("location")
        if loc and method in ("POST", "PUT"):
            m = RESTFUL.match(str(loc))
            if m and m.group(2) != rtype:
                report.error(p + ".location", f"location {loc!r} is not a {rtype}: entries are out of order", "r4-rule")


# ---------------------------------------------------------------------------------------------
# IHE MHD 4.2.3 profiles (IHE/ITI.MHD tag 4.2.3, input/fsh/*.fsh)
# ---------------------------------------------------------------------------------------------

MHD = "https://profiles.ihe.net/ITI/MHD"
SD = MHD + "/StructureDefinition/"
EXT_SOURCE_ID = SD + "ihe-sourceId"
EXT_INTENDED = SD + "ihe-intendedRecipient"
EXT_DESIGNATION = SD + "ihe-designationType"
EXT_AUTHOR_ORG = SD + "ihe-authorOrg"
LIST_TYPES = MHD + "/CodeSystem/MHDlistTypes"
PROVIDE_PROFILES = {
    "minimal": SD + "IHE.MHD.Minimal.ProvideBundle",
    "uncontained": SD + "IHE.MHD.UnContained.Comprehensive.ProvideBundle",
    "comprehensive": SD + "IHE.MHD.Comprehensive.ProvideBundle",
}
RFC3986 = "urn:ietf:rfc:3986"


def _has(obj, key):
    return isinstance(obj, dict) and (obj.get(key) not in (None, [], {}) or ("_" + key) in obj)


def _count(obj, key):
    v = obj.get(key) if isinstance(obj, dict) else None
    if v is None:
        return 0
    return len(v) if isinstance(v, list) else 1


def _card(report, obj, key, path, lo, hi, why):
    n = _count(obj, key)
    if n == 0 and isinstance(obj, dict) and ("_" + key) in obj:
        n = 1
    if n < lo:
        report.error(f"{path}.{key}", f"required by {why} ({lo}..{hi}), missing", "mhd")
    elif hi != "*" and n > hi:
        report.error(f"{path}.{key}", f"at most {hi} allowed by {why}, found {n}", "mhd")


def _exts(obj, url):
    return [e for e in (obj.get("extension") or []) if isinstance(e, dict) and e.get("url") == url]


def _ref_type(ref):
    m = RESTFUL.match(str(ref or ""))
    return m.group(2) if m else None


def _contained_ok(res, ref, path, report, why):
    r = (ref or {}).get("reference")
    if not r or not str(r).startswith("#"):
        report.error(path, f"{why}: must reference a contained resource ('#id'), found {r!r}", "mhd")
    elif r[1:] not in {c.get("id") for c in res.get("contained", []) or []}:
        report.error(path, f"{why}: '{r}' is not among the contained resources", "mhd")


def _unique_id_identifier(ident, path, report, why, oid=False):
    # identifier.fsh (4.2.3) UniqueIdIdentifier: system 1.., value 1.., use 1.. = #usual
    _card(report, ident, "system", path, 1, 1, why)
    _card(report, ident, "value", path, 1, 1, why)
    if ident.get("use") != "usual":
        # The IG's own examples omit masterIdentifier.use, and the 4.2.4 CI build replaces the use
        # discriminator by Identifier.type: reported, but not as an error.
        report.warning(path + ".use", f"{why}: UniqueIdIdentifier fixes use = 'usual' (MHD 4.2.3)", "mhd")
    if oid:
        # SubmissionSetUniqueIdIdentifier: system = urn:ietf:rfc:3986, mhd-startswithoid
        if ident.get("system") != RFC3986:
            report.error(path + ".system", f"{why}: system must be {RFC3986}", "mhd")
        if not str(ident.get("value", "")).startswith("urn:oid:"):
            report.error(path + ".value", "mhd-startswithoid: value must start with urn:oid:", "mhd")


def _entry_uuid_identifier(ident, path, report, why):
    # identifier.fsh (4.2.3) EntryUUIDIdentifier: system = urn:ietf:rfc:3986, value 1..,
    # mhd-startswithuuid, use = #official
    if ident.get("system") != RFC3986:
        report.error(path + ".system", f"{why}: system must be {RFC3986}", "mhd")
    if not str(ident.get("value", "")).startswith("urn:uuid:"):
        report.error(path + ".value", "mhd-startswithuuid: value must start with urn:uuid:", "mhd")


def mhd_document_reference(res, path, report, level):
    """documentReference.fsh (4.2.3): IHE.MHD.Minimal.DocumentReference,
    IHE.MHD.UnContained.Comprehensive.DocumentReference, IHE.MHD.Comprehensive.DocumentReference."""
    why = {"minimal": "MHD Minimal DocumentReference", "uncontained": "MHD UnContained Comprehensive DocumentReference",
           "comprehensive": "MHD Comprehensive DocumentReference"}[level]
    if res.get("resourceType") != "DocumentReference":
        report.error(path, f"{why}: expected a DocumentReference, found {res.get('resourceType')}", "mhd")
        return
    _card(report, res, "modifierExtension", path, 0, 0, why)
    _card(report, res, "masterIdentifier", path, 1, 1, why)
    if isinstance(res.get("masterIdentifier"), dict):
        _unique_id_identifier(res["masterIdentifier"], path + ".masterIdentifier", report, why)
    for i, ident in enumerate(res.get("identifier") or []):
        if isinstance(ident, dict) and ident.get("use") == "official":  # slice entryUUID
            _entry_uuid_identifier(ident, f"{path}.identifier[{i}]", report, why + " identifier:entryUUID")
    _card(report, res, "status", path, 1, 1, why)
    if res.get("status") not in (None, "current", "superseded"):
        # ValueSet DocumentReferenceStats (required): current | superseded
        report.error(path + ".status", f"{why}: status {res.get('status')!r} is not in DocumentReferenceStats (current | superseded)", "mhd")
    _card(report, res, "docStatus", path, 0, 0, why)
    for key in ("type", "category", "subject", "date", "authenticator", "description"):
        _card(report, res, key, path, 0, 1, why)
    if _has(res, "subject"):
        t = _ref_type(res["subject"].get("reference"))
        if t and t != "Patient":
            report.error(path + ".subject", f"{why}: subject only Reference(Patient), found {t}", "mhd")
    _card(report, res, "content", path, 1, 1, why)
    for i, content in enumerate(res.get("content") or []):
        cp = f"{path}.content[{i}]"
        att = content.get("attachment") or {}
        _card(report, att, "contentType", cp + ".attachment", 1, 1, why)
        _card(report, att, "data", cp + ".attachment", 0, 0, why)
        _card(report, att, "url", cp + ".attachment", 1, 1, why)
        _card(report, content, "format", cp, 0, 1, why)
        if level != "minimal":
            _card(report, att, "language", cp + ".attachment", 1, 1, why)
            _card(report, att, "creation", cp + ".attachment", 1, 1, why)
            _card(report, content, "format", cp, 1, 1, why)
    ctx = res.get("context") or {}
    for key in ("period", "facilityType", "practiceSetting", "sourcePatientInfo"):
        _card(report, ctx, key, path + ".context", 0, 1, why)
    if level != "minimal":
        for key in ("type", "category", "subject", "context"):
            _card(report, res, key, path, 1, 1, why)
        _card(report, res, "securityLabel", path, 1, "*", why)
        for key in ("facilityType", "practiceSetting", "sourcePatientInfo"):
            _card(report, ctx, key, path + ".context", 1, 1, why)
    if level == "comprehensive":
        # author, authenticator, context.sourcePatientInfo: ^type.aggregation = #contained
        for i, a in enumerate(res.get("author") or []):
            _contained_ok(res, a, f"{path}.author[{i}]", report, why + " author")
        if _has(res, "authenticator"):
            _contained_ok(res, res["authenticator"], path + ".authenticator", report, why + " authenticator")
        if _has(ctx, "sourcePatientInfo"):
            _contained_ok(res, ctx["sourcePatientInfo"], path + ".context.sourcePatientInfo", report, why + " sourcePatientInfo")


def _mhd_list_common(res, path, report, why, code):
    """mhdList.fsh (4.2.3) IHE.MHD.List: modifierExtension 0..0, code 1..1 from MHDlistTypesVS."""
    if res.get("resourceType") != "List":
        report.error(path, f"{why}: expected a List, found {res.get('resourceType')}", "mhd")
        return False
    _card(report, res, "modifierExtension", path, 0, 0, why)
    _card(report, res, "code", path, 1, 1, why)
    codings = (res.get("code") or {}).get("coding") or []
    if not any(c.get("system") == LIST_TYPES and c.get("code") == code for c in codings):
        report.error(path + ".code", f"{why}: code must be {LIST_TYPES}#{code}", "mhd")
    for i, e in enumerate(_exts(res, EXT_DESIGNATION)):
        if "valueCodeableConcept" not in e:
            report.error(f"{path}.extension[designationType]", "ihe-designationType needs valueCodeableConcept", "mhd")
    if res.get("mode") != "working":
        report.error(path + ".mode", f"{why}: mode is fixed to 'working'", "mhd")
    _card(report, res, "encounter", path, 0, 0, why)
    _card(report, res, "orderedBy", path, 0, 0, why)
    _card(report, res, "emptyReason", path, 0, 0, why)
    _card(report, res, "note", path, 0, 1, why)
    if _has(res, "subject"):
        t = _ref_type(res["subject"].get("reference"))
        if t and t != "Patient":
            report.error(path + ".subject", f"{why}: subject only Reference(Patient), found {t}", "mhd")
    for i, ident in enumerate(res.get("identifier") or []):
        if isinstance(ident, dict) and ident.get("use") == "official":
            _entry_uuid_identifier(ident, f"{path}.identifier[{i}]", report, why + " identifier:entryUUID")
    for i, ent in enumerate(res.get("entry") or []):
        for key in ("flag", "deleted", "date"):
            _card(report, ent, key, f"{path}.entry[{i}]", 0, 0, why)
    return True


def mhd_submission_set(res, path, report, level):
    """submissionSet.fsh (4.2.3): IHE.MHD.Minimal.SubmissionSet and its Comprehensive variants."""
    why = {"minimal": "MHD Minimal SubmissionSet", "uncontained": "MHD UnContained Comprehensive SubmissionSet",
           "comprehensive": "MHD Comprehensive SubmissionSet"}[level]
    if not _mhd_list_common(res, path, report, why, "submissionset"):
        return
    src = _exts(res, EXT_SOURCE_ID)
    if len(src) != 1:
        report.error(path + ".extension[sourceId]", f"{why}: extension ihe-sourceId 1..1, found {len(src)}", "mhd")
    for e in src:
        if not isinstance(e.get("valueIdentifier"), dict):
            report.error(path + ".extension[sourceId]", "ihe-sourceId needs valueIdentifier", "mhd")
    for e in _exts(res, EXT_INTENDED):
        if not isinstance(e.get("valueReference"), dict):
            report.error(path + ".extension[intendedRecipient]", "ihe-intendedRecipient needs valueReference", "mhd")
    n_designation = len(_exts(res, EXT_DESIGNATION))
    if n_designation > 1:
        report.error(path + ".extension[designationType]", f"{why}: designationType 0..1, found {n_designation}", "mhd")
    if res.get("status") != "current":
        report.error(path + ".status", f"{why}: status is fixed to 'current'", "mhd")
    _card(report, res, "date", path, 1, 1, why)
    _card(report, res, "source", path, 0, 1, why)
    for i, ident in enumerate(res.get("identifier") or []):
        if isinstance(ident, dict) and ident.get("use") == "usual":  # slice uniqueId
            _unique_id_identifier(ident, f"{path}.identifier[{i}]", report, why + " identifier:uniqueId", oid=True)
    src_ref = res.get("source") or {}
    for e in _exts(src_ref, EXT_AUTHOR_ORG):
        if _ref_type((e.get("valueReference") or {}).get("reference")) not in (None, "Organization"):
            report.error(path + ".source.extension[authorOrg]", "ihe-authorOrg only Reference(Organization)", "mhd")
    for i, ent in enumerate(res.get("entry") or []):
        t = _ref_type((ent.get("item") or {}).get("reference"))
        if t and t not in ("DocumentReference", "List"):
            report.error(f"{path}.entry[{i}].item", f"{why}: entry.item only Reference(DocumentReference or List), found {t}", "mhd")
    if level != "minimal":
        _card(report, res, "subject", path, 1, 1, why)
        if n_designation != 1:
            report.error(path + ".extension[designationType]", f"{why}: designationType 1..1, found {n_designation}", "mhd")
    if level == "comprehensive" and _has(res, "source"):
        _contained_ok(res, res["source"], path + ".source", report, why + " source")


def mhd_folder(res, path, report, level):
    """folder.fsh (4.2.3) IHE.MHD.Minimal.Folder: the rules a Find Lists response relies on."""
    why = "MHD Folder"
    if not _mhd_list_common(res, path, report, why, "folder"):
        return
    _card(report, res, "source", path, 0, 0, why)
    for i, ent in enumerate(res.get("entry") or []):
        _card(report, ent, "item", f"{path}.entry[{i}]", 1, 1, why)


def _bundle_index(bundle):
    return {e.get("fullUrl"): e for e in bundle.get("entry", []) or [] if e.get("fullUrl")}


def mhd_provide_bundle(res, path, report, level):
    """provideBundle.fsh (4.2.3) IHE.MHD.{Minimal,UnContained.Comprehensive,Comprehensive}.ProvideBundle,
    and ITI-65.md 2:3.65.4.1.2."""
    why = {"minimal": "MHD Minimal Provide Document Bundle", "uncontained": "MHD UnContained Comprehensive Provide Document Bundle",
           "comprehensive": "MHD Comprehensive Provide Document Bundle"}[level]
    if res.get("resourceType") != "Bundle":
        report.error(path, f"{why}: expected a Bundle", "mhd")
        return
    profiles = (res.get("meta") or {}).get("profile") or []
    if not profiles:
        report.error(path + ".meta.profile", f"{why}: meta.profile 1..* (ITI-65 2:3.65.4.1.2.1)", "mhd")
    allowed = {"minimal": set(PROVIDE_PROFILES.values()), "uncontained": {PROVIDE_PROFILES["uncontained"], PROVIDE_PROFILES["comprehensive"]},
               "comprehensive": {PROVIDE_PROFILES["comprehensive"]}}[level]
    if profiles and not allowed & set(profiles):
        report.error(path + ".meta.profile", f"{why}: meta.profile must name {' or '.join(sorted(allowed))}", "mhd")
    if res.get("type") != "transaction":
        report.error(path + ".type", f"{why}: type is fixed to 'transaction'", "mhd")
    index = _bundle_index(res)
    n_subsets = 0
    n_patients = 0
    for i, e in enumerate(res.get("entry", []) or []):
        p = f"{path}.entry[{i}]"
        r = e.get("resource")
        req = e.get("request")
        if not isinstance(r, dict):
            report.error(p + ".resource", f"{why}: every entry carries a resource (slices all 1..1)", "mhd")
            continue
        if not isinstance(req, dict):
            report.error(p + ".request", f"{why}: every entry carries a request", "mhd")
            req = {}
        rt = r.get("resourceType")
        method = req.get("method")
        codes = [c.get("code") for c in ((r.get("code") or {}).get("coding") or []) if c.get("system") == LIST_TYPES]
        rp = p + ".resource"
        if rt == "List" and "submissionset" in codes:
            n_subsets += 1
            if method != "POST":
                report.error(p + ".request.method", f"{why}: SubmissionSet is created with POST", "mhd")
            mhd_submission_set(r, rp, report, level)
            if not _has(r, "subject"):
                report.error(rp + ".subject", "ITI-65 2:3.65.4.1.2.1: every List.subject shall be populated", "mhd")
        elif rt == "List" and "folder" in codes:
            if method not in ("POST", "PUT"):
                report.error(p + ".request.method", f"{why}: Folder request method from MHDprovideFolderActions (POST | PUT)", "mhd")
            mhd_folder(r, rp, report, level)
        elif rt == "DocumentReference":
            if method != "POST":
                report.error(p + ".request.method", f"{why}: DocumentReference is created with POST", "mhd")
            mhd_document_reference(r, rp, report, level)
            if not _has(r, "subject"):
                report.error(rp + ".subject", "ITI-65 2:3.65.4.1.2.1: every DocumentReference.subject shall be populated", "mhd")
            _check_document_content(r, rp, index, report)
        elif rt == "Parameters":
            if method != "PATCH":
                report.error(p + ".request.method", f"{why}: the UpdateDocumentRefs slice uses PATCH", "mhd")
            _check_patch_parameters(r, rp, report)
        elif rt == "Binary":
            pass
        elif rt == "Bundle":
            if method != "POST":
                report.error(p + ".request.method", f"{why}: FhirDocuments are created with POST", "mhd")
        elif rt == "Patient":
            n_patients += 1
            if method not in ("GET", "POST", "PUT"):
                report.error(p + ".request.method", f"{why}: Patient request method from MHDprovidePatientActions (GET | POST | PUT)", "mhd")
        else:
            report.error(rp, f"{why}: a {rt} (or a List that is neither SubmissionSet nor Folder) is not allowed: the entry slicing is closed", "mhd")
    if n_subsets != 1:
        report.error(path + ".entry", f"{why}: exactly one SubmissionSet List (slice SubmissionSet 1..1), found {n_subsets}", "mhd")
    if n_patients > 1:
        report.error(path + ".entry", f"{why}: at most one Patient (slice Patient 0..1), found {n_patients}", "mhd")


def _check_patch_parameters(r, path, report):
    """documentReference.fsh (4.2.3) IHE.MHD.Patch.Parameters: one 'operation' parameter with parts
    type = replace, path = DocumentReference.status, value = superseded."""
    ops = [p for p in r.get("parameter", []) or [] if p.get("name") == "operation"]
    if len(ops) != 1:
        report.error(path + ".parameter", f"MHD Patch Parameters: exactly one 'operation' parameter, found {len(ops)}", "mhd")
        return
    parts = {pt.get("name"): pt for pt in ops[0].get("part", []) or []}
    if (parts.get("type") or {}).get("valueCode") != "replace":
        report.error(path + ".parameter[operation].part[type]", "MHD Patch Parameters: type = replace", "mhd")
    if (parts.get("path") or {}).get("valueString") != "DocumentReference.status":
        report.error(path + ".parameter[operation].part[path]", "MHD Patch Parameters: path = 'DocumentReference.status'", "mhd")
    if (parts.get("value") or {}).get("valueCode") != "superseded":
        report.error(path + ".parameter[operation].part[value]", "MHD Patch Parameters: value = superseded", "mhd")


def _check_document_content(dr, path, index, report):
    """ITI-65.md 2:3.65.4.1.2.1: a Binary pointed at by attachment.url is in the Bundle; hash and
    size measure the raw document."""
    for i, c in enumerate(dr.get("content") or []):
        att = c.get("attachment") or {}
        url = att.get("url")
        ap = f"{path}.content[{i}].attachment"
        if not url:
            continue
        target = index.get(url)
        if target is None and (str(url).startswith("urn:uuid:") or _ref_type(url) == "Binary"):
            report.error(ap + ".url", f"ITI-65: attachment.url {url!r} points at a Binary that is not in the Bundle", "mhd")
            continue
        b = (target or {}).get("resource") or {}
        if b.get("resourceType") != "Binary" or "data" not in b:
            continue
        try:
            raw = base64.b64decode(b["data"], validate=True)
        except ValueError:
            continue
        if "size" in att and att["size"] != len(raw):
            report.error(ap + ".size", f"ITI-65: size {att['size']} but the Binary holds {len(raw)} bytes", "mhd")
        want = base64.b64encode(hashlib.sha1(raw).digest()).decode()
        if "hash" in att and att["hash"] != want:
            report.error(ap + ".hash", f"ITI-65: hash {att['hash']!r} is not the base64 SHA-1 of the Binary ({want!r})", "mhd")
        if b.get("contentType") and att.get("contentType") and b["contentType"] != att["contentType"]:
            report.warning(ap + ".contentType", f"contentType {att['contentType']!r} differs from the Binary's {b['contentType']!r}", "mhd")


def mhd_provide_bundle_response(res, path, report, request=None):
    """provideBundle.fsh (4.2.3) IHE.MHD.ProvideDocumentBundleResponse, ITI-65.md 2:3.65.4.2.2."""
    why = "MHD Provide Document Bundle Response"
    if res.get("type") != "transaction-response":
        report.error(path + ".type", f"{why}: type is fixed to 'transaction-response'", "mhd")
    _card(report, res, "entry", path, 1, "*", why)
    for i, e in enumerate(res.get("entry", []) or []):
        p = f"{path}.entry[{i}]"
        _card(report, e, "response", p, 1, 1, why)
        resp = e.get("response") or {}
        _card(report, resp, "location", p + ".response", 1, 1, why)
    if request is not None:
        check_transaction_pair(res, request, report, path)


def mhd_find_response(res, path, report, kind):
    """findDocumentReferencesResponse.fsh / findFindDocumentListsResponse.fsh (4.2.3), ITI-67.md
    2:3.67.4.2.2 and ITI-66.md."""
    why = {"docref": "MHD Find Document References Response", "docref-comprehensive": "MHD Find Document References Comprehensive Response",
           "lists": "MHD Find Document Lists Response"}[kind]
    if res.get("type") != "searchset":
        report.error(path + ".type", f"{why}: type is fixed to 'searchset'", "mhd")
    _card(report, res, "total", path, 1, 1, why)
    for i, e in enumerate(res.get("entry", []) or []):
        p = f"{path}.entry[{i}]"
        r = e.get("resource") or {}
        rt = r.get("resourceType")
        if kind.startswith("docref") and rt == "DocumentReference":
            _card(report, e, "fullUrl", p, 1, 1, why)
            mhd_document_reference(r, p + ".resource", report, "comprehensive" if kind == "docref-comprehensive" else "minimal")
            for j, c in enumerate(r.get("content") or []):
                url = (c.get("attachment") or {}).get("url", "")
                if not re.match(r"^https?://", str(url)):
                    report.error(f"{p}.resource.content[{j}].attachment.url", f"ITI-67 2:3.67.4.2.2.1.1: a full URL for ITI-68 is required, found {url!r}", "mhd")
        elif kind == "lists" and rt == "List":
            _card(report, e, "fullUrl", p, 1, 1, why)
            codes = [c.get("code") for c in ((r.get("code") or {}).get("coding") or []) if c.get("system") == LIST_TYPES]
            if "folder" in codes:
                mhd_folder(r, p + ".resource", report, "minimal")
            else:
                mhd_submission_set(r, p + ".resource", report, "minimal")
        elif rt == "OperationOutcome":
            if (e.get("search") or {}).get("mode") != "outcome":
                report.warning(p + ".search.mode", "an OperationOutcome in a searchset has search.mode = outcome", "mhd")
        elif rt:
            report.warning(p + ".resource", f"{why}: unexpected {rt} entry", "mhd")
        if (e.get("search") or {}).get("mode") == "include" and rt in ("DocumentReference", "List"):
            report.warning(p + ".search.mode", "a match is reported with search.mode = match", "mhd")


# ITI-66 / ITI-67 search parameters the Document Responder SHALL support, as the IG's
# CapabilityStatement-IHE.MHD.DocumentResponder.json lists them (input/resources, tag 4.2.3).
RESPONDER_PARAMS = {
    "DocumentReference": ["_id", "_lastUpdated", "author.given", "author.family", "category", "creation", "date",
                          "event", "facility", "format", "identifier", "patient", "patient.identifier", "period",
                          "related", "security-label", "setting", "status", "type"],
    "List": ["_id", "_lastUpdated", "code", "date", "identifier", "patient", "patient.identifier", "source.given",
             "source.family", "status", "designationType", "sourceId"],
}


def mhd_capability(res, path, report, actor):
    why = f"MHD Document {actor.capitalize()} CapabilityStatement"
    rests = [r for r in res.get("rest", []) or [] if r.get("mode") == "server"]
    if not rests:
        report.error(path + ".rest", f"{why}: a rest entry with mode = server", "mhd")
        return
    rest = rests[0]
    if actor == "recipient":
        if "transaction" not in [i.get("code") for i in rest.get("interaction", []) or []]:
            report.error(path + ".rest.interaction", f"{why}: the system interaction 'transaction' (ITI-65)", "mhd")
        return
    by_type = {r.get("type"): r for r in rest.get("resource", []) or []}
    for rt, params in list(RESPONDER_PARAMS.items()) + [("Binary", [])]:
        r = by_type.get(rt)
        if r is None:
            report.error(path + ".rest.resource", f"{why}: resource {rt} missing", "mhd")
            continue
        codes = {i.get("code") for i in r.get("interaction", []) or []}
        for need in (["read", "search-type"] if params else ["read"]):
            if need not in codes:
                report.error(f"{path}.rest.resource[{rt}].interaction", f"{why}: {rt} {need} missing", "mhd")
        have = {sp.get("name", "").lower() for sp in r.get("searchParam", []) or []}
        for sp in params:
            if sp.lower() not in have:
                report.error(f"{path}.rest.resource[{rt}].searchParam", f"{why}: search parameter {sp} missing", "mhd")


PROFILES = {
    "r4": ("FHIR R4 only", None),
    "capability-statement": ("FHIR R4 CapabilityStatement (cpb-* invariants, fhirVersion 4.0.1)", "CapabilityStatement"),
    "mhd-document-responder-capability": ("CapabilityStatement of an MHD Document Responder (ITI-66/67/68)", "CapabilityStatement"),
    "mhd-document-recipient-capability": ("CapabilityStatement of an MHD Document Recipient (ITI-65)", "CapabilityStatement"),
    "mhd-minimal-provide-bundle": ("ITI-65 request, Minimal metadata", "Bundle"),
    "mhd-uncontained-comprehensive-provide-bundle": ("ITI-65 request, UnContained Comprehensive metadata", "Bundle"),
    "mhd-comprehensive-provide-bundle": ("ITI-65 request, Comprehensive metadata", "Bundle"),
    "mhd-provide-bundle-response": ("ITI-65 transaction-response (with --request: paired with its request)", "Bundle"),
    "mhd-minimal-document-reference": ("DocumentReference, Minimal metadata", "DocumentReference"),
    "mhd-uncontained-comprehensive-document-reference": ("DocumentReference, UnContained Comprehensive", "DocumentReference"),
    "mhd-comprehensive-document-reference": ("DocumentReference, Comprehensive", "DocumentReference"),
    "mhd-submissionset-list": ("SubmissionSet List, Minimal metadata", "List"),
    "mhd-uncontained-comprehensive-submissionset-list": ("SubmissionSet List, UnContained Comprehensive", "List"),
    "mhd-comprehensive-submissionset-list": ("SubmissionSet List, Comprehensive", "List"),
    "mhd-folder-list": ("Folder List", "List"),
    "mhd-find-documentreferences-response": ("ITI-67 searchset", "Bundle"),
    "mhd-find-documentreferences-comprehensive-response": ("ITI-67 searchset, Comprehensive DocumentReferences", "Bundle"),
    "mhd-find-lists-response": ("ITI-66 searchset", "Bundle"),
}


def check_profile(res, profile, report, request):
    if profile not in PROFILES:
        raise KeyError(profile)
    want = PROFILES[profile][1]
    if want and res.get("resourceType") != want:
        report.error(res.get("resourceType", "?"), f"profile {profile} applies to a {want}, found {res.get('resourceType')}", "mhd")
        return
    base = res["resourceType"]
    level = "comprehensive" if "-comprehensive-" in profile and "uncontained" not in profile else (
        "uncontained" if "uncontained" in profile else "minimal")
    if profile.endswith("provide-bundle"):
        mhd_provide_bundle(res, base, report, level)
    elif profile == "mhd-provide-bundle-response":
        mhd_provide_bundle_response(res, base, report, request)
    elif profile.endswith("document-reference"):
        mhd_document_reference(res, base, report, level)
    elif profile.endswith("submissionset-list"):
        mhd_submission_set(res, base, report, level)
    elif profile == "mhd-folder-list":
        mhd_folder(res, base, report, level)
    elif profile == "mhd-find-documentreferences-response":
        mhd_find_response(res, base, report, "docref")
    elif profile == "mhd-find-documentreferences-comprehensive-response":
        mhd_find_response(res, base, report, "docref-comprehensive")
    elif profile == "mhd-find-lists-response":
        mhd_find_response(res, base, report, "lists")
    elif profile == "mhd-document-responder-capability":
        mhd_capability(res, base, report, "responder")
    elif profile == "mhd-document-recipient-capability":
        mhd_capability(res, base, report, "recipient")


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def validate(res, profile=None, request=None, label="resource"):
    """Validates one resource; returns its Report."""
    report = Report(label)
    if not isinstance(res, dict) or res.get("resourceType") not in RESOURCES:
        rt = res.get("resourceType") if isinstance(res, dict) else type(res).__name__
        report.error("$", f"not a FHIR R4 resource (resourceType {rt!r})", "r4-sd")
        return report
    base = res["resourceType"]
    check_model(res, report, base)
    # The resource and every resource nested in it (Bundle entries, contained, outcomes), each
    # checked against its own definitions with its own root for %resource / %rootResource.
    todo = [(res, base, res)]
    while todo:
        r, p, root = todo.pop(0)
        check_schema(r, report, p)
        typed, nested = [], []
        walk(r, p, report, typed, nested)
        check_invariants(r, p, typed, report, root)
        check_r4_rules(r, p, report)
        for child, cpath, el_path in nested:
            # A contained resource keeps its container as %rootResource; an entry is its own root.
            todo.append((child, cpath, root if el_path.endswith(".contained") else child))
    if request is not None and profile != "mhd-provide-bundle-response":
        check_transaction_pair(res, request, report)
    if profile and profile != "r4":
        check_profile(res, profile, report, request)
    return report


def _items_from_text(text, label):
    text = text.strip()
    if not text:
        return []
    try:
        doc = json.loads(text)
        docs = doc if isinstance(doc, list) else [doc]
        return [(f"{label}[{i}]" if isinstance(doc, list) else label, d) for i, d in enumerate(docs)]
    except json.JSONDecodeError:
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                out.append((f"{label}:{n}", json.loads(line)))
        return out


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description="Independent FHIR R4 + IHE MHD validator (tests/mhd)")
    ap.add_argument("files", nargs="*")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--request", default=None, help="the request Bundle a transaction-response answers")
    ap.add_argument("--warnings", action="store_true", help="print warnings too")
    ap.add_argument("--strict-kit", action="store_true", help="a FHIRPath expression the engine cannot run is an error")
    ap.add_argument("--list-profiles", action="store_true")
    args = ap.parse_args(argv)
    if args.list_profiles:
        for name, (desc, _) in PROFILES.items():
            print(f"{name}\t{desc}")
        return 0
    if args.profile and args.profile not in PROFILES:
        print(f"unknown profile {args.profile!r}; --list-profiles lists them", file=sys.stderr)
        return 2
    request = json.load(open(args.request)) if args.request else None
    items = []
    try:
        for f in args.files or ["-"]:
            text = sys.stdin.read() if f == "-" else open(f).read()
            items += _items_from_text(text, "stdin" if f == "-" else f)
    except (OSError, ValueError) as e:
        print(f"cannot read input: {e}", file=sys.stderr)
        return 2
    if not items:
        print("no resource given", file=sys.stderr)
        return 2
    failed = 0
    for label, doc in items:
        profile, req = args.profile, request
        if isinstance(doc, dict) and "resource" in doc and "resourceType" not in doc:
            profile = doc.get("profile", profile)
            req = doc.get("request", req)
            doc = doc["resource"]
            if profile and profile not in PROFILES:
                print(f"{label}: error: $: unknown profile {profile!r} [kit]")
                failed += 1
                continue
        report = validate(doc, profile, req, label)
        for sev, path, msg, checker in report.items:
            if sev == "error" or args.warnings:
                print(f"{label}: {sev}: {path}: {msg} [{checker}]")
        if report.errors:
            failed += 1
    if args.strict_kit and KIT_FAILURES:
        for k in sorted(set(KIT_FAILURES)):
            print(f"kit: error: fhirpathpy could not evaluate {k}")
        return 2
    print(f"{len(items) - failed} valid, {failed} invalid", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
