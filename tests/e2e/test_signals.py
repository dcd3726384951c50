"""test_signals.py — SIGTERM / SIGINT (SPEC §3): stop accepting, finish queued work, take a
final snapshot, exit 0; a restart on the same database serves the state every
acknowledged feedback step produced."""
import json
import re
import signal
import threading
import time
import unittest

import oipc
import tsd

ROW = [0.2] * 16


def feedback(d, label):
    return d.json("POST", "/v2/models/demo/feedback", oipc.feedback_body([ROW], "label", [label]))


def admin_demo(d):
    return d.json("GET", "/admin/models")["models"][0]


def queued_rows(d):
    text = d.request("GET", "/metrics")[2].decode()
    m = re.search(r'tscale_queue_rows\{model="demo"\} (\S+)', text)
    return float(m.group(1)) if m else 0


class Signals(unittest.TestCase):
    def test_sigterm_answers_queued_requests_and_snapshots(self):
        # Inference waits up to 5 s for a batch that never fills: when SIGTERM arrives the
        # ten requests are certainly queued, and must still be answered (at once: draining
        # sends partial batches without waiting).
        args = ["--snapshot-interval", "0", "--max-batch", "1000", "--max-queue-delay-us", "5000000",
                "--eager-batching", "no"]
        d = tsd.Daemon(args=args)
        try:
            for i in range(3):
                feedback(d, i)
            results = []
            threads = [threading.Thread(target=lambda: results.append(
                d.request("POST", "/v2/models/demo/infer", oipc.infer_body([ROW])))) for _ in range(10)]
            for t in threads:
                t.start()
            deadline = time.time() + 20
            while queued_rows(d) < 10 and time.time() < deadline:
                time.sleep(0.02)
            self.assertEqual(queued_rows(d), 10)
            d.signal(signal.SIGTERM)
            for t in threads:
                t.join(20)
            self.assertEqual([r[0] for r in results], [200] * 10)
            outs = {json.dumps(json.loads(r[2])["outputs"][0]["data"]) for r in results}
            self.assertEqual(len(outs), 1)
            self.assertEqual(d.wait(30), 0, d.log())
            self.assertIn("shut down cleanly", d.log())
            self.assertRegex(d.log(), r"snapshot \d+ of model 'demo': version 1, step 3, reason shutdown")
            r = tsd.Daemon(args=["--snapshot-interval", "0"], db_dir=d.dir)
            try:
                m = admin_demo(r)
                self.assertEqual(m["step"], 3)
                self.assertEqual(m["snapshot"]["reason"], "shutdown")
                self.assertEqual(feedback(r, 0)["step"], 4)
            finally:
                r.close()
        finally:
            d.close()

    def test_sigint_idle_exits_0_without_a_new_snapshot(self):
        d = tsd.Daemon(args=["--snapshot-interval", "0"])
        try:
            before = d.json("GET", "/admin/models/demo/snapshots")["snapshots"]
            d.signal(signal.SIGINT)
            self.assertEqual(d.wait(30), 0, d.log())
            r = tsd.Daemon(db_dir=d.dir)
            try:  # nothing changed, so no shutdown snapshot was needed
                self.assertEqual(r.json("GET", "/admin/models/demo/snapshots")["snapshots"], before)
            finally:
                r.close()
        finally:
            d.close()

    def test_sigterm_under_load(self):
        """Clients keep sending (a new connection each) while SIGTERM arrives. A request sent
        before the signal gets an answer (200, or 503 if it was not yet accepted); after the
        restart the model's step counts every acknowledged feedback step."""
        d = tsd.Daemon(args=["--snapshot-interval", "0"])
        lock = threading.Lock()
        state = {"signalled": False, "done": 0}
        outcomes = []  # (sent before the signal?, kind, status or exception name)

        def client(i):
            for k in range(10000):
                kind = "feedback" if (i + k) % 3 == 0 else "infer"
                body = (oipc.feedback_body([ROW], "label", [k % 4]) if kind == "feedback"
                        else oipc.infer_body([ROW]))
                before = False
                c = d.conn(timeout=20)
                try:
                    c.request("POST", "/v2/models/demo/" + kind, json.dumps(body))
                    with lock:
                        before = not state["signalled"]  # fully sent before the signal
                    r = c.getresponse()
                    r.read()
                    outcome = r.status
                except OSError as e:  # refused / reset: allowed only after the signal
                    outcome = type(e).__name__
                finally:
                    c.close()
                with lock:
                    outcomes.append((before, kind, outcome))
                    state["done"] += 1
                    if state["signalled"] and not before:
                        return

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        try:
            for t in threads:
                t.start()
            deadline = time.time() + 20
            while time.time() < deadline:
                with lock:
                    if state["done"] >= 60:
                        break
                time.sleep(0.01)
            with lock:
                state["signalled"] = True
            d.signal(signal.SIGTERM)
            for t in threads:
                t.join(30)
            self.assertEqual(d.wait(30), 0, d.log())
            before = [o for b, _, o in outcomes if b]
            self.assertGreaterEqual(len(before), 60)
            self.assertTrue(all(o in (200, 503) for o in before), sorted(set(map(str, before))))
            acked = sum(1 for _, kind, o in outcomes if kind == "feedback" and o == 200)
            sent = sum(1 for _, kind, _ in outcomes if kind == "feedback")
            r = tsd.Daemon(args=["--snapshot-interval", "0"], db_dir=d.dir)
            try:
                step = admin_demo(r)["step"]
            finally:
                r.close()
            self.assertGreaterEqual(step, acked)
            self.assertLessEqual(step, sent)
        finally:
            d.close()


if __name__ == "__main__":
    unittest.main()
