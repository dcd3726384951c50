"""test_replication.py — replication through NATS JetStream (SPEC §7, issue 12): three
replicas of build/tscaled and a real `nats-server -js` on loopback, started and stopped here.

  (a) all feedback to one replica: every replica's export equals, byte for byte, a
      single-node daemon (no --replicate) fed the same requests;
  (b) feedback spread over the three (with ids): identical exports, step = steps acknowledged;
  (c) kill -9 of a replica under load, restart on its database: it catches up, nothing
      acknowledged is lost;
  (d) nats-server stopped: feedback 503 + Retry-After, inference 200; started again on the
      same store: feedback works again and the replicas converge;
  (e) kill -9 of a replica whose steps are journaled and written to a paused nats-server
      (SIGSTOP), which stores them once the replica is stopped too, so it never sees their
      PubAck: the restart publishes them again from the journal, and every replica applies
      each exactly once.
Replication runs them with --replicate-batch-ms 0 (a message per step); ReplicationSummed
runs them again with the default window (several steps summed into one message,
server/repl/repl.h), plus concurrent writers whose steps are summed: one
writer's replicas equal a single node fed the same steps in the same order, and many
writers converge at step = acknowledged steps.

Every wait polls with a deadline. The feedback requests are the golden case's, cyclically."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import modelstate as ms
import oipc
import tsd

CASE = "mlp_silu_xent"
MODEL = "m"
NATS = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)
# ASan makes everything several times slower: the deadlines allow for it.
CONVERGE_S = 30.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class NatsServer:
    """nats-server -js on 127.0.0.1:port with its store in store_dir (extra: more arguments,
    e.g. a monitoring port for bench/repl_bench.py)."""

    def __init__(self, store_dir, port=None, extra=()):
        self.store_dir, self.port, self.extra = store_dir, port or free_port(), list(extra)
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([NATS, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.store_dir]
                                     + self.extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not listen on port %d" % self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def url(self):
        return "nats://127.0.0.1:%d" % self.port


def request_at(step):
    fbs = oipc.golden(CASE)["feedback"]
    fb = fbs[step % len(fbs)]
    return fb["input"], fb["kind"], fb[fb["kind"]]


def feedback(d, step, id=None, timeout=30):
    rows, kind, signal = request_at(step)
    return d.request("POST", "/v2/models/%s/feedback" % MODEL, oipc.feedback_body(rows, kind, signal, id=id),
                     timeout=timeout)


def wait_for(what, fn, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError("timed out after %.0f s waiting for %s (last: %r)" % (timeout, what, last))


def nats_publish(port, msgs):
    """Publish msgs, [(subject, {header: value}, payload)], with the plain NATS protocol
    (HPUB: no PubAck wanted); a PING/PONG then says the server has read them all."""
    s = socket.create_connection(("127.0.0.1", port), 5)
    s.settimeout(5)
    f = s.makefile("rb")
    f.readline()  # INFO
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
    for subject, headers, payload in msgs:
        h = b"NATS/1.0\r\n" + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items()) + b"\r\n"
        s.sendall(b"HPUB %s %d %d\r\n" % (subject.encode(), len(h), len(h) + len(payload)) + h + payload + b"\r\n")
    s.sendall(b"PING\r\n")
    line = f.readline()
    s.close()
    if not line.startswith(b"PONG"):
        raise AssertionError("nats-server answered %r" % line)


def all_threads_stopped(pid):
    """Whether every thread of pid is stopped (SIGSTOP takes effect asynchronously)."""
    states = []
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
            states.append(f.read().rsplit(")", 1)[1].split()[0])
    return all(st == "T" for st in states)


def concurrently(d, steps, ids=None, spacing=0.0):
    """Feedback for each of `steps` on d, each from its own thread (started `spacing` s
    apart), all in flight at once; returns [(status, body)] in the order of `steps`."""
    out = [None] * len(steps)

    def one(i):
        try:
            status, _, body = feedback(d, steps[i], id=ids[i] if ids else None)
            out[i] = (status, body)
        except (OSError, http.client.HTTPException) as e:
            out[i] = (None, repr(e).encode())

    threads = []
    for i in range(len(steps)):
        threads.append(threading.Thread(target=one, args=(i,)))
        threads[-1].start()
        time.sleep(spacing)
    for t in threads:
        t.join(60)
    return out


@unittest.skipIf(NATS is None, "nats-server is not installed (make deps installs it)")
class Replication(unittest.TestCase):
    BATCH = ["--replicate-batch-ms", "0"]  # one message per step (ReplicationSummed: the default)
    WIDE = []    # a window wide enough that concurrent steps surely share a message

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tscale-e2e-repl-")
        self.nats = NatsServer(os.path.join(self.tmp, "nats"))
        self.replicas = []
        with open(ms.golden_file(CASE), "rb") as f:
            self.base = ms.step_of(ms.state(f.read()))

    def tearDown(self):
        # A clean shutdown (SIGTERM) of every replica, so the sanitizers' exit checks run.
        codes = []
        for d in self.replicas:
            codes.append(d.stop() if d.proc.poll() is None else 0)
            d.close()
        self.nats.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.assertEqual(codes, [0] * len(codes), "a replica did not shut down cleanly")

    def args(self, rid, extra=()):
        return ["--model", "%s=%s" % (MODEL, ms.golden_file(CASE)), "--replicate", self.nats.url(),
                "--replica-id", rid, "--replicate-ack-timeout-ms", "1500", "--threads", "1"] + self.BATCH + list(extra)

    def start_replica(self, rid, db_dir=None, extra=()):
        db_dir = db_dir or os.path.join(self.tmp, rid)
        os.makedirs(db_dir, exist_ok=True)
        d = tsd.Daemon(args=self.args(rid, extra), db_dir=db_dir)
        wait_for("replica %s to connect" % rid, lambda: d.metric("tscale_repl_connected") == 1, 15)
        return d

    def start_three(self, extra=()):
        self.replicas = [self.start_replica("r%d" % i, extra=extra) for i in range(3)]
        return self.replicas

    def skipped(self, d, reason):
        _, _, text = d.request("GET", "/metrics")
        for line in text.decode().splitlines():
            if line.startswith('tscale_repl_deltas_skipped_total{reason="%s"} ' % reason):
                return int(line.split()[1])
        raise AssertionError("no skipped count for %s in /metrics" % reason)

    def converged(self, step):
        """Wait until every replica's export is the same and at step (from the golden
        model's own step); returns the export."""
        def same():
            blobs = [ms.export(d, MODEL) for d in self.replicas]
            steps = [ms.step_of(ms.state(b)) - self.base for b in blobs]
            return blobs[0] if all(b == blobs[0] for b in blobs) and steps[0] == step else ("steps", steps)
        got = wait_for("the replicas to converge at step %d" % step, lambda: (lambda r: r if isinstance(r, bytes) else None)(same()), CONVERGE_S)
        return got

    def test_a_one_writer_equals_the_single_node(self):
        r = self.start_three()
        single = tsd.Daemon(args=["--model", "%s=%s" % (MODEL, ms.golden_file(CASE)), "--threads", "1"])
        try:
            n = 8
            for step in range(n):
                for d in (r[0], single):
                    status, _, body = feedback(d, step)
                    self.assertEqual(status, 200, body[:300])
            want = ms.export(single, MODEL)
            got = self.converged(n)
            self.assertEqual(got, want, "a replica's state differs from the single node's")
            self.assertEqual(r[0].metric("tscale_repl_deltas_published_total"), n)
            _, _, text = r[1].request("GET", "/metrics")
            self.assertIn(b'tscale_repl_deltas_applied_total{model="m",origin="r0"} %d' % n, text)
            # Caught up: nothing waits, so no lag in messages or in seconds.
            wait_for("r1's lag to be 0", lambda: r[1].metric("tscale_repl_lag_messages") == 0, 10)
            self.assertEqual(r[1].metric("tscale_repl_lag_seconds"), 0)
            # Off by default: a single node has no replication at all.
            _, _, text = single.request("GET", "/metrics")
            self.assertNotIn(b"tscale_repl_", text)
        finally:
            single.close()

    def test_replicate_needs_the_journal(self):
        with self.assertRaises(RuntimeError) as cm:
            tsd.Daemon(args=self.args("r9", ["--journal", "no"]), start_timeout=10)
        self.assertIn("--replicate needs --journal yes", str(cm.exception))

    def test_b_many_writers_converge(self):
        r = self.start_three()
        acked = [0, 0, 0]

        def drive(i):
            for k in range(5):
                status, _, body = feedback(r[i], 3 * k + i, id="w%d-%d" % (i, k))
                if status == 200:
                    acked[i] += 1

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(acked, [5, 5, 5])
        self.converged(sum(acked))
        # Adding a model on one replica adds it on all (test_replication_state e has more).
        with open(ms.golden_file(CASE), "rb") as f:
            model_file = f.read()
        status, _, text = r[1].request("PUT", "/admin/models/other", model_file)
        self.assertEqual(status, 201, text[:300])
        for d in r:
            wait_for("model other on every replica", lambda: d.request("GET", "/admin/models/other")[0] == 200,
                     CONVERGE_S)
        # A repeat of an id answers the first answer and applies nothing.
        status, _, _ = feedback(r[0], 0, id="w0-0")
        self.assertEqual(status, 200)
        self.converged(sum(acked))

    def test_c_kill_9_under_load_catches_up(self):
        r = self.start_three()
        acked = {"r0": set(), "r2": set()}
        stop = threading.Event()

        def drive(d, rid):
            k = 0
            while not stop.is_set() and k < 200:
                try:
                    status, _, _ = feedback(d, k, id="%s-%d" % (rid, k), timeout=10)
                except (OSError, http.client.HTTPException):
                    return  # killed under us
                if status == 200:
                    acked[rid].add(k)
                    k += 1
                else:
                    time.sleep(0.05)

        t0 = threading.Thread(target=drive, args=(r[0], "r0"))
        t2 = threading.Thread(target=drive, args=(r[2], "r2"))
        t0.start()
        t2.start()
        wait_for("some steps on r2", lambda: len(acked["r2"]) >= 3, 20)
        # A snapshot with a replication position, then more steps interleaved with r0's: the
        # restart replays a journal with step gaps and consumes from after the position.
        ms.snapshot_now(r[2], MODEL)
        at_snapshot = len(acked["r2"])
        wait_for("more steps on r2", lambda: len(acked["r2"]) >= at_snapshot + 3, 20)
        r[2].kill()
        t2.join(10)
        killed_at = len(acked["r2"])
        r[2].close()
        self.replicas[2] = self.start_replica("r2", db_dir=os.path.join(self.tmp, "r2"))
        self.assertTrue(any("replayed" in l and "journal entries after snapshot" in l
                            for l in self.replicas[2].log_lines), self.replicas[2].log())
        # The request in flight at the kill, retried with its id: applied exactly once.
        status, _, body = feedback(self.replicas[2], killed_at, id="r2-%d" % killed_at)
        self.assertEqual(status, 200, body[:300])
        acked["r2"].add(killed_at)
        time.sleep(0.5)
        stop.set()
        t0.join(30)
        self.assertGreater(len(acked["r0"]), 0)
        self.converged(len(acked["r0"]) + len(acked["r2"]))

    def test_d_nats_down_refuses_feedback_keeps_inference(self):
        r = self.start_three()
        for step in range(3):
            self.assertEqual(feedback(r[0], step, id="d-%d" % step)[0], 200)
        self.converged(3)
        self.nats.stop()
        status, headers, body = wait_for("feedback to be refused",
                                         lambda: (lambda x: x if x[0] == 503 else None)(feedback(r[1], 3, id="d-3")), 10)
        self.assertIn("retry-after", headers)
        self.assertIn(b"replicat", body)  # refused at admission, or admitted just before and late
        rows, _, _ = request_at(0)
        for d in r:
            out = d.request("POST", "/v2/models/%s/infer" % MODEL, oipc.infer_body(rows))
            self.assertEqual(out[0], 200, out[2][:300])
        self.nats.start()
        wait_for("feedback to work again",
                 lambda: feedback(r[1], 3, id="d-3")[0] == 200, CONVERGE_S)
        for d in r:  # each replica reconnects on its own schedule (reconnect wait 250 ms)
            wait_for("every replica to reconnect", lambda: d.metric("tscale_repl_connected") == 1, CONVERGE_S)
        status, _, body = feedback(r[2], 4, id="d-4")
        self.assertEqual(status, 200, body[:300])
        self.converged(5)

    def test_e_kill_9_with_steps_on_their_way_republishes_exactly_once(self):
        r = self.start_three(extra=self.WIDE)
        for step in range(2):
            self.assertEqual(feedback(r[2], step, id="e-%d" % step)[0], 200)
        self.converged(2)
        # r2 journals steps 3..8 and writes them to its NATS connection, where they wait
        # unread (nats-server paused): no PubAck, so no answer.
        results = []
        threads = [threading.Thread(target=lambda ks=ks: results.extend(
            concurrently(r[2], ks, ids=["e-%d" % k for k in ks]))) for ks in ([2], list(range(3, 8)))]
        pending = lambda: r[2].metric("tscale_repl_publish_pending")  # noqa: E731
        try:
            self.nats.proc.send_signal(signal.SIGSTOP)
            threads[0].start()  # step 3: its message goes at once and waits for its PubAck
            wait_for("step 3 journaled, on its way", lambda: pending() == 1, 10)
            if self.WIDE:
                # Steps 4..8 queue while step 3 is in flight, so they wait out the summing
                # window: NATS runs long enough to acknowledge step 3, and is paused again
                # inside the window, so the sum of 4..8 is written but goes unread.
                threads[1].start()
                wait_for("steps 4..8 journaled behind it", lambda: pending() == 6, 10)
                self.nats.proc.send_signal(signal.SIGCONT)
                wait_for("step 3 acknowledged", lambda: r[2].metric("tscale_repl_deltas_published_total") == 3, 10)
                self.nats.proc.send_signal(signal.SIGSTOP)
                self.assertEqual(pending(), 5)
                time.sleep(1.5)  # past the window: the summed message is written
            else:
                threads[1].start()
                wait_for("steps 4..8 journaled behind it", lambda: pending() == 6, 10)
                time.sleep(0.5)
            # r2 stops before NATS goes on, so NATS stores what it wrote and r2 never reads
            # the PubAck: a step stored in the stream that its origin never saw acknowledged.
            r[2].signal(signal.SIGSTOP)
            wait_for("r2 to stop", lambda: all_threads_stopped(r[2].proc.pid), 10)
            self.nats.proc.send_signal(signal.SIGCONT)
            stored = 8 if self.WIDE else 3
            wait_for("r0 to apply the steps r2 wrote", lambda: ms.step_of(ms.state(ms.export(r[0], MODEL))) - self.base
                     == stored, CONVERGE_S)
            r[2].kill()
            for t in threads:
                t.join(30)
            self.assertEqual(sum(1 for status, _ in results if status == 200), 1 if self.WIDE else 0, results)
        finally:
            self.nats.proc.send_signal(signal.SIGCONT)
        # The restart replays r2's journal (all 8 steps) and publishes them again, one a
        # message.
        r[2].close()
        self.replicas[2] = self.start_replica("r2", db_dir=os.path.join(self.tmp, "r2"), extra=self.WIDE)
        self.converged(8)
        wait_for("r2 to publish its journal again",
                 lambda: self.replicas[2].metric("tscale_repl_publish_pending") == 0, CONVERGE_S)
        time.sleep(0.5)  # the copies reach r0 and r1 too: they must not move them
        self.converged(8)
        # With summing, the stored message summed 4..8 under id "r2:4-8": JetStream can't
        # drop the one-step copies by id; the high-water marks skip them. Without, JetStream
        # drops the copy of step 3 by its id and 4..8 were never sent before.
        for d in self.replicas[:2]:
            self.assertEqual(self.skipped(d, "duplicate"), 5 if self.WIDE else 0)
        for d in self.replicas:
            self.assertEqual(self.skipped(d, "straddles"), 0)
        # The journaled steps answer their ids now, without a new step.
        status, _, body = feedback(self.replicas[2], 4, id="e-4")
        self.assertEqual(status, 200, body[:300])
        self.converged(8)


class ReplicationSummed(Replication):
    BATCH = []   # the default window (2 ms)
    WIDE = ["--replicate-batch-ms", "1000"]

    def queued_behind_a_paused_nats(self, writers, want_pending):
        """Run the writer threads while nats-server is paused, until the replicas hold
        want_pending steps journaled and queued (the first of each in flight, the rest
        behind it: they are summed when NATS goes on); then let NATS go on and join them."""
        self.nats.proc.send_signal(signal.SIGSTOP)
        try:
            for t in writers:
                t.start()
            wait_for("%d steps queued for JetStream" % want_pending,
                     lambda: sum(d.metric("tscale_repl_publish_pending") for d in self.replicas) == want_pending, 10)
        finally:
            self.nats.proc.send_signal(signal.SIGCONT)
        for t in writers:
            t.join(60)

    def test_f_summed_one_writer_equals_the_single_node(self):
        r = self.start_three()
        n = 8
        out = []
        self.queued_behind_a_paused_nats([threading.Thread(target=lambda: out.extend(concurrently(r[0], list(range(n)))))], n)
        self.assertEqual([s for s, _ in out], [200] * n, out)
        # The order r0 took them in is the order of their steps: the single node takes the
        # same requests in that order.
        order = sorted(range(n), key=lambda i: json.loads(out[i][1])["step"])
        self.assertEqual(sorted(json.loads(b)["step"] - self.base for _, b in out), list(range(1, n + 1)))
        single = tsd.Daemon(args=["--model", "%s=%s" % (MODEL, ms.golden_file(CASE)), "--threads", "1"])
        try:
            for i in order:
                status, _, body = feedback(single, i)
                self.assertEqual(status, 200, body[:300])
            want = ms.export(single, MODEL)
        finally:
            single.close()
        self.assertEqual(self.converged(n), want, "a replica's state differs from the single node's")
        self.assertEqual(r[0].metric("tscale_repl_deltas_published_total"), n)
        messages = r[0].metric("tscale_repl_messages_published_total")
        self.assertLess(messages, n, "no steps were summed")
        _, _, text = r[1].request("GET", "/metrics")
        self.assertIn(b'tscale_repl_deltas_applied_total{model="m",origin="r0"} %d' % n, text)

    def test_h_consumes_single_and_summed_messages_by_their_marks(self):
        """Messages of a replica "x" written straight to the stream: old single-step ones (no
        Tscale-First-Seq: a replica before summing), sums in each width, copies (skipped by
        the high-water mark), one that straddles the mark (skipped and counted) and one with
        a malformed span."""
        d = self.start_replica("r0")
        before = ms.state(ms.export(d, MODEL))
        n = sum(len(corr) for _, kind, _, corr in before if kind == "ternary_linear")

        def msg(seq, payload, first=None, steps=None, msgid=None):
            h = {"Tscale-Origin": "x", "Tscale-Seq": str(seq), "Tscale-Version": "1", "Tscale-Model": MODEL,
                 "Nats-Msg-Id": msgid or "x:%d" % seq}
            if first is not None:
                h["Tscale-First-Seq"] = str(first)
            if steps is not None:
                h["Tscale-Steps"] = str(steps)
            return ("tscale.delta." + MODEL, h, payload)

        def enc(width, v, tag=None):  # journal.c's encoding: the tag (the width, | 0x10 for a
            # sum), then n little-endian values of that width
            return bytes([tag or width]) + v.to_bytes(width, "little", signed=True) * n

        nats_publish(self.nats.port, [
            msg(1, enc(1, 1)),                                   # old single step: applied
            msg(4, enc(4, 2, 0x14), first=2, steps=3),           # steps 2..4 summed (int32): applied
            msg(4, enc(4, 2, 0x14), first=2, steps=3, msgid="x:2-4b"),  # a copy past the duplicate window
            msg(3, enc(1, 5)),                                   # a single step at or below the mark
            msg(6, enc(1, 7, 0x11), first=4, steps=3),           # straddles the mark: skipped
            msg(7, enc(2, -1)),                                  # single (int16): applied
            msg(9, enc(1, 0, 0x11), steps=2),                    # a span without its first seq: malformed
            msg(10, enc(1, 0, 0x11), first=9, steps=2),          # steps 9..10 summed (int8): applied
        ])
        want_step = ms.step_of(before) + 1 + 3 + 1 + 2
        wait_for("the deltas of x to be applied", lambda: ms.step_of(ms.state(ms.export(d, MODEL))) == want_step,
                 CONVERGE_S)
        after = ms.state(ms.export(d, MODEL))
        for (_, kind, _, c0), (_, _, _, c1) in zip(before, after):
            if kind == "ternary_linear":  # corr_accum -= 1 + 2 - 1 + 0 in every group
                self.assertEqual([a - b for a, b in zip(c0, c1)], [2] * len(c0))
        self.assertEqual(self.skipped(d, "duplicate"), 2)
        self.assertEqual(self.skipped(d, "straddles"), 1)
        self.assertEqual(self.skipped(d, "malformed"), 1)
        _, _, text = d.request("GET", "/metrics")
        self.assertIn(b'tscale_repl_deltas_applied_total{model="m",origin="x"} 7', text)
        self.assertTrue(any("sums steps 4..6 but its steps up to 4" in line for line in d.log_lines), d.log())
        self.replicas = [d]

    def test_g_summed_many_writers_converge(self):
        r = self.start_three()
        results = []

        def drive(i):
            results.extend(concurrently(r[i], [3 * k + i for k in range(4)], ids=["g%d-%d" % (i, k) for k in range(4)]))

        self.queued_behind_a_paused_nats([threading.Thread(target=drive, args=(i,)) for i in range(3)], 12)
        acked = sum(1 for status, _ in results if status == 200)
        self.assertEqual(acked, 12, results)
        self.converged(acked)
        steps = sum(d.metric("tscale_repl_deltas_published_total") for d in r)
        messages = sum(d.metric("tscale_repl_messages_published_total") for d in r)
        self.assertEqual(steps, acked)
        self.assertLess(messages, steps, "no steps were summed")
        for d in r:
            self.assertEqual(self.skipped(d, "straddles"), 0)


if __name__ == "__main__":
    unittest.main()
