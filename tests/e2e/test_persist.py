"""test_persist.py — persistence through the daemon (SPEC §3, §4, §6): export/import round
trips, golden feedback after an import, restore, snapshot listings, restarts (SIGTERM and
--model with the same or another file), DELETE across a restart, a damaged newest snapshot,
databases that must be refused, and a full disk while serving."""
import errno
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import unittest

import modelstate as ms
import tsd

CASE = "deep_mixed"  # every layer kind, three ternary_linear layers, bias, a middle rmsnorm


def golden_steps(case, n):
    """n feedback requests (rows, kind, signal) taken cyclically from a golden case."""
    fbs = ms.oipc.golden(case)["feedback"]
    picked = [fbs[i % len(fbs)] for i in range(n)]
    return [(fb["input"], fb["kind"], fb[fb["kind"]]) for fb in picked]


def drive(d, name, n, case=CASE):
    """Apply n feedback steps; returns the last response."""
    j = None
    for rows, kind, sig in golden_steps(case, n):
        j = ms.feedback(d, name, rows, kind, sig)[2]
    return j


def probe_rows(case=CASE):
    n = ms.in_dim(case)
    return [[0.1 * k - 0.5 for k in range(n)], [0.3 - 0.07 * k for k in range(n)]]


def damage_newest_snapshot(db_dir):
    """Flip one byte of the newest snapshot's state: its checksum no longer verifies."""
    with sqlite3.connect(os.path.join(db_dir, "tscale.db")) as db:
        (sid,) = db.execute("SELECT max(id) FROM snapshots").fetchone()
        db.execute("UPDATE snapshots SET state = substr(state, 1, 40) || x'A5' || substr(state, 42) "
                   "WHERE id = ?", (sid,))
    db.close()


def model_names(d):
    return [m["name"] for m in d.json("GET", "/admin/models")["models"]]


class Persist(unittest.TestCase):
    def setUp(self):
        self.model_file = ms.golden_file(CASE)
        self.args = ["--snapshot-interval", "0", "--model", "g=" + self.model_file]
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            d.close()

    def start(self, args=None, db_dir=None):
        d = ms.start(self.args if args is None else args, db_dir=db_dir)
        self.daemons.append(d)
        return d

    def restart(self, d, args=None):
        """SIGTERM (final snapshot), then a new daemon on the same database."""
        self.assertEqual(d.stop(), 0, d.log())
        return self.start(args, db_dir=d.dir)

    def test_export_import_export_byte_identical(self):
        d = self.start()
        a = ms.export(d, "g")
        ms.put(d, "g", a)
        self.assertEqual(ms.export(d, "g"), a)
        drive(d, "g", 3)
        b = ms.export(d, "g")
        self.assertNotEqual(ms.state(b), ms.state(a))
        ms.put(d, "g", b)
        self.assertEqual(ms.export(d, "g"), b)
        # Under another name the state and weights are the same (the name is in the file).
        self.assertEqual(ms.put(d, "copy", b, expect=(201,))["step"], ms.step_of(ms.state(b)))
        c = ms.export(d, "copy")
        self.assertEqual(ms.oipc.read_safetensors(c)[0], ms.oipc.read_safetensors(b)[0])
        ms.put(d, "copy", c)
        self.assertEqual(ms.export(d, "copy"), c)
        # And all of it survives a restart byte for byte. (Not with --model g=FILE: g's
        # current version is no longer that file's, so the file would replace it.)
        d = self.restart(d, ["--snapshot-interval", "0"])
        self.assertEqual(ms.export(d, "g"), b)
        self.assertEqual(ms.export(d, "copy"), c)

    def test_golden_import_then_feedback_equals_final(self):
        d = self.start(["--snapshot-interval", "0"])
        for case in ms.oipc.golden_cases():
            with self.subTest(case=case):
                with open(ms.golden_file(case), "rb") as f:
                    ms.put(d, case, f.read(), expect=(201,))
                for fb in ms.oipc.golden(case)["feedback"]:
                    ms.feedback(d, case, fb["input"], fb["kind"], fb[fb["kind"]])
                got, got_meta = ms.oipc.read_safetensors(ms.export(d, case))
                with open(ms.golden_file(case, "final"), "rb") as f:
                    want, want_meta = ms.oipc.read_safetensors(f.read())
                self.assertEqual(got_meta["tscale.layers"].replace(" ", ""),
                                 want_meta["tscale.layers"].replace(" ", ""))
                self.assertEqual(got, want)

    def test_restore_gives_the_snapshot_outputs_exactly(self):
        d = self.start()
        drive(d, "g", 2)
        snap = ms.snapshot_now(d, "g")
        rows = probe_rows()
        at_snap, exported = ms.infer(d, "g", rows), ms.export(d, "g")
        self.assertEqual(snap["step"], ms.step_of(ms.state(exported)))
        drive(d, "g", 3)
        self.assertNotEqual(ms.state(ms.export(d, "g")), ms.state(exported))
        r = d.json("POST", "/admin/models/g/restore", {"snapshot_id": snap["snapshot_id"]})
        self.assertEqual(r["step"], snap["step"])
        self.assertEqual(ms.infer(d, "g", rows), at_snap)
        self.assertEqual(ms.export(d, "g"), exported)
        status, _, _ = d.request("POST", "/admin/models/g/restore", {"snapshot_id": 10 ** 9})
        self.assertEqual(status, 404)
        # Snapshots outlive the process: restore the same one after a restart.
        drive(d, "g", 1)
        d = self.restart(d)
        self.assertNotEqual(ms.infer(d, "g", rows), at_snap)
        d.json("POST", "/admin/models/g/restore", {"snapshot_id": snap["snapshot_id"]})
        self.assertEqual(ms.infer(d, "g", rows), at_snap)
        self.assertEqual(ms.export(d, "g"), exported)

    def test_snapshot_listing_newest_first_with_reasons(self):
        d = self.start()
        step0 = ms.step_of(ms.state(ms.export(d, "g")))
        drive(d, "g", 1)
        ms.snapshot_now(d, "g")
        # The loop's copy of the state is timed once per snapshot it takes (the import's was
        # written before serving, from the loaded model).
        metrics = d.request("GET", "/metrics")[2].decode()
        self.assertIn("\ntscale_snapshot_copy_seconds_count 1\n", metrics)
        drive(d, "g", 1)
        d = self.restart(d)
        snaps = ms.snapshots(d, "g")
        self.assertEqual([s["reason"] for s in snaps[:3]], ["shutdown", "admin", "import"])
        self.assertEqual([s["step"] for s in snaps[:3]], [step0 + 2, step0 + 1, step0])
        ids = [s["snapshot_id"] for s in snaps]
        self.assertEqual(ids, sorted(ids, reverse=True))
        self.assertEqual(len(set(ids)), len(ids))
        created = [s["created_at"] for s in snaps]
        self.assertEqual(created, sorted(created, reverse=True))
        # A snapshot holds the mutable state only: 8 bytes per group and per layer step.
        n = ms.state_len(ms.export(d, "g"))
        self.assertTrue(all(s["bytes"] == 8 * n for s in snaps), (n, snaps))

    def test_restart_keeps_state(self):
        d = self.start()
        drive(d, "g", 4)
        blob, out = ms.export(d, "g"), ms.infer(d, "g", probe_rows())
        d = self.restart(d)
        self.assertEqual(ms.export(d, "g"), blob)
        self.assertEqual(ms.infer(d, "g", probe_rows()), out)
        step = [m for m in d.json("GET", "/admin/models")["models"] if m["name"] == "g"][0]["step"]
        self.assertEqual(step, ms.step_of(ms.state(blob)))
        # Steps continue from the recovered state.
        self.assertEqual(drive(d, "g", 1)["step"], step + 1)

    def test_model_flag_same_file_keeps_state_other_file_replaces(self):
        d = self.start()
        step0 = ms.step_of(ms.state(ms.export(d, "g")))
        drive(d, "g", 1)
        other = os.path.join(d.dir, "other.safetensors")
        with open(other, "wb") as f:
            f.write(ms.export(d, "g"))  # same weights, another state: another file
        drive(d, "g", 2)
        kept = ms.export(d, "g")
        d = self.restart(d)  # the same command line
        self.assertEqual(ms.export(d, "g"), kept)
        self.assertEqual(ms.step_of(ms.state(kept)), step0 + 3)
        d = self.restart(d, ["--snapshot-interval", "0", "--model", "g=" + other])
        with open(other, "rb") as f:
            other_state = ms.state(f.read())
        self.assertEqual(ms.state(ms.export(d, "g")), other_state)
        j = drive(d, "g", 1)
        self.assertEqual(j["step"], step0 + 2)
        self.assertNotEqual(str(j["model_version"]), "1")  # a new version
        # Restarting with that file again keeps what was learnt since.
        learnt = ms.export(d, "g")
        d = self.restart(d, ["--snapshot-interval", "0", "--model", "g=" + other])
        self.assertEqual(ms.export(d, "g"), learnt)

    def test_delete_unloads_and_stays_gone_after_restart(self):
        d = self.start()
        with open(ms.golden_file("mlp_relu_mse"), "rb") as f:
            extra = f.read()
        ms.put(d, "extra", extra, expect=(201,))
        self.assertEqual(model_names(d), ["g", "extra"])
        d.json("DELETE", "/admin/models/extra")
        self.assertEqual(d.request("GET", "/v2/models/extra")[0], 404)
        d = self.restart(d)
        self.assertEqual(model_names(d), ["g"])
        self.assertEqual(d.request("POST", "/v2/models/extra/infer", ms.oipc.infer_body(probe_rows("mlp_relu_mse")))[0],
                         404)
        # PUT brings it back, and then it stays.
        ms.put(d, "extra", extra, expect=(201,))
        d = self.restart(d)
        self.assertEqual(sorted(model_names(d)), ["extra", "g"])

    def test_damaged_newest_snapshot_falls_back_to_previous(self):
        d = self.start(self.args + ["--journal", "no"])
        drive(d, "g", 2)
        ms.snapshot_now(d, "g")
        good = ms.export(d, "g")
        drive(d, "g", 1)
        self.assertEqual(d.stop(), 0, d.log())  # the shutdown snapshot is the newest
        damage_newest_snapshot(d.dir)
        d = self.start(self.args + ["--journal", "no"], db_dir=d.dir)
        self.assertEqual(ms.export(d, "g"), good)
        self.assertRegex(d.log(), r"skipped 1 damaged snapshot")

    def test_damaged_newest_snapshot_previous_plus_journal(self):
        """With the journal, the previous snapshot plus the entries after it give the state
        the damaged snapshot held: the journal keeps one snapshot more than it must."""
        d = self.start()
        drive(d, "g", 2)
        ms.snapshot_now(d, "g")
        drive(d, "g", 1)
        final = ms.export(d, "g")
        self.assertEqual(d.stop(), 0, d.log())  # the shutdown snapshot is the newest
        damage_newest_snapshot(d.dir)
        d = self.start(db_dir=d.dir)
        self.assertEqual(ms.export(d, "g"), final)
        self.assertRegex(d.log(), r"skipped 1 damaged snapshot")
        self.assertRegex(d.log(), r"replayed 1 journal entries")


class RefusedDatabases(unittest.TestCase):
    def start_fails(self, prepare):
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
        try:
            prepare(os.path.join(tmp, "tscale.db"))
            try:
                d = ms.start(["--snapshot-interval", "0"], db_dir=tmp)
            except RuntimeError as e:
                return str(e)
            d.close()
            self.fail("the daemon started on a database it must refuse")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_random_bytes(self):
        def prepare(path):
            with open(path, "wb") as f:
                f.write(os.urandom(8192))
        self.assertIn("not a tscale database", self.start_fails(prepare))

    def test_another_applications_sqlite_database(self):
        def prepare(path):
            with sqlite3.connect(path) as db:
                db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
            db.close()
        log = self.start_fails(prepare)
        self.assertIn("not a tscale database", log)

    def test_newer_schema(self):
        # Make a real database first, then pretend a newer tscale migrated it.
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-")
        self.addCleanup(shutil.rmtree, tmp, True)
        d = ms.start(["--snapshot-interval", "0"], db_dir=tmp)
        self.assertEqual(d.stop(), 0)
        d.close()
        path = os.path.join(tmp, "tscale.db")
        with sqlite3.connect(path) as db:
            (v,) = db.execute("PRAGMA user_version").fetchone()
            db.execute("PRAGMA user_version = %d" % (v + 40))
        db.close()
        try:
            d = ms.start(["--snapshot-interval", "0"], db_dir=tmp)
        except RuntimeError as e:
            self.assertIn("schema version %d is newer than this binary's %d" % (v + 40, v), str(e))
        else:
            d.close()
            self.fail("the daemon started on a newer database")


class DiskFull(unittest.TestCase):
    """A full disk under a running daemon (a small tmpfs filled up): serving goes on, feedback
    is refused with 503 while snapshots fail, and everything recovers once space returns."""

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="tscale-e2e-full-")
        self.addCleanup(shutil.rmtree, self.root, True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", self.root],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise unittest.SkipTest("cannot mount a small tmpfs to fill (needs root): " + r.stderr.strip())
        self.addCleanup(subprocess.run, ["umount", "-l", self.root], capture_output=True)
        self.filler = os.path.join(self.root, "filler")

    def fill(self):
        """Write until the file system refuses even one more byte."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            size = 1 << 20
            while size:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as e:
                    self.assertEqual(e.errno, errno.ENOSPC)
                    size //= 2
        finally:
            os.close(fd)

    def until(self, fn, what, timeout=15.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = fn()
            if v:
                return v
            time.sleep(0.1)
        self.fail("timed out waiting for " + what)

    def test_feedback_refused_while_disk_full_then_recovers(self):
        d = ms.start(["--snapshot-interval", "1", "--model", "g=" + ms.golden_file(CASE)], db_dir=self.root)
        self.addCleanup(d.close)
        drive(d, "g", 1)
        ms.snapshot_now(d, "g")
        self.fill()
        rows, steps = golden_steps(CASE, 1)[0], []

        def refused():
            status, headers, body = ms.feedback(d, "g", *rows, expect=None)
            steps.append((status, headers, body))
            return status == 503
        self.until(refused, "feedback to be refused while snapshots fail")
        status, headers, body = steps[-1]
        self.assertIn("retry-after", headers)
        self.assertIn("error", body)
        st, _, data = d.request("POST", "/admin/models/g/snapshots")
        self.assertGreaterEqual(st, 500, data)
        # Serving goes on.
        ms.infer(d, "g", probe_rows())
        self.assertEqual(d.request("GET", "/v2/health/live")[0], 200)
        refused_state = ms.export(d, "g")
        os.remove(self.filler)
        self.until(lambda: ms.feedback(d, "g", *rows, expect=None)[0] == 200,
                   "feedback to be accepted again after space returned")
        recovered = ms.export(d, "g")
        self.assertEqual(ms.step_of(ms.state(recovered)), ms.step_of(ms.state(refused_state)) + 1)
        self.assertEqual(d.stop(), 0, d.log())
        d2 = ms.start(["--snapshot-interval", "1", "--model", "g=" + ms.golden_file(CASE)], db_dir=self.root)
        self.addCleanup(d2.close)
        self.assertEqual(ms.export(d2, "g"), recovered)
        self.assertEqual(d2.stop(), 0, d2.log())

    def test_journal_commit_fails_then_recovers(self):
        """No timer snapshots: the journal's own commit meets the full disk. Feedback is
        refused with 503 + Retry-After and nothing of a refused step stays applied; inference
        goes on; once space returns feedback is accepted again, and every step answered 200
        (and only those) survives kill -9."""
        args = ["--snapshot-interval", "0", "--model", "g=" + ms.golden_file(CASE)]
        d = ms.start(args, db_dir=self.root)
        self.addCleanup(d.close)
        drive(d, "g", 2)
        base = ms.step_of(ms.state(ms.export(d, "g")))
        self.fill()
        rows, answers = golden_steps(CASE, 1)[0], []

        def refused():
            answers.append(ms.feedback(d, "g", *rows, expect=None))
            return answers[-1][0] == 503
        self.until(refused, "feedback to be refused while the journal cannot be written")
        status, headers, body = answers[-1]
        self.assertIn("retry-after", headers)
        self.assertRegex(body["error"], "durable|journal")
        ok = sum(1 for a in answers if a[0] == 200)
        self.assertEqual(ms.step_of(ms.state(ms.export(d, "g"))), base + ok,
                         "a refused step must not stay applied")
        ms.infer(d, "g", probe_rows())
        m = d.request("GET", "/metrics")[2].decode()
        self.assertRegex(m, r"tscale_journal_commit_failures_total [1-9]")
        os.remove(self.filler)
        self.until(lambda: ms.feedback(d, "g", *rows, expect=None)[0] == 200,
                   "feedback to be accepted again after space returned")
        want = ms.export(d, "g")
        self.assertEqual(ms.step_of(ms.state(want)), base + ok + 1)
        d.kill()
        d2 = ms.start(args, db_dir=self.root)
        self.addCleanup(d2.close)
        self.assertEqual(ms.export(d2, "g"), want)


if __name__ == "__main__":
    unittest.main()
