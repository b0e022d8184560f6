# SPDX-License-Identifier: MIT
"""A Glance-like image service for the drop-in endpoint's tests: enough of Glance's v2 API for Nova's,
Cinder's and the glance CLI's calls (version document, schemas, list, show, create, upload, download,
delete, deactivate), on 127.0.0.1, in a thread of the test process. It checks X-Auth-Token against the
tokens it was given, answers 404 for an image the token may not see (as Glance does), streams uploads
to disk (never into memory), and records every request (method, path, headers) for the test to read.

Knobs: `stall` (a set of paths whose answer waits until `release` is set), `images` (the records, by
id), `delete_direct()` and `deactivate_direct()` (changes made at Glance, not through the cache)."""

import hashlib
import http.server
import json
import os
import threading
import uuid


def _schema():
    # Permissive like Glance's own: known properties typed, the rest strings.
    nullable = lambda t: {"type": [t, "null"]}
    props = {
        "id": {"type": "string"}, "name": nullable("string"), "status": {"type": "string"},
        "visibility": {"type": "string"}, "protected": {"type": "boolean"}, "os_hidden": {"type": "boolean"},
        "checksum": nullable("string"), "os_hash_algo": nullable("string"), "os_hash_value": nullable("string"),
        "owner": nullable("string"), "size": nullable("integer"), "virtual_size": nullable("integer"),
        "min_ram": {"type": "integer"}, "min_disk": {"type": "integer"},
        "disk_format": nullable("string"), "container_format": nullable("string"),
        "created_at": {"type": "string"}, "updated_at": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
        "self": {"type": "string"}, "file": {"type": "string"}, "schema": {"type": "string"},
        "locations": {"type": "array", "items": {"type": "object"}}, "direct_url": {"type": "string"},
    }
    return {"name": "image", "properties": props, "additionalProperties": {"type": "string"},
            "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
                      {"rel": "describedby", "href": "{schema}"}]}


class GlanceFixture:
    def __init__(self, datadir, tokens):
        self.datadir = datadir
        self.tokens = dict(tokens)       # token -> project
        self.images = {}                 # id -> record
        self.requests = []               # (method, path, headers dict)
        self.uploads_aborted = 0
        self.stall = set()
        self.versions_padding = 0        # bytes of padding in the version document (a hostile upstream)
        self.release = threading.Event()
        self.lock = threading.Lock()
        fixture = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fixture._handle(self, "GET")

            def do_HEAD(self):
                fixture._handle(self, "HEAD")

            def do_POST(self):
                fixture._handle(self, "POST")

            def do_PUT(self):
                fixture._handle(self, "PUT")

            def do_PATCH(self):
                fixture._handle(self, "PATCH")

            def do_DELETE(self):
                fixture._handle(self, "DELETE")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    # ---- images --------------------------------------------------------------------------------------

    def add_image(self, data, owner="p1", visibility="private", name=None):
        image_id = str(uuid.uuid4())
        path = os.path.join(self.datadir, image_id)
        with open(path, "wb") as f:
            f.write(data)
        rec = self._record(image_id, name or image_id, owner, visibility)
        self._set_data(rec, path)
        with self.lock:
            self.images[image_id] = rec
        return image_id

    def _record(self, image_id, name, owner, visibility):
        return {"id": image_id, "name": name, "status": "queued", "visibility": visibility, "owner": owner,
                "protected": False, "os_hidden": False, "checksum": None, "os_hash_algo": None,
                "os_hash_value": None, "size": None, "virtual_size": None, "min_ram": 0, "min_disk": 0,
                "disk_format": "raw", "container_format": "bare", "tags": [],
                "created_at": "2026-12-07T00:00:00Z", "updated_at": "2026-12-07T00:00:00Z",
                "self": "/v2/images/" + image_id, "file": "/v2/images/%s/file" % image_id,
                "schema": "/v2/schemas/image"}

    def _set_data(self, rec, path):
        md5, sha512, size = hashlib.md5(), hashlib.sha512(), 0
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                md5.update(chunk)
                sha512.update(chunk)
                size += len(chunk)
        rec.update(status="active", size=size, checksum=md5.hexdigest(), os_hash_algo="sha512",
                   os_hash_value=sha512.hexdigest())

    def delete_direct(self, image_id):
        with self.lock:
            self.images.pop(image_id, None)

    def deactivate_direct(self, image_id):
        with self.lock:
            self.images[image_id]["status"] = "deactivated"

    def requests_for(self, method, path):
        with self.lock:
            return [r for r in self.requests if r[0] == method and r[1] == path]

    # ---- the API -------------------------------------------------------------------------------------

    def _visible(self, rec, project):
        return rec["visibility"] in ("public", "community", "shared") or rec["owner"] == project or project == "admin"

    def _reply(self, h, status, body=b"", ctype="application/json", headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        h.send_response(status)
        if status != 204:
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD" and status != 204:
            h.wfile.write(body)

    def _read_body(self, h):
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""

    def _versions(self, h):
        host = h.headers.get("Host", "127.0.0.1:%d" % self.port)
        ids = ["v2.%d" % m for m in range(16, -1, -1)]
        return {"versions": [{"id": i, "status": "CURRENT" if i == "v2.16" else "SUPPORTED",
                              "links": [{"rel": "self", "href": "http://%s/v2/" % host}]} for i in ids],
                "padding": "x" * self.versions_padding}

    def _handle(self, h, method):
        try:
            self._serve(h, method)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True  # the client (the daemon, ending a stalled exchange) went away

    def _serve(self, h, method):
        path, _, query = h.path.partition("?")
        with self.lock:
            self.requests.append((method, path, {k.lower(): v for k, v in h.headers.items()}))
        if path in self.stall:
            self.release.wait(60)
        if path in ("/", "/versions", "/v2", "/v2/"):
            return self._reply(h, 300 if path == "/" else 200, self._versions(h))
        token = h.headers.get("X-Auth-Token")
        project = self.tokens.get(token)
        if project is None:
            return self._reply(h, 401, b"401 Unauthorized", "text/plain")
        if path == "/v2/schemas/image":
            return self._reply(h, 200, _schema())
        if path.startswith("/v2/schemas/metadefs/"):
            # The CLI caches every schema it is given; a 404 here breaks its next run.
            return self._reply(h, 200, {"name": path[len("/v2/schemas/metadefs/"):], "properties": {}})
        if path == "/v2/schemas/images":
            return self._reply(h, 200, {"name": "images", "properties": {"images": {"type": "array", "items": _schema()}},
                                        "links": [{"rel": "first", "href": "{first}"}]})
        if path == "/v2/images" and method in ("GET", "HEAD"):
            with self.lock:
                images = [dict(r) for r in self.images.values() if self._visible(r, project)]
            return self._reply(h, 200, {"images": images, "first": "/v2/images", "schema": "/v2/schemas/images"})
        if path == "/v2/images" and method == "POST":
            req = json.loads(self._read_body(h) or b"{}")
            image_id = req.get("id") or str(uuid.uuid4())
            rec = self._record(image_id, req.get("name"), project, req.get("visibility", "shared"))
            for k in ("disk_format", "container_format"):
                if k in req:
                    rec[k] = req[k]
            with self.lock:
                self.images[image_id] = rec
            # Glance names no Location here; ours tests that one naming the upstream is rewritten.
            return self._reply(h, 201, rec, headers=[("Location", "%s/v2/images/%s" % (self.url, image_id))])
        parts = path.split("/")
        if len(parts) < 4 or parts[:3] != ["", "v2", "images"]:
            return self._reply(h, 404, b"404 Not Found", "text/plain")
        image_id = parts[3]
        with self.lock:
            rec = self.images.get(image_id)
        if rec is None or not self._visible(rec, project):
            if method in ("PUT", "POST", "PATCH"):
                self._read_body(h)
            return self._reply(h, 404, b"404 Not Found", "text/plain")
        rest = "/".join(parts[4:])
        if rest == "" and method in ("GET", "HEAD"):
            return self._reply(h, 200, rec)
        if rest == "" and method == "DELETE":
            self.delete_direct(image_id)
            return self._reply(h, 204)
        if rest == "actions/deactivate" and method == "POST":
            self.deactivate_direct(image_id)
            return self._reply(h, 204)
        if rest == "file" and method == "PUT":
            return self._upload(h, rec)
        if rest == "file" and method in ("GET", "HEAD"):
            if rec["status"] == "deactivated" and project != "admin":
                return self._reply(h, 403, b"403 Forbidden: image is deactivated", "text/plain")
            if rec["status"] != "active":
                return self._reply(h, 204)
            return self._download(h, rec)
        return self._reply(h, 404, b"404 Not Found", "text/plain")

    def _upload(self, h, rec):
        path = os.path.join(self.datadir, rec["id"] + ".part")
        chunked = h.headers.get("Transfer-Encoding", "").lower() == "chunked"
        left = int(h.headers.get("Content-Length") or 0)
        with open(path, "wb") as f:
            try:
                if chunked:
                    while True:
                        n = int(h.rfile.readline().split(b";")[0], 16)
                        if n == 0:
                            h.rfile.readline()
                            break
                        f.write(self._read_exact(h, n))
                        h.rfile.readline()
                else:
                    while left > 0:
                        chunk = h.rfile.read(min(left, 1 << 20))
                        if not chunk:
                            raise ConnectionError("upload cut short")
                        f.write(chunk)
                        left -= len(chunk)
            except (ConnectionError, ValueError, OSError):
                with self.lock:
                    self.uploads_aborted += 1
                os.unlink(path)
                h.close_connection = True
                return
        os.rename(path, path[:-5])
        with self.lock:
            self._set_data(rec, path[:-5])
        self._reply(h, 204)

    def _read_exact(self, h, n):
        data = h.rfile.read(n)
        if len(data) != n:
            raise ConnectionError("chunk cut short")
        return data

    def _download(self, h, rec):
        path = os.path.join(self.datadir, rec["id"])
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(rec["size"]))
        h.send_header("Content-MD5", rec["checksum"])
        h.end_headers()
        if h.command == "HEAD":
            return
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.wfile.write(chunk)
