"""test_crash.py — crash safety (SPEC §6) without the journal (--journal no, where the loss
window is the snapshot interval): with --snapshot-interval 1 and feedback driven
continuously on two models, kill -9 the daemon at random moments and restart it on the same
database, 20 times. After each restart every model's state must be exactly the state of one
snapshot it took (never partial, never mixed), and its step must not be older than the
newest snapshot the daemon reported complete before the kill.

How states are known: the feedback request applied at step s is a pure function of s (the
golden cases' requests, taken cyclically by step), so the state at step s is the same
whatever crashes came before. The driver exports the model after every acknowledged step
and records state[s]; a recovered state is checked against that record at the end."""
import http.client
import os
import random
import re
import signal
import threading
import time
import unittest

import modelstate as ms

MODELS = {"a": "deep_mixed", "b": "mlp_silu_xent"}
CYCLES = 20
SEED = int(os.environ.get("TSCALE_CRASH_SEED", "20240611"))
SNAPSHOT_LOG = re.compile(r"snapshot (\d+) of model '([^']+)': version \d+, step (\d+)")
# --journal no: this is the snapshot-only crash test (test_journal.py has the journal's).
ARGS = ["--snapshot-interval", "1", "--journal", "no"]
for _name, _case in MODELS.items():
    ARGS += ["--model", "%s=%s" % (_name, ms.golden_file(_case))]


def request_at(case, step):
    """The feedback request applied to a model at step `step`: (rows, kind, signal)."""
    fbs = ms.oipc.golden(case)["feedback"]
    fb = fbs[step % len(fbs)]
    return fb["input"], fb["kind"], fb[fb["kind"]]


class Driver(threading.Thread):
    """Feedback on every model in turn, an export after each step, now and then a snapshot
    on demand; runs until stopped or until the daemon dies under it."""

    def __init__(self, d, steps, seen, rng):
        super().__init__(daemon=True)
        self.d, self.steps, self.seen, self.rng = d, steps, seen, rng
        self.stopping = threading.Event()
        self.problem = None

    def run(self):
        try:
            while not self.stopping.is_set():
                for name, case in MODELS.items():
                    self.step(name, case)
                if self.rng.random() < 0.1:
                    ms.snapshot_now(self.d, self.rng.choice(list(MODELS)))
        except (OSError, http.client.HTTPException):
            pass  # killed under us
        except AssertionError as e:
            if self.d.proc.poll() is None and not self.stopping.is_set():
                self.problem = str(e)

    def step(self, name, case):
        j = ms.feedback(self.d, name, *request_at(case, self.steps[name]))[2]
        if j["step"] != self.steps[name] + 1:
            raise AssertionError("model %s: step %d after feedback at step %d" % (name, j["step"], self.steps[name]))
        st = ms.state(ms.export(self.d, name))
        self.steps[name] = j["step"]
        self.seen.record(name, j["step"], st)


class Seen:
    """state[model][step] from exports; a step seen twice must have had one state."""

    def __init__(self):
        self.states = {name: {} for name in MODELS}
        self.conflicts = []

    def record(self, name, step, st):
        if ms.step_of(st) != step:
            self.conflicts.append("model %s: export says step %d, feedback said %d" % (name, ms.step_of(st), step))
        old = self.states[name].setdefault(step, st)
        if old != st:
            self.conflicts.append("model %s: two different states at step %d (non-deterministic feedback?)"
                                  % (name, step))


def newest_logged(d):
    """{model: step of the newest snapshot the daemon logged as taken}."""
    newest = {}
    for line in d.log_lines:
        m = SNAPSHOT_LOG.search(line)
        if m:
            sid, name, step = int(m.group(1)), m.group(2), int(m.group(3))
            if name not in newest or sid > newest[name][0]:
                newest[name] = (sid, step)
    return {name: step for name, (_, step) in newest.items()}


class Crash(unittest.TestCase):
    def test_kill9_at_random_moments_recovers_a_whole_snapshot(self):
        t0 = time.time()
        rng = random.Random(SEED)
        seen = Seen()
        d = ms.start(ARGS)
        self.addCleanup(d.close)
        db_dir = d.dir
        steps = {}
        for name in MODELS:
            st = ms.state(ms.export(d, name))
            steps[name] = ms.step_of(st)
            seen.record(name, steps[name], st)
        initial = dict(steps)
        recoveries = []  # (cycle, model, step, state, in flight at the kill)
        any_logged = False
        for cycle in range(CYCLES):
            driver = Driver(d, steps, seen, random.Random(rng.random()))
            driver.start()
            time.sleep(rng.uniform(0.1, 1.3))
            d.signal(signal.SIGKILL)
            d.wait(30)
            driver.stopping.set()
            driver.join(30)
            self.assertIsNone(driver.problem, "cycle %d (seed %d): %s\n%s" % (cycle, SEED, driver.problem, d.log()))
            logged = newest_logged(d)
            # A kill before the first timer tick leaves no snapshot line in that cycle.
            any_logged = any_logged or bool(logged)
            acked = dict(steps)

            d = ms.start(ARGS, db_dir=db_dir)
            self.addCleanup(d.close)
            for name in MODELS:
                st = ms.state(ms.export(d, name))
                step = ms.step_of(st)
                where = "cycle %d (seed %d), model %s" % (cycle, SEED, name)
                self.assertGreaterEqual(step, logged.get(name, initial[name]),
                                        "%s: recovered step %d is older than snapshot step %d reported before the kill"
                                        % (where, step, logged.get(name, initial[name])))
                # At most the one step in flight at the kill beyond what was acknowledged.
                self.assertLessEqual(step, acked[name] + 1, where)
                self.assertEqual(ms.snapshots(d, name)[0]["step"], step,
                                 "%s: the state is not that of the newest snapshot" % where)
                recoveries.append((cycle, name, step, st, step == acked[name] + 1))
                steps[name] = step
        self.assertEqual(d.stop(), 0, d.log())
        self.assertTrue(any_logged, "no snapshot lines in the daemon's logs (format changed?)")

        self.assertEqual(seen.conflicts, [])
        unverified = []
        for cycle, name, step, st, in_flight in recoveries:
            known = seen.states[name].get(step)
            if known is None:
                unverified.append((cycle, name, step, in_flight))
            else:
                self.assertEqual(st, known, "cycle %d (seed %d), model %s: the recovered state at step %d is not the "
                                 "state that step had (partial or mixed snapshot)" % (cycle, SEED, name, step))
        # Only a step in flight at a kill (applied and snapshotted, but its answer or the
        # export after it cut off) can be missing from the record.
        self.assertTrue(all(in_flight for _, _, _, in_flight in unverified), unverified)
        progressed = sum(1 for _, name, step, _, _ in recoveries if step > initial[name])
        self.assertGreaterEqual(progressed, CYCLES // 2,
                                "too few restarts recovered a state past the initial one for the test to mean much")
        self.assertLess(time.time() - t0, 60.0)


if __name__ == "__main__":
    unittest.main()
