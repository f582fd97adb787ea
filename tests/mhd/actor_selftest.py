#!/usr/bin/env python3
"""Self-test of actor.py, the kit's MHD Document Source / Consumer: it drives a small FHIR stub
served here on 127.0.0.1 over mutual TLS (certificates made with the openssl command in a
temporary directory), through actor.py's command line exactly as a Rust test calls it. The stub
exists only to prove the actor's transport, paging and checks; medgate's tests point the actor at
medgate. A second stub base (/bad/fhir) answers the way medgate answered before the MHD work
(relative fullUrls, one-entry transaction-response, raw bytes for a FHIR read) and the actor must
report each of those."""

import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ACTOR = os.path.join(HERE, "actor.py")


def make_pki(d):
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
        "-subj", "/CN=kit test CA", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr")
        with open(f"{d}/{name}.ext", "w") as f:
            f.write(ext + "\n")
        run("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", f"{d}/{name}.ext", "-out", f"{d}/{name}.pem")


class Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.docs = []  # DocumentReference resources, in creation order
        self.binaries = {}
        self.n = 0


def handler_for(store, port):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send(self, status, body, ctype="application/fhir+json", headers=None):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            bad = self.path.startswith("/bad/")
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            entries, idmap = [], {}
            with store.lock:
                for e in body["entry"]:
                    r, req = e["resource"], e["request"]
                    store.n += 1
                    rid = f"{r['resourceType'][0].lower()}{store.n}"
                    if req["method"] == "POST":
                        idmap[e["fullUrl"]] = f"{r['resourceType']}/{rid}"
                        entries.append({"response": {"status": "201 Created", "location": f"{r['resourceType']}/{rid}/_history/1",
                                                     "etag": 'W/"1"', "lastModified": "2025-03-01T10:00:00Z"}})
                        r = dict(r, id=rid)
                        if r["resourceType"] == "Binary":
                            store.binaries[rid] = r
                        if r["resourceType"] == "DocumentReference":
                            store.docs.append(r)
                    else:
                        entries.append({"response": {"status": "200 OK", "location": f"{req['url']}/_history/2",
                                                     "etag": 'W/"2"'}})
                for d in store.docs:
                    for c in d["content"]:
                        u = c["attachment"]["url"]
                        if u in idmap:
                            c["attachment"]["url"] = f"https://127.0.0.1:{port}/fhir/{idmap[u]}"
            if bad:
                entries = entries[:1]
            self.send(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries})

        def do_GET(self):
            bad = self.path.startswith("/bad/")
            parts = urlsplit(self.path)
            path = parts.path.split("/fhir/", 1)[1]
            q = parse_qs(parts.query)
            base = f"https://127.0.0.1:{port}{'/bad' if bad else ''}/fhir"
            if path == "metadata":
                cap = json.load(open(os.path.join(HERE, "fixtures/good/capability-statement-mhd-server.json")))
                return self.send(200, cap)
            if path.startswith("Binary/"):
                b = store.binaries.get(path.split("/")[1])
                if b is None:
                    return self.send(404, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})
                if self.headers.get("If-None-Match") == 'W/"1"':
                    self.send_response(304)
                    self.send_header("ETag", 'W/"1"')
                    self.end_headers()
                    return None
                fhir = "fhir+json" in (self.headers.get("Accept") or "") or q.get("_format") == ["json"]
                if fhir and not bad:
                    return self.send(200, b, headers={"ETag": 'W/"1"'})
                return self.send(200, base64.b64decode(b["data"]), b["contentType"], {"ETag": 'W/"1"'})
            if path == "DocumentReference":
                statuses = q.get("status", ["current"])[0].split(",")
                matches = [d for d in store.docs if d["status"] in statuses]
                count = int(q.get("_count", ["10"])[0])
                page = int(q.get("_page", ["1"])[0])
                chunk = matches[(page - 1) * count: page * count]
                keep = "&".join(f"{k}={v[0]}" for k, v in q.items() if k != "_page")
                links = [{"relation": "self", "url": f"{base}/DocumentReference?{keep}&_page={page}"}]
                if page * count < len(matches):
                    links.append({"relation": "next", "url": f"{base}/DocumentReference?{keep}&_page={page + 1}"})
                entries = [{"fullUrl": (f"DocumentReference/{d['id']}" if bad else f"{base}/DocumentReference/{d['id']}"),
                            "resource": d, "search": {"mode": "match"}} for d in chunk]
                return self.send(200, {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                                       "link": links, "entry": entries})
            return self.send(404, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})

    return H


def actor(pki, base, *args):
    cmd = [sys.executable, ACTOR, "--base", base, "--cert", f"{pki}/client.pem", "--key", f"{pki}/client.key",
           "--ca", f"{pki}/ca.pem", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"actor {args}: exit {p.returncode}, no JSON:\n{p.stdout}\n{p.stderr}")
    return p.returncode, out


def main():
    failures, passed = [], 0

    def expect(cond, what, detail=""):
        nonlocal passed
        if cond:
            passed += 1
        else:
            failures.append(f"{what}: {detail}")

    with tempfile.TemporaryDirectory() as pki:
        make_pki(pki)
        store = Store()
        server = ThreadingHTTPServer(("127.0.0.1", 0), None)
        port = server.server_address[1]
        server.RequestHandlerClass = handler_for(store, port)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=f"{pki}/ca.pem")
        ctx.load_cert_chain(f"{pki}/server.pem", f"{pki}/server.key")
        ctx.verify_mode = ssl.CERT_REQUIRED
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        try:
            base = f"https://127.0.0.1:{port}/fhir"
            rc, out = actor(pki, base, "metadata")
            expect(rc == 0 and out["ok"], "metadata over mutual TLS", out.get("problems"))
            first = None
            for i in range(5):
                rc, out = actor(pki, base, "provide", "--patient", "urn:oid:1.2.3|42", "--content", f"document {i}",
                                *(["--metadata", "comprehensive"] if i % 2 else []))
                expect(rc == 0 and out["ok"] and len(out["locations"]) == 3, f"provide {i}", out.get("problems"))
                first = first or out["locations"][1].split("/")[1]
            rc, out = actor(pki, base, "provide", "--patient", "urn:oid:1.2.3|42", "--replaces", first)
            expect(rc == 0 and out["ok"] and len(out["locations"]) == 4, "provide with replaces (PATCH entry)", out.get("problems"))
            rc, out = actor(pki, base, "find", "--patient-identifier", "urn:oid:1.2.3|42", "--count", "2")
            expect(rc == 0 and out["ok"] and out["pages"] == 3 and len(out["ids"]) == 6 and out["total"] == [6],
                   "find with _count=2 follows next to the end", out)
            url = store.docs[0]["content"][0]["attachment"]["url"]
            rc, out = actor(pki, base, "retrieve", url)
            want = base64.b64encode(hashlib.sha1(b"document 0").digest()).decode()
            expect(rc == 0 and out["ok"] and out["sha1"] == want and out["content_type"] == "text/plain",
                   "retrieve raw bytes", out)
            rc, out = actor(pki, base, "retrieve", url, "--fhir-json")
            expect(rc == 0 and out["ok"] and out["sha1"] == want, "retrieve as a Binary resource", out)
            rc, out = actor(pki, base, "retrieve", url, "--if-none-match", 'W/"1"')
            expect(rc == 0 and out["status"] == 304, "retrieve with If-None-Match", out)
            # Without a client certificate the TLS handshake fails: the actor says so, exit 1.
            p = subprocess.run([sys.executable, ACTOR, "--base", base, "--ca", f"{pki}/ca.pem", "metadata"],
                               capture_output=True, text=True, timeout=60)
            expect(p.returncode == 1 and "connection" in p.stdout, "no client certificate is refused", p.stdout)

            bad = f"https://127.0.0.1:{port}/bad/fhir"
            rc, out = actor(pki, bad, "provide", "--patient", "urn:oid:1.2.3|42")
            expect(rc == 1 and any("response entries for 3 request entries" in x for x in out["problems"]),
                   "a one-entry transaction-response is reported", out.get("problems"))
            rc, out = actor(pki, bad, "find", "--patient-identifier", "urn:oid:1.2.3|42", "--count", "2")
            expect(rc == 1 and any("is not an absolute URI" in x for x in out["problems"]),
                   "relative fullUrls are reported", out.get("problems"))
            rc, out = actor(pki, bad, "retrieve", url.replace("/fhir/", "/bad/fhir/"), "--fhir-json")
            expect(rc == 1 and any("expected application/fhir+json" in x or "not JSON" in x for x in out["problems"]),
                   "raw bytes for a FHIR read are reported", out.get("problems"))
        finally:
            server.shutdown()
            server.server_close()
    for f in failures:
        print("FAIL actor " + f)
    print(f"actor: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
