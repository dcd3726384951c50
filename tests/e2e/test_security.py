"""test_security.py — the request path against hostile input (issue 7's security review):
path parsing (dot segments, percent-encoding, NUL, very long names), header injection,
JSON nesting depth, shape × size arithmetic and the binary extension's lengths, token
checks, slow and surplus connections, and the file modes of the database and backups.
Every test ends by checking that the daemon still serves."""
import json
import os
import socket
import stat
import struct
import subprocess
import tempfile
import time
import unittest

import tsd

BINARY = tsd.BINARY if os.path.isabs(tsd.BINARY) else os.path.join(tsd.ROOT, tsd.BINARY)
ADMIN = "admin-secret-0123456789"
FEED = "feed-secret-9876543210"


def raw(port, data, timeout=10.0):
    """Send bytes as they are; return (status, headers text, body bytes) of the answer, or
    (None, "", b"") when the server closed without answering."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return None, "", b""
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = "\r\n".join(lines[1:])
        length = 0
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, hdrs, body
    finally:
        s.close()


def get(port, path, extra=b""):
    return raw(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + b"\r\n")


def infer(rows, **extra):
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), len(rows[0])],
                        "data": [v for r in rows for v in r]}]}
    body.update(extra)
    return body


class Hostile(tsd.ServingCase):
    """One daemon (built-in demo model: 16 inputs, 4 outputs) with both tokens configured."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tscale-sec-")
        for name, tok in (("admin", ADMIN), ("feed", FEED)):
            with open(os.path.join(cls.tmp, name), "w") as f:
                f.write(tok + "\n")
        cls.d = tsd.Daemon(args=["--admin-token-file", os.path.join(cls.tmp, "admin"),
                                 "--feedback-token-file", os.path.join(cls.tmp, "feed"),
                                 "--max-rows", "64"])
        cls.row = [0.25] * 16

    def post(self, path, body, headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        return self.d.request("POST", path, body, headers or {})

    def assert_error(self, status, hdrs, body, want):
        self.assertIn(status, want, body[:300])
        self.assertIsInstance(json.loads(body)["error"], str)

    # ---- paths ----

    def test_dot_segments_do_not_escape(self):
        """No path with dot segments reaches another endpoint: /v2/models/../admin/models must
        not become the admin list (which would say 401 without a token here)."""
        for path in (b"/v2/models/../admin/models", b"/v2/models/%2e%2e/admin/models",
                     b"/v2/models/..%2fadmin%2fmodels", b"/v2/models/../../../etc/passwd",
                     b"/v2/models/./ready", b"/v2/models/../ready", b"/v2/models/.hidden/ready",
                     b"/v2/models/demo/../demo/ready", b"/v2//models/demo/ready"):
            status, _, body = get(self.d.port, path)
            self.assertIn(status, (400, 404), (path, body[:200]))

    def test_percent_encoding_and_nul(self):
        # MHD percent-decodes the path before routing: an encoded name is the same name
        self.assertEqual(get(self.d.port, b"/v2/models/de%6Do/ready")[0], 200)
        self.assertEqual(get(self.d.port, b"/v2/models/demo/versions/%31/ready")[0], 200)
        # an encoded NUL must not cut the path short: "demo%00x/ready" is not "demo"
        for path in (b"/v2/models/demo%00/ready", b"/v2/models/demo%00x/ready", b"/v2/models/%00/ready",
                     b"/v2/models/demo%00", b"/v2/models/de%2Fmo/ready", b"/v2/models/%ff%fe/ready",
                     b"/v2/models/demo%0d%0aX-Evil:%201/ready", b"/%", b"/v2/models/demo%2"):
            status, hdrs, _ = get(self.d.port, path)
            self.assertIn(status, (400, 404), path)
            self.assertNotIn("x-evil", hdrs.lower())
        auth = {"Authorization": "Bearer " + ADMIN}
        self.assertEqual(self.d.request("DELETE", "/admin/models/demo%00junk", headers=auth)[0], 404)
        self.assertEqual(self.d.request("GET", "/v2/models/demo/ready")[0], 200)

    def test_very_long_names_and_paths(self):
        for n in (127, 128, 1000, 20000):
            status, _, _ = get(self.d.port, b"/v2/models/" + b"a" * n + b"/ready")
            self.assertIn(status, (404, 414, 431, 400), n)
        st, _, _ = self.d.request("PUT", "/admin/models/" + "b" * 128, b"x",
                                  {"Authorization": "Bearer " + ADMIN})
        self.assertEqual(st, 400)
        status, _, _ = get(self.d.port, b"/v2" + b"/x" * 5000)
        self.assertIn(status, (404, 414, 431, 400, None))

    # ---- responses carry no client-controlled headers ----

    def test_no_header_injection(self):
        evil = "r1\r\nX-Evil: 1\r\n\r\n<html>"
        st, hdrs, body = self.d.request("POST", "/v2/models/demo/infer",
                                        infer([self.row], id=evil))
        self.assertEqual(st, 200, body[:300])
        self.assertNotIn("x-evil", hdrs)
        self.assertEqual(json.loads(body)["id"], evil)
        bad = {"inputs": [{"name": "in\r\nX-Evil: 1", "datatype": "FP32\r\nX-Evil: 1", "shape": [1, 16],
                           "data": self.row}]}
        st, hdrs, body = self.post("/v2/models/demo/infer", bad)
        self.assertEqual(st, 400)
        self.assertNotIn("x-evil", hdrs)
        self.assertIn("X-Evil", json.loads(body)["error"])   # quoted in the JSON, not a header
        status, hdrs, _ = get(self.d.port, b"/v2/models/demo/versions/1%0d%0aX-Evil:%201/ready")
        self.assertNotIn("x-evil", hdrs.lower())

    # ---- JSON nesting ----

    def test_deep_json_is_refused(self):
        for body in (b"[" * 200000, b'{"inputs":' + b"[" * 100000 + b"]" * 100000 + b"}",
                     b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,16],"data":' +
                     b"[" * 50000 + b"1" + b"]" * 50000 + b"}]}"):
            st, hdrs, data = self.post("/v2/models/demo/infer", body)
            self.assert_error(st, hdrs, data, (400,))
        auth = {"Authorization": "Bearer " + ADMIN}
        st, _, data = self.post("/admin/models/demo/restore", b'{"snapshot_id":' + b"[" * 100000, auth)
        self.assert_error(st, {}, data, (400,))
        # a model file whose JSON header nests deeply
        header = b'{"__metadata__":' + b"[" * 50000 + b"]" * 50000 + b"}"
        st, _, data = self.d.request("PUT", "/admin/models/deep", struct.pack("<Q", len(header)) + header, auth)
        self.assert_error(st, {}, data, (400,))

    def test_model_file_counters_out_of_range(self):
        """A model file whose corr_accum (or step) sits at the edge of int64 would overflow in
        the next feedback step (found by fuzz_safetensors): refused on PUT."""
        path = os.path.join(tsd.ROOT, "tests", "fuzz", "regress", "safetensors",
                            "corr-accum-int64-min-overflows-in-feedback")
        with open(path, "rb") as f:
            data = f.read()
        st, _, body = self.d.request("PUT", "/admin/models/edge", data, {"Authorization": "Bearer " + ADMIN})
        self.assertEqual(st, 400, body[:300])
        self.assertIn("out of range", json.loads(body)["error"])

    # ---- shape × size and the binary extension ----

    def test_shape_arithmetic(self):
        for shape in ([2 ** 62, 16], [2 ** 31, 2 ** 31, 2 ** 31], [2 ** 63 - 1, 2], [-1, 16],
                      [1.5, 16], [2 ** 64, 1], [0, 2 ** 62, 2 ** 62], ["1", 16], [1] * 9):
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": self.row}]}
            st, hdrs, data = self.post("/v2/models/demo/infer", body)
            self.assert_error(st, hdrs, data, (400,))

    def test_binary_lengths(self):
        def send(shape, size, payload, json_len=None, datatype="FP32"):
            j = json.dumps({"inputs": [{"name": "input", "datatype": datatype, "shape": shape,
                                        "parameters": {"binary_data_size": size}}]}).encode()
            hl = str(len(j) if json_len is None else json_len)
            return self.post("/v2/models/demo/infer", j + payload,
                             {"Inference-Header-Content-Length": hl})
        ok = struct.pack("<16f", *self.row)
        st, _, data = send([1, 16], 64, ok)
        self.assertEqual(st, 200, data[:300])
        cases = [([1, 16], 2 ** 63 - 1, ok), ([1, 16], 65, ok), ([1, 16], 64, ok[:60]),
                 ([1, 16], 64, ok + b"\0" * 4), ([2 ** 61, 16], 2 ** 63 - 1, ok),
                 ([1, 16], -64, ok), ([1, 16], 64, ok, -1), ([1, 16], 64, ok, 10 ** 30),
                 ([1, 16], 64, ok, "12abc"), ([1, 16], 64, ok, 0), ([1, 16], 64, struct.pack("<16f", *([float("nan")] * 16)))]
        for c in cases:
            st, hdrs, data = send(*c)
            self.assert_error(st, hdrs, data, (400,))

    def test_declared_length_over_the_limit_is_413_before_reading(self):
        s = socket.create_connection(("127.0.0.1", self.d.port), timeout=10)
        try:
            s.sendall(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 4611686018427387904\r\n\r\n{")
            buf = s.recv(4096)
            self.assertTrue(buf.startswith(b"HTTP/1.1 413"), buf[:100])
        finally:
            s.close()

    def test_rows_over_the_limit(self):
        st, hdrs, data = self.post("/v2/models/demo/infer", infer([self.row] * 65))
        self.assert_error(st, hdrs, data, (400, 413))

    # ---- tokens ----

    def test_tokens(self):
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": self.row},
                           {"name": "grad_output", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}]}
        cases = {None: 401, "Basic " + FEED: 401, "Bearer": 401, "Bearer ": 401,
                 "Bearer " + FEED[:-1]: 403, "Bearer " + FEED + "x": 403,
                 "Bearer " + FEED[:-1] + "X": 403, "Bearer " + FEED.upper(): 403,
                 "Bearer " + "x" * 8000: 403,
                 "Bearer " + FEED: 200, "bearer " + FEED: 200, "Bearer " + ADMIN: 200}
        for header, want in cases.items():
            hdrs = {} if header is None else {"Authorization": header}
            st, h, data = self.post("/v2/models/demo/feedback", body, hdrs)
            self.assertIn(st, (want, 431) if len(header or "") > 4000 else (want,), (header[:40] if header else None, data[:200]))
            if st == 401:
                self.assertEqual(h.get("www-authenticate"), "Bearer")
        # the feedback token is not an admin token
        st, _, _ = self.d.request("GET", "/admin/models", headers={"Authorization": "Bearer " + FEED})
        self.assertEqual(st, 403)
        for secret in (ADMIN, FEED):
            self.assertNotIn(secret, self.d.log())


class Connections(unittest.TestCase):
    def test_slow_client_is_disconnected(self):
        with tsd.Daemon(args=["--request-timeout", "1"]) as d:
            s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
            try:
                s.sendall(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
                t0 = time.time()
                data = b"x"
                while data:   # the server closes the idle connection (with or without an answer)
                    data = s.recv(4096)
                self.assertLess(time.time() - t0, 29)
            finally:
                s.close()
            self.assertEqual(d.request("GET", "/v2/health/live")[0], 200)

    def test_surplus_connections_are_refused_not_fatal(self):
        with tsd.Daemon(args=["--max-connections", "4", "--max-connections-per-client", "4"]) as d:
            held = [socket.create_connection(("127.0.0.1", d.port), timeout=10) for _ in range(12)]
            try:
                for s in held[:4]:
                    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                    self.assertTrue(s.recv(4096).startswith(b"HTTP/1.1 200"))
            finally:
                for s in held:
                    s.close()
            deadline = time.time() + 20
            while True:   # closing sockets are reaped asynchronously: retry until served
                try:
                    if d.request("GET", "/v2/health/live", timeout=5)[0] == 200:
                        break
                except OSError:
                    pass
                self.assertLess(time.time(), deadline, "not serving again after surplus connections")
                time.sleep(0.2)
            self.assertIsNone(d.proc.poll())


class Files(unittest.TestCase):
    def test_database_and_backup_are_private(self):
        old = os.umask(0o022)   # the usual umask: files would be 0644 unless the daemon says 0600
        try:
            with tsd.Daemon() as d:
                st, _, _ = d.request("POST", "/admin/models/demo/snapshots")
                self.assertEqual(st, 201)
                for suffix in ("", "-wal", "-shm"):
                    path = d.db + suffix
                    if os.path.exists(path):
                        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode) & 0o077, 0, path)
                dest = os.path.join(d.dir, "backup.db")
                p = subprocess.run([BINARY, "backup", "--db", d.db, dest], capture_output=True, text=True,
                                   timeout=60)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertEqual(stat.S_IMODE(os.stat(dest).st_mode) & 0o077, 0)
                out = os.path.join(d.dir, "m.safetensors")
                p = subprocess.run([BINARY, "init", "--layers", "linear:4x2", "--out", out],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertEqual(stat.S_IMODE(os.stat(out).st_mode) & 0o077, 0)
        finally:
            os.umask(old)


if __name__ == "__main__":
    unittest.main()
