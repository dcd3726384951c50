"""test_feedback_by_id.py — feedback by inference id (issue 15 item 1; it extends SPEC §4).

Every inference answer carries an id (the client's, or one the daemon makes); the daemon keeps
the inputs of recent inferences in a bounded window, and a feedback request with that id and no
'input' applies one step on the stored input (all rows, or parameters.rows).

The reference for "the same step" is a twin daemon started from the same model file that gets
the same feedback with the input sent again: answers (step, loss) and exported state must be
equal, byte for byte."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

import modelstate as ms
import oipc
import tsd

CASE = "deep_mixed"          # its feedback requests use label, target and grad_output
IN_DIM = ms.in_dim(CASE)
ID_RE = re.compile(r"^[0-9a-f]{16}-[0-9]+$")


def start(*args):
    return tsd.Daemon(args=["--model", "m=" + oipc.golden_model(CASE)] + list(args))


def requests():
    """The golden case's feedback requests: (input rows, kind, signal)."""
    return [(f["input"], f["kind"], f[f["kind"]]) for f in oipc.golden(CASE)["feedback"]]


def infer(d, rows, id=None, binary=False):
    """The answer's JSON header (with its id)."""
    if binary:
        body, headers = oipc.binary_request([("input", "FP32", [len(rows), IN_DIM], oipc.flat(rows))],
                                            id=id, parameters={"binary_data_output": True})
        status, h, data = d.request("POST", "/v2/models/m/infer", body, headers)
        assert status == 200, (status, data[:300])
        return oipc.decode_response(h, data)[0]
    return d.json("POST", "/v2/models/m/infer", oipc.infer_body(rows, id=id))


def signal_tensor(kind, signal):
    dt = "INT64" if kind == "label" else "FP32"
    return oipc.tensor(kind, signal, dt)


def by_id(d, id, kind, signal, rows=None, binary=False):
    """POST feedback by id; (status, parsed body)."""
    params = {"rows": rows} if rows is not None else None
    if binary:
        t = signal_tensor(kind, signal)
        body, headers = oipc.binary_request([(kind, t["datatype"], t["shape"], t["data"])], id=id,
                                            parameters=params)
    else:
        body = {"id": id, "inputs": [signal_tensor(kind, signal)]}
        if params:
            body["parameters"] = params
        headers = None
    status, _, data = d.request("POST", "/v2/models/m/feedback", body, headers)
    return status, json.loads(data)


def by_input(d, rows, kind, signal, id=None):
    status, _, data = d.request("POST", "/v2/models/m/feedback", oipc.feedback_body(rows, kind, signal, id=id))
    assert status == 200, (status, data[:300])
    return json.loads(data)


def metric(d, name):
    text = d.request("GET", "/metrics")[2].decode()
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    assert m, "metric %s missing" % name
    return float(m.group(1))


def pick(values, rows):
    return [values[r] for r in rows]


class ByIdEqualsByInput(unittest.TestCase):
    """Same step, same loss, same state as sending the input again on a twin daemon."""

    def test_all_kinds_json_and_binary(self):
        with start() as a, start() as b:
            for i, (x, kind, signal) in enumerate(requests()):
                binary = i % 2 == 1
                ans = infer(a, x, id="q%d" % i, binary=binary)
                self.assertEqual(ans["id"], "q%d" % i)
                status, got = by_id(a, "q%d" % i, kind, signal, binary=binary)
                self.assertEqual(status, 200, got)
                want = by_input(b, x, kind, signal)
                self.assertEqual(got["step"], want["step"])
                self.assertEqual(got.get("loss"), want.get("loss"), kind)
                self.assertEqual(got["id"], "q%d" % i)
            self.assertEqual(ms.export(a, "m"), ms.export(b, "m"))

    def test_rows_subset_in_listed_order(self):
        with start() as a, start() as b:
            for i, (x, kind, signal) in enumerate(requests()):
                if len(x) < 2:
                    continue
                rows = [len(x) - 1, 0]
                ids = infer(a, x)["id"]      # the daemon's id this time
                status, got = by_id(a, ids, kind, pick(signal, rows), rows=rows)
                self.assertEqual(status, 200, got)
                want = by_input(b, pick(x, rows), kind, pick(signal, rows))
                self.assertEqual((got["step"], got.get("loss")), (want["step"], want.get("loss")))
            self.assertEqual(ms.export(a, "m"), ms.export(b, "m"))


class Errors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = start()
        cls.x, cls.kind, cls.signal = next(r for r in requests() if r[1] == "target" and len(r[0]) >= 2)

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def test_extension_listed(self):
        self.assertIn("feedback_by_id", self.d.json("GET", "/v2")["extensions"])

    def test_unknown_id_is_404(self):
        status, body = by_id(self.d, "never-seen", self.kind, self.signal)
        self.assertEqual(status, 404)
        self.assertIn("no inference with id 'never-seen' in the feedback window of model 'm'", body["error"])

    def test_bad_rows_are_400_and_leave_the_input(self):
        ident = infer(self.d, self.x)["id"]
        n = len(self.x)
        for rows, sig, why in (([0, 0], [self.signal[0]] * 2, "listed twice"),
                               ([n], [self.signal[0]], "not a row of the inference"),
                               ([], [], "empty"),
                               ([0, 1], [self.signal[0]], "rows")):
            status, body = by_id(self.d, ident, self.kind, sig or [[0.0] * len(self.signal[0])], rows=rows)
            self.assertEqual(status, 400, (rows, body))
            self.assertIn(why, body["error"])
        status, body = by_id(self.d, ident, self.kind, self.signal)   # still there: it applies
        self.assertEqual(status, 200, body)

    def test_rows_with_input_is_400(self):
        body = oipc.feedback_body(self.x, self.kind, self.signal)
        body["parameters"] = {"rows": [0]}
        status, _, data = self.d.request("POST", "/v2/models/m/feedback", body)
        self.assertEqual(status, 400)
        self.assertIn("parameters.rows", json.loads(data)["error"])

    def test_no_input_and_no_id_is_400(self):
        status, _, data = self.d.request("POST", "/v2/models/m/feedback",
                                         {"inputs": [signal_tensor(self.kind, self.signal)]})
        self.assertEqual(status, 400)
        self.assertIn("feedback by id", json.loads(data)["error"])

    def test_repeat_answers_first_answer_and_changed_body_is_409(self):
        ident = infer(self.d, self.x)["id"]
        steps = metric(self.d, 'tscale_feedback_steps_total{model="m"}')
        first = by_id(self.d, ident, self.kind, self.signal)
        again = by_id(self.d, ident, self.kind, self.signal, binary=True)   # same numbers, binary
        self.assertEqual(first[0], 200)
        self.assertEqual(first, again)
        self.assertEqual(metric(self.d, 'tscale_feedback_steps_total{model="m"}'), steps + 1)
        other = [[v + 1.0 for v in r] for r in self.signal]
        status, body = by_id(self.d, ident, self.kind, other)
        self.assertEqual(status, 409, body)
        self.assertIn("already used with a different body", body["error"])

    def test_concurrent_repeats_get_one_step(self):
        ident = infer(self.d, self.x)["id"]
        steps = metric(self.d, 'tscale_feedback_steps_total{model="m"}')
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(by_id(self.d, ident, self.kind, self.signal)))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(len(answers), 8)
        self.assertEqual(answers[0][0], 200, answers[0])
        self.assertTrue(all(a == answers[0] for a in answers), answers)
        self.assertEqual(metric(self.d, 'tscale_feedback_steps_total{model="m"}'), steps + 1)

    def test_server_ids_are_unique(self):
        ids = [infer(self.d, self.x[:1])["id"] for _ in range(50)]
        ids += [infer(self.d, self.x[:1], binary=True)["id"] for _ in range(10)]
        self.assertEqual(len(set(ids)), len(ids))
        for i in ids:
            self.assertRegex(i, ID_RE)
        self.assertEqual(len({i.split("-")[0] for i in ids}), 1)   # one prefix per daemon run
        with start() as other:
            self.assertNotEqual(infer(other, self.x[:1])["id"].split("-")[0], ids[0].split("-")[0])


class Bounds(unittest.TestCase):
    """410 when the input left the window; the memory bound holds (metrics)."""

    def setUp(self):
        self.x, self.kind, self.signal = next(r for r in requests() if r[1] == "target")
        self.row = self.x[:1]
        self.sig = self.signal[:1]

    def test_rows_bound_evicts_oldest(self):
        with start("--feedback-window-rows", "4") as d:
            for i in range(5):
                infer(d, self.row, id="r%d" % i)
            self.assertEqual(metric(d, "tscale_feedback_window_rows"), 4)
            status, body = by_id(d, "r0", self.kind, self.sig)
            self.assertEqual(status, 410, body)
            self.assertIn("pushed it out", body["error"])
            self.assertEqual(by_id(d, "r1", self.kind, self.sig)[0], 200)
            infer(d, [self.row[0]] * 5, id="big")       # more rows than the window holds
            status, body = by_id(d, "big", self.kind, self.sig * 5)
            self.assertEqual(status, 410, body)
            self.assertIn("larger than the window", body["error"])
            self.assertEqual(metric(d, 'tscale_feedback_window_dropped_total{cause="too_large"}'), 1)

    def test_bytes_bound_holds_and_evicts_oldest(self):
        limit = 16 * 1024
        with start("--feedback-window-bytes", str(limit)) as d:
            infer(d, self.row, id="b%04d" % 0)
            one = metric(d, "tscale_feedback_window_bytes")
            self.assertGreaterEqual(one, 4 * IN_DIM)            # the input and its bookkeeping
            n = int(limit // one) + 20
            for i in range(1, n):
                infer(d, self.row, id="b%04d" % i)
                if i % 10 == 0:
                    self.assertLessEqual(metric(d, "tscale_feedback_window_bytes"), limit)
            self.assertLessEqual(metric(d, "tscale_feedback_window_bytes"), limit)
            self.assertEqual(metric(d, "tscale_feedback_window_entries"), limit // one)
            self.assertGreater(metric(d, 'tscale_feedback_window_dropped_total{cause="bytes"}'), 0)
            self.assertEqual(by_id(d, "b%04d" % 0, self.kind, self.sig)[0], 410)
            self.assertEqual(by_id(d, "b%04d" % (n - 1), self.kind, self.sig)[0], 200)
            self.assertEqual(metric(d, 'tscale_feedback_by_id_total{result="gone"}'), 1)
            self.assertEqual(metric(d, 'tscale_feedback_by_id_total{result="hit"}'), 1)

    def test_expiry_by_time(self):
        with start("--feedback-window-seconds", "1") as d:
            infer(d, self.row, id="old")
            time.sleep(1.3)
            infer(d, self.row, id="new")
            status, body = by_id(d, "old", self.kind, self.sig)
            self.assertEqual(status, 410, body)
            self.assertIn("expired", body["error"])
            self.assertEqual(by_id(d, "new", self.kind, self.sig)[0], 200)
            self.assertEqual(metric(d, 'tscale_feedback_window_dropped_total{cause="age"}'), 1)

    def test_window_off(self):
        with start("--feedback-window-rows", "0") as d:
            self.assertRegex(infer(d, self.row)["id"], ID_RE)   # ids are made all the same
            infer(d, self.row, id="x")
            status, body = by_id(d, "x", self.kind, self.sig)
            self.assertEqual(status, 404)
            self.assertIn("the window is off", body["error"])
            self.assertEqual(metric(d, "tscale_feedback_window_entries"), 0)
            # off: not advertised, so clients send the input instead
            self.assertEqual(d.json("GET", "/v2")["extensions"], ["binary_tensor_data", "feedback"])

    def test_used_input_is_gone_without_id_tracking(self):
        with start("--feedback-id-window", "0") as d:
            infer(d, self.row, id="u")
            self.assertEqual(by_id(d, "u", self.kind, self.sig)[0], 200)
            status, body = by_id(d, "u", self.kind, self.sig)
            self.assertEqual(status, 410, body)
            self.assertIn("already received its feedback", body["error"])


class Lifecycle(unittest.TestCase):
    def test_restart_empties_window_but_repeats_answer_first_answer(self):
        x, kind, signal = requests()[0]
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-byid-")
        args = ["--model", "m=" + oipc.golden_model(CASE)]
        try:
            d = tsd.Daemon(args=args, db_dir=tmp)
            infer(d, x, id="done")
            infer(d, x, id="pending")
            first = by_id(d, "done", kind, signal)
            self.assertEqual(first[0], 200)
            self.assertEqual(d.stop(), 0)
            d.close()
            d = tsd.Daemon(args=args, db_dir=tmp)
            self.assertEqual(by_id(d, "done", kind, signal), first)      # exactly-once survives
            self.assertEqual(by_id(d, "pending", kind, signal)[0], 404)  # the window does not
            d.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_model_replaced_by_other_architecture_is_409(self):
        x, kind, signal = next(r for r in requests() if r[1] == "target")
        binary = tsd.BINARY if os.path.isabs(tsd.BINARY) else os.path.join(tsd.ROOT, tsd.BINARY)
        with tempfile.TemporaryDirectory() as tmp, start() as d:
            other = os.path.join(tmp, "other.safetensors")
            subprocess.run([binary, "init", "--layers", "linear:32x4/gs8", "--out", other, "--seed", "5"],
                           check=True, capture_output=True)
            infer(d, x, id="before")
            with open(other, "rb") as f:
                ms.put(d, "m", f.read())
            status, body = by_id(d, "before", kind, signal)
            self.assertEqual(status, 409, body)
            self.assertIn("stored inference", body["error"])

    def test_deleted_model_forgets_its_inputs(self):
        x, kind, signal = next(r for r in requests() if r[1] == "target")
        with start() as d:
            infer(d, x, id="gone-with-model")
            self.assertGreater(metric(d, "tscale_feedback_window_entries"), 0)
            status = d.request("DELETE", "/admin/models/m")[0]
            self.assertIn(status, (200, 202, 204))
            for _ in range(50):
                if metric(d, "tscale_feedback_window_entries") == 0:
                    break
                time.sleep(0.05)
            self.assertEqual(metric(d, "tscale_feedback_window_entries"), 0)


if __name__ == "__main__":
    unittest.main()
