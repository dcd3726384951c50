"""SPEC §4/§5 conformance of the HTTP API as an Open Inference Protocol client (tritonclient's
HTTP client) sees it: the binary tensor data extension in both directions as Triton's
binary_tensor_data.md describes it, requested outputs, id echo, versions, integer/FP64 inputs,
feedback with every signal, the error statuses with {"error": ...}, non-finite numbers, tokens."""
import json
import math
import os
import struct
import tempfile
import unittest

import oipc
import tsd

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spec_data")
MODEL = os.path.join(DATA, "step0_corr.safetensors")   # in 20, out 4
IN, OUT = 20, 4
X = [[math.sin(0.3 * i + b) for i in range(IN)] for b in range(3)]


def binary_body(header, blobs):
    js = json.dumps(header).encode()
    return js + b"".join(blobs), {"Inference-Header-Content-Length": str(len(js)),
                                  "Content-Type": "application/octet-stream"}


def f32(values):
    return struct.pack("<%df" % len(values), *values)


class SpecHTTP(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # m only serves inference (its outputs stay put); f takes the feedback
        cls.d = tsd.Daemon(args=["--model", f"m={MODEL}", "--model", f"f={MODEL}",
                                 "--snapshot-interval", "0"])
        out = cls.d.json("POST", "/v2/models/m/infer", oipc.infer_body(X))
        cls.want = out["outputs"][0]["data"]

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def post(self, path, body, headers=None):
        return self.d.request("POST", path, body, headers)

    def error(self, status, method, path, body=None, headers=None):
        st, h, data = self.d.request(method, path, body, headers)
        self.assertEqual(st, status, f"{method} {path}: {data[:300]!r}")
        j = json.loads(data)
        self.assertEqual(list(j), ["error"])
        self.assertIsInstance(j["error"], str)
        self.assertTrue(j["error"])
        self.assertTrue(h.get("content-type", "").startswith("application/json"))
        return h, j["error"]

    def step(self):
        return next(m["step"] for m in self.d.json("GET", "/admin/models")["models"] if m["name"] == "f")

    def same(self, got):
        self.assertEqual(len(got), len(self.want))
        for g, w in zip(got, self.want):
            self.assertTrue(oipc.close(g, w), (got, self.want))

    # ── the binary tensor data extension ──

    def test_tritonclient_default_request(self):
        """tritonclient.http: binary inputs, no outputs listed, parameters.binary_data_output."""
        body, hdrs = binary_body({"id": "t1", "inputs": [
            {"name": "input", "shape": [3, IN], "datatype": "FP32",
             "parameters": {"binary_data_size": 4 * 3 * IN}}],
            "parameters": {"binary_data_output": True}}, [f32(oipc.flat(X))])
        st, h, data = self.post("/v2/models/m/infer", body, hdrs)
        self.assertEqual(st, 200, data[:300])
        n = int(h["inference-header-content-length"])
        head = json.loads(data[:n])
        self.assertEqual(head["id"], "t1")
        self.assertEqual(head["model_name"], "m")
        (o,) = head["outputs"]
        self.assertEqual((o["name"], o["datatype"], o["shape"]), ("output", "FP32", [3, OUT]))
        self.assertNotIn("data", o)
        self.assertEqual(o["parameters"]["binary_data_size"], 4 * 3 * OUT)
        self.assertEqual(len(data), n + 4 * 3 * OUT)
        self.same(struct.unpack("<%df" % (3 * OUT), data[n:]))

    def test_output_binary_flag_wins_over_request_flag(self):
        body, hdrs = binary_body({"inputs": [
            {"name": "input", "shape": [3, IN], "datatype": "FP32",
             "parameters": {"binary_data_size": 4 * 3 * IN}}],
            "outputs": [{"name": "output", "parameters": {"binary_data": False}}],
            "parameters": {"binary_data_output": True}}, [f32(oipc.flat(X))])
        st, h, data = self.post("/v2/models/m/infer", body, hdrs)
        self.assertEqual(st, 200, data[:300])
        self.assertNotIn("inference-header-content-length", h)
        self.same(json.loads(data)["outputs"][0]["data"])

    def test_json_request_binary_output(self):
        body = dict(oipc.infer_body(X, id="j"), outputs=[{"name": "output", "parameters": {"binary_data": True}}])
        st, h, data = self.post("/v2/models/m/infer", body)
        self.assertEqual(st, 200, data[:300])
        j, outs = oipc.decode_response(h, data)
        self.assertEqual(j["id"], "j")
        self.same(outs["output"])

    def test_json_response_without_binary(self):
        st, h, data = self.post("/v2/models/m/infer", dict(oipc.infer_body(X), outputs=[{"name": "output"}]))
        self.assertEqual(st, 200)
        self.assertNotIn("inference-header-content-length", h)
        j = json.loads(data)
        self.assertEqual(j["outputs"][0]["shape"], [3, OUT])
        self.same(j["outputs"][0]["data"])

    def test_header_length_without_binary_part(self):
        js = json.dumps(oipc.infer_body(X)).encode()
        st, _, data = self.post("/v2/models/m/infer", js, {"Inference-Header-Content-Length": str(len(js))})
        self.assertEqual(st, 200, data[:200])
        self.same(json.loads(data)["outputs"][0]["data"])

    def test_binary_size_mismatch_is_400(self):
        for size, extra in ((4 * 3 * IN - 4, b""), (4 * 3 * IN, b"\0\0\0\0"), (4 * 3 * IN + 4, b"")):
            body, hdrs = binary_body({"inputs": [
                {"name": "input", "shape": [3, IN], "datatype": "FP32",
                 "parameters": {"binary_data_size": size}}]}, [f32(oipc.flat(X)) + extra])
            self.error(400, "POST", "/v2/models/m/infer", body, hdrs)
        body, hdrs = binary_body({"inputs": [oipc.tensor("input", X)]}, [b"\0" * 8])
        self.error(400, "POST", "/v2/models/m/infer", body, hdrs)
        body, _ = binary_body({"inputs": [{"name": "input", "shape": [3, IN], "datatype": "FP32",
                                           "parameters": {"binary_data_size": 4 * 3 * IN}}]},
                              [f32(oipc.flat(X))])
        self.error(400, "POST", "/v2/models/m/infer", body, {"Content-Type": "application/json"})

    # ── datatypes, versions, requested outputs, id ──

    def test_fp64_and_integer_inputs(self):
        ints = [[float(round(3 * v)) for v in r] for r in X]
        base = self.d.json("POST", "/v2/models/m/infer", oipc.infer_body(ints))["outputs"][0]["data"]
        for dt in ("FP64", "INT32", "INT64"):
            body = {"inputs": [{"name": "input", "datatype": dt, "shape": [3, IN],
                                "data": [int(v) if dt != "FP64" else v for v in oipc.flat(ints)]}]}
            out = self.d.json("POST", "/v2/models/m/infer", body)["outputs"][0]
            self.assertEqual(out["datatype"], "FP32")
            self.assertEqual(out["data"], base, dt)
            fmt = {"FP64": "d", "INT32": "i", "INT64": "q"}[dt]
            vals = [int(v) if dt != "FP64" else v for v in oipc.flat(ints)]
            blob = struct.pack("<%d%s" % (len(vals), fmt), *vals)
            body, hdrs = binary_body({"inputs": [{"name": "input", "datatype": dt, "shape": [3, IN],
                                                  "parameters": {"binary_data_size": len(blob)}}]}, [blob])
            st, h, data = self.post("/v2/models/m/infer", body, hdrs)
            self.assertEqual(st, 200, data[:200])
            self.assertEqual(json.loads(data)["outputs"][0]["data"], base, dt + " binary")

    def test_versions_path(self):
        meta = self.d.json("GET", "/v2/models/m")
        v = meta["versions"][0]
        self.assertIsInstance(v, str)
        out = self.d.json("POST", f"/v2/models/m/versions/{v}/infer", oipc.infer_body(X, id="v"))
        self.assertEqual(out["model_version"], v)
        self.assertEqual(out["id"], "v")
        self.same(out["outputs"][0]["data"])
        self.assertEqual(self.d.json("GET", f"/v2/models/m/versions/{v}")["name"], "m")
        self.assertTrue(self.d.json("GET", f"/v2/models/m/versions/{v}/ready")["ready"])
        self.error(404, "POST", "/v2/models/m/versions/999/infer", oipc.infer_body(X))
        self.error(404, "GET", "/v2/models/m/versions/999")

    def test_unknown_requested_output_is_400(self):
        self.error(400, "POST", "/v2/models/m/infer", dict(oipc.infer_body(X), outputs=[{"name": "logits"}]))

    def test_metadata_shapes(self):
        j = self.d.json("GET", "/v2/models/m")
        self.assertEqual(j["platform"], "tscale")
        self.assertEqual(j["inputs"], [{"name": "input", "datatype": "FP32", "shape": [-1, IN]}])
        self.assertEqual(j["outputs"], [{"name": "output", "datatype": "FP32", "shape": [-1, OUT]}])
        s = self.d.json("GET", "/v2")
        self.assertEqual(s["name"], "tscale")
        self.assertIsInstance(s["version"], str)
        self.assertIn("binary_tensor_data", s["extensions"])

    # ── errors ──

    def test_status_codes(self):
        self.error(404, "GET", "/v2/models/nope")
        self.error(404, "GET", "/v2/models/nope/ready")
        self.error(404, "POST", "/v2/models/nope/infer", oipc.infer_body(X))
        self.error(404, "POST", "/v2/models/nope/feedback", oipc.feedback_body(X, "label", [0, 1, 2]))
        self.error(404, "GET", "/v3")
        self.error(404, "GET", "/admin/models/nope/export")
        for method, path, allowed in (("GET", "/v2/models/m/infer", "POST"),
                                      ("GET", "/v2/models/m/feedback", "POST"),
                                      ("POST", "/v2/health/ready", "GET"),
                                      ("DELETE", "/v2/models/m", "GET"),
                                      ("POST", "/metrics", "GET"),
                                      ("GET", "/admin/models/m/restore", "POST")):
            h, _ = self.error(405, method, path)
            self.assertIn(allowed, h.get("allow", ""), path)
        self.error(400, "POST", "/v2/models/m/infer", b"{")
        self.error(400, "POST", "/v2/models/m/infer", b"")
        self.error(400, "POST", "/v2/models/m/infer", {"inputs": [oipc.tensor("input", [r[:-1] for r in X])]})
        self.error(400, "POST", "/v2/models/m/infer", {"inputs": [dict(oipc.tensor("input", X), shape=[3, IN + 1])]})
        self.error(400, "POST", "/v2/models/m/infer", {"inputs": [dict(oipc.tensor("input", X), name="x")]})
        self.error(400, "POST", "/v2/models/m/infer", {"inputs": [dict(oipc.tensor("input", X), datatype="BYTES")]})

    def test_non_finite_never_reach_the_model(self):
        before = self.step()
        nan, inf = float("nan"), float("inf")
        for kind in ("input", "grad_output", "target"):
            for bad in (nan, inf, -inf):
                sig = [[0.5] * OUT for _ in X]
                rows = [list(r) for r in X]
                (rows if kind == "input" else sig)[1][2] = bad
                second = ("grad_output", sig) if kind != "target" else ("target", sig)
                body, hdrs = binary_body({"inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [3, IN],
                     "parameters": {"binary_data_size": 4 * 3 * IN}},
                    {"name": second[0], "datatype": "FP32", "shape": [3, OUT],
                     "parameters": {"binary_data_size": 4 * 3 * OUT}}]},
                    [f32(oipc.flat(rows)), f32(oipc.flat(sig))])
                with self.subTest(kind=kind, value=bad):
                    self.error(400, "POST", "/v2/models/f/feedback", body, hdrs)
                    if kind == "input":
                        b2, h2 = binary_body({"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, IN],
                                                          "parameters": {"binary_data_size": 4 * 3 * IN}}]},
                                             [f32(oipc.flat(rows))])
                        self.error(400, "POST", "/v2/models/m/infer", b2, h2)
            # JSON: a float32 overflow is non-finite too; NaN is not JSON at all
            big = [[1e39] + [0.0] * (OUT - 1)] + [[0.0] * OUT] * 2
            self.error(400, "POST", "/v2/models/f/feedback", oipc.feedback_body(X, "target", big))
        self.error(400, "POST", "/v2/models/m/infer", json.dumps(oipc.infer_body([[float("nan")] * IN])).encode())
        self.assertEqual(self.step(), before)

    # ── feedback ──

    def test_feedback_signals_and_response(self):
        s0 = self.step()
        for k, (kind, dt, sig) in enumerate((("label", "INT32", [0, 3, 1]), ("label", "INT64", [2, 2, 0]),
                                             ("target", "FP32", [[0.1] * OUT] * 3),
                                             ("grad_output", "FP32", [[0.2, -0.1, 0.0, 0.3]] * 3))):
            body = {"id": f"f{k}", "inputs": [oipc.tensor("input", X), oipc.tensor(kind, sig, dt)]}
            r = self.d.json("POST", "/v2/models/f/feedback", body)
            self.assertEqual(r["model_name"], "f")
            self.assertIsInstance(r["model_version"], str)
            self.assertEqual(r["id"], f"f{k}")
            self.assertEqual(r["step"], s0 + k + 1)
            if kind == "grad_output":
                self.assertNotIn("loss", r)
            else:
                self.assertTrue(math.isfinite(r["loss"]) and r["loss"] >= 0)
        # binary INT32 / INT64 labels
        for dt, fmt in (("INT32", "i"), ("INT64", "q")):
            body, hdrs = binary_body({"inputs": [
                {"name": "input", "datatype": "FP32", "shape": [3, IN], "parameters": {"binary_data_size": 4 * 3 * IN}},
                {"name": "label", "datatype": dt, "shape": [3],
                 "parameters": {"binary_data_size": struct.calcsize(fmt) * 3}}]},
                [f32(oipc.flat(X)), struct.pack("<3" + fmt, 1, 0, 3)])
            st, _, data = self.post("/v2/models/f/feedback", body, hdrs)
            self.assertEqual(st, 200, data[:200])
        self.assertEqual(self.step(), s0 + 6)

    def test_feedback_refusals(self):
        s0 = self.step()
        bad = [
            {"inputs": [oipc.tensor("input", X)]},
            {"inputs": [oipc.tensor("input", X), oipc.tensor("label", [0, 1, 2], "INT64"),
                        oipc.tensor("target", [[0.0] * OUT] * 3)]},
            {"inputs": [oipc.tensor("input", X), oipc.tensor("label", [0, 1, OUT], "INT64")]},
            {"inputs": [oipc.tensor("input", X), oipc.tensor("label", [0, -1, 1], "INT32")]},
            {"inputs": [oipc.tensor("input", X), oipc.tensor("label", [0, 1], "INT64")]},
            {"inputs": [oipc.tensor("input", X), oipc.tensor("label", [0.0, 1.0, 2.0], "FP32")]},
            {"inputs": [oipc.tensor("input", X), oipc.tensor("target", [[0.0] * (OUT + 1)] * 3)]},
            {"inputs": [oipc.tensor("input", X), oipc.tensor("grad_output", [[0.0] * OUT] * 2)]},
        ]
        for b in bad:
            with self.subTest(body=json.dumps(b)[:120]):
                self.error(400, "POST", "/v2/models/f/feedback", b)
        self.assertEqual(self.step(), s0)

    def test_413(self):
        with tsd.Daemon(args=["--model", f"m={MODEL}", "--max-body-bytes", "4096"]) as d:
            st, h, data = d.request("POST", "/v2/models/m/infer", b" " * 5000 + b"{}",
                                    {"Content-Type": "application/json"})
            self.assertEqual(st, 413)
            self.assertIn("error", json.loads(data))

    def test_metrics_is_prometheus_text(self):
        st, h, data = self.d.request("GET", "/metrics")
        self.assertEqual(st, 200)
        self.assertTrue(h["content-type"].startswith("text/plain"))
        import re
        sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                            r'[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|\.\d+|Inf|NaN|\+Inf|-Inf)( \d+)?$')
        lines = data.decode().splitlines()
        self.assertTrue(lines)
        for line in lines:
            if line.startswith("#"):
                self.assertRegex(line, r"^# (HELP|TYPE) \S+")
            elif line:
                self.assertRegex(line, sample)


class SpecTokens(unittest.TestCase):
    def test_tokens(self):
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
        with open(os.path.join(tmp, "a"), "w") as f:
            f.write("admin-tok\n")
        with open(os.path.join(tmp, "f"), "w") as f:
            f.write("fb-tok\n")
        body = oipc.feedback_body(X, "label", [0, 1, 2])
        with tsd.Daemon(args=["--model", f"m={MODEL}", "--admin-token-file", os.path.join(tmp, "a"),
                              "--feedback-token-file", os.path.join(tmp, "f")]) as d:
            def st(method, path, b=None, tok=None):
                return d.request(method, path, b, {"Authorization": "Bearer " + tok} if tok else None)[0]
            self.assertEqual(st("GET", "/admin/models"), 401)
            self.assertEqual(st("GET", "/admin/models", tok="nope"), 403)
            self.assertEqual(st("GET", "/admin/models", tok="fb-tok"), 403)
            self.assertEqual(st("GET", "/admin/models", tok="admin-tok"), 200)
            self.assertEqual(st("POST", "/v2/models/m/feedback", body), 401)
            self.assertEqual(st("POST", "/v2/models/m/feedback", body, tok="nope"), 403)
            self.assertEqual(st("POST", "/v2/models/m/feedback", body, tok="fb-tok"), 200)
            self.assertEqual(st("POST", "/v2/models/m/feedback", body, tok="admin-tok"), 200)
            self.assertEqual(st("POST", "/v2/models/m/infer", oipc.infer_body(X)), 200)
            self.assertEqual(st("GET", "/v2/models/m"), 200)
            for line in d.log_lines:
                self.assertNotIn("admin-tok", line)
                self.assertNotIn("fb-tok", line)
