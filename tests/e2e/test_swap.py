"""test_swap.py — a model replaced by one of another architecture while requests for it wait
in its queue (issue 13, item 1).

A request is validated against the model served when it arrives. A PUT or a restore swaps
the model between two jobs; requests queued behind the swap were checked against the old
shape. Each must be answered 409 (nothing computed) when its shape no longer fits, never
run over the wrong shape: that read past the input (heap-buffer-overflow under ASan) and
wrote garbage into corr_accum.

To hold requests behind the swap, the old model is large enough that a few queued
feedback steps keep its FIFO busy while the PUT is stored and its swap queued."""
import os
import re
import subprocess
import tempfile
import threading
import time
import unittest

import oipc
import tsd

BINARY = tsd.BINARY if os.path.isabs(tsd.BINARY) else os.path.join(tsd.ROOT, tsd.BINARY)
OLD = "linear:2048x2048/gs32,relu,linear:2048x4"   # in 2048, out 4
NEW = "linear:4096x16/gs32"                           # in 4096, out 16: larger in every way


def init(path, layers, seed):
    subprocess.run([BINARY, "init", "--layers", layers, "--out", path, "--seed", str(seed)],
                   check=True, capture_output=True)


def queued(d):
    """Items waiting in model x's FIFO (tscale_queue_requests)."""
    m = re.search(r'^tscale_queue_requests\{model="x"\} (\S+)$', d.request("GET", "/metrics")[2].decode(), re.M)
    return float(m.group(1)) if m else 0.0


# Slow feedback steps queued ahead of the swap: with the AVX2 kernels a step of 32 rows takes
# ~30 ms here, and six of them no longer outlasted the PUT's store (the small requests then
# came after the swap and were 400s, not 409s). Twelve of 96 rows keep the FIFO busy ~1 s.
BUSY = 12


def busy_feedback(d, results, rows=96, in_dim=2048):
    x = [((r * 7 + c) % 13) / 6.0 - 1.0 for r in range(rows) for c in range(in_dim)]
    g = [0.01 * ((r + c) % 5 - 2) for r in range(rows) for c in range(4)]
    body, headers = oipc.binary_request([("input", "FP32", [rows, in_dim], x),
                                         ("grad_output", "FP32", [rows, 4], g)])
    results.append(d.request("POST", "/v2/models/x/feedback", body, headers, timeout=120)[0])


class SwapUnderTraffic(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.old = os.path.join(self.tmp.name, "old.safetensors")
        self.new = os.path.join(self.tmp.name, "new.safetensors")
        init(self.old, OLD, 3)
        init(self.new, NEW, 4)

    def tearDown(self):
        self.tmp.cleanup()

    def swap_while_queued(self, d, swap):
        """Queue slow feedback steps, then the swap, then small requests made for the old
        shape; return the small requests' (kind, status, body)."""
        busy, threads = [], []
        for _ in range(BUSY):
            t = threading.Thread(target=busy_feedback, args=(d, busy))
            t.start()
            threads.append(t)
        # Every step is queued (or running, or done) before the swap: their bodies take a while
        # to arrive, and a step queued behind the swap would be answered 409 like the others.
        deadline = time.time() + 20
        while queued(d) + len(busy) + 1 < BUSY and time.time() < deadline:
            time.sleep(0.01)
        swapped = {}
        t = threading.Thread(target=lambda: swapped.update(r=swap()))
        t.start()
        threads.append(t)
        time.sleep(0.3)  # the swap is stored and queued behind the feedback steps
        small = []
        row = [0.5] * 2048

        def infer():
            st, h, b = d.request("POST", "/v2/models/x/infer", oipc.infer_body([row]), timeout=120)
            small.append(("infer", st, b))

        def feedback():
            st, h, b = d.request("POST", "/v2/models/x/feedback",
                                 oipc.feedback_body([row], "label", [3]), timeout=120)
            small.append(("feedback", st, b))

        for f in [infer, feedback] * 4:
            t = threading.Thread(target=f)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(180)
        self.assertEqual(busy, [200] * BUSY, "the slow feedback steps ran on the old model")
        self.assertIn(swapped["r"][0], (200, 201), swapped["r"])
        return small

    def check_small(self, small):
        self.assertEqual(len(small), 8)
        stale = 0
        for kind, st, b in small:
            if st == 409:
                stale += 1
                self.assertIn(b"was replaced", b)
                continue
            # Ran before the swap: the old shape. Never a 200 computed on the new model.
            self.assertEqual(st, 200, (kind, st, b))
            if kind == "infer":
                j, data = oipc.decode_response({}, b)
                self.assertEqual(j["outputs"][0]["shape"], [1, 4], b)
        self.assertGreater(stale, 0, "no request waited behind the swap: the test proved nothing")

    def check_new_model(self, d):
        out = d.json("POST", "/v2/models/x/infer", oipc.infer_body([[0.25] * 4096]))
        self.assertEqual(out["outputs"][0]["shape"], [1, 16])
        st, _, blob = d.request("GET", "/admin/models/x/export")
        self.assertEqual(st, 200)
        tensors, _ = oipc.read_safetensors(blob)
        step = tensors["0.step_counter"][2][0]
        for v in tensors["0.corr_accum"][2]:
            self.assertLessEqual(abs(v), step * 32, "corr_accum holds a value no step can make")

    def test_put_other_architecture(self):
        with tsd.Daemon(args=["--model", "x=" + self.old, "--threads", "2"]) as d:
            blob = open(self.new, "rb").read()
            small = self.swap_while_queued(
                d, lambda: d.request("PUT", "/admin/models/x", blob,
                                     {"Content-Type": "application/octet-stream"}, timeout=120))
            self.check_small(small)
            self.check_new_model(d)

    def test_restore_other_architecture(self):
        with tsd.Daemon(args=["--model", "x=" + self.new, "--threads", "2"]) as d:
            new_snap = d.json("POST", "/admin/models/x/snapshots", expect=201)["snapshot_id"]
            blob = open(self.old, "rb").read()
            st, _, b = d.request("PUT", "/admin/models/x", blob,
                                 {"Content-Type": "application/octet-stream"}, timeout=120)
            self.assertEqual(st, 200, b)
            small = self.swap_while_queued(
                d, lambda: d.request("POST", "/admin/models/x/restore",
                                     {"snapshot_id": new_snap}, timeout=120))
            self.check_small(small)
            self.check_new_model(d)


if __name__ == "__main__":
    unittest.main()
