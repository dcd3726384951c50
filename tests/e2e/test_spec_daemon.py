"""SPEC §3 conformance of the daemon's command line: flags and TSCALE_* variables (flags win),
--help/--version, the demo model, the listening line, restarts, SIGTERM/SIGINT."""
import json
import os
import signal
import subprocess
import tempfile
import unittest

import oipc
import tsd

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spec_data")
MODEL = os.path.join(DATA, "step0_corr.safetensors")   # in 20, out 4
OTHER = os.path.join(DATA, "one_class.safetensors")
BIN = os.path.join(tsd.ROOT, tsd.BINARY) if not os.path.isabs(tsd.BINARY) else tsd.BINARY

SPEC_FLAGS = ["--listen", "--db", "--model", "--snapshot-interval", "--threads", "--max-batch",
              "--max-queue-delay-us", "--admin-token-file", "--feedback-token-file"]
# flag → a value the daemon must refuse (so that reading the variable is visible)
BAD = {"--snapshot-interval": "soon", "--threads": "many", "--max-batch": "lots",
       "--max-queue-delay-us": "-", "--admin-token-file": "/nonexistent/admin",
       "--feedback-token-file": "/nonexistent/fb", "--model": "no-equals-sign",
       "--listen": "nohost", "--db": "/nonexistent/dir/x.db"}
GOOD = {"--snapshot-interval": "0", "--threads": "1", "--max-batch": "8", "--max-queue-delay-us": "100"}


def env_of(extra):
    e = {k: v for k, v in os.environ.items() if not k.startswith("TSCALE_")}
    e.update(extra)
    return e


def run(args, env=None, timeout=20):
    tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
    return subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout,
                          env=env_of(env or {}), cwd=tmp)


def stop(test, d):
    """SIGTERM → exit 0. An inference first: it runs on the daemon's event loop, so the loop
    (and its signal handlers) is up; see test_signal_during_startup_exits_0 for why."""
    dim = d.json("GET", "/v2/models/" + d.json("GET", "/admin/models")["models"][0]["name"])
    name = dim["name"]
    d.json("POST", f"/v2/models/{name}/infer", oipc.infer_body([[0.0] * dim["inputs"][0]["shape"][1]]))
    test.assertEqual(d.stop(), 0, d.log())


def var(flag):
    return "TSCALE_" + flag[2:].upper().replace("-", "_")


class SpecCLI(unittest.TestCase):
    def test_help_and_version(self):
        r = run(["--help"])
        self.assertEqual(r.returncode, 0, r.stderr)
        for f in SPEC_FLAGS:
            self.assertIn(f, r.stdout)
        v = run(["--version"])
        self.assertEqual(v.returncode, 0)
        self.assertTrue(v.stdout.strip())
        with tsd.Daemon() as d:
            self.assertIn(d.json("GET", "/v2")["version"], v.stdout)

    def test_every_variable_is_read_and_flags_win(self):
        for flag, bad in BAD.items():
            with self.subTest(flag=flag):
                args = ["--listen", "127.0.0.1:0", "--db", "x.db"] if flag not in ("--listen", "--db") else []
                if flag == "--listen":
                    args = ["--db", "x.db"]
                if flag == "--db":
                    args = ["--listen", "127.0.0.1:0"]
                r = run(args, env={var(flag): bad}, timeout=10)
                self.assertNotEqual(r.returncode, 0, f"{var(flag)}={bad} was not refused")
                self.assertTrue(var(flag) in r.stderr or bad in r.stderr, r.stderr[-300:])
        # a good variable under a flag: the flag wins
        with tsd.Daemon(args=["--model", f"m={MODEL}"], env={"TSCALE_MODEL": f"x={OTHER}",
                                                              "TSCALE_LISTEN": "127.0.0.1:1"}) as d:
            self.assertEqual([m["name"] for m in d.json("GET", "/admin/models")["models"]], ["m"])

    # SPEC §3 "each also read from the environment as TSCALE_<FLAG> ..., flags winning": a
    # variable that a flag overrides is not used, so a bad one does not stop the start.
    def test_a_variable_under_a_flag_is_not_used(self):
        # every bad variable at once, every flag given well: the flags win
        env = {var(f): b for f, b in BAD.items()}
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
        with open(os.path.join(tmp, "tok"), "w") as f:
            f.write("t0k")
        args = ["--model", f"m={MODEL}", "--admin-token-file", os.path.join(tmp, "tok"),
                "--feedback-token-file", os.path.join(tmp, "tok")]
        for f, g in GOOD.items():
            args += [f, g]
        with tsd.Daemon(args=args, env=env) as d:   # tsd gives --listen and --db
            st, _, data = d.request("GET", "/admin/models", headers={"Authorization": "Bearer t0k"})
            self.assertEqual([m["name"] for m in json.loads(data)["models"]], ["m"])

    def test_variables_alone_configure_the_daemon(self):
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
        with open(os.path.join(tmp, "tok"), "w") as f:
            f.write("t0k")
        env = {"TSCALE_MODEL": f"e={MODEL}", "TSCALE_ADMIN_TOKEN_FILE": os.path.join(tmp, "tok"),
               "TSCALE_SNAPSHOT_INTERVAL": "0", "TSCALE_MAX_BATCH": "4"}
        with tsd.Daemon(env=env) as d:
            self.assertEqual(d.request("GET", "/admin/models")[0], 401)
            st, _, data = d.request("GET", "/admin/models", headers={"Authorization": "Bearer t0k"})
            self.assertEqual([m["name"] for m in json.loads(data)["models"]], ["e"])

    def test_demo_only_when_nothing_is_configured(self):
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
        with tsd.Daemon(db_dir=tmp) as d:
            meta = d.json("GET", "/v2/models/demo")
            self.assertEqual(meta["platform"], "tscale")
            dim = meta["inputs"][0]["shape"][1]
            self.assertEqual(d.request("POST", "/v2/models/demo/infer", oipc.infer_body([[0.5] * dim]))[0], 200)
            stop(self, d)
        with tsd.Daemon(args=["--model", f"m={MODEL}"]) as d:
            self.assertEqual(d.request("GET", "/v2/models/demo")[0], 404)

    def test_listening_line_names_the_port(self):
        with tsd.Daemon() as d:
            line = next(l for l in d.log_lines if "listening" in l)
            self.assertIn(f"127.0.0.1:{d.port}", line)
            self.assertEqual(d.request("GET", "/v2/health/live")[0], 200)

    def test_logs_never_hold_request_contents(self):
        with tsd.Daemon(args=["--model", f"m={MODEL}"]) as d:
            rows = [[0.123456789 + i for i in range(20)]]
            d.json("POST", "/v2/models/m/infer", oipc.infer_body(rows, id="secret-request-id-42"))
            d.request("POST", "/v2/models/m/infer", b'{"inputs":"zz-secret-zz"}')
            d.json("POST", "/v2/models/m/feedback", oipc.feedback_body(rows, "label", [3], id="secret-fb-id-7"))
            stop(self, d)
            log = d.log()
            for s in ("secret-request-id-42", "zz-secret-zz", "secret-fb-id-7", "0.123456"):
                self.assertNotIn(s, log)


class SpecSignals(unittest.TestCase):
    def test_sigterm_and_sigint_exit_0_with_a_final_snapshot(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with tsd.Daemon(args=["--model", f"m={MODEL}", "--snapshot-interval", "0"]) as d:
                d.json("POST", "/v2/models/m/feedback", oipc.feedback_body([[0.1] * 20], "label", [1]))
                d.signal(sig)
                self.assertEqual(d.wait(), 0, d.log())
                tmp = d.dir
                # the final snapshot holds the step: a restart (same command line) sees it
                with tsd.Daemon(args=["--model", f"m={MODEL}", "--snapshot-interval", "0"], db_dir=tmp) as d2:
                    self.assertEqual(d2.json("GET", "/admin/models")["models"][0]["step"], 1)

    # SPEC §3 "SIGTERM / SIGINT: stop accepting, finish queued work, take a final snapshot,
    # exit 0" — also for a signal during start-up (model loading).
    def test_signal_during_startup_exits_0(self):
        rcs = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
            p = subprocess.Popen([BIN, "--listen", "127.0.0.1:0", "--db", os.path.join(tmp, "db"),
                                  "--model", f"m={MODEL}"], stderr=subprocess.PIPE, text=True,
                                 env=env_of({}), cwd=tmp)
            try:
                p.stderr.readline()          # the "starting" line
                p.send_signal(sig)
                p.stderr.read()
                rcs.append(p.wait(20))
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        self.assertEqual(rcs, [0, 0])


class SpecRestart(unittest.TestCase):
    def test_same_model_file_keeps_state_other_replaces(self):
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
        args = ["--model", f"m={MODEL}", "--snapshot-interval", "0"]
        fb = oipc.feedback_body([[0.2] * 20], "target", [[0.0] * 4])
        with tsd.Daemon(args=args, db_dir=tmp) as d:
            d.json("POST", "/v2/models/m/feedback", fb)
            d.json("POST", "/v2/models/m/feedback", fb)
            stop(self, d)
        for _ in range(2):
            with tsd.Daemon(args=args, db_dir=tmp) as d:
                self.assertEqual(d.json("GET", "/admin/models")["models"][0]["step"], 2)
                stop(self, d)
        with tsd.Daemon(args=["--model", f"m={OTHER}", "--snapshot-interval", "0"], db_dir=tmp) as d:
            meta = d.json("GET", "/v2/models/m")
            self.assertEqual(meta["inputs"][0]["shape"], [-1, 6])
            self.assertEqual(d.json("GET", "/admin/models")["models"][0]["step"], 4)   # the file's
            stop(self, d)
        with tsd.Daemon(args=["--snapshot-interval", "0"], db_dir=tmp) as d:   # no --model: the db's
            self.assertEqual(d.json("GET", "/v2/models/m")["inputs"][0]["shape"], [-1, 6])
            self.assertEqual(d.request("GET", "/v2/models/demo")[0], 404)
