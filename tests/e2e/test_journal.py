"""test_journal.py — the feedback journal (SPEC §6, issue 11): a feedback step answered 200
survives kill -9, replay gives exactly the reference state, ids make feedback exactly-once
(also across a restart), a damaged tail is cut, a restore is replayed as a restore.

Known states: the feedback request applied to a model at step s is a pure function of s
(the golden cases' requests taken cyclically, as in test_crash.py), so the state at step s
does not depend on the crashes before it. A reference daemon (--journal no, never killed)
replays the same requests at the end and exports the state at every step a recovery
reached: each recovered state must equal it byte for byte."""
import http.client
import json
import os
import shutil
import tempfile
import random
import re
import sqlite3
import threading
import time
import unittest

import modelstate as ms
import oipc
import tsd

MODELS = {"a": "deep_mixed", "b": "mlp_silu_xent"}
CYCLES = 20
SEED = int(os.environ.get("TSCALE_JOURNAL_SEED", "20261206"))
MODEL_ARGS = []
for _name, _case in MODELS.items():
    MODEL_ARGS += ["--model", "%s=%s" % (_name, ms.golden_file(_case))]


def request_at(case, step):
    fbs = oipc.golden(case)["feedback"]
    fb = fbs[step % len(fbs)]
    return fb["input"], fb["kind"], fb[fb["kind"]]


def initial_step(case):
    g = oipc.golden(case)
    return [st for st, l in zip(g["state"], g["layers"]) if l["type"] == "ternary_linear"][0]["step"]


# Steps in this file count from the golden model's own step (its files are lived-in).
BASE = {name: initial_step(case) for name, case in MODELS.items()}


def fid(name, step):
    """The OIP id of the request that takes model `name` from `step` to step + 1."""
    return "%s-%d" % (name, step)


def feedback_at(d, name, step, timeout=30):
    rows, kind, signal = request_at(MODELS[name], BASE[name] + step)
    return d.request("POST", "/v2/models/%s/feedback" % name,
                     oipc.feedback_body(rows, kind, signal, id=fid(name, step)), timeout=timeout)


def model_step(d, name):
    return ms.step_of(ms.state(ms.export(d, name))) - BASE[name]


def answered(body, name):
    """The step a feedback answer reports, counted from the model's own step."""
    return json.loads(body)["step"] - BASE[name]


class Driver(threading.Thread):
    """Feedback on one model, one request at a time, each with its id; records every
    acknowledged step. Stops when the daemon dies under it."""

    def __init__(self, d, name, step, acked):
        super().__init__(daemon=True)
        self.d, self.name, self.step, self.acked = d, name, step, acked
        self.problem = None

    def run(self):
        try:
            while True:
                status, _, body = feedback_at(self.d, self.name, self.step)
                if status != 200:
                    self.problem = "feedback at step %d: %d %r" % (self.step, status, body[:200])
                    return
                got = answered(body, self.name)
                if got != self.step + 1:
                    self.problem = "feedback at step %d answered step %d" % (self.step, got)
                    return
                self.step += 1
                self.acked[self.name] = self.step
        except (OSError, http.client.HTTPException):
            pass  # killed under us


class KillCycles(unittest.TestCase):
    def test_no_acknowledged_step_lost_over_20_kills(self):
        rng = random.Random(SEED)
        acked = {name: 0 for name in MODELS}
        recovered = {name: {} for name in MODELS}   # step -> state seen right after a restart
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-journal-")
        d = tsd.Daemon(args=MODEL_ARGS, db_dir=tmp)  # default flags: snapshots every 30 s
        replayed = 0
        try:
            for cycle in range(CYCLES + 1):
                steps = {}
                for name in MODELS:
                    st = ms.state(ms.export(d, name))
                    steps[name] = ms.step_of(st) - BASE[name]
                    self.assertGreaterEqual(steps[name], acked[name],
                                            "cycle %d: model %s recovered step %d, but step %d was "
                                            "acknowledged" % (cycle, name, steps[name], acked[name]))
                    self.assertLessEqual(steps[name], acked[name] + 1, "cycle %d: model %s" % (cycle, name))
                    recovered[name][steps[name]] = st
                    # The request in flight at the kill, retried with its id: applied once.
                    if cycle and steps[name] == acked[name] + 1:
                        status, _, body = feedback_at(d, name, acked[name])
                        self.assertEqual(status, 200, body)
                        self.assertEqual(answered(body, name), steps[name],
                                         "a journaled step retried with its id was applied twice")
                        acked[name] = steps[name]
                replayed += sum(1 for l in d.log_lines if "replayed" in l and "journal entries" in l)
                if cycle == CYCLES:
                    break
                drivers = [Driver(d, name, steps[name], acked) for name in MODELS]
                for t in drivers:
                    t.start()
                time.sleep(rng.uniform(0.15, 0.5))
                d.kill()
                for t in drivers:
                    t.join(10)
                    self.assertIsNone(t.problem, t.problem)
                d.close()
                d = tsd.Daemon(args=MODEL_ARGS, db_dir=tmp)
            self.assertGreater(replayed, CYCLES // 2, "recoveries did not come from the journal")
        finally:
            d.close()
            shutil.rmtree(tmp, ignore_errors=True)
        # The reference: the same requests in order on a daemon that is never killed.
        with tsd.Daemon(args=MODEL_ARGS + ["--journal", "no"]) as ref:
            for name in MODELS:
                want = recovered[name]
                self.assertGreater(max(want), 20, "model %s made too few steps to test" % name)
                for step in range(max(want) + 1):
                    if step in want:
                        self.assertEqual(ms.state(ms.export(ref, name)), want[step],
                                         "model %s: state recovered at step %d differs from the "
                                         "reference" % (name, step))
                    if step < max(want):
                        self.assertEqual(feedback_at(ref, name, step)[0], 200)


class ExactlyOnce(unittest.TestCase):
    def test_repeat_answers_first_answer_also_after_restart(self):
        d = tsd.Daemon(args=MODEL_ARGS)
        try:
            first = [feedback_at(d, "a", s) for s in range(3)]
            self.assertEqual([answered(b, "a") for _, _, b in first], [1, 2, 3])
            again = feedback_at(d, "a", 1)
            self.assertEqual(again[0], 200)
            self.assertEqual(again[2], first[1][2], "a repeat must answer the first answer")
            self.assertEqual(model_step(d, "a"), 3, "a repeat applied a step")
            # The same id with another body: 409, nothing applied.
            rows, kind, signal = request_at("deep_mixed", BASE["a"] + 2)
            st, _, body = d.request("POST", "/v2/models/a/feedback",
                                    oipc.feedback_body(rows, kind, signal, id=fid("a", 1)))
            self.assertEqual(st, 409, body)
            self.assertIn(b"different body", body)
            self.assertEqual(model_step(d, "a"), 3)
            # The same id on another model is another request.
            self.assertEqual(answered(feedback_at(d, "b", 0)[2], "b"), 1)
            d.kill()
            d2 = tsd.Daemon(args=MODEL_ARGS, db_dir=d.dir)
            try:
                self.assertEqual(model_step(d2, "a"), 3)
                again = feedback_at(d2, "a", 2)
                self.assertEqual(again[2], first[2][2], "after kill -9 a repeat must answer the first answer")
                self.assertEqual(model_step(d2, "a"), 3)
                m = d2.request("GET", "/metrics")[2].decode()
                self.assertRegex(m, r"tscale_journal_replayed_entries_total [1-9]")
                self.assertRegex(m, r"tscale_feedback_ids [1-9]")
            finally:
                d2.close()
        finally:
            d.own_dir = True
            d.close()

    def test_concurrent_repeats_get_one_step(self):
        """Eight copies of one request at once: one step, eight equal answers."""
        with tsd.Daemon(args=MODEL_ARGS) as d:
            answers = []
            threads = [threading.Thread(target=lambda: answers.append(feedback_at(d, "b", 0)))
                       for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            self.assertEqual([a[0] for a in answers], [200] * 8)
            self.assertEqual(len({a[2] for a in answers}), 1)
            self.assertEqual(model_step(d, "b"), 1)

    def test_ids_bounded_by_bytes_newest_kept_also_after_restart(self):
        """--feedback-id-bytes: ids sent faster than the bound holds are forgotten oldest first
        (a repeat of one applies again, counted and logged); the newest still answer a repeat,
        also after kill -9 (the records loaded at start stay within the bound too)."""
        x = [((k * 37) % 101) / 50.0 - 1.0 for k in range(16)]
        limit, n = 1 << 20, 6000   # about 290 bytes an id: 1 MiB holds about 3,500

        def send(c, i):
            c.request("POST", "/v2/models/demo/feedback",
                      json.dumps(oipc.feedback_body([x], "label", [i % 4], id="fb-%d" % i)),
                      {"Content-Type": "application/json"})
            r = c.getresponse()
            body = r.read()
            self.assertEqual(r.status, 200, body)
            return json.loads(body)["step"]

        def ids_metrics(d):
            return {k: d.metric(k) for k in ("tscale_feedback_ids", "tscale_feedback_ids_bytes",
                                             "tscale_feedback_ids_limit_bytes", "tscale_feedback_ids_evicted_total")}

        d = tsd.Daemon(args=["--feedback-id-bytes", "1M"])
        try:
            c = d.conn()
            steps = [send(c, i) for i in range(n)]
            self.assertEqual(steps, list(range(1, n + 1)))
            m = ids_metrics(d)
            self.assertEqual(m["tscale_feedback_ids_limit_bytes"], limit)
            self.assertLessEqual(m["tscale_feedback_ids_bytes"], limit)
            self.assertGreater(m["tscale_feedback_ids_evicted_total"], 0)
            self.assertEqual(m["tscale_feedback_ids"] + m["tscale_feedback_ids_evicted_total"], n)
            self.assertEqual(send(c, n - 1), n, "the newest id must still answer its first answer")
            self.assertEqual(send(c, 0), n + 1, "a forgotten id is a new request")
            # The database keeps no more than memory does: rows of forgotten ids go with the
            # expired ones (at most once a second, with a commit).
            time.sleep(1.1)
            self.assertEqual(send(c, n), n + 2)
            kept = ids_metrics(d)["tscale_feedback_ids"]
            with sqlite3.connect("file:%s?mode=ro" % d.db, uri=True) as db:
                rows = db.execute("SELECT count(*) FROM feedback_ids").fetchone()[0]
            self.assertLessEqual(rows, kept + 50, "%d exactly-once rows for %d ids remembered" % (rows, kept))
            self.assertGreaterEqual(rows, kept - 2)
            c.close()
            d.kill()
            self.assertIn("reached --feedback-id-bytes", d.log())
            d2 = tsd.Daemon(args=["--feedback-id-bytes", "1M"], db_dir=d.dir)
            try:
                m = ids_metrics(d2)
                self.assertLessEqual(m["tscale_feedback_ids_bytes"], limit)
                self.assertGreater(m["tscale_feedback_ids"], 1000)
                c = d2.conn()
                self.assertEqual(send(c, n - 2), n - 1, "after kill -9 the newest ids still repeat")
                c.close()
            finally:
                d2.close()
        finally:
            d.own_dir = True
            d.close()


class Tail(unittest.TestCase):
    def run_steps_then_kill(self, n, args=()):
        d = tsd.Daemon(args=MODEL_ARGS + list(args))
        for s in range(n):
            self.assertEqual(feedback_at(d, "a", s)[0], 200)
        blob = ms.export(d, "a")
        d.kill()
        d.own_dir = False
        d.close()
        return d.dir, blob

    def test_damaged_entry_is_cut_at_the_last_good_one(self):
        tmp, _ = self.run_steps_then_kill(6)
        try:
            db = sqlite3.connect(os.path.join(tmp, "tscale.db"))
            (seq,) = db.execute("SELECT seq FROM journal ORDER BY seq DESC LIMIT 1 OFFSET 1").fetchone()
            db.execute("UPDATE journal SET payload = zeroblob(length(payload)) WHERE seq = ?", (seq,))
            db.commit()
            db.close()
            with tsd.Daemon(args=MODEL_ARGS, db_dir=tmp) as d:
                self.assertEqual(model_step(d, "a"), 4, "replay must stop before the damaged entry")
                self.assertTrue(any("cannot be replayed" in l and "checksum" in l for l in d.log_lines),
                                d.log())
                # The cut is final: the next step continues from 4, and a restart agrees.
                self.assertEqual(answered(feedback_at(d, "a", 4)[2], "a"), 5)
                blob = ms.export(d, "a")
                d.kill()
                d.own_dir = False
            with tsd.Daemon(args=MODEL_ARGS, db_dir=tmp) as d:
                self.assertEqual(ms.export(d, "a"), blob)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_torn_wal_tail_loses_only_the_torn_commit(self):
        tmp, blob = self.run_steps_then_kill(6)
        try:
            wal = os.path.join(tmp, "tscale.db-wal")
            size = os.path.getsize(wal)
            self.assertGreater(size, 4096, "the steps should still be in the WAL")
            with open(wal, "r+b") as f:
                f.truncate(size - 100)  # the last commit's frame is torn
            with tsd.Daemon(args=MODEL_ARGS, db_dir=tmp) as d:
                self.assertEqual(model_step(d, "a"), 5, "only the torn commit may be lost")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_journal_no_loses_steps_since_the_snapshot(self):
        """The documented price of --journal no: steps after the newest snapshot."""
        tmp, _ = self.run_steps_then_kill(4, ["--journal", "no"])
        try:
            with tsd.Daemon(args=MODEL_ARGS + ["--journal", "no"], db_dir=tmp) as d:
                self.assertEqual(model_step(d, "a"), 0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class RestoreReplay(unittest.TestCase):
    def test_restore_then_crash_replays_the_restore(self):
        d = tsd.Daemon(args=MODEL_ARGS)
        try:
            for s in range(3):
                feedback_at(d, "a", s)
            snap = ms.snapshot_now(d, "a")["snapshot_id"]      # state at step 3
            for s in range(3, 7):
                feedback_at(d, "a", s)
            d.json("POST", "/admin/models/a/restore", {"snapshot_id": snap})
            self.assertEqual(model_step(d, "a"), 3)
            for s in range(3, 5):
                self.assertEqual(answered(feedback_at(d, "a", s)[2], "a"), s + 1)
            want = ms.export(d, "a")
            d.kill()
            with tsd.Daemon(args=MODEL_ARGS, db_dir=d.dir) as d2:
                self.assertEqual(ms.export(d2, "a"), want,
                                 "after a crash: the restored state plus the steps after it")
        finally:
            d.close()


if __name__ == "__main__":
    unittest.main()
