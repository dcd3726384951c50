"""test_feedback.py — POST /v2/models/{m}/feedback (SPEC §1, §4): every golden case's feedback
sequence through the daemon, in JSON and in binary form, must give the reference's loss,
and exactly the reference's corr_accum and step after every step; then the final forward
matches. Plus every way a feedback body can be wrong."""
import json
import unittest

import oipc
import tsd

CASES = oipc.golden_cases()


def linear_state(blob):
    """[(step, corr_accum)] of each ternary_linear layer of an exported model file."""
    tensors, meta = oipc.read_safetensors(blob)
    out = []
    for i, l in enumerate(json.loads(meta["tscale.layers"])):
        if l["type"] == "ternary_linear":
            out.append((tensors["%d.step_counter" % i][2][0], tensors["%d.corr_accum" % i][2]))
    return out


def expected_state(after):
    return [(a["step"], a["corr_accum"]) for a, l in after if l["type"] == "ternary_linear"]


class Golden(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        args = ["--snapshot-interval", "0"]
        for c in CASES:
            args += ["--model", "%s=%s" % (c, oipc.golden_model(c))]
            args += ["--model", "bin_%s=%s" % (c, oipc.golden_model(c))]
        cls.d = tsd.Daemon(args=args)

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def send(self, model, fb, binary, fid):
        kind = fb["kind"]
        if not binary:
            body, headers = oipc.feedback_body(fb["input"], kind, fb[kind], id=fid), None
        else:
            rows = fb["input"]
            sig = fb[kind]
            if kind == "label":
                sig_t = ("label", "INT32", [len(sig)], sig)
            else:
                sig_t = (kind, "FP32", [len(sig), len(sig[0])], oipc.flat(sig))
            body, headers = oipc.binary_request(
                [("input", "FP32", [len(rows), len(rows[0])], oipc.flat(rows)), sig_t], id=fid)
        st, _, data = self.d.request("POST", "/v2/models/%s/feedback" % model, body, headers)
        self.assertEqual(st, 200, data[:300])
        return json.loads(data)

    def run_case(self, case, binary):
        g = oipc.golden(case)
        model = ("bin_" if binary else "") + case
        step0 = [s for s, l in zip(g["state"], g["layers"]) if l["type"] == "ternary_linear"][0]["step"]
        for i, fb in enumerate(g["feedback"]):
            j = self.send(model, fb, binary, "fb-%d" % i)
            self.assertEqual(j["model_name"], model)
            self.assertEqual(j["id"], "fb-%d" % i)
            self.assertEqual(j["step"], step0 + i + 1)
            if fb["loss"] is None:
                self.assertNotIn("loss", j)
            else:
                self.assertTrue(abs(j["loss"] - fb["loss"]) <= 1e-4 + 1e-4 * abs(fb["loss"]),
                                (j["loss"], fb["loss"]))
            st, _, blob = self.d.request("GET", "/admin/models/%s/export" % model)
            self.assertEqual(st, 200)
            self.assertEqual(linear_state(blob), expected_state(zip(fb["after"], g["layers"])),
                             "%s step %d" % (case, i + 1))
        for fw in g["final_forward"]:
            st, _, data = self.d.request("POST", "/v2/models/%s/infer" % model, oipc.infer_body(fw["input"]))
            out = json.loads(data)["outputs"][0]["data"]
            for a, b in zip(out, oipc.flat(fw["output"])):
                self.assertTrue(oipc.close(a, b), (case, a, b))
        m = [m for m in self.d.json("GET", "/admin/models")["models"] if m["name"] == model][0]
        self.assertEqual(m["step"], step0 + len(g["feedback"]))
        self.assertEqual(m["feedback_steps"], len(g["feedback"]))

    def test_golden_json(self):
        for c in CASES:
            with self.subTest(case=c):
                self.run_case(c, binary=False)

    def test_golden_binary(self):
        for c in CASES:
            with self.subTest(case=c):
                self.run_case(c, binary=True)


class Errors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = tsd.Daemon(args=["--snapshot-interval", "0"])
        cls.row = [0.25] * 16

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def step(self):
        return self.d.json("GET", "/admin/models")["models"][0]["step"]

    def refuse(self, body, contains=None, headers=None, status=400):
        before = self.step()
        st, _, data = self.d.request("POST", "/v2/models/demo/feedback", body, headers)
        self.assertEqual(st, status, data[:300])
        err = json.loads(data)["error"]
        if contains:
            self.assertIn(contains, err)
        self.assertEqual(self.step(), before, "a refused feedback changed the model")

    def test_refused_bodies(self):
        row, T = self.row, oipc.tensor
        cases = [
            ({"inputs": [T("input", [row])]}, "exactly one"),
            ({"inputs": [T("input", [row]), T("label", [1], "INT64"), T("target", [[0.0] * 4])]}, "exactly one"),
            ({"inputs": [T("label", [1], "INT64")]}, "input"),
            ({"inputs": [T("input", [row]), T("label", [4], "INT64")]}, "label[0]"),
            ({"inputs": [T("input", [row]), T("label", [-1], "INT64")]}, "label[0]"),
            ({"inputs": [T("input", [row]), T("label", [1.0], "FP32")]}, "INT32 or INT64"),
            ({"inputs": [T("input", [row]), T("label", [1, 2], "INT64")]}, "shape"),
            ({"inputs": [T("input", [row]), T("target", [[0.0] * 5])]}, "shape"),
            ({"inputs": [T("input", [row]), T("grad_output", [[0.0] * 4] * 2)]}, "rows"),
            ({"inputs": [T("input", [row]), T("label", [1], "INT64"), T("weights", [1.0])]}, "weights"),
            ({"inputs": [T("input", [row[:-1]]), T("label", [1], "INT64")]}, "shape"),
            (b"[1,2,3]", None),
        ]
        for body, word in cases:
            with self.subTest(body=str(body)[:100]):
                self.refuse(body, word)
        for v in (float("nan"), float("-inf")):
            body, headers = oipc.binary_request([("input", "FP32", [1, 16], self.row),
                                                 ("target", "FP32", [1, 4], [0.0, v, 0.0, 0.0])])
            self.refuse(body, headers=headers)
            body, headers = oipc.binary_request([("input", "FP32", [1, 16], [v] + self.row[1:]),
                                                 ("grad_output", "FP32", [1, 4], [0.0] * 4)])
            self.refuse(body, headers=headers)
        st, _, _ = self.d.request("POST", "/v2/models/demo/versions/7/feedback",
                                  oipc.feedback_body([row], "label", [1]))
        self.assertEqual(st, 404)

    def test_steps_contiguous_and_loss_reported(self):
        s0 = self.step()
        for i, (kind, sig) in enumerate((("label", [3]), ("target", [[0.5] * 4]), ("grad_output", [[0.1] * 4]))):
            j = self.d.json("POST", "/v2/models/demo/feedback", oipc.feedback_body([self.row], kind, sig))
            self.assertEqual(j["step"], s0 + i + 1)
            self.assertEqual(j["model_version"], "1")
            self.assertEqual("loss" in j, kind != "grad_output")
            self.assertNotIn("id", j)
        text = self.d.request("GET", "/metrics")[2].decode()
        self.assertIn('tscale_model_step{model="demo"} %d' % (s0 + 3), text)
        self.assertIn("tscale_feedback_last_loss{model=\"demo\"}", text)


if __name__ == "__main__":
    unittest.main()
