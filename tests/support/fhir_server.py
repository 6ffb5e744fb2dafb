"""A FHIR-shaped JSON API over TLS, for loopgate's HTTPS tests.

Not a real FHIR server: it answers a few FHIR REST interactions with
synthetic, FHIR R4-shaped resources (resourceType first, as FHIR servers
write them), which is what loopgate parses and masks:

  GET    /fhir/metadata                 CapabilityStatement
  GET    /fhir/Patient[?...]            searchset Bundle of N Patients
  GET    /fhir/Patient/<id>             one Patient (?_format=xml: as XML)
  DELETE /fhir/Patient/<id>             204 (loopgate should never let it through)
  GET    /fhir/$export, /fhir/Patient/$export   the Patients as NDJSON
  GET    /fhir/Binary/enc-chain, enc-two  a gzip body behind "identity, gzip" / two headers

and, Kubernetes-shaped (not an API server either):

  GET    /api/v1/namespaces/ward/pods   a PodList
  GET    /api/v1/namespaces/ward/configmaps/c1   a ConfigMap with a PHI-like value
  POST   /api/v1/namespaces/ward/secrets         the created Secret (with data)
  POST   /api/v1/namespaces/ward/pods            the created Pod, as sent
  POST   /apis/batch/v1/namespaces/ward/jobs     a Job "nightly"
  DELETE /api/v1/namespaces/<ns>                 a Status

and enough of the API's discovery (/api, /api/v1, /apis) and an in-memory
store of ConfigMaps in namespace ward (get, list, create, delete) for an
unmodified kubectl to run its get, apply and delete. An Upgrade request to
/api/v1/namespaces/ward/pods/p1/portforward is switched (101, the
WebSocket subprotocol echoed) and then echoes every byte back until EOF.
GET /api/v1/namespaces/ward/pods/p1 is a Running pod, and a WebSocket
upgrade of its exec (v5.channel.k8s.io or v4.channel.k8s.io, the
handshake and RFC 6455 frames done here by hand) runs the query's
`command` on this host as the pod's container would: stdout and stderr as
channel 1 and 2 messages (an empty channel 1 message first, as the
kubelet writes), stdin from channel 0 (closed by v5's 255/0 message), the
exit as a v4 status on channel 3; client frames must be masked. A pods watch
(?watch=...) streams chunked: the first event at once, the second only
once the file GO (argv[5]) exists, then the stream ends.

Every request is appended, as one JSON line, to LOG: method, path and
headers, so a test can see what reached the server (and what did not).

usage: fhir_server.py CERT KEY LOG PATIENTS   (CERT "-": plain HTTP)
Prints "PORT <n>" once listening on 127.0.0.1.
"""
import base64
import hashlib
import json
import ssl
import struct
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import os
import time

CERT, KEY, LOG, PATIENTS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
GO = sys.argv[5] if len(sys.argv) > 5 else None
LOCK = threading.Lock()
CONFIGMAPS = {"c1": {"kind": "ConfigMap", "apiVersion": "v1",
                     "metadata": {"name": "c1", "namespace": "ward", "resourceVersion": "1"},
                     "data": {"mode": "fast", "contact": "ssn 123-45-6789"}}}
CM_PREFIX = "/api/v1/namespaces/ward/configmaps"
RESOURCES = [("pods", "Pod", True), ("configmaps", "ConfigMap", True),
             ("secrets", "Secret", True), ("namespaces", "Namespace", False)]


def pod(name, note):
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "ward", "resourceVersion": "1",
                         "annotations": {"note": note}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}}


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")


def ws_frame(opcode, payload):
    """A final, unmasked frame (server to client)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | opcode, 127]) + struct.pack(">Q", n)
    return head + payload


def ws_read(rfile):
    """One client frame as (opcode, payload, masked); None at EOF."""
    h = rfile.read(2)
    if len(h) < 2:
        return None
    n = h[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", rfile.read(8))[0]
    masked = bool(h[1] & 0x80)
    key = rfile.read(4) if masked else b"\0\0\0\0"
    data = rfile.read(n)
    return h[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(data)), masked


def exit_status(code):
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": "command terminated with non-zero exit code: %d" % code,
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def patient_entries(families=None):
    """A searchset's entries: every patient, or those of `families`."""
    return [{"fullUrl": "https://fhir.test/fhir/Patient/p%d" % i, "resource": patient(i),
             "search": {"mode": "match"}} for i in range(1, PATIENTS + 1)
            if not families or patient(i)["name"][0]["family"] in families]


def patient(i):
    ssn = "%03d-%02d-%04d" % (100 + i % 600, 10 + i % 89, 1000 + i)
    return {
        "resourceType": "Patient",
        "id": "p%d" % i,
        "meta": {"versionId": "1"},
        "text": {"status": "generated", "div": "<div>Patient Zed%d Quincy</div>" % i},
        "identifier": [
            {"system": "urn:oid:2.16.840.1.113883.4.1", "value": ssn},
            {"system": "urn:mrn", "value": "MRN%08d" % i},
        ],
        "active": True,
        "name": [{"use": "official", "family": "Zed%d" % i, "given": ["Quincy"]}],
        "telecom": [{"system": "phone", "value": "(555) %03d-%04d" % (200 + i % 800, 1000 + i % 9000)}],
        "gender": "female",
        "birthDate": "19%02d-0%d-1%d" % (40 + i % 60, 1 + i % 9, i % 10),
        "address": [{"line": ["%d Elm Street" % i], "city": "Springfield", "postalCode": "12345"}],
        "extension": [{"url": "http://example.org/note", "valueString": "callback ssn %s" % ssn}],
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self, body=None):
        entry = {"method": self.command, "path": self.path,
                 "headers": {k.lower(): v for k, v in self.headers.items()}}
        if body is not None:
            entry["body"] = body.decode("utf-8", "replace")
        with LOCK, open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def send(self, status, body, content_type="application/fhir+json", headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Set-Cookie", "upstream-session=secret")
        self.end_headers()
        self.wfile.write(data)

    def echo_upgrade(self):
        self.send_response(101)
        self.send_header("Upgrade", self.headers.get("Upgrade", ""))
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Protocol", self.headers.get("Sec-WebSocket-Protocol", ""))
        self.end_headers()
        self.wfile.flush()
        while True:
            data = self.rfile.read1(65536)
            if not data:
                break
            self.wfile.write(data)
            self.wfile.flush()
        self.close_connection = True

    def ws_exec(self):
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        protocol = next((p for p in EXEC_PROTOCOLS if p in offered), None)
        if protocol is None or self.headers.get("Upgrade", "").lower() != "websocket":
            return self.send(400, status(400, "BadRequest", "no supported stream protocol"), "application/json")
        key = self.headers.get("Sec-WebSocket-Key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        argv = query.get("command", [])
        stdin = query.get("stdin", ["false"])[0] in ("true", "1")
        lock = threading.Lock()

        def send(opcode, payload):
            with lock:
                self.wfile.write(ws_frame(opcode, payload))
                self.wfile.flush()

        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        send(2, b"\x01")

        def pump(stream, channel):
            while True:
                data = stream.read1(4096)
                if not data:
                    return
                send(2, bytes([channel]) + data)

        def reader():
            while True:
                frame = ws_read(self.rfile)
                if frame is None or frame[0] == 8:
                    break
                opcode, data, masked = frame
                if not masked:
                    send(8, struct.pack(">H", 1002) + b"unmasked client frame")
                    break
                if opcode == 9:
                    send(10, data)
                elif opcode == 2 and data[:1] == b"\x00" and proc.stdin:
                    try:
                        proc.stdin.write(data[1:])
                        proc.stdin.flush()
                    except OSError:
                        pass
                elif opcode == 2 and data == b"\xff\x00" and proc.stdin:
                    proc.stdin.close()
            if proc.stdin and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

        threading.Thread(target=reader, daemon=True).start()
        pumps = [threading.Thread(target=pump, args=(proc.stdout, 1)),
                 threading.Thread(target=pump, args=(proc.stderr, 2))]
        for t in pumps:
            t.start()
        for t in pumps:
            t.join()
        code = proc.wait()
        send(2, b"\x03" + json.dumps(exit_status(code)).encode())
        send(8, struct.pack(">H", 1000))

    def do_GET(self):
        self.record()
        path = self.path.split("?")[0]
        if path == "/api/v1/namespaces/ward/pods/p1/portforward" and "Upgrade" in self.headers:
            return self.echo_upgrade()
        if path in ("/api/v1/namespaces/ward/pods/p1/exec", "/api/v1/namespaces/ward/pods/p1/attach") \
                and "Upgrade" in self.headers:
            return self.ws_exec()
        if path in ("/api/v1/namespaces/ward/pods/p1", "/api/v1/namespaces/ward/pods/p2"):
            p = pod(path.rsplit("/", 1)[1], "")
            p["status"] = {"phase": "Running"}
            return self.send(200, p, "application/json")
        if path == "/api/v1/namespaces/ward/pods/p2/exec" and "Upgrade" in self.headers:
            # The API server's RBAC refusing the exec itself.
            return self.send(403, status(403, "Forbidden", 'pods "p2" is forbidden: no exec for you (owner ssn 222-33-4444)'),
                             "application/json")
        if path.endswith("/portforward") and "Upgrade" in self.headers:
            return self.send(404, status(404, "NotFound", 'pods "gone" not found (owner ssn 222-33-4444)'),
                             "application/json")
        if path == "/fhir/metadata":
            return self.send(200, {"resourceType": "CapabilityStatement", "status": "active", "fhirVersion": "4.0.1"})
        if path in ("/fhir/$export", "/fhir/Patient/$export"):
            lines = "".join(json.dumps(patient(i)) + "\n" for i in range(1, PATIENTS + 1))
            return self.send(200, lines.encode(), "application/fhir+ndjson")
        if path == "/fhir/Patient":
            # As FHIR servers do: the search itself in the self link and
            # Content-Location, values and all.
            entries = patient_entries()
            search = "https://fhir.test" + self.path
            return self.send(200, {"resourceType": "Bundle", "type": "searchset", "total": PATIENTS,
                                   "link": [{"relation": "self", "url": search}], "entry": entries},
                             headers=[("Content-Location", search)])
        if path in ("/fhir/Binary/enc-chain", "/fhir/Binary/enc-two"):
            # A compressed body behind codings that start with identity.
            import gzip
            data = gzip.compress(json.dumps(patient(1)).encode())
            codings = ([("Content-Encoding", "identity, gzip")] if path.endswith("chain")
                       else [("Content-Encoding", "identity"), ("Content-Encoding", "gzip")])
            return self.send(200, data, headers=codings)
        if path == "/api":
            return self.send(200, {"kind": "APIVersions", "versions": ["v1"],
                                   "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                                   "serverAddress": "127.0.0.1"}]},
                             "application/json")
        if path == "/apis":
            return self.send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
                             "application/json")
        if path == "/api/v1":
            return self.send(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": n, "singularName": k.lower(), "namespaced": ns, "kind": k,
                 "verbs": ["create", "delete", "get", "list", "watch"]} for n, k, ns in RESOURCES]},
                "application/json")
        if path == "/api/v1/namespaces/ward/pods" and "watch=" in self.path:
            return self.watch_pods()
        if path == CM_PREFIX:
            return self.send(200, {"kind": "ConfigMapList", "apiVersion": "v1",
                                   "metadata": {"resourceVersion": "1"},
                                   "items": list(CONFIGMAPS.values())}, "application/json")
        if path.startswith(CM_PREFIX + "/") and path != CM_PREFIX + "/c1":
            name = path[len(CM_PREFIX) + 1:]
            if name in CONFIGMAPS:
                return self.send(200, CONFIGMAPS[name], "application/json")
            return self.send(404, status(404, "NotFound", 'configmaps "%s" not found' % name),
                             "application/json")
        if path == "/api/v1/namespaces/ward/pods":
            return self.send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                                   "items": [{"metadata": {"name": "p1", "namespace": "ward"}}]},
                             "application/json")
        if path == "/api/v1/namespaces/ward/configmaps/c1":
            return self.send(200, {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c1"},
                                   "data": {"mode": "fast", "contact": "ssn 123-45-6789",
                                            "321-54-9876": "a key that is an SSN"}},
                             "application/json")
        if path.startswith("/fhir/Patient/p") and "_format=xml" in self.path:
            return self.send(200, b'<Patient xmlns="http://hl7.org/fhir"><name><family value="Zed1"/></name></Patient>',
                             "application/fhir+xml")
        if path.startswith("/fhir/Patient/p"):
            return self.send(200, patient(int(path.rsplit("p", 1)[1])))
        if path.startswith("/api"):
            return self.send(404, status(404, "NotFound", "the server could not find the requested resource"),
                             "application/json")
        self.send(404, {"resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "not-found"}]})

    def watch_pods(self):
        """Two watch events, chunked; the second only once GO exists (within
        30 s, else the stream ends without it: a proxy that held the stream
        back would never see GO written)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(data):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        chunk(json.dumps({"type": "ADDED", "object": pod("w1", "ssn 321-54-9876")}).encode() + b"\n")
        deadline = time.time() + 30
        while GO and not os.path.exists(GO) and time.time() < deadline:
            time.sleep(0.05)
        if GO and os.path.exists(GO):
            chunk(json.dumps({"type": "MODIFIED", "object": pod("w2", "ssn 432-65-1987")}).encode() + b"\n")
        chunk(b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.record(body)
        if self.path.split("?")[0] == "/fhir/Patient/_search":
            form = urllib.parse.parse_qs(body.decode())
            entries = patient_entries(form.get("family"))
            return self.send(200, {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                                   "entry": entries})
        if self.path.split("?")[0] == "/api/v1/namespaces/ward/pods":
            obj = json.loads(body)
            obj["metadata"].update({"namespace": "ward", "resourceVersion": "3"})
            return self.send(201, obj, "application/json")
        if self.path.split("?")[0] == "/apis/batch/v1/namespaces/ward/jobs":
            # kubectl create job sends protobuf, which this server does not
            # decode: the Job it answers is always "nightly".
            return self.send(201, {"kind": "Job", "apiVersion": "batch/v1",
                                   "metadata": {"name": "nightly", "namespace": "ward"}}, "application/json")
        if self.path.split("?")[0] == CM_PREFIX:
            obj = json.loads(body)
            name = obj["metadata"]["name"]
            obj["metadata"].update({"namespace": "ward", "resourceVersion": "2"})
            with LOCK:
                CONFIGMAPS[name] = obj
            return self.send(201, obj, "application/json")
        return self.send(201, {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s1"},
                               "data": {"password": "aHVudGVyMg=="}, "type": "Opaque"},
                         "application/json")

    def do_DELETE(self):
        self.record()
        path = self.path.split("?")[0]
        if path.startswith(CM_PREFIX + "/"):
            with LOCK:
                obj = CONFIGMAPS.pop(path[len(CM_PREFIX) + 1:], None)
            if obj is None:
                return self.send(404, status(404, "NotFound", "not found"), "application/json")
            return self.send(200, obj, "application/json")
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if CERT != "-":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CERT, KEY)
    ctx.set_alpn_protocols(["http/1.1"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("PORT %d" % server.server_address[1], flush=True)
server.serve_forever()
