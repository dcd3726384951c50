"""tsd.py — start the real build/tscaled on 127.0.0.1 port 0 with a temporary database,
and talk HTTP to it. Shared by every end-to-end test (stdlib only).

    with Daemon(args=["--model", "m=path.safetensors"]) as d:
        status, headers, body = d.request("GET", "/v2/health/ready")
        out = d.json("POST", "/v2/models/m/infer", {...})
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

BINARY = os.environ.get("TSCALED", "build/tscaled")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LISTEN_RE = re.compile(r"listening on (?:http://)?([0-9.]+|\[[0-9a-f:]+\]):(\d+)")


class Daemon:
    """One daemon process. The database lives in a temporary directory that is removed on
    close() unless keep_dir=True (crash tests restart on the same database)."""

    def __init__(self, args=(), db_dir=None, env=None, start_timeout=20.0):
        self.own_dir = db_dir is None
        self.dir = db_dir or tempfile.mkdtemp(prefix="tscale-e2e-")
        self.db = os.path.join(self.dir, "tscale.db")
        self.args = list(args)
        self.env = dict(os.environ)
        for k in list(self.env):
            if k.startswith("TSCALE_"):
                del self.env[k]
        self.env.update(env or {})
        self.log_lines = []
        self.proc = None
        self.port = None
        self._start(start_timeout)

    def _start(self, timeout):
        cmd = [os.path.join(ROOT, BINARY) if not os.path.isabs(BINARY) else BINARY,
               "--listen", "127.0.0.1:0", "--db", self.db] + self.args
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     env=self.env, cwd=self.dir, text=True)
        found = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.log_lines.append(line.rstrip("\n"))
                m = LISTEN_RE.search(line)
                if m and self.port is None:
                    self.port = int(m.group(2))
                    found.set()
            found.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        if not found.wait(timeout) or self.port is None:
            self.close()
            raise RuntimeError("tscaled did not report a listening address:\n" + self.log())

    def log(self):
        return "\n".join(self.log_lines)

    def conn(self, timeout=30.0):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=30.0):
        """Returns (status, headers dict with lower-case names, body bytes)."""
        c = self.conn(timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                headers = dict(headers or {})
                headers.setdefault("Content-Type", "application/json")
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def json(self, method, path, body=None, headers=None, expect=200):
        status, _, data = self.request(method, path, body, headers)
        if expect is not None and status != expect:
            raise AssertionError(f"{method} {path}: status {status}, expected {expect}: {data[:500]!r}")
        return json.loads(data) if data else None

    def metric(self, name):
        """The value of an unlabelled Prometheus sample `name` from GET /metrics, or None."""
        _, _, body = self.request("GET", "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=30.0):
        rc = self.proc.wait(timeout)
        self._pump.join(5)
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout=30.0):
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def close(self):
        self.kill()
        if self.proc and self.proc.stderr:
            self._pump.join(5)
            self.proc.stderr.close()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def golden_path(name):
    return os.path.join(ROOT, "tests", "golden", name)


class ServingCase(__import__("unittest").TestCase):
    """Tests sharing one daemon, cls.d (made by the subclass's setUpClass): closed after the
    class; after each test it must still be running and answering."""

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def tearDown(self):
        self.assertIsNone(self.d.proc.poll(), "the daemon died:\n" + self.d.log()[-3000:])
        self.assertEqual(self.d.request("GET", "/v2/health/live")[0], 200)
