"""test_hardening.py — issue 13: careless operators and hostile clients. Request framing
(request smuggling), one daemon per database, slow clients and connection budgets, memory
budgets for bodies and responses. Every test ends by checking that the daemon still serves
when it has one."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

import tsd
from test_security import BINARY, raw

ROW = [0.25] * 16


def infer_body(rows):
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 16],
                                   "data": [v for r in rows for v in r]}]}).encode()


class Framing(unittest.TestCase):
    """Ambiguous framing is refused with a JSON 400/501 and the connection is closed."""

    @classmethod
    def setUpClass(cls):
        cls.d = tsd.Daemon()

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def tearDown(self):
        self.assertIsNone(self.d.proc.poll(), "the daemon died:\n" + self.d.log()[-3000:])
        self.assertEqual(self.d.request("GET", "/v2/health/live")[0], 200)

    def refused(self, head, body, want):
        """Send head + body; the answer must be `want` with a JSON error and Connection: close,
        and nothing after it on the connection may be answered (it cannot be framed)."""
        smuggled = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        s = socket.create_connection(("127.0.0.1", self.d.port), timeout=10)
        try:
            s.sendall(head + b"\r\n" + body + smuggled)
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        head_out, _, rest = buf.partition(b"\r\n\r\n")
        self.assertTrue(head_out.startswith(b"HTTP/1.1 %d" % want), buf[:300])
        self.assertIn(b"connection: close", head_out.lower())
        self.assertIsInstance(json.loads(rest)["error"], str)
        self.assertNotIn(b"HTTP/1.1", rest, "a second response: the smuggled request was served")

    def test_two_content_lengths(self):
        body = infer_body([ROW])
        n = len(body)
        for a, b in ((n, n + 5), (n, n)):
            self.refused(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nContent-Length: %d\r\n" % (a, b), body, 400)

    def test_content_length_with_chunked(self):
        body = infer_body([ROW])
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        self.refused(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", chunked, 400)
        self.refused(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % len(chunked), chunked, 400)

    def test_unknown_transfer_coding(self):
        self.refused(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n",
                     b"0\r\n\r\n", 501)

    def test_two_hosts(self):
        self.refused(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nHost: y\r\n", b"", 400)

    def test_plain_chunked_still_works(self):
        body = infer_body([ROW])
        st, _, data = raw(self.d.port, b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                          b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.assertEqual(st, 200, data[:300])
        self.assertEqual(json.loads(data)["outputs"][0]["shape"], [1, 4])


def dir_state(d):
    """{name: bytes} of every file in d: a start that fails must leave it as it was."""
    out = {}
    for n in sorted(os.listdir(d)):
        with open(os.path.join(d, n), "rb") as f:
            out[n] = f.read()
    return out


def serve_fails(args, timeout=60):
    """Run `tscaled serve ARGS` expecting it to refuse to start; returns its stderr."""
    p = subprocess.run([BINARY] + args, capture_output=True, text=True, timeout=timeout,
                       env={k: v for k, v in os.environ.items() if not k.startswith("TSCALE_")})
    assert p.returncode != 0, p.stderr
    return p.stderr


class OneDaemonPerDatabase(unittest.TestCase):
    def test_second_daemon_is_refused(self):
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
        try:
            with tsd.Daemon(db_dir=tmp) as d:
                err = serve_fails(["--listen", "127.0.0.1:0", "--db", d.db])
                self.assertIn("in use by another tscaled", err)
                # the first one still serves, and its database is still locked
                self.assertEqual(d.request("GET", "/v2/health/ready")[0], 200)
                self.assertIn("in use", serve_fails(["--listen", "127.0.0.1:0", "--db", d.db]))
                self.assertEqual(d.stop(), 0)
            # after the first stopped, the lock is gone: the same database starts again
            with tsd.Daemon(db_dir=tmp) as d2:
                self.assertEqual(d2.request("GET", "/v2/health/ready")[0], 200)
                self.assertEqual(d2.stop(), 0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_failed_start_writes_nothing(self):
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
        try:
            db = os.path.join(tmp, "tscale.db")
            bad = os.path.join(tmp, "bad.safetensors")
            with open(bad, "wb") as f:
                f.write(b"not a model file")
            busy = socket.socket()
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            try:
                port = busy.getsockname()[1]
                # fresh database: neither a port in use nor a bad model creates it
                before = dir_state(tmp)
                self.assertIn("cannot listen", serve_fails(["--listen", "127.0.0.1:%d" % port, "--db", db]))
                serve_fails(["--listen", "127.0.0.1:0", "--db", db, "--model", bad])
                self.assertEqual(dir_state(tmp), before)
                # an existing database is left byte for byte as it was
                with tsd.Daemon(db_dir=tmp) as d:
                    self.assertEqual(d.stop(), 0)
                before = dir_state(tmp)
                self.assertIn("tscale.db", before)
                good = os.path.join(tmp, "good.safetensors")
                p = subprocess.run([BINARY, "init", "--layers", "linear:16x4", "--out", good],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 0, p.stderr)
                before = dir_state(tmp)
                serve_fails(["--listen", "127.0.0.1:%d" % port, "--db", db, "--model", "new=" + good])
                serve_fails(["--listen", "127.0.0.1:0", "--db", db, "--model", "new=" + good,
                             "--model", bad])
                self.assertEqual(dir_state(tmp), before)
            finally:
                busy.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
