"""test_api.py — the HTTP API of tscaled (SPEC §4, §5): OIP health/metadata/inference in JSON
and binary form, every error class, /metrics, the admin API, authentication, and the
command line (--help, --version, flags and TSCALE_* variables)."""
import json
import os
import socket
import struct
import subprocess
import tempfile
import unittest

import oipc
import tsd

BINARY = tsd.BINARY if os.path.isabs(tsd.BINARY) else os.path.join(tsd.ROOT, tsd.BINARY)
CASES = oipc.golden_cases()
INFER_CASE = "mlp_relu_mse"   # the model most API tests use (any golden model would do)


def proc_status(pid):
    """The memory lines of /proc/PID/status, in bytes."""
    with open("/proc/%d/status" % pid) as f:
        return {k: int(v.split()[0]) * 1024 for k, _, v in (l.partition(":") for l in f)
                if v.strip().endswith("kB")}


def model_args():
    args = []
    for c in CASES:
        args += ["--model", "%s=%s" % (c, oipc.golden_model(c))]
    return args


class Api(unittest.TestCase):
    """One daemon serving every golden model, unchanged (no feedback here)."""

    @classmethod
    def setUpClass(cls):
        cls.d = tsd.Daemon(args=model_args() + ["--max-rows", "64"])
        cls.case = oipc.golden(INFER_CASE)
        cls.in_dim = cls.case["layers"][0]["in_dim"]

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def error(self, method, path, body=None, headers=None, status=400, contains=None):
        st, h, data = self.d.request(method, path, body, headers)
        self.assertEqual(st, status, data[:300])
        j = json.loads(data)
        self.assertIsInstance(j.get("error"), str)
        if contains:
            self.assertIn(contains.lower(), j["error"].lower())
        return h, j

    # ---- health and metadata ----

    def test_server_metadata_and_health(self):
        j = self.d.json("GET", "/v2")
        self.assertEqual(j["name"], "tscale")
        self.assertIn("binary_tensor_data", j["extensions"])
        self.assertTrue(j["version"])
        self.assertEqual(self.d.request("GET", "/v2/health/live")[0], 200)
        self.assertEqual(self.d.request("GET", "/v2/health/ready")[0], 200)

    def test_model_metadata(self):
        for c in CASES:
            g = oipc.golden(c)
            j = self.d.json("GET", "/v2/models/" + c)
            self.assertEqual(j["name"], c)
            self.assertEqual(j["platform"], "tscale")
            self.assertEqual(j["inputs"], [{"name": "input", "datatype": "FP32",
                                            "shape": [-1, g["layers"][0].get("in_dim", g["layers"][0].get("dim"))]}])
            out_dim = [l for l in g["layers"] if "out_dim" in l or "dim" in l][-1]
            self.assertEqual(j["outputs"][0]["shape"], [-1, out_dim.get("out_dim", out_dim.get("dim"))])
            v = j["versions"][0]
            self.assertEqual(self.d.json("GET", "/v2/models/%s/versions/%s" % (c, v))["name"], c)
            self.assertEqual(self.d.json("GET", "/v2/models/%s/ready" % c)["ready"], True)

    def test_unknown_model_version_path_and_method(self):
        self.error("GET", "/v2/models/nope", status=404, contains="nope")
        self.error("GET", "/v2/models/nope/ready", status=404)
        self.error("POST", "/v2/models/nope/infer", oipc.infer_body([[0.0]]), status=404)
        self.error("GET", "/v2/models/%s/versions/999" % INFER_CASE, status=404, contains="999")
        self.error("POST", "/v2/models/%s/versions/999/infer" % INFER_CASE,
                   oipc.infer_body([[0.0] * self.in_dim]), status=404)
        self.error("GET", "/v3/whatever", status=404)
        self.assertIn('tscale_requests_total{endpoint="unknown",code="404"}',
                      self.d.request("GET", "/metrics")[2].decode())
        self.error("GET", "/v2/models/%s/bogus" % INFER_CASE, status=404)
        self.error("GET", "/v2/models/bad%20name", status=404)
        h, _ = self.error("GET", "/v2/models/%s/infer" % INFER_CASE, status=405)
        self.assertIn("POST", h["allow"])
        h, _ = self.error("POST", "/v2/health/live", status=405)
        self.assertIn("GET", h["allow"])
        h, _ = self.error("PATCH", "/admin/models/x", status=405)
        self.assertIn("PUT", h["allow"])
        self.assertIn("DELETE", h["allow"])

    # ---- inference ----

    def infer(self, body, headers=None, model=INFER_CASE, status=200):
        st, h, data = self.d.request("POST", "/v2/models/%s/infer" % model, body, headers)
        self.assertEqual(st, status, data[:300])
        return oipc.decode_response(h, data)

    def check_golden(self, out, expected_rows):
        exp = oipc.flat(expected_rows)
        self.assertEqual(len(out), len(exp))
        for a, b in zip(out, exp):
            self.assertTrue(oipc.close(a, b), (a, b))

    def test_infer_golden_json_every_case(self):
        for c in CASES:
            for fw in oipc.golden(c)["forward"]:
                j, data = self.infer(oipc.infer_body(fw["input"], id="r-" + c), model=c)
                self.assertEqual(j["model_name"], c)
                self.assertEqual(j["id"], "r-" + c)
                self.assertEqual(j["outputs"][0]["shape"], [len(fw["output"]), len(fw["output"][0])])
                self.assertEqual(j["outputs"][0]["datatype"], "FP32")
                self.check_golden(data["output"], fw["output"])

    def test_infer_binary_in_and_out(self):
        fw = self.case["forward"][-1]
        rows = fw["input"]
        body, headers = oipc.binary_request(
            [("input", "FP32", [len(rows), len(rows[0])], oipc.flat(rows))],
            outputs=[{"name": "output", "parameters": {"binary_data": True}}], id="bin")
        j, data = self.infer(body, headers)
        self.assertEqual(j["id"], "bin")
        self.assertIn("binary_data_size", j["outputs"][0]["parameters"])
        self.check_golden(data["output"], fw["output"])
        # request-level binary_data_output with a JSON input
        j, data = self.infer(oipc.infer_body(rows, parameters={"binary_data_output": True}))
        self.check_golden(data["output"], fw["output"])
        # FP64 binary input is converted
        body, headers = oipc.binary_request([("input", "FP64", [len(rows), len(rows[0])], oipc.flat(rows))])
        j, data = self.infer(body, headers)
        self.check_golden(data["output"], fw["output"])

    def test_infer_converts_integer_and_fp64_json(self):
        ints = [[(i * 7 + k) % 5 - 2 for k in range(self.in_dim)] for i in range(3)]
        _, as_float = self.infer(oipc.infer_body([[float(v) for v in r] for r in ints]))
        body = {"inputs": [oipc.tensor("input", ints, "INT32")]}
        _, as_int = self.infer(body)
        self.assertEqual(as_int["output"], as_float["output"])
        body = {"inputs": [oipc.tensor("input", ints, "FP64")]}
        _, as_fp64 = self.infer(body)
        self.assertEqual(as_fp64["output"], as_float["output"])

    def test_infer_batched_rows_equal_rows_alone(self):
        rows = [[((i * 31 + k * 17) % 13) / 6.0 - 1.0 for k in range(self.in_dim)] for i in range(5)]
        _, together = self.infer(oipc.infer_body(rows))
        out_dim = len(together["output"]) // 5
        for i, r in enumerate(rows):
            _, alone = self.infer(oipc.infer_body([r]))
            self.assertEqual(alone["output"], together["output"][i * out_dim:(i + 1) * out_dim])

    def test_requested_outputs(self):
        rows = self.case["forward"][0]["input"]
        j, data = self.infer(oipc.infer_body(rows, outputs=[{"name": "output"}]))
        self.check_golden(data["output"], self.case["forward"][0]["output"])
        self.error("POST", "/v2/models/%s/infer" % INFER_CASE,
                   oipc.infer_body(rows, outputs=[{"name": "logits"}]), contains="logits")

    def test_infer_errors(self):
        path = "/v2/models/%s/infer" % INFER_CASE
        row = [0.5] * self.in_dim
        bad = [
            (b"{not json", "json"),
            (b"", None),
            (json.dumps({"inputs": []}).encode(), None),
            (oipc.infer_body([[0.5] * (self.in_dim + 1)]), "shape"),
            ({"inputs": [oipc.tensor("x", [row])]}, "x"),
            ({"inputs": [oipc.tensor("input", [row]), oipc.tensor("extra", [row])]}, "extra"),
            ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, self.in_dim], "data": [1.0]}]}, None),
            ({"inputs": [oipc.tensor("input", row)]}, "shape"),          # 1-D
            (oipc.infer_body([row] * 65), "max-rows"),                   # over --max-rows 64
            ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, self.in_dim],
                          "data": ["a"] * self.in_dim}]}, None),
            ({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1, self.in_dim],
                          "data": [1] * self.in_dim}]}, None),
        ]
        for body, word in bad:
            with self.subTest(body=str(body)[:80]):
                self.error("POST", path, body, headers={"Content-Type": "application/json"},
                           contains=word)
        # Non-finite numbers never reach the model (binary, since JSON has no NaN).
        for v in (float("nan"), float("inf")):
            body, headers = oipc.binary_request([("input", "FP32", [1, self.in_dim], [v] + row[1:])])
            self.error("POST", path, body, headers)
        # Binary lengths that do not add up.
        body, headers = oipc.binary_request([("input", "FP32", [1, self.in_dim], row)])
        self.error("POST", path, body[:-4], headers)
        self.error("POST", path, body + b"\0\0\0\0", headers)
        self.error("POST", path, body, {"Inference-Header-Content-Length": str(len(body) + 1)})
        self.error("POST", path, body, {"Inference-Header-Content-Length": "-3"})

    # ---- metrics ----

    def test_metrics(self):
        self.infer(oipc.infer_body(self.case["forward"][0]["input"]))
        st, h, data = self.d.request("GET", "/metrics")
        self.assertEqual(st, 200)
        self.assertTrue(h["content-type"].startswith("text/plain"))
        text = data.decode()
        for name in ("tscale_requests_total{endpoint=\"infer\",code=\"200\"}",
                     "tscale_request_seconds_bucket{kind=\"infer\"", "tscale_queue_seconds_count",
                     "tscale_compute_seconds_sum", "tscale_batch_rows_bucket",
                     "tscale_model_step{model=\"%s\"}" % INFER_CASE, "tscale_queue_rows",
                     "tscale_snapshots_total", "tscale_snapshot_failures_total",
                     "tscale_feedback_steps_total"):
            self.assertIn(name, text)
        for line in text.splitlines():  # every sample line is "name{labels} number"
            if line and not line.startswith("#"):
                float(line.rsplit(" ", 1)[1])

    def test_metrics_resident_memory(self):
        """process_resident_memory_bytes (the Prometheus client libraries' name) and the
        anonymous part of it, as the kernel counts them for the daemon's process."""
        text = self.d.request("GET", "/metrics")[2].decode()
        status = proc_status(self.d.proc.pid)
        values = {}
        for line in text.splitlines():
            if line.startswith(("process_resident_memory_bytes ", "tscale_resident_anon_bytes ")):
                name, value = line.split()
                values[name] = float(value)
        self.assertIn("# TYPE process_resident_memory_bytes gauge", text)
        self.assertEqual(sorted(values), ["process_resident_memory_bytes", "tscale_resident_anon_bytes"])
        self.assertLess(abs(values["process_resident_memory_bytes"] - status["VmRSS"]), 4 << 20)
        self.assertLess(abs(values["tscale_resident_anon_bytes"] - status["RssAnon"]), 4 << 20)
        self.assertLess(values["tscale_resident_anon_bytes"], values["process_resident_memory_bytes"])

    # ---- admin ----

    def test_admin_list(self):
        j = self.d.json("GET", "/admin/models")
        names = [m["name"] for m in j["models"]]
        self.assertEqual(sorted(names), sorted(CASES))
        m = [m for m in j["models"] if m["name"] == INFER_CASE][0]
        self.assertEqual(m["layers"], self.case["layers"])
        self.assertEqual(m["step"], self.case["state"][0]["step"])
        self.assertEqual(m["snapshot"]["reason"], "import")
        self.assertFalse(m["snapshot_failing"])

    def test_admin_errors(self):
        self.error("POST", "/admin/models/nope/snapshots", status=404)
        self.error("GET", "/admin/models/nope/snapshots", status=404)
        self.error("GET", "/admin/models/nope/export", status=404)
        self.error("DELETE", "/admin/models/nope", status=404)
        self.error("POST", "/admin/models/nope/restore", {"snapshot_id": 1}, status=404)
        path = "/admin/models/%s/restore" % INFER_CASE
        self.error("POST", path, {"snapshot_id": 999999}, status=404, contains="999999")
        self.error("POST", path, {"snapshot": 1}, contains="snapshot_id")
        self.error("POST", path, {"snapshot_id": "1"}, contains="snapshot_id")
        self.error("POST", path, b"nope", contains="JSON")
        self.error("PUT", "/admin/models/x", b"", contains="empty")
        self.error("PUT", "/admin/models/x", b"\x10\0\0\0\0\0\0\0{}garbage", contains="model file")
        self.error("PUT", "/admin/models/.hidden", b"x", contains="name")


class Admin(unittest.TestCase):
    """Admin operations that change what is served: each test its own daemon (demo model)."""

    def setUp(self):
        self.d = tsd.Daemon(args=["--snapshot-interval", "0"])

    def tearDown(self):
        self.d.close()

    def feedback(self, model="demo", n=1):
        for _ in range(n):
            j = self.d.json("POST", "/v2/models/%s/feedback" % model,
                            oipc.feedback_body([[0.1 * k for k in range(16)]], "label", [1]))
        return j

    def probe(self, model="demo"):
        _, _, data = self.d.request("POST", "/v2/models/%s/infer" % model,
                                    oipc.infer_body([[0.3 - 0.05 * k for k in range(16)]]))
        return json.loads(data)["outputs"][0]["data"]

    def test_snapshot_list_restore(self):
        s0 = self.d.json("POST", "/admin/models/demo/snapshots", expect=201)
        self.assertEqual(s0["step"], 0)
        before = self.probe()
        self.feedback(n=3)
        after = self.probe()
        self.assertNotEqual(before, after)
        s3 = self.d.json("POST", "/admin/models/demo/snapshots", expect=201)
        self.assertEqual(s3["step"], 3)
        self.assertGreater(s3["snapshot_id"], s0["snapshot_id"])
        lst = self.d.json("GET", "/admin/models/demo/snapshots")["snapshots"]
        self.assertEqual(lst[0]["snapshot_id"], s3["snapshot_id"])  # newest first
        self.assertEqual([s["reason"] for s in lst[:2]], ["admin", "admin"])
        for s in lst:
            self.assertTrue({"snapshot_id", "step", "created_at", "reason", "bytes"} <= set(s))
        r = self.d.json("POST", "/admin/models/demo/restore", {"snapshot_id": s0["snapshot_id"]})
        self.assertEqual(r["step"], 0)
        self.assertEqual(self.probe(), before)
        self.assertEqual(self.d.json("GET", "/admin/models")["models"][0]["step"], 0)
        lst = self.d.json("GET", "/admin/models/demo/snapshots")["snapshots"]
        self.assertEqual(lst[0]["reason"], "restore")
        self.assertEqual(self.feedback()["step"], 1)  # steps continue from the restored state

    def test_export_put_delete(self):
        self.feedback(n=2)
        st, h, blob = self.d.request("GET", "/admin/models/demo/export")
        self.assertEqual(st, 200)
        self.assertEqual(h["content-type"], "application/octet-stream")
        tensors, meta = oipc.read_safetensors(blob)
        self.assertEqual(meta["tscale.format"], "1")
        linear = [i for i, l in enumerate(json.loads(meta["tscale.layers"])) if l["type"] == "ternary_linear"]
        steps = [tensors["%d.step_counter" % i][2][0] for i in linear]
        self.assertEqual(steps, [2] * len(linear))
        # PUT the export under a new name: same answers, step carried over.
        j = self.d.json("PUT", "/admin/models/copy", blob, expect=201)
        self.assertEqual(j["step"], 2)
        self.assertEqual(self.probe("copy"), self.probe("demo"))
        names = [m["name"] for m in self.d.json("GET", "/admin/models")["models"]]
        self.assertEqual(names, ["demo", "copy"])
        # Export again: byte-identical (deterministic writer) apart from the name.
        _, _, blob2 = self.d.request("GET", "/admin/models/copy/export")
        self.assertEqual(oipc.read_safetensors(blob2)[0], tensors)
        # Replace demo by its own earlier export: 200, a new snapshot with reason import.
        self.feedback(n=1)
        j = self.d.json("PUT", "/admin/models/demo", blob, expect=200)
        self.assertEqual(j["step"], 2)
        self.assertEqual(self.d.json("GET", "/admin/models/demo/snapshots")["snapshots"][0]["reason"], "import")
        # DELETE: gone from OIP and admin; its snapshots stay listable.
        self.assertTrue(self.d.json("DELETE", "/admin/models/copy")["unloaded"])
        self.assertEqual(self.d.request("GET", "/v2/models/copy")[0], 404)
        self.assertEqual(self.d.request("POST", "/v2/models/copy/infer", oipc.infer_body([[0.0] * 16]))[0], 404)
        self.assertEqual([m["name"] for m in self.d.json("GET", "/admin/models")["models"]], ["demo"])
        self.assertTrue(self.d.json("GET", "/admin/models/copy/snapshots")["snapshots"])
        self.assertEqual(self.d.request("GET", "/v2/health/ready")[0], 200)


def write(dirname, name, content):
    p = os.path.join(dirname, name)
    with open(p, "w") as f:
        f.write(content)
    return p


class Auth(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.admin = "adm-" + "x" * 20
        cls.fb = "fb-token-123"
        cls.d = tsd.Daemon(args=["--admin-token-file", write(cls.tmp.name, "a", cls.admin + "\n"),
                                 "--feedback-token-file", write(cls.tmp.name, "f", cls.fb + "\n")])

    @classmethod
    def tearDownClass(cls):
        cls.d.close()
        cls.tmp.cleanup()

    def status(self, method, path, token=None, body=None, raw_auth=None):
        h = {}
        if token is not None:
            h["Authorization"] = "Bearer " + token
        if raw_auth is not None:
            h["Authorization"] = raw_auth
        st, hdrs, data = self.d.request(method, path, body, h)
        if st in (401, 403):
            self.assertIn("error", json.loads(data))
        if st == 401:
            self.assertEqual(hdrs.get("www-authenticate"), "Bearer")
        return st

    def test_admin_needs_the_admin_token(self):
        self.assertEqual(self.status("GET", "/admin/models"), 401)
        self.assertEqual(self.status("GET", "/admin/models", raw_auth="Basic abc"), 401)
        self.assertEqual(self.status("GET", "/admin/models", raw_auth="Bearer "), 401)
        self.assertEqual(self.status("GET", "/admin/models", token="wrong"), 403)
        self.assertEqual(self.status("GET", "/admin/models", token=self.admin[:-1]), 403)
        self.assertEqual(self.status("GET", "/admin/models", token=self.admin + "x"), 403)
        self.assertEqual(self.status("GET", "/admin/models", token=self.fb), 403)
        self.assertEqual(self.status("GET", "/admin/models", token=self.admin), 200)
        self.assertEqual(self.status("PUT", "/admin/models/x", body=b"junk"), 401)  # before the body

    def test_feedback_needs_a_token_infer_does_not(self):
        body = oipc.feedback_body([[0.0] * 16], "label", [0])
        path = "/v2/models/demo/feedback"
        self.assertEqual(self.status("POST", path, body=body), 401)
        self.assertEqual(self.status("POST", path, token="nope", body=body), 403)
        self.assertEqual(self.status("POST", path, token=self.fb, body=body), 200)
        self.assertEqual(self.status("POST", path, token=self.admin, body=body), 200)
        self.assertEqual(self.status("POST", "/v2/models/demo/infer", body=oipc.infer_body([[0.0] * 16])), 200)

    def test_tokens_never_logged(self):
        self.status("GET", "/admin/models", token=self.admin)
        self.status("GET", "/admin/models", token="wrong-guess")
        log = self.d.log()
        self.assertNotIn(self.admin, log)
        self.assertNotIn(self.fb, log)
        self.assertNotIn("wrong-guess", log)


class Limits(unittest.TestCase):
    def test_body_limit_413(self):
        with tsd.Daemon(args=["--max-body-bytes", "4096"]) as d:
            big = oipc.infer_body([[0.125] * 16] * 200)
            st, _, data = d.request("POST", "/v2/models/demo/infer", big)
            self.assertEqual(st, 413)
            self.assertIn("error", json.loads(data))
            # chunked upload (no Content-Length): refused once the limit is passed
            c = d.conn()
            c.putrequest("POST", "/v2/models/demo/infer")
            c.putheader("Transfer-Encoding", "chunked")
            c.endheaders()
            payload = json.dumps(big).encode()
            for i in range(0, len(payload), 1000):
                chunk = payload[i:i + 1000]
                c.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            c.send(b"0\r\n\r\n")
            r = c.getresponse()
            self.assertEqual(r.status, 413)
            c.close()
            self.assertEqual(d.request("GET", "/v2/health/ready")[0], 200)


class Malformed(unittest.TestCase):
    """Seeded mutations of valid bodies (bit flips, truncations, splices, inserted bytes) sent
    to every endpoint that takes a body: each is answered 200/201 or 4xx with an error
    object, never a crash or a 5xx, and the daemon stays healthy."""

    def test_mutated_bodies(self):
        import random
        rnd = random.Random(20240501)
        row = [0.5] * 16
        seeds = [
            ("/v2/models/demo/infer", json.dumps(oipc.infer_body([row, row], id="x")).encode(), {}),
            ("/v2/models/demo/feedback", json.dumps(oipc.feedback_body([row], "label", [1])).encode(), {}),
            ("/v2/models/demo/feedback", json.dumps(oipc.feedback_body([row], "target", [[0.0] * 4])).encode(), {}),
            ("/admin/models/demo/restore", b'{"snapshot_id": 1}', {}),
        ]
        body, headers = oipc.binary_request([("input", "FP32", [1, 16], row)],
                                            outputs=[{"name": "output", "parameters": {"binary_data": True}}])
        seeds.append(("/v2/models/demo/infer", body, headers))
        with tsd.Daemon(args=["--snapshot-interval", "0"]) as d:
            _, _, model_file = d.request("GET", "/admin/models/demo/export")
            seeds.append(("/admin/models/fuzzed", model_file, {}))

            def mutate(b):
                b = bytearray(b)
                for _ in range(rnd.randint(1, 4)):
                    op = rnd.randrange(5)
                    i = rnd.randrange(len(b) + 1)
                    if op == 0 and b:
                        b[min(i, len(b) - 1)] ^= 1 << rnd.randrange(8)
                    elif op == 1:
                        b = b[:i]
                    elif op == 2:
                        b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
                    elif op == 3 and b:
                        j = rnd.randrange(len(b))
                        b[i:i] = b[j:j + rnd.randint(1, 32)]
                    else:
                        b[i:i] = rnd.choice([b"[", b"]", b"{", b"}", b",", b"\"", b"1e999", b"-", b"null"])
                return bytes(b)

            for n in range(240):
                path, seed, hdrs = seeds[n % len(seeds)]
                method = "PUT" if path.startswith("/admin/models/fuzzed") else "POST"
                st, _, data = d.request(method, path, mutate(seed), dict(hdrs))
                self.assertTrue(st in (200, 201) or 400 <= st < 500, (n, st, data[:200]))
                if st >= 400:
                    self.assertIn("error", json.loads(data))
            for n in range(40):  # pure noise, with and without a binary header length
                junk = bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 300)))
                h = {"Inference-Header-Content-Length": str(rnd.randint(0, 400))} if n % 2 else {}
                st, _, _ = d.request("POST", "/v2/models/demo/infer", junk, h)
                self.assertEqual(st, 400)
            self.assertEqual(d.request("GET", "/v2/health/ready")[0], 200)
            self.assertEqual(d.request("POST", "/v2/models/demo/infer", oipc.infer_body([row]))[0], 200)


class MaxBatch(unittest.TestCase):
    def test_request_over_max_batch_runs_alone_with_the_same_answers(self):
        rows = [[((i * 3 + k) % 7) / 3.0 - 1.0 for k in range(16)] for i in range(5)]
        with tsd.Daemon(args=["--max-batch", "2"]) as d:
            together = d.json("POST", "/v2/models/demo/infer", oipc.infer_body(rows))["outputs"][0]["data"]
            for i, r in enumerate(rows):
                alone = d.json("POST", "/v2/models/demo/infer", oipc.infer_body([r]))["outputs"][0]["data"]
                self.assertEqual(alone, together[i * 4:(i + 1) * 4])
            text = d.request("GET", "/metrics")[2].decode()
            self.assertIn('tscale_batch_rows_bucket{le="4"} 5', text)   # the five single rows
            self.assertIn('tscale_batch_rows_bucket{le="8"} 6', text)   # and the 5-row request, alone


def run_tscaled(*args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("TSCALE_")}
    e.update(env or {})
    p = subprocess.run([BINARY, *args], capture_output=True, text=True, env=e, timeout=30)
    return p.returncode, p.stdout, p.stderr


class CommandLine(unittest.TestCase):
    def test_help_and_version(self):
        rc, out, _ = run_tscaled("--help")
        self.assertEqual(rc, 0)
        for flag in ("--listen", "--db", "--model", "--snapshot-interval", "--threads", "--max-batch",
                     "--max-queue-delay-us", "--admin-token-file", "--feedback-token-file",
                     "--max-body-bytes", "--snapshot-keep", "--feedback-requires-snapshot"):
            self.assertIn(flag, out)
        rc, out, _ = run_tscaled("--version")
        self.assertEqual(rc, 0)
        self.assertRegex(out, r"^tscaled \d+\.\d+\.\d+")

    def test_bad_flags_refused(self):
        for args, word in ((["--max-batch", "0"], "max-batch"), (["--bogus"], "bogus"),
                           (["--listen", "nohost"], "listen"), (["--max-batch"], "value"),
                           (["--threads", "x"], "threads"), (["--model", "=noname"], "NAME=FILE")):
            rc, _, err = run_tscaled(*args)
            self.assertEqual(rc, 2, args)
            self.assertIn(word, err)
        rc, _, err = run_tscaled(env={"TSCALE_MAX_BATCH": "-1"})
        self.assertEqual(rc, 2)
        self.assertIn("TSCALE_MAX_BATCH", err)

    def test_environment_and_flags_win(self):
        with tempfile.TemporaryDirectory() as tmp:
            # The environment's bad port is overridden by tsd's --listen flag.
            with tsd.Daemon(env={"TSCALE_LISTEN": "127.0.0.1:1", "TSCALE_MAX_ROWS": "2"}) as d:
                st, _, data = d.request("POST", "/v2/models/demo/infer", oipc.infer_body([[0.0] * 16] * 3))
                self.assertEqual(st, 400)
                self.assertIn("max-rows", json.loads(data)["error"])

    def test_bad_token_files_refused_at_start(self):
        with tempfile.TemporaryDirectory() as tmp:
            empty = write(tmp, "empty", "\n")
            for path in (empty, os.path.join(tmp, "missing")):
                rc, _, err = run_tscaled("--listen", "127.0.0.1:0", "--db", os.path.join(tmp, "db"),
                                         "--admin-token-file", path)
                self.assertEqual(rc, 1)
                self.assertIn(path, err)

    def test_port_in_use_refused(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            with tempfile.TemporaryDirectory() as tmp:
                rc, _, err = run_tscaled("--listen", "127.0.0.1:%d" % s.getsockname()[1],
                                         "--db", os.path.join(tmp, "db"))
                self.assertEqual(rc, 1)
                self.assertIn("cannot listen", err)


if __name__ == "__main__":
    unittest.main()
