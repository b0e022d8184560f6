#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""imgcached as a drop-in Glance endpoint, driven by Glance's own clients: Debian's python3-glanceclient
(its Python API as Nova and Cinder call it, and its glance CLI) against imgcached (Kind=glance) in front of
a Glance-like fixture (glance_fixture.py). imgcached runs on a private session bus, its HTTP on a free
loopback port; every process is stopped by its pid, also when a test fails.

Usage: test-glance-clients.py IMGCACHED [TEST...]. $IMGCACHED_WRAPPER (the valgrind pass) runs the daemon
under it. Exit 77 (skip) without glanceclient, 1 instead with IMGCACHE_TESTS_REQUIRE_ALL=1 (CI)."""

import hashlib
import http.client
import json
import os
import socket
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from glance_fixture import GlanceFixture  # noqa: E402
from imgcache_testlib import TIMEOUT, WRAPPED, Daemon, Endpoint, free_port, wait_for  # noqa: E402

try:
    import glanceclient
except ImportError:
    if os.environ.get("IMGCACHE_TESTS_REQUIRE_ALL") == "1":
        print("python3-glanceclient is not installed", file=sys.stderr)
        sys.exit(1)
    print("1..0 # SKIP python3-glanceclient is not installed")
    sys.exit(77)

IMGCACHED = None
USER, OTHER, DAEMON = "user-token", "other-token", "daemon-token"


class GlanceClientsTest(Endpoint, unittest.TestCase):
    token = USER

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="imgcache-glance-")
        os.makedirs(os.path.join(cls.workdir, "upstream"))
        cls.glance = GlanceFixture(os.path.join(cls.workdir, "upstream"), {USER: "p1", OTHER: "p2", DAEMON: "admin"})
        with open(os.path.join(cls.workdir, "token"), "w") as f:
            f.write(DAEMON + "\n")
        try:
            cls.start_daemon(IMGCACHED, f"""
Kind=glance
URL={cls.glance.url}
TokenFile={cls.workdir}/token
LowSpeedTimeoutSec=2
""", "IdleTimeoutSec=3")
        except Exception:
            cls.glance.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.glance.stop()
        cls.stop_daemon()

    # ---- helpers ----------------------------------------------------------------------------------------

    def client(self, token=USER):
        return glanceclient.Client("2", endpoint=self.url, token=token)

    def add_image(self, size=1 << 20, owner="p1", visibility="private"):
        data = os.urandom(size)
        return self.glance.add_image(data, owner=owner, visibility=visibility), data

    def daemon_record_gets(self, image_id):
        """GETs of the record the daemon made with its own token (a fill's, or its check of a refusal)."""
        return sum(1 for _, _, h in self.glance.requests_for("GET", "/v2/images/" + image_id)
                   if h.get("x-auth-token") == DAEMON and "x-forwarded-for" not in h)

    def file_gets(self, image_id):
        return len(self.glance.requests_for("GET", "/v2/images/%s/file" % image_id))

    # ---- Nova, Cinder, the CLI ------------------------------------------------------------------------

    def test_nova_sequence(self):
        image_id, data = self.add_image(4 << 20)
        for run in range(2):
            gc = self.client()
            image = gc.images.get(image_id)
            self.assertEqual(image.os_hash_value, hashlib.sha512(data).hexdigest())
            # images.data() checks os_hash_value itself (serious_integrity_iter) while it streams.
            body = gc.images.data(image_id)
            got = b"".join(body)
            self.assertEqual(got, data, "run %d" % run)
        self.assertEqual(self.file_gets(image_id), 1, "the second run is a hit")
        status, headers, _ = self.request("HEAD", "/v2/images/%s/file" % image_id, {"X-Auth-Token": USER})
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/octet-stream")
        self.assertEqual(headers["content-length"], str(len(data)))

    def test_cinder_cli(self):
        image_id, data = self.add_image(2 << 20)
        self.assertIn(image_id, self.glance_cli("image-list"))
        self.assertIn(hashlib.sha512(data).hexdigest(), self.unwrapped(self.glance_cli("image-show", image_id)))
        out = os.path.join(self.workdir, "download")
        self.glance_cli("image-download", "--file", out, image_id)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data)
        os.unlink(out)

    def test_upload(self):
        size = (32 if WRAPPED else 256) << 20
        src = os.path.join(self.workdir, "upload-src")
        digest = hashlib.sha512()
        with open(src, "wb") as f:
            for _ in range(size >> 20):
                chunk = os.urandom(1 << 20)
                digest.update(chunk)
                f.write(chunk)
        before = self.daemon.hwm_kib()
        out = self.glance_cli("image-create", "--name", "uploaded", "--disk-format", "raw",
                              "--container-format", "bare", "--file", src, "--progress")
        os.unlink(src)
        self.assertIn(digest.hexdigest(), self.unwrapped(out), "the upload arrived whole")
        grown = self.daemon.hwm_kib() - before
        if not WRAPPED:
            # Two 256 KiB buffers per pass, not the image.
            self.assertLess(grown, 48 * 1024, "daemon peak RSS grew by %d KiB for a %d MiB upload" % (grown, size >> 20))
        print("# upload of %d MiB: daemon peak RSS grew by %d KiB" % (size >> 20, grown))

    def test_create_location_rewritten(self):
        status, headers, body = self.request("POST", "/v2/images", {"X-Auth-Token": USER, "Content-Type": "application/json"},
                                             json.dumps({"name": "loc"}).encode())
        self.assertEqual(status, 201, body)
        self.assertTrue(headers["location"].startswith(self.url + "/v2/images/"), headers["location"])

    def test_discovery(self):
        for path in ("/", "/versions"):
            status, _, body = self.request("GET", path)
            self.assertIn(status, (200, 300))
            links = [l["href"] for v in json.loads(body)["versions"] for l in v["links"]]
            self.assertTrue(links)
            for href in links:
                self.assertTrue(href.startswith(self.url + "/"), href)

    def test_no_data_yet(self):
        # A record without data (created, nothing uploaded): Glance's own answer, 204, and no fill.
        status, _, body = self.request("POST", "/v2/images", {"X-Auth-Token": USER, "Content-Type": "application/json"},
                                       json.dumps({"name": "empty"}).encode())
        self.assertEqual(status, 201)
        image_id = json.loads(body)["id"]
        self.assertIsNone(self.client().images.data(image_id).__wrapped__)  # glanceclient's "no data" (204)
        gets = self.glance.requests_for("GET", "/v2/images/%s/file" % image_id)
        self.assertEqual([h.get("x-auth-token") for _, _, h in gets], [USER], "passed through, not filled")

    def test_discovery_too_large(self):
        # A version document larger than the exchange's buffer: refused as soon as that shows, not
        # waited for while its transfer sits paused.
        self.glance.versions_padding = 300 * 1024
        try:
            started = time.monotonic()
            self.assertEqual(self.status("GET", "/versions"), 502)
            self.assertLess(time.monotonic() - started, 10)
        finally:
            self.glance.versions_padding = 0

    # ---- coherence ------------------------------------------------------------------------------------

    def cache_it(self, image_id):
        self.assertEqual(self.status("GET", "/v2/images/%s/file" % image_id, {"X-Auth-Token": USER}), 200)
        self.assertTrue(self.cached(image_id))
        self.assertTrue(self.held(image_id))

    def test_delete_through(self):
        image_id, _ = self.add_image()
        self.cache_it(image_id)
        self.glance_cli("image-delete", image_id)
        self.assertFalse(self.held(image_id), "dropped at once")
        self.assertEqual(self.status("GET", "/v2/images/%s/file" % image_id, {"X-Auth-Token": USER}), 404)

    def test_deactivate_through(self):
        image_id, _ = self.add_image()
        self.cache_it(image_id)
        self.glance_cli("image-deactivate", image_id)
        self.assertFalse(self.held(image_id), "dropped at once")
        self.assertIn(self.status("GET", "/v2/images/%s/file" % image_id, {"X-Auth-Token": USER}), (403, 404))

    def test_fleet_told(self):
        # Two nodes of a fleet, both holding the image; deleted through the first, the second is told and
        # drops its copy once Glance, asked with its own credentials, confirms.
        ports = [free_port(), free_port()]
        nodes = ["http://127.0.0.1:%d" % p for p in ports]
        with open(os.path.join(self.workdir, "peer-token"), "w") as f:
            f.write("fleet-secret\n")
        daemons, dirs = [], []
        try:
            for i, port in enumerate(ports):
                dirs.append(os.path.join(self.workdir, "node%d" % i))
                os.makedirs(dirs[-1])
                daemons.append(Daemon(IMGCACHED, dirs[-1], f"""[Upstream]
Kind=glance
URL={self.glance.url}
TokenFile={self.workdir}/token
[HTTP]
Listen=127.0.0.1:{port}
[Fleet]
Peers={" ".join(nodes)}
Self={nodes[i]}
PeerTokenFile={self.workdir}/peer-token
[Daemon]
ExitOnIdleSec=infinity
"""))
            image_id, _ = self.add_image()
            for i, port in enumerate(ports):
                url = "http://127.0.0.1:%d/v2/images/%s/file" % (port, image_id)
                wait_for("node %d" % i, lambda: self.http_status(port, "/healthcheck") == 200)
                self.assertEqual(self.http_status(port, "/v2/images/%s/file" % image_id), 200, url)
                wait_for("node %d to hold it" % i, lambda: os.path.exists(os.path.join(dirs[i], "cache", image_id)))
            self.assertEqual(self.http_status(ports[0], "/v2/images/" + image_id, "DELETE"), 204)
            self.assertFalse(os.path.exists(os.path.join(dirs[0], "cache", image_id)), "dropped at once")
            wait_for("the other node to drop it", lambda: not os.path.exists(os.path.join(dirs[1], "cache", image_id)))
        finally:
            for d in daemons:
                d.stop()

    def http_status(self, port, path, method="GET"):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            c.request(method, path, headers={"X-Auth-Token": USER})
            return c.getresponse().status
        except (ConnectionError, socket.timeout):
            return 0
        finally:
            c.close()

    def gone_directly(self, change):
        image_id, _ = self.add_image()
        self.cache_it(image_id)
        change(image_id)
        # Once the cached yes expires (ReadAccessAllowCacheSec=1), the reader is refused, and the daemon,
        # asking with its own credentials, drops the copy.
        wait_for("the refusal", lambda: self.status("GET", "/v2/images/%s/file" % image_id,
                                                    {"X-Auth-Token": USER}) in (403, 404))
        wait_for("the eviction", lambda: not self.held(image_id))

    def test_delete_directly(self):
        self.gone_directly(self.glance.delete_direct)

    def test_deactivate_directly(self):
        self.gone_directly(self.glance.deactivate_direct)

    def test_other_tenant_does_not_evict(self):
        image_id, _ = self.add_image()
        self.cache_it(image_id)
        asked = self.daemon_record_gets(image_id)  # the fill's
        for _ in range(3):
            self.assertEqual(self.status("GET", "/v2/images/%s/file" % image_id, {"X-Auth-Token": OTHER}), 404)
        # The daemon asked with its own token (a GET of the record), once, and found it there: kept.
        wait_for("the daemon's check", lambda: self.daemon_record_gets(image_id) > asked)
        self.assertEqual(self.daemon_record_gets(image_id), asked + 1, "one check per image at a time, then believed")
        self.assertTrue(self.held(image_id))
        self.assertTrue(self.cached(image_id))

    # ---- credentials ----------------------------------------------------------------------------------

    def test_pass_through_carries_no_daemon_token(self):
        list(self.client().images.list())
        status, _, _ = self.request("GET", "/v2/images")  # no token at all
        self.assertEqual(status, 401)
        with self.glance.lock:
            passed = [r for r in self.glance.requests if "x-forwarded-for" in r[2]]
        self.assertTrue(passed)
        for method, path, headers in passed:
            self.assertNotEqual(headers.get("x-auth-token"), DAEMON, "%s %s" % (method, path))
            self.assertEqual(headers["x-forwarded-for"], "127.0.0.1")
        self.assertTrue(any("x-auth-token" not in h for _, p, h in passed if p == "/v2/images"))

    # ---- hostile input --------------------------------------------------------------------------------

    def raw(self, data, timeout=TIMEOUT):
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            out = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    out += chunk
            except (ConnectionResetError, socket.timeout):
                pass
            return out

    def test_ambiguous_framing(self):
        out = self.raw(b"PUT /v2/images/x/file HTTP/1.1\r\nHost: a\r\nX-Auth-Token: user-token\r\n"
                       b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:100])

    def test_oversized_header(self):
        out = self.raw(b"GET /v2/images HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
        self.assertRegex(out[:12].decode(errors="replace"), r"HTTP/1.1 4(00|13|31)")
        self.assertEqual(self.status("GET", "/healthcheck"), 200)

    def test_stalled_upload(self):
        image_id, _ = self.add_image()
        aborted = self.glance.uploads_aborted
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as s:
            s.sendall(b"PUT /v2/images/%s/file HTTP/1.1\r\nHost: a\r\nX-Auth-Token: user-token\r\n"
                      b"Content-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n" % image_id.encode())
            s.sendall(b"x" * 100000)
            started = time.monotonic()
            # IdleTimeoutSec=3: the daemon closes the connection, and the upstream sees the upload end short.
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
            self.assertLess(time.monotonic() - started, 20)
        wait_for("the upstream to see the upload cut", lambda: self.glance.uploads_aborted > aborted)
        self.assertEqual(self.status("GET", "/healthcheck"), 200)

    def test_stalled_answer(self):
        path = "/v2/images/stalled-record"
        self.glance.stall.add(path)
        try:
            started = time.monotonic()
            status = self.status("GET", path, {"X-Auth-Token": USER})
            self.assertEqual(status, 504)
            self.assertLess(time.monotonic() - started, 20)
        finally:
            self.glance.stall.discard(path)
        self.assertIn(b"imgcache_http_pass_requests_total", self.request("GET", "/metrics")[2])

    def test_nothing_leaks(self):
        # After every kind of hostile request above, no connection is left behind: only the one asking.
        def connections():
            for line in self.request("GET", "/metrics")[2].decode().splitlines():
                if line.startswith("imgcache_http_connections "):
                    return int(float(line.split()[1]))
        self.test_stalled_answer()
        self.test_ambiguous_framing()
        self.test_oversized_header()
        wait_for("the connections to close", lambda: connections() == 1)


if __name__ == "__main__":
    IMGCACHED = os.path.abspath(sys.argv[1])
    unittest.main(argv=[sys.argv[0]] + sys.argv[2:], verbosity=2)
