# SPDX-License-Identifier: MIT
"""What the tests of imgcached as a drop-in Glance endpoint share: a private session bus with imgcached on
it (stopped by pid), waiting with a deadline, and a client side (raw HTTP, the glance CLI) for a test
class that sets `url`, `port`, `workdir` and `token`. IMGCACHED_WRAPPER (the valgrind pass) runs the
daemon under it."""

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TIMEOUT = 30  # seconds, for anything a test waits on
WRAPPED = bool(os.environ.get("IMGCACHED_WRAPPER"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, predicate, timeout=TIMEOUT):
    """Polls predicate until it holds (an event we cannot be told of), or fails after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


class Daemon:
    """A private session bus with imgcached (the binary imgcached) on it, its HTTP on 127.0.0.1:port."""

    def __init__(self, imgcached, workdir, config):
        self.workdir = workdir
        self.procs = []
        os.makedirs(os.path.join(workdir, "cache"), exist_ok=True)
        conf = os.path.join(workdir, "imgcached.conf")
        with open(conf, "w") as f:
            f.write(config)
        bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1"],
                               stdout=subprocess.PIPE, text=True)
        self.procs.append(bus)
        address = bus.stdout.readline().strip()
        if not address:
            raise RuntimeError("dbus-daemon did not start")
        env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=address, DBUS_SYSTEM_BUS_ADDRESS=address)
        # The wrapper (valgrind) runs the daemon itself: it takes the daemon's arguments.
        argv = [os.environ["IMGCACHED_WRAPPER"] if WRAPPED else imgcached, "--user",
                "--cache-dir=" + os.path.join(workdir, "cache"), "--config=" + conf]
        self.log = open(os.path.join(workdir, "imgcached.log"), "w+")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.procs.append(self.proc)

    def stop(self):
        """Stops everything by pid; returns the daemon's log. A sanitizer's or valgrind's finding makes the
        daemon exit with an error at the end: that raises."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.log.close()
        with open(self.log.name) as f:
            log = f.read()
        if self.proc.returncode != 0:
            raise AssertionError("imgcached exited with %d:\n%s" % (self.proc.returncode, log[-4000:]))
        return log

    def hwm_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0


class Endpoint:
    """The daemon and the client side, mixed into a TestCase that sets workdir and token (the default
    X-Auth-Token); start_daemon() sets port, url and daemon."""

    @classmethod
    def start_daemon(cls, imgcached, upstream, http=""):
        """imgcached with [Upstream] upstream and [HTTP] http (lines of keys) on a free loopback port,
        answering once start_daemon() returns; the read verdicts are believed a second only."""
        cls.port = free_port()
        cls.url = "http://127.0.0.1:%d" % cls.port
        cls.daemon = Daemon(imgcached, cls.workdir, "[Upstream]\n%s\n[HTTP]\nListen=127.0.0.1:%d\n"
                            "ReadAccessAllowCacheSec=1\nReadAccessDenyCacheSec=1\n%s\n"
                            "[Daemon]\nExitOnIdleSec=infinity\n" % (upstream.strip(), cls.port, http.strip()))
        try:
            wait_for("imgcached to listen", lambda: cls.status("GET", "/healthcheck") == 200)
        except Exception:
            cls.daemon.stop()
            raise

    @classmethod
    def stop_daemon(cls):
        """Stops it (raising on an error exit, with its log) and removes workdir."""
        try:
            sys.stderr.write(cls.daemon.stop()[-4000:])
        finally:
            shutil.rmtree(cls.workdir, ignore_errors=True)

    @classmethod
    def request(cls, method, path, headers=None, body=None):
        c = http.client.HTTPConnection("127.0.0.1", cls.port, timeout=TIMEOUT)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
        except (ConnectionError, socket.timeout):
            return 0, {}, b""
        finally:
            c.close()

    @classmethod
    def status(cls, method, path, headers=None):
        return cls.request(method, path, headers)[0]

    def glance_cli(self, *args, token=None):
        # A home of its own each time: glanceclient 4.1 caches the image schema there, and parses a cached
        # schema with Glance 25's "stores" into a CLI with --stores twice ("conflicting option string").
        home = tempfile.mkdtemp(dir=self.workdir)
        env = dict(os.environ, OS_AUTH_TOKEN=token or self.token, OS_IMAGE_URL=self.url, HOME=home)
        for k in ("OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_CLOUD"):
            env.pop(k, None)
        r = subprocess.run(["glance"] + list(args), env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, "glance %s: %s%s" % (" ".join(args), r.stdout, r.stderr))
        return r.stdout

    @staticmethod
    def unwrapped(table):
        """The CLI's table with its borders and line wraps gone, for a long value to be found whole."""
        return "".join(table.split()).replace("|", "")

    def held(self, image_id):
        """Whether the image is in the cache directory, whoever may read it (Glance's layout: <dir>/<id>)."""
        return os.path.exists(os.path.join(self.workdir, "cache", image_id))

    def cached(self, image_id):
        """Whether the daemon holds the image, asked without fetching (only-if-cached)."""
        return self.status("GET", "/v2/images/%s/file" % image_id,
                           {"X-Auth-Token": self.token, "Cache-Control": "only-if-cached"}) == 200

