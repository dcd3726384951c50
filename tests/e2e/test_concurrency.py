"""test_concurrency.py — many clients at once (SPEC §1: steps atomic w.r.t. inference batches,
applied in arrival order; dynamic batching gives the same answers as running alone).

64 clients send a bounded mix of inference and feedback to the demo model. Then a fresh
daemon replays the feedback sequentially in the order of the steps the daemon reported,
recording the exact answer to each probe row after every step. Every concurrent answer
must then be explained:
  - feedback: the steps are 1..N with none missing or repeated, and the loss of step k
    equals the replay's (so step k saw exactly the state after steps 1..k-1);
  - inference: the output equals, bit for bit, the replay's output for the same probe at
    some step k with L <= k <= U, where L is the newest step acknowledged to any client
    before the request was sent and U the number of feedback requests sent before its
    answer arrived. A torn state (a batch overlapping a step) or a reordering matches no
    such k.
Also: the queue bound answers 503 + Retry-After and the daemon stays healthy."""
import json
import os
import re
import subprocess
import tempfile
import threading
import unittest

import oipc
import tsd

CLIENTS = 64
PER_CLIENT = 8
OUT_DIM = 4
BINARY = tsd.BINARY if os.path.isabs(tsd.BINARY) else os.path.join(tsd.ROOT, tsd.BINARY)


def probes(in_dim):
    return [[((p * 5 + k * 3) % 11) / 5.0 - 1.0 for k in range(in_dim)] for p in range(4)]


def fb_row(client, k, in_dim):
    return [((client * 13 + k * 7 + c * 3) % 17) / 8.0 - 1.0 for c in range(in_dim)]


class Mixed(unittest.TestCase):
    def test_demo(self):
        """The demo model: every job is small enough to run on the loop itself."""
        self.run_mixed([], "demo", 16)

    def test_larger_model(self):
        """A model large enough that jobs go to the compute thread, and batches of 8 rows or
        more to the thread pool as well (engine.c: INLINE_MAX_WORK, POOL_MIN_WORK)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "big.safetensors")
            subprocess.run([BINARY, "init", "--layers", "linear:128x1024/gs16,relu,linear:1024x4",
                            "--out", path, "--seed", "7"], check=True, capture_output=True)
            self.run_mixed(["--model", "big=" + path, "--threads", "2"], "big", 128)

    def run_mixed(self, args, model, in_dim):
        lock = threading.Lock()
        shared = {"acked": 0, "sent": 0}
        infers, feedbacks, failures = [], [], []
        PROBES = probes(in_dim)

        with tsd.Daemon(args=args + ["--snapshot-interval", "0", "--max-batch", "16"]) as d:
            def client(i):
                c = d.conn()
                try:
                    for k in range(PER_CLIENT):
                        if (i + k) % 4 == 0:
                            row, label = fb_row(i, k, in_dim), (i + k) % OUT_DIM
                            with lock:
                                shared["sent"] += 1
                            c.request("POST", "/v2/models/%s/feedback" % model,
                                      json.dumps(oipc.feedback_body([row], "label", [label])))
                            r = c.getresponse()
                            j = json.loads(r.read())
                            if r.status != 200:
                                failures.append(j)
                                continue
                            with lock:
                                shared["acked"] = max(shared["acked"], j["step"])
                            feedbacks.append((j["step"], row, label, j["loss"]))
                        else:
                            p = (i * 3 + k) % len(PROBES)
                            with lock:
                                low = shared["acked"]
                            c.request("POST", "/v2/models/%s/infer" % model,
                                      json.dumps(oipc.infer_body([PROBES[p]])))
                            r = c.getresponse()
                            j = json.loads(r.read())
                            with lock:
                                high = shared["sent"]
                            if r.status != 200:
                                failures.append(j)
                                continue
                            infers.append((p, j["outputs"][0]["data"], low, high))
                except Exception as e:  # noqa: BLE001 - reported below
                    failures.append(repr(e))
                finally:
                    c.close()

            threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            self.assertEqual(failures, [])
            metrics = d.request("GET", "/metrics")[2].decode()

        n = len(feedbacks)
        self.assertEqual(n, sum(1 for i in range(CLIENTS) for k in range(PER_CLIENT) if (i + k) % 4 == 0))
        self.assertEqual(sorted(s for s, _, _, _ in feedbacks), list(range(1, n + 1)))

        # Replay sequentially on a fresh daemon: table[k][p] = probe p's output after k steps.
        table = []
        with tsd.Daemon(args=args + ["--snapshot-interval", "0"]) as r:
            def outputs():
                body = oipc.infer_body(PROBES)
                return r.json("POST", "/v2/models/%s/infer" % model, body)["outputs"][0]["data"]
            table.append(outputs())
            for step, row, label, loss in sorted(feedbacks):
                j = r.json("POST", "/v2/models/%s/feedback" % model, oipc.feedback_body([row], "label", [label]))
                self.assertEqual(j["step"], step)
                self.assertEqual(j["loss"], loss, "step %d saw a different state" % step)
                table.append(outputs())

        def at(k, p):
            return table[k][p * OUT_DIM:(p + 1) * OUT_DIM]

        def near(a, b):
            return all(abs(x - y) <= 1e-6 * (1 + abs(y)) for x, y in zip(a, b))

        changed = sum(1 for k in range(1, len(table)) if not near(table[k], table[k - 1]))
        self.assertGreater(changed, n // 2, "probe outputs barely change with steps: the test is weak")
        for p, out, low, high in infers:
            ok = [k for k in range(low, high + 1) if near(out, at(k, p))]
            self.assertTrue(ok, "infer answer matches no state in [%d, %d]" % (low, high))

        # Batching happened: some forward had more than one row.
        ones = int(re.search(r'tscale_batch_rows_bucket\{le="1"\} (\d+)', metrics).group(1))
        total = int(re.search(r"tscale_batch_rows_count (\d+)", metrics).group(1))
        self.assertLess(ones, total, "no batch had more than one row")
        self.assertLess(total, len(infers), "every request ran alone")


class QueueBound(unittest.TestCase):
    def test_queue_full_is_503_with_retry_after(self):
        # Requests wait up to 2 s for a batch that never fills, so the first 4 rows hold the
        # queue while the others arrive; those are refused at once.
        args = ["--max-queue-rows", "4", "--max-batch", "64", "--max-queue-delay-us", "2000000",
                "--eager-batching", "no"]
        with tsd.Daemon(args=args) as d:
            results = []

            def one():
                st, h, data = d.request("POST", "/v2/models/demo/infer", oipc.infer_body([[0.5] * 16]))
                results.append((st, h.get("retry-after"), json.loads(data)))

            threads = [threading.Thread(target=one) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            statuses = sorted(st for st, _, _ in results)
            self.assertEqual(statuses, [200] * 4 + [503] * 4)
            for st, retry, j in results:
                if st == 503:
                    self.assertEqual(retry, "1")
                    self.assertIn("queue", j["error"])
            self.assertEqual(d.request("GET", "/v2/health/ready")[0], 200)
            text = d.request("GET", "/metrics")[2].decode()
            self.assertIn("tscale_queue_full_total 4", text)


if __name__ == "__main__":
    unittest.main()
