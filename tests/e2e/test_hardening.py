"""test_hardening.py — issue 13: careless operators and hostile clients. Request framing
(request smuggling), one daemon per database, slow clients and connection budgets, memory
budgets for bodies and responses. Every test ends by checking that the daemon still serves
when it has one."""
import contextlib
import json
import os
import shutil
import signal
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


def connect(port, source="127.0.0.1", timeout=10.0):
    """A connection to the daemon from a chosen loopback address (127.0.0.0/8 is all local)."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


@contextlib.contextmanager
def held(port, n, data=b"", source="127.0.0.1"):
    """n connections that sent data and wait; closed on exit."""
    socks = []
    try:
        for _ in range(n):
            s = connect(port, source)
            if data:
                s.sendall(data)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def exchange(s, data):
    """Send data on s, read until the server closes, close s; the bytes read."""
    try:
        s.sendall(data)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return buf
            buf += chunk
    finally:
        s.close()


class Framing(tsd.ServingCase):
    """Ambiguous framing is refused with a JSON 400/501 and the connection is closed."""

    @classmethod
    def setUpClass(cls):
        cls.d = tsd.Daemon()

    def refused(self, head, body, want):
        """Send head + body; the answer must be `want` with a JSON error and Connection: close,
        and nothing after it on the connection may be answered (it cannot be framed)."""
        smuggled = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        buf = exchange(connect(self.d.port), head + b"\r\n" + body + smuggled)
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
                init_model(good, "linear:16x4")
                before = dir_state(tmp)
                serve_fails(["--listen", "127.0.0.1:%d" % port, "--db", db, "--model", "new=" + good])
                serve_fails(["--listen", "127.0.0.1:0", "--db", db, "--model", "new=" + good,
                             "--model", bad])
                self.assertEqual(dir_state(tmp), before)
            finally:
                busy.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def closed_within(s, seconds, trickle=None):
    """Wait until the server closes s (recv gives b"" or an error), sending one byte of
    `trickle` every 0.25 s meanwhile; returns the seconds it took, or None."""
    t0 = time.time()
    s.settimeout(0.25)
    i = 0
    while time.time() - t0 < seconds:
        try:
            if trickle is not None and i < len(trickle):
                s.send(trickle[i:i + 1])
                i += 1
            if s.recv(65536) == b"":
                return time.time() - t0
        except socket.timeout:
            continue
        except OSError:
            return time.time() - t0
    return None


def probe(port, path=b"/v2/health/ready", source="127.0.0.2"):
    """GET path from another client address; (status, seconds)."""
    t0 = time.time()
    buf = exchange(connect(port, source, timeout=5),
                   b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return int(buf.split()[1]) if buf else None, time.time() - t0, buf


class SlowClients(unittest.TestCase):
    def test_trickled_headers_hit_the_header_deadline(self):
        with tsd.Daemon(args=["--header-timeout", "2", "--request-timeout", "60"]) as d:
            head = b"GET /v2/health/ready HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(40))
            trick = [connect(d.port) for _ in range(3)]
            try:
                took = closed_within(trick[0], 8, trickle=head)
                self.assertIsNotNone(took, "a connection trickling headers was never closed")
                self.assertLess(took, 4.5)
                self.assertGreater(took, 1.5)
            finally:
                for s in trick:
                    s.close()
            self.assertEqual(probe(d.port)[0], 200)

    def test_trickled_body_hits_the_body_deadline(self):
        with tsd.Daemon(args=["--body-timeout", "2", "--request-timeout", "60"]) as d:
            s = connect(d.port)
            try:
                s.sendall(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 500\r\n\r\n")
                took = closed_within(s, 8, trickle=b" " * 400)
                self.assertIsNotNone(took, "a connection trickling its body was never closed")
                self.assertLess(took, 4.5)
            finally:
                s.close()
            self.assertEqual(d.request("GET", "/v2/health/ready")[0], 200)

    def test_per_client_cap_keeps_probes_from_others_answered(self):
        """Twenty connections from one address trickling headers (the issue's attack) hold at
        most --max-connections-per-client slots; a probe from another address is answered
        at once, all the while."""
        with tsd.Daemon(args=["--max-connections", "16", "--max-connections-per-client", "4",
                              "--header-timeout", "30"]) as d:
            with held(d.port, 20, b"GET /v2/health/ready HTTP/1.1\r\n") as socks:
                time.sleep(0.5)
                # beyond the cap, the daemon closed them at once
                refused = sum(1 for s in socks if closed_within(s, 0.5) is not None)
                self.assertEqual(refused, 16)
                for _ in range(3):
                    st, took, _ = probe(d.port)
                    self.assertEqual(st, 200)
                    self.assertLess(took, 2.0)

    def test_full_daemon_answers_503_fast_and_probes_200(self):
        with tsd.Daemon(args=["--max-connections", "4", "--max-connections-per-client", "4",
                              "--header-timeout", "30"]) as d:
            with held(d.port, 4, source="127.0.0.3"):
                time.sleep(0.3)
                st, took, buf = probe(d.port, b"/v2/models/demo")
                self.assertEqual(st, 503, buf[:300])
                self.assertLess(took, 2.0)
                self.assertIn(b"max-connections", buf)
                self.assertIn(b"connection: close", buf.lower())
                st, took, buf = probe(d.port, b"/v2/health/ready")
                self.assertEqual(st, 200, buf[:300])
                self.assertLess(took, 2.0)
                st, _, buf = probe(d.port, b"/metrics")
                self.assertEqual(st, 200, buf[:300])


class MemoryBudgets(unittest.TestCase):
    def test_bodies_share_one_budget(self):
        with tsd.Daemon(args=["--max-buffered-bytes", "1M", "--max-body-bytes", "4M"]) as d:
            a = connect(d.port)
            try:
                a.sendall(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 900000\r\n\r\n" + b" " * 700000)
                time.sleep(0.5)   # a's buffer now holds the budget
                body = b" " * 600000
                st, hdrs, data = raw(d.port, b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Type: application/json\r\nConnection: close\r\n"
                                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
                self.assertEqual(st, 503, data[:300])
                self.assertIn("max-buffered-bytes", json.loads(data)["error"])
                self.assertIn("retry-after", hdrs.lower())
            finally:
                a.close()
            time.sleep(0.5)   # a is gone: its bytes are back in the budget
            st, _, data = d.request("POST", "/v2/models/demo/infer", infer_body([ROW] * 2000))
            self.assertEqual(st, 200, data[:300])

    def test_announced_lengths_cost_nothing(self):
        """Content-Length is no longer an allocation: 8 clients announcing 60 MB and sending
        one byte take a few KB of the budget, so a normal request still fits."""
        with tsd.Daemon(args=["--max-buffered-bytes", "256K", "--max-body-bytes", "64M"]) as d:
            announce = b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 60000000\r\n\r\n{"
            with held(d.port, 8, announce):
                time.sleep(0.5)
                st, _, data = d.request("POST", "/v2/models/demo/infer", infer_body([ROW] * 100))
                self.assertEqual(st, 200, data[:300])

    def test_response_cap_and_oversized_requests_are_413(self):
        with tsd.Daemon(args=["--max-response-bytes", "4K", "--max-queue-rows", "300"]) as d:
            # demo: 4 outputs a row; JSON counts 16 bytes a value: 64 rows fit 4K, 65 do not
            st, _, data = d.request("POST", "/v2/models/demo/infer", infer_body([ROW] * 64))
            self.assertEqual(st, 200, data[:300])
            st, _, data = d.request("POST", "/v2/models/demo/infer", infer_body([ROW] * 65))
            self.assertEqual(st, 413, data[:300])
            self.assertIn("max-response-bytes", json.loads(data)["error"])
            # binary output: 4 bytes a value, so 200 rows fit
            body = json.loads(infer_body([ROW] * 200))
            body["parameters"] = {"binary_data_output": True}
            st, _, data = d.request("POST", "/v2/models/demo/infer", body)
            self.assertEqual(st, 200, data[:300])
            # larger than the whole queue by itself: 413, not a 503 to retry forever
            body = json.loads(infer_body([ROW] * 301))
            body["parameters"] = {"binary_data_output": True}
            st, h, data = d.request("POST", "/v2/models/demo/infer", body)
            self.assertEqual(st, 413, data[:300])
            self.assertIn("max-queue-rows", json.loads(data)["error"])
            self.assertNotIn("retry-after", h)


def wait_log(d, text, timeout=10.0):
    """The daemon's log once it holds text (lines after 'listening on' arrive a moment later)."""
    deadline = time.time() + timeout
    while text not in d.log() and time.time() < deadline:
        time.sleep(0.05)
    return d.log()


def token_file(tmp, name, token, mode=0o600):
    """A token file in tmp with the given mode; its path."""
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(token + "\n")
    os.chmod(path, mode)
    return path


def init_model(path, layers):
    """tscaled init --layers LAYERS --out PATH; the path."""
    p = subprocess.run([BINARY, "init", "--layers", layers, "--out", path], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return path


FEEDBACK = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": ROW},
                       {"name": "label", "datatype": "INT64", "shape": [1], "data": [1]}]}


class AuthDefaults(unittest.TestCase):
    def test_admin_token_alone_protects_feedback(self):
        with tempfile.TemporaryDirectory() as tmp:
            tok = token_file(tmp, "admin", "adm1n-token")
            with tsd.Daemon(args=["--admin-token-file", tok]) as d:
                self.assertEqual(d.request("POST", "/v2/models/demo/feedback", FEEDBACK)[0], 401)
                st, _, data = d.request("POST", "/v2/models/demo/feedback", FEEDBACK,
                                        {"Authorization": "Bearer adm1n-token"})
                self.assertEqual(st, 200, data[:300])
                self.assertIn("feedback needs the admin token", wait_log(d, "routes:"))
                self.assertNotIn("writable", d.log())

    def test_browsers_cannot_drive_admin_or_feedback(self):
        with tsd.Daemon(args=["--allowed-hosts", "tscale.internal, other.example"]) as d:
            here = "127.0.0.1:%d" % d.port
            def st(method, path, body=None, **hdrs):
                h = {k.replace("_", "-"): v for k, v in hdrs.items()}
                return d.request(method, path, body, h)
            # a cross-site page: foreign Origin, on admin and feedback (not on inference)
            self.assertEqual(st("GET", "/admin/models", Origin="http://evil.example")[0], 403)
            self.assertEqual(st("POST", "/v2/models/demo/feedback", FEEDBACK, Origin="null")[0], 403)
            self.assertEqual(st("POST", "/v2/models/demo/infer", json.loads(infer_body([ROW])),
                                Origin="http://evil.example")[0], 200)
            self.assertEqual(st("GET", "/admin/models", Origin="http://" + here)[0], 200)
            # DNS rebinding: the page's own origin, but a Host that is not the daemon's
            status, _, data = st("GET", "/admin/models/demo/export", Host="evil.example:%d" % d.port)
            self.assertEqual(status, 403, data[:200])
            self.assertIn("--allowed-hosts", json.loads(data)["error"])
            self.assertEqual(st("POST", "/v2/models/demo/feedback", FEEDBACK, Host="evil.example")[0], 403)
            for host in ("localhost:%d" % d.port, "LOCALHOST", "127.0.0.1", "[::1]:80", "tscale.internal:8080",
                         "other.example"):
                self.assertEqual(st("GET", "/admin/models", Host=host)[0], 200, host)
            # form and text bodies (what a page posts without a preflight) are refused
            body = json.dumps(FEEDBACK).encode()
            for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
                status, _, data = st("POST", "/v2/models/demo/feedback", body, Content_Type=ctype)
                self.assertEqual(status, 415, (ctype, data[:200]))
                self.assertIsInstance(json.loads(data)["error"], str)
            self.assertEqual(st("POST", "/admin/models/demo/restore", b'{"snapshot_id":1}',
                                Content_Type="text/plain")[0], 415)
            self.assertEqual(st("POST", "/v2/models/demo/feedback", body,
                                Content_Type="application/json; charset=utf-8")[0], 200)
            self.assertEqual(st("POST", "/v2/models/demo/feedback", body)[0], 200)   # none: curl, SDKs

    def test_start_up_says_what_is_open(self):
        with tempfile.TemporaryDirectory() as tmp:
            tok = token_file(tmp, "feed", "f33d", 0o666)
            env = {"TSCALE_SNAPHOT_INTERVAL": "5", "TSCALE_MAX_BATCH": "8", "TSCALE_PUBLISH": "x"}
            with tsd.Daemon(args=["--listen", "0.0.0.0:0"], env=env) as d:
                log = wait_log(d, "routes:")
                self.assertIn("answers every client that reaches 0.0.0.0:0 without a token", log)
                self.assertIn("/admin/* needs a loopback client; feedback needs no token", log)
                self.assertIn("TSCALE_SNAPHOT_INTERVAL", log)
                self.assertNotIn("TSCALE_MAX_BATCH,", log)
                self.assertNotIn("TSCALE_PUBLISH", log)
            with tsd.Daemon(args=["--feedback-token-file", tok]) as d:
                log = wait_log(d, "routes:")
                self.assertIn("writable by its group or by everyone", log)
                self.assertNotIn("without a token:", log)
                self.assertNotIn("f33d", log)


class Operations(unittest.TestCase):
    def test_deleted_demo_stays_deleted(self):
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
        try:
            with tsd.Daemon(db_dir=tmp, args=["--snapshot-interval", "0"]) as d:
                d.json("POST", "/v2/models/demo/feedback", FEEDBACK)   # state to save at DELETE
                self.assertEqual(d.json("DELETE", "/admin/models/demo")["unloaded"], True)
                self.assertEqual(d.stop(), 0)
            with tsd.Daemon(db_dir=tmp) as d:
                self.assertEqual(d.request("GET", "/v2/models/demo")[0], 404)
                self.assertEqual(d.json("GET", "/admin/models")["models"], [])
                self.assertIn("every model of the database was deleted", wait_log(d, "deleted"))
                self.assertEqual(d.stop(), 0)
            # the DELETE's snapshot says so
            import sqlite3
            db = sqlite3.connect(os.path.join(tmp, "tscale.db"))
            reasons = [r for (r,) in db.execute("SELECT reason FROM snapshots ORDER BY id")]
            db.close()
            self.assertEqual(reasons, ["import", "delete"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_deleted_model_comes_back_by_restore(self):
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
        try:
            with tsd.Daemon(db_dir=tmp, args=["--snapshot-interval", "0"]) as d:
                for _ in range(3):
                    d.json("POST", "/v2/models/demo/feedback", FEEDBACK)
                d.json("DELETE", "/admin/models/demo")
                self.assertEqual(d.stop(), 0)
            with tsd.Daemon(db_dir=tmp, args=["--snapshot-interval", "0"]) as d:
                self.assertEqual(d.request("GET", "/v2/models/demo")[0], 404)
                snaps = d.json("GET", "/admin/models/demo/snapshots")["snapshots"]
                newest = snaps[0]
                self.assertEqual((newest["reason"], newest["step"]), ("delete", 3))
                st, _, data = d.request("POST", "/admin/models/nope/restore", {"snapshot_id": newest["snapshot_id"]})
                self.assertEqual(st, 404, data[:300])
                st, _, data = d.request("POST", "/admin/models/demo/restore", {"snapshot_id": 999})
                self.assertEqual(st, 404, data[:300])
                j = d.json("POST", "/admin/models/demo/restore", {"snapshot_id": newest["snapshot_id"]})
                self.assertEqual((j["step"], j["restored_from"]), (3, newest["snapshot_id"]))
                self.assertEqual(d.json("GET", "/admin/models/demo")["step"], 3)
                d.json("POST", "/v2/models/demo/infer", json.loads(infer_body([ROW])))
                self.assertEqual(d.stop(), 0)
            with tsd.Daemon(db_dir=tmp) as d:   # and it stays back
                self.assertEqual(d.json("GET", "/admin/models/demo")["step"], 3)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_help_lists_the_subcommands(self):
        p = subprocess.run([BINARY, "--help"], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0)
        for cmd in ("serve", "init", "inspect", "healthcheck", "backup"):
            self.assertRegex(p.stdout, r"\n  %s +\S" % cmd)
        self.assertIn("--max-connections", p.stdout)

    def test_inspect_says_what_a_file_is_not(self):
        with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
            f.write(b"PK\x03\x04 this is a zip file, say a torch.save() pickle")
            f.flush()
            p = subprocess.run([BINARY, "inspect", f.name], capture_output=True, text=True, timeout=30)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("not a safetensors model file", p.stderr)


class AccessLogAndReload(unittest.TestCase):
    def test_access_log_lines(self):
        with tsd.Daemon(args=["--access-log", "info"]) as d:
            d.request("GET", "/v2/health/ready?secret=s3cr3t", headers={"Authorization": "Bearer t0k3n"})
            d.request("POST", "/v2/models/demo/infer", json.loads(infer_body([ROW])))
            log = wait_log(d, "POST /v2/models/demo/infer")
            self.assertRegex(log, r"info: access: GET /v2/health/ready 200 \d+ bytes \d+ us")
            self.assertRegex(log, r"info: access: POST /v2/models/demo/infer 200 \d+ bytes \d+ us")
            for secret in ("s3cr3t", "t0k3n"):
                self.assertNotIn(secret, log)
        with tsd.Daemon() as d:   # off by default
            d.request("GET", "/v2/health/ready")
            self.assertNotIn("access:", wait_log(d, "routes:"))
        self.assertIn("off, debug, info", serve_fails(["--access-log", "loud"]))

    def test_sighup_rereads_token_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            tok = token_file(tmp, "admin", "old-token")
            with tsd.Daemon(args=["--admin-token-file", tok]) as d:
                auth = lambda t: {"Authorization": "Bearer " + t}
                self.assertEqual(d.request("GET", "/admin/models", headers=auth("old-token"))[0], 200)
                with open(tok, "w") as f:
                    f.write("new-token\n")
                d.signal(signal.SIGHUP)
                wait_log(d, "SIGHUP: token files read again")
                self.assertEqual(d.request("GET", "/admin/models", headers=auth("new-token"))[0], 200)
                self.assertEqual(d.request("GET", "/admin/models", headers=auth("old-token"))[0], 403)
                # an unreadable file keeps the token in force
                os.unlink(tok)
                d.signal(signal.SIGHUP)
                wait_log(d, "the tokens in force are kept")
                self.assertEqual(d.request("GET", "/admin/models", headers=auth("new-token"))[0], 200)
                self.assertIsNone(d.proc.poll())
                self.assertNotIn("new-token", d.log())


def set_tensor(blob, name, values, fmt):
    """A copy of a safetensors file with tensor `name`'s elements replaced (struct fmt)."""
    import struct
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    begin, end = header[name]["data_offsets"]
    data = struct.pack("<%d%s" % (len(values), fmt), *values)
    assert len(data) == end - begin, (name, len(data), end - begin)
    start = 8 + n
    return blob[:start + begin] + data + blob[start + end:]


class Numerics(unittest.TestCase):
    def test_impossible_corr_accum_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.safetensors")
            init_model(path, "linear:4x3/gs2")
            with open(path, "rb") as f:
                blob = f.read()
            # 3 rows x 2 groups; step 10, gs 2: |corr_accum| <= 20 is reachable, 21 is not
            ok = set_tensor(set_tensor(blob, "0.step_counter", [10], "q"), "0.corr_accum",
                            [20, -20, 0, 1, 2, 3], "q")
            bad = set_tensor(ok, "0.corr_accum", [20, -20, 0, 1, -21, 3], "q")
            big = set_tensor(set_tensor(blob, "0.step_counter", [1], "q"), "0.corr_accum",
                             [0, 0, 1 << 40, 0, 0, 0], "q")
            with tsd.Daemon() as d:
                st, _, data = d.request("PUT", "/admin/models/ok", ok)
                self.assertEqual(st, 201, data[:300])
                out = d.json("POST", "/v2/models/ok/infer", {"inputs": [{"name": "input", "datatype": "FP32",
                                                                       "shape": [1, 4], "data": [1, 2, 3, 4]}]})
                self.assertTrue(all(v == v for v in out["outputs"][0]["data"]))   # no NaN
                for blob_, elem in ((bad, "element 4 is -21"), (big, "element 2 is %d" % (1 << 40))):
                    st, _, data = d.request("PUT", "/admin/models/bad", blob_)
                    self.assertEqual(st, 400, data[:300])
                    err = json.loads(data)["error"]
                    self.assertIn('"0.corr_accum"', err)
                    self.assertIn(elem, err)
            bad_path = os.path.join(tmp, "bad.safetensors")
            with open(bad_path, "wb") as f:
                f.write(bad)
            p = subprocess.run([BINARY, "inspect", bad_path], capture_output=True, text=True, timeout=60)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("0.corr_accum", p.stderr)


class RepositoryAndStats(unittest.TestCase):
    def test_index_stats_and_admin_model(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.safetensors")
            init_model(path, "linear:4x3/gs2")
            with tsd.Daemon(args=["--model", "m=" + path, "--model", "n=" + path]) as d:
                want = [{"name": "m", "version": "1", "state": "READY"},
                        {"name": "n", "version": "1", "state": "READY"}]
                self.assertEqual(sorted(d.json("GET", "/v2/models")["models"], key=lambda m: m["name"]), want)
                self.assertEqual(sorted(d.json("POST", "/v2/repository/index", {"ready": True}),
                                        key=lambda m: m["name"]), want)
                # 3 requests of 2 rows each, one refused (wrong width), 2 feedback steps
                body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": [0.5] * 8}]}
                for _ in range(3):
                    d.json("POST", "/v2/models/m/infer", body)
                bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5], "data": [0.5] * 5}]}
                self.assertEqual(d.request("POST", "/v2/models/m/infer", bad)[0], 400)
                fb = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                                 {"name": "label", "datatype": "INT64", "shape": [1], "data": [2]}]}
                for _ in range(2):
                    d.json("POST", "/v2/models/m/feedback", fb)
                st = d.json("GET", "/v2/models/m/stats")["model_stats"]
                self.assertEqual(len(st), 1)
                st = st[0]
                self.assertEqual((st["name"], st["version"]), ("m", "1"))
                self.assertEqual(st["inference_count"], 6)
                self.assertTrue(1 <= st["execution_count"] <= 3)
                inf = st["inference_stats"]
                self.assertEqual(inf["success"]["count"], 3)
                self.assertEqual(inf["queue"]["count"], 3)
                self.assertEqual(inf["compute_infer"]["count"], 3)
                self.assertGreater(inf["success"]["ns"], 0)
                self.assertGreaterEqual(inf["success"]["ns"], inf["compute_infer"]["ns"])
                self.assertGreater(st["last_inference"], 1.7e12)
                self.assertEqual(st["feedback_stats"]["success"]["count"], 2)
                self.assertEqual(d.json("GET", "/v2/models/m/versions/1/stats")["model_stats"][0]["inference_count"], 6)
                self.assertEqual(d.json("GET", "/v2/models/n/stats")["model_stats"][0]["inference_count"], 0)
                self.assertEqual(d.request("GET", "/v2/models/zz/stats")[0], 404)
                self.assertEqual(d.request("GET", "/v2/models/m/versions/7/stats")[0], 404)
                one = d.json("GET", "/admin/models/m")
                self.assertEqual((one["name"], one["step"], one["feedback_steps"]), ("m", 2, 2))
                self.assertEqual(one, next(x for x in d.json("GET", "/admin/models")["models"] if x["name"] == "m"))
                self.assertEqual(d.request("GET", "/admin/models/zz")[0], 404)


if __name__ == "__main__":
    unittest.main()
