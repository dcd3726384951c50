"""test_ops.py — the operator subcommands: `tscaled healthcheck` (what the container's
HEALTHCHECK runs) and `tscaled backup` (online copy of the database)."""
import http.server
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import unittest

import tsd

BINARY = tsd.BINARY if os.path.isabs(tsd.BINARY) else os.path.join(tsd.ROOT, tsd.BINARY)


def tscaled(*args, env=None, timeout=30):
    """Run a tscaled subcommand; returns (exit code, stdout, stderr)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("TSCALE_")}
    e.update(env or {})
    p = subprocess.run([BINARY, *args], capture_output=True, text=True, env=e, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


class StubServer:
    """A loopback HTTP server answering every GET with a fixed status; records the paths."""

    def __init__(self, status):
        paths = self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HealthcheckAgainstStubs(unittest.TestCase):
    def test_200_is_healthy_and_probes_ready_path(self):
        s = StubServer(200)
        try:
            rc, out, err = tscaled("healthcheck", "--url", f"http://127.0.0.1:{s.port}")
            self.assertEqual(rc, 0, err)
            self.assertEqual(s.paths, ["/v2/health/ready"])
            rc, _, err = tscaled("healthcheck", "--url", f"http://localhost:{s.port}/v2/health/live")
            self.assertEqual(rc, 0, err)
            self.assertEqual(s.paths[-1], "/v2/health/live")
        finally:
            s.close()

    def test_default_url_follows_tscale_listen(self):
        s = StubServer(200)
        try:
            rc, _, err = tscaled("healthcheck", env={"TSCALE_LISTEN": f"0.0.0.0:{s.port}"})
            self.assertEqual(rc, 0, err)
            self.assertEqual(s.paths, ["/v2/health/ready"])
        finally:
            s.close()

    def test_503_is_unhealthy(self):
        s = StubServer(503)
        try:
            rc, _, err = tscaled("healthcheck", "--url", f"http://127.0.0.1:{s.port}")
            self.assertEqual(rc, 1)
            self.assertIn("503", err)
        finally:
            s.close()

    def test_nothing_listening_is_unhealthy(self):
        rc, _, err = tscaled("healthcheck", "--url", f"http://127.0.0.1:{free_port()}")
        self.assertEqual(rc, 1)
        self.assertIn("refused", err)

    def test_silent_server_times_out(self):
        # listen() but never accept or answer: the probe must give up at --timeout.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(4)
            rc, _, err = tscaled("healthcheck", "--timeout", "0.3", "--url",
                                 f"http://127.0.0.1:{s.getsockname()[1]}", timeout=10)
        self.assertEqual(rc, 1)
        self.assertIn("timed out", err)

    def test_not_http_is_unhealthy(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(4)

            def answer():
                c, _ = s.accept()
                c.recv(1024)
                c.sendall(b"SSH-2.0-OpenSSH\r\n")
                c.close()

            t = threading.Thread(target=answer, daemon=True)
            t.start()
            rc, _, err = tscaled("healthcheck", "--url", f"http://127.0.0.1:{s.getsockname()[1]}")
            t.join(5)
        self.assertEqual(rc, 1)
        self.assertIn("not an HTTP response", err)

    def test_usage_errors_exit_2(self):
        for args in (["--url", "https://127.0.0.1:8080"], ["--url", "http://127.0.0.1:0"],
                     ["--url", "http://127.0.0.1:80x"], ["--url", "http://[::1:80"],
                     ["--url", "http://:80"], ["--timeout", "0"], ["--timeout", "abc"],
                     ["--bogus"], ["--url"]):
            rc, _, err = tscaled("healthcheck", *args)
            self.assertEqual(rc, 2, f"{args}: {err}")
            self.assertTrue(err.strip(), args)



class Backup(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="tscale-backup-")
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def assert_sound_tscale_db(self, path):
        db = sqlite3.connect(path)
        try:
            self.assertEqual(db.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            self.assertTrue({"models", "snapshots"} <= tables, tables)
        finally:
            db.close()

    def test_backup_of_a_database_from_tscale_db_env(self):
        open(self.path("src.db"), "wb").close()  # an empty file: opened and migrated as a new database
        rc, out, err = tscaled("backup", self.path("copy.db"), env={"TSCALE_DB": self.path("src.db")})
        self.assertEqual(rc, 0, err)
        self.assertIn("copy.db", out)
        self.assert_sound_tscale_db(self.path("copy.db"))
        self.assertEqual(sorted(os.listdir(self.dir)), ["copy.db", "src.db"])  # no partial file left

    def test_usage_errors_exit_2(self):
        for args in ([], ["--db"], ["a.db", "b.db"], ["--bogus", "a.db"]):
            rc, _, err = tscaled("backup", *args)
            self.assertEqual(rc, 2, f"{args}: {err}")
            self.assertIn("usage", err)

    def test_missing_database_is_not_created(self):
        rc, _, err = tscaled("backup", "--db", self.path("none.db"), self.path("copy.db"))
        self.assertEqual(rc, 1)
        self.assertIn("no database at", err)
        self.assertEqual(os.listdir(self.dir), [])

    def test_existing_destination_is_left_alone(self):
        open(self.path("src.db"), "wb").close()
        with open(self.path("copy.db"), "wb") as f:
            f.write(b"precious")
        rc, _, err = tscaled("backup", "--db", self.path("src.db"), self.path("copy.db"))
        self.assertEqual(rc, 1)
        self.assertIn("already exists", err)
        with open(self.path("copy.db"), "rb") as f:
            self.assertEqual(f.read(), b"precious")

    def test_foreign_database_is_refused_without_leftovers(self):
        db = sqlite3.connect(self.path("other.db"))
        db.execute("CREATE TABLE t (x)")
        db.commit()
        db.close()
        rc, _, err = tscaled("backup", "--db", self.path("other.db"), self.path("copy.db"))
        self.assertEqual(rc, 1)
        self.assertIn("not a tscale database", err)
        self.assertEqual(os.listdir(self.dir), ["other.db"])

    def test_unwritable_destination_fails_cleanly(self):
        open(self.path("src.db"), "wb").close()
        rc, _, err = tscaled("backup", "--db", self.path("src.db"), self.path("no/such/dir/copy.db"))
        self.assertEqual(rc, 1)
        self.assertIn("cannot create", err)


class AgainstDaemon(unittest.TestCase):
    def test_ready_daemon_is_healthy(self):
        with tsd.Daemon() as d:
            rc, out, err = tscaled("healthcheck", "--url", f"http://127.0.0.1:{d.port}")
            self.assertEqual(rc, 0, err + d.log())
            self.assertIn("ready", out)

    def test_backup_while_serving_holds_the_state_of_that_moment(self):
        restored = tempfile.mkdtemp(prefix="tscale-restored-")
        try:
            with tsd.Daemon(args=["--snapshot-interval", "0"]) as d:
                meta = d.json("GET", "/v2/models/demo")
                n_in, n_out = meta["inputs"][0]["shape"][1], meta["outputs"][0]["shape"][1]
                fb = {"inputs": [
                    {"name": "input", "shape": [1, n_in], "datatype": "FP32",
                     "data": [((i * 3) % 7 - 3) / 3 for i in range(n_in)]},
                    {"name": "target", "shape": [1, n_out], "datatype": "FP32", "data": [1.0] * n_out}]}
                for _ in range(2):
                    d.json("POST", "/v2/models/demo/feedback", fb)
                d.json("POST", "/admin/models/demo/snapshots", {}, expect=201)
                # The daemon holds the database open and keeps serving while the copy is made.
                rc, _, err = tscaled("backup", "--db", d.db, os.path.join(restored, "tscale.db"))
                self.assertEqual(rc, 0, err)
                self.assertEqual(d.json("POST", "/v2/models/demo/feedback", fb)["step"], 3)
            with tsd.Daemon(db_dir=restored) as r:
                models = {m["name"]: m for m in r.json("GET", "/admin/models")["models"]}
                self.assertEqual(models["demo"]["step"], 2, r.log())
        finally:
            shutil.rmtree(restored, ignore_errors=True)
