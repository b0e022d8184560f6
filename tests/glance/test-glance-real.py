#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Glance's own clients (python3-glanceclient's API and CLI) with real user tokens, through imgcached in
front of the real Glance and the real Keystone (tests/openstack/with-openstack.sh starts them and hands
us IMGCACHE_OS_*). The daemon authenticates with an application credential and takes Glance's address
from Keystone's catalog (URL= unset), so every pass-through here also waits for the catalog first.

Usage: with-openstack.sh -- test-glance-real.py IMGCACHED [TEST...]"""

import hashlib
import json
import os
import re
import sys
import tempfile
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from imgcache_testlib import Endpoint  # noqa: E402

import glanceclient  # noqa: E402  (with-openstack.sh checked the packages)

IMGCACHED = None
OS = {k[len("IMGCACHE_OS_"):]: v for k, v in os.environ.items() if k.startswith("IMGCACHE_OS_")}


def keystone_token(user, password, project):
    """A project-scoped token of user, from the real Keystone."""
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
    req = urllib.request.Request(OS["AUTH_URL"] + "/auth/tokens", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.headers["X-Subject-Token"]


class RealGlanceTest(Endpoint, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="imgcache-glance-real-")
        cls.token = OS["ALICE_TOKEN"]
        cls.start_daemon(IMGCACHED, f"""
Kind=glance
Auth=keystone
AuthURL={OS["AUTH_URL"]}
CredentialsFile={OS["CREDENTIALS_FILE"]}
""")

    @classmethod
    def tearDownClass(cls):
        cls.stop_daemon()

    def metric(self, name):
        for line in self.request("GET", "/metrics")[2].decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    @staticmethod
    def file_bytes(name):
        with open(OS["IMAGE_%s_FILE" % name], "rb") as f:
            return f.read()

    def create_image(self, data, token=None):
        """An image made and uploaded through imgcached with the glance CLI; its id."""
        src = os.path.join(self.workdir, "src")
        with open(src, "wb") as f:
            f.write(data)
        out = self.glance_cli("image-create", "--name", "through-imgcached", "--disk-format", "raw",
                              "--container-format", "bare", "--file", src, token=token)
        os.unlink(src)
        self.assertIn(hashlib.sha512(data).hexdigest(), self.unwrapped(out), "the upload arrived whole")
        return re.search(r"\|\s*id\s*\|\s*([0-9a-f-]{36})\s*\|", out).group(1)

    def test_nova_sequence(self):
        data = self.file_bytes("PRIVATE")
        image_id = OS["IMAGE_PRIVATE"]
        hits = self.metric("imgcache_hits_total")
        for run in range(2):
            gc = glanceclient.Client("2", endpoint=self.url, token=self.token)
            image = gc.images.get(image_id)
            self.assertEqual(image.os_hash_value, hashlib.sha512(data).hexdigest())
            # images.data() checks os_hash_value itself while it streams.
            self.assertEqual(b"".join(gc.images.data(image_id)), data, "run %d" % run)
        self.assertGreaterEqual(self.metric("imgcache_hits_total"), hits + 1, "the second run is a hit")
        self.assertTrue(self.cached(image_id))

    def test_cinder_cli(self):
        listing = self.glance_cli("image-list")
        self.assertIn(OS["IMAGE_PRIVATE"], listing)
        self.assertIn(OS["IMAGE_PUBLIC"], listing)
        data = self.file_bytes("PUBLIC")
        self.assertIn(hashlib.sha512(data).hexdigest(), self.unwrapped(self.glance_cli("image-show", OS["IMAGE_PUBLIC"])))
        out = os.path.join(self.workdir, "download")
        self.glance_cli("image-download", "--file", out, OS["IMAGE_PUBLIC"])
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data)

    def test_discovery(self):
        status, _, body = self.request("GET", "/versions")
        self.assertIn(status, (200, 300))
        links = [l["href"] for v in json.loads(body)["versions"] for l in v["links"]]
        self.assertTrue(links)
        for href in links:
            self.assertTrue(href.startswith(self.url + "/"), href)

    def test_upload_download_delete(self):
        data = os.urandom(2 << 20)
        image_id = self.create_image(data)
        out = os.path.join(self.workdir, "mine")
        self.glance_cli("image-download", "--file", out, image_id)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertTrue(self.held(image_id))
        self.glance_cli("image-delete", image_id)
        self.assertFalse(self.held(image_id), "dropped at once")
        self.assertEqual(self.status("GET", "/v2/images/%s/file" % image_id, {"X-Auth-Token": self.token}), 404)

    def test_deactivate_through(self):
        # Deactivating takes admin under Glance's default policies.
        admin = keystone_token(OS["ADMIN_USER"], OS["ADMIN_PASSWORD"], OS["ADMIN_PROJECT"])
        image_id = self.create_image(os.urandom(1 << 20))
        self.assertEqual(self.status("GET", "/v2/images/%s/file" % image_id, {"X-Auth-Token": self.token}), 200)
        self.assertTrue(self.held(image_id))
        self.glance_cli("image-deactivate", image_id, token=admin)
        self.assertFalse(self.held(image_id), "dropped at once")
        self.assertIn(self.status("GET", "/v2/images/%s/file" % image_id, {"X-Auth-Token": self.token}), (403, 404))


if __name__ == "__main__":
    IMGCACHED = os.path.abspath(sys.argv[1])
    unittest.main(argv=[sys.argv[0]] + sys.argv[2:], verbosity=2)
