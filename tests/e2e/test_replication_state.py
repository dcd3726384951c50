"""test_replication_state.py — published model states (issue 12 items 4 and 6; README
"Replication"): replicas of build/tscaled and a real `nats-server -js` on loopback.

  (a) a new replica with an empty database and no model of its own joins a running pair
      under feedback: it loads the newest published state, replays the rest, and every
      export is byte-identical at step = steps acknowledged;
  (b) a replica that starts with the model file but an empty database, after the stream's
      retention cut the deltas (short --replicate-max-age): it uses the published state,
      not its own, and converges;
  (d) restore, PUT (replace) and DELETE on one replica take effect on all, in stream order,
      while the others take feedback: identical exports afterwards, and a restore with no
      feedback around it gives every replica exactly the snapshot's state;
  (e) PUT of a new name and restore of a deleted model on one replica add it on all, in
      stream order: byte-identical exports, and feedback for it converges;
  (c) one replica's integer state corrupted on disk (its SQLite snapshot edited while it
      is stopped, checksum fixed so its own recovery loads it): the digest comparison at
      the same position detects it, counts it, and the replica resyncs.

Every wait polls with a deadline (ASan runs these too)."""
import os
import signal
import sqlite3
import struct
import threading
import time
import unittest

import modelstate as ms
import oipc
import tsd
import test_replication as base  # not its classes by name: unittest would run their tests here again
from test_replication import CASE, CONVERGE_S, MODEL, NATS, feedback, request_at, wait_for

FNV_OFFSET, FNV_PRIME, MASK = 0xcbf29ce484222325, 0x100000001b3, (1 << 64) - 1


def state_checksum(blob):
    """store.c state_checksum: FNV-1a with one step per little-endian 64-bit value."""
    h = FNV_OFFSET
    for (v,) in struct.iter_unpack("<Q", blob):
        h = ((h ^ v) * FNV_PRIME) & MASK
    return h


@unittest.skipIf(NATS is None, "nats-server is not installed (make deps installs it)")
class PublishedStates(unittest.TestCase):
    # The same set-up as test_replication's: a nats-server in a temporary directory, the
    # replicas stopped cleanly (so the sanitizers' exit checks run), and convergence.
    setUp, tearDown, converged = base.Replication.setUp, base.Replication.tearDown, base.Replication.converged

    def start(self, rid, with_model=True, extra=()):
        db_dir = os.path.join(self.tmp, rid)
        os.makedirs(db_dir, exist_ok=True)
        args = (["--model", "%s=%s" % (MODEL, ms.golden_file(CASE))] if with_model else []) + [
            "--replicate", self.nats.url(), "--replica-id", rid, "--replicate-ack-timeout-ms", "1500",
            "--threads", "1", "--replicate-state-interval", "1"] + list(extra)
        d = tsd.Daemon(args=args, db_dir=db_dir)
        wait_for("replica %s to connect" % rid, lambda: d.metric("tscale_repl_connected") == 1, 30)
        return d

    def test_a_empty_replica_joins_a_running_pair_under_feedback(self):
        # A NATS server whose max_payload (1 KiB) is smaller than the model file (1.8 KiB):
        # every state goes out in chunks, as a model of more than 1 MiB does by default.
        self.nats.stop()
        conf = os.path.join(self.tmp, "nats.conf")
        with open(conf, "w") as f:
            f.write("max_payload: 1024\n")
        self.nats = base.NatsServer(os.path.join(self.tmp, "nats"), extra=["-c", conf])
        self.replicas = [self.start("r0"), self.start("r1")]
        acked, stop = [0, 0], threading.Event()

        def drive(i):
            k = 0
            while not stop.is_set() and k < 60:
                status, _, _ = feedback(self.replicas[i], 2 * k + i, id="a%d-%d" % (i, k))
                if status == 200:
                    acked[i] += 1
                k += 1

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        wait_for("a published state", lambda: self.replicas[0].metric("tscale_repl_states_published_total") >= 1
                 and sum(acked) >= 6, CONVERGE_S)
        _, _, text = self.replicas[0].request("GET", "/metrics")  # one reading for both counters
        m = dict(l.split()[:2] for l in text.decode().splitlines() if l.startswith("tscale_repl_state"))
        self.assertGreaterEqual(float(m["tscale_repl_state_chunks_published_total"]),
                                2 * float(m["tscale_repl_states_published_total"]))
        # No --model: the joiner has never seen model m; it learns it from the published state.
        joiner = self.start("r2", with_model=False)
        self.replicas.append(joiner)
        time.sleep(0.5)  # feedback goes on while it joins
        stop.set()
        for t in threads:
            t.join(60)
        self.converged(sum(acked))
        self.assertGreaterEqual(joiner.metric("tscale_repl_states_loaded_total"), 1)
        self.assertTrue(any("loaded the state published by replica" in l for l in joiner.log_lines), joiner.log())
        # It is a full replica: its own feedback reaches the others.
        status, _, body = feedback(joiner, 7, id="joiner-0")
        self.assertEqual(status, 200, body[:300])
        self.converged(sum(acked) + 1)

    def test_b_joiner_after_retention_cut_uses_the_published_state(self):
        # The first replica creates the stream: deltas older than 4 s are deleted.
        r0 = self.start("r0", extra=["--replicate-max-age", "4"])
        self.replicas = [r0]
        for step in range(5):
            self.assertEqual(feedback(r0, step, id="b-%d" % step)[0], 200)
        want = ms.export(r0, MODEL)
        published = r0.metric("tscale_repl_states_published_total")
        wait_for("a state after the last step", lambda: r0.metric("tscale_repl_states_published_total") > published,
                 CONVERGE_S)
        time.sleep(5)  # retention cuts the deltas
        # The joiner has the model file (and so its own state at step 0) but an empty database.
        r1 = self.start("r1", extra=["--replicate-max-age", "4"])
        self.replicas.append(r1)
        self.assertEqual(self.converged(5), want)
        self.assertTrue(any("replaces this replica's own unreplicated state" in l for l in r1.log_lines), r1.log())
        self.assertEqual(r1.metric("tscale_repl_states_loaded_total"), 1)
        # The loaded state's "join" snapshot is noted as the model's newest (state.h's
        # snapshot_note hook): what /admin/models shows and the snapshot timer compares with.
        snap = r1.json("GET", "/admin/models/%s" % MODEL)["snapshot"]
        self.assertEqual((snap["reason"], snap["step"]), ("join", 5), snap)
        status, _, body = feedback(r1, 5, id="b-5")
        self.assertEqual(status, 200, body[:300])
        self.converged(6)

    def corrupt_newest_snapshot(self, rid):
        """Add 7 to the first corr_accum value of the newest snapshot of m (a real path: the
        replica's own database, edited while it is stopped; the checksum is recomputed so
        that its recovery loads the damaged state as good)."""
        db = sqlite3.connect(os.path.join(self.tmp, rid, "tscale.db"))
        sid, blob = db.execute("SELECT s.id, s.state FROM snapshots s JOIN models m ON m.id = s.model_id "
                               "WHERE m.name = ? ORDER BY s.id DESC LIMIT 1", (MODEL,)).fetchone()
        vals = list(struct.unpack("<%dq" % (len(blob) // 8), blob))
        vals[1] += 7  # layer 0: step, then corr_accum[0]
        blob = struct.pack("<%dq" % len(vals), *vals)
        db.execute("UPDATE snapshots SET state = ?, checksum = ? WHERE id = ?",
                   (blob, struct.unpack("<q", struct.pack("<Q", state_checksum(blob)))[0], sid))
        db.commit()
        db.close()

    def test_c_digest_mismatch_is_detected_and_healed(self):
        r0, r1 = self.start("r0"), self.start("r1")
        self.replicas = [r0, r1]
        for step in range(4):
            self.assertEqual(feedback(r0, step, id="c-%d" % step)[0], 200)
        want = self.converged(4)
        wait_for("a digest check at the same position",
                 lambda: r1.metric("tscale_repl_digest_checks_total") >= 1, CONVERGE_S)
        self.assertEqual(r1.metric("tscale_repl_digest_mismatches_total"), 0)
        self.assertEqual(r1.stop(), 0)
        r1.close()
        self.corrupt_newest_snapshot("r1")
        r1 = self.start("r1")
        self.replicas[1] = r1
        # Its recovery loaded the damage (the mismatch names r1's own digest), and the check
        # healed it, typically within a second of the start.
        wait_for("the resync", lambda: r1.metric("tscale_repl_resyncs_total") == 1, CONVERGE_S)
        self.assertGreaterEqual(r1.metric("tscale_repl_digest_mismatches_total"), 1)
        self.assertTrue(any("digest mismatch" in l and "this replica ('r1') has" in l and "resyncing" in l
                            for l in r1.log_lines), r1.log())
        self.assertEqual(self.converged(4), want)
        # Healed for good: its resync snapshot is what a restart loads.
        self.assertEqual(r1.stop(), 0)
        r1.close()
        r1 = self.start("r1")
        self.replicas[1] = r1
        self.assertEqual(ms.export(r1, MODEL), want)

    def same_exports(self, name=MODEL):
        def same():
            blobs = [ms.export(d, name) for d in self.replicas]
            return blobs[0] if all(b == blobs[0] for b in blobs) else None
        return wait_for("identical exports", same, CONVERGE_S)

    def test_d_admin_everywhere_under_feedback(self):
        self.replicas = [self.start("r0"), self.start("r1"), self.start("r2")]
        r0, r1, r2 = self.replicas
        for step in range(4):
            self.assertEqual(feedback(r0, step, id="d-%d" % step)[0], 200)
        at_snapshot = self.converged(4)
        snap = ms.snapshot_now(r0, MODEL)["snapshot_id"]
        stop, acked = threading.Event(), [0, 0]

        def drive(i, w):  # three writers per replica: several own steps in flight at once
            k = 0
            while not stop.is_set() and k < 40:
                status, _, _ = feedback(self.replicas[i + 1], 5 + 2 * k + i, id="dd%d-%d-%d" % (i, w, k))
                acked[i] += status == 200
                k += 1

        threads = [threading.Thread(target=drive, args=(i, w)) for i in range(2) for w in range(3)]
        for t in threads:
            t.start()
        wait_for("feedback on r1 and r2", lambda: min(acked) >= 6, CONVERGE_S)
        # Restored on r0 while r1 and r2 take steps: their steps around the restore land
        # before or after it in the stream, the same for every replica.
        out = r0.json("POST", "/admin/models/%s/restore" % MODEL, {"snapshot_id": snap})
        self.assertEqual(out["restored_from"], snap)
        wait_for("more feedback after the restore", lambda: min(acked) >= 12, CONVERGE_S)
        stop.set()
        for t in threads:
            t.join(60)
        self.same_exports()
        for d in self.replicas:
            self.assertTrue(any("restored by replica 'r0'" in l for l in d.log_lines), d.log())
            # Converged by the rule itself, not healed afterwards by a digest resync.
            self.assertEqual(d.metric("tscale_repl_digest_mismatches_total"), 0, d.log())
        # With no feedback around it, the restore gives every replica the snapshot's state.
        r0.json("POST", "/admin/models/%s/restore" % MODEL, {"snapshot_id": snap})
        self.assertEqual(self.same_exports(), at_snapshot)
        # PUT on r1 replaces the model everywhere: the file's own state, a new version.
        with open(ms.golden_file(CASE), "rb") as f:
            model_file = f.read()
        put = ms.put(r1, MODEL, model_file)
        self.assertEqual(self.same_exports(), ms.export(r1, MODEL))
        self.assertEqual(ms.step_of(ms.state(ms.export(r2, MODEL))), self.base)
        for d in self.replicas:
            wait_for("the new version", lambda: d.json("GET", "/admin/models/%s" % MODEL)["version"]
                     == int(put["model_version"]), CONVERGE_S)
        self.assertEqual(feedback(r2, 0, id="after-put")[0], 200)
        self.converged(1)
        # DELETE on r2 and on r0 at once: the first in the stream unloads it everywhere; the
        # other is answered 404 (its message comes after the model is gone, or it arrives after).
        codes = {}
        deletes = [threading.Thread(target=lambda d=d: codes.__setitem__(
            d, d.request("DELETE", "/admin/models/%s" % MODEL)[0])) for d in (r2, r0)]
        for t in deletes:
            t.start()
        for t in deletes:
            t.join(60)
        self.assertEqual(sorted(codes.values()), [200, 404])
        for d in self.replicas:
            wait_for("the model gone", lambda: d.request("GET", "/admin/models/%s" % MODEL)[0] == 404, CONVERGE_S)

    def test_e_new_and_undeleted_models_everywhere(self):
        self.replicas = [self.start("r0"), self.start("r1"), self.start("r2")]
        r0, r1, r2 = self.replicas
        name = "added"

        def feedback_n(d, step, id):
            rows, kind, signal = request_at(step)
            return d.request("POST", "/v2/models/%s/feedback" % name, oipc.feedback_body(rows, kind, signal, id=id))

        def served_everywhere(yes):
            for d in self.replicas:
                wait_for("model %s %s on %s" % (name, "served" if yes else "gone", d), lambda: (d.request(
                    "GET", "/admin/models/%s" % name)[0] == 200) == yes, CONVERGE_S)

        # PUT of a name no replica serves, on r1: 201 once it took effect on r1, then served
        # by all three with the file's own state.
        with open(ms.golden_file(CASE), "rb") as f:
            model_file = f.read()
        status, _, body = r1.request("PUT", "/admin/models/%s" % name, model_file,
                                     {"Content-Type": "application/octet-stream"})
        self.assertEqual(status, 201, body[:300])
        served_everywhere(True)
        self.assertEqual(self.same_exports(name), ms.export(r1, name))
        for d in self.replicas:
            self.assertTrue(any("'%s' added by replica 'r1'" % name in l for l in d.log_lines), d.log())
        # Feedback on r2 for it reaches the others.
        first = ms.step_of(ms.state(ms.export(r2, name)))
        for step in range(3):
            self.assertEqual(feedback_n(r2, step, "e-%d" % step)[0], 200)
        before = self.same_exports(name)
        self.assertEqual(ms.step_of(ms.state(before)) - first, 3)
        # DELETE on r0, then restore its last snapshot (the one DELETE took) on r0: back on
        # every replica with the state it had.
        self.assertEqual(r0.request("DELETE", "/admin/models/%s" % name)[0], 200)
        served_everywhere(False)
        snaps = r0.json("GET", "/admin/models/%s/snapshots" % name)["snapshots"]
        snap = max(s["snapshot_id"] for s in snaps)
        out = r0.json("POST", "/admin/models/%s/restore" % name, {"snapshot_id": snap})
        self.assertEqual(out["restored_from"], snap)
        served_everywhere(True)
        self.assertEqual(self.same_exports(name), before)
        # Feedback after the restore converges too, and the other model was never touched.
        self.assertEqual(feedback_n(r1, 3, "e-3")[0], 200)
        wait_for("the step after the restore everywhere", lambda: all(
            ms.step_of(ms.state(ms.export(d, name))) - first == 4 for d in self.replicas), CONVERGE_S)
        after = self.same_exports(name)
        self.assertEqual(ms.step_of(ms.state(after)) - first, 4)
        # DELETE and restore at once (the restore asked as soon as r0 answers the DELETE,
        # while the others may still be unloading it): back everywhere, the same bytes.
        for k in range(3):
            self.assertEqual(r0.request("DELETE", "/admin/models/%s" % name)[0], 200)
            snap = max(s["snapshot_id"] for s in r0.json("GET", "/admin/models/%s/snapshots" % name)["snapshots"])
            r0.json("POST", "/admin/models/%s/restore" % name, {"snapshot_id": snap})
        served_everywhere(True)
        self.assertEqual(self.same_exports(name), after)
        # r2 paused (SIGSTOP) while r0 deletes the model, brings it back and takes a step on
        # it: resumed, r2 consumes all three at once — the restore waits until its unload is
        # done, and the step after it waits behind it.
        r2.proc.send_signal(signal.SIGSTOP)
        try:
            self.assertEqual(r0.request("DELETE", "/admin/models/%s" % name)[0], 200)
            snap = max(s["snapshot_id"] for s in r0.json("GET", "/admin/models/%s/snapshots" % name)["snapshots"])
            r0.json("POST", "/admin/models/%s/restore" % name, {"snapshot_id": snap})
            self.assertEqual(feedback_n(r0, 4, "e-4")[0], 200)
        finally:
            r2.proc.send_signal(signal.SIGCONT)
        wait_for("the step after the paused restore everywhere", lambda: all(
            d.request("GET", "/admin/models/%s" % name)[0] == 200 and
            ms.step_of(ms.state(ms.export(d, name))) - first == 5 for d in self.replicas), CONVERGE_S)
        after = self.same_exports(name)
        # A replica stopped while a new model is added gets it from the stream when it starts.
        self.assertEqual(r2.stop(), 0)
        r2.close()
        status, _, body = r0.request("PUT", "/admin/models/added2", model_file,
                                     {"Content-Type": "application/octet-stream"})
        self.assertEqual(status, 201, body[:300])
        r2 = self.replicas[2] = self.start("r2")
        wait_for("added2 on the restarted replica", lambda: r2.request("GET", "/admin/models/added2")[0] == 200,
                 CONVERGE_S)
        self.assertEqual(self.same_exports("added2"), ms.export(r0, "added2"))
        self.assertEqual(self.same_exports(name), after)
        self.converged(0)


if __name__ == "__main__":
    unittest.main()
