"""test_forward.py — feedback by inference id on whichever replica receives it (issue 15,
server/repl/forward.h): three replicas of build/tscaled and a real `nats-server -js` on
loopback (test_replication's NatsServer).

The reference for "the same step" is a single node (no --replicate) that gets the same
inferences and the same by-id feedback: the answers (step, loss) and the exported state must
be equal, byte for byte. Every wait polls with a deadline."""
import json
import os
import threading
import time
import unittest

import modelstate as ms
import oipc
import test_replication as tr
import tsd

MODEL = tr.MODEL
CASE = tr.CASE
# Generous: this shared machine (and ASan) can stall a replica's answer for hundreds of ms;
# only a miss (nobody holds the id) waits it out.
FORWARD_TIMEOUT_MS = 3000


def infer(d, rows, id=None):
    """The inference's id (the client's, or the one the daemon made)."""
    return d.json("POST", "/v2/models/%s/infer" % MODEL, oipc.infer_body(rows, id=id))["id"]


def by_id(d, id, kind, signal, datatype=None):
    """POST feedback by id; (status, body bytes, seconds it took, the replica that answered
    when it was forwarded)."""
    dt = datatype or ("INT64" if kind == "label" else "FP32")
    body = {"id": id, "inputs": [oipc.tensor(kind, signal, dt)]}
    t0 = time.time()
    status, headers, data = d.request("POST", "/v2/models/%s/feedback" % MODEL, body)
    return status, data, time.time() - t0, headers.get("tscale-forwarded-to")


@unittest.skipIf(tr.NATS is None, "nats-server is not installed (make deps installs it)")
class Forward(unittest.TestCase):
    # The replica set of test_replication (temporary directory, nats-server, replicas, clean
    # shutdown checked, convergence), plus a single node as the reference.
    setUp = tr.Replication.setUp
    args = tr.Replication.args
    start_replica = tr.Replication.start_replica
    converged = tr.Replication.converged
    BATCH = []  # the daemon's default summing
    single = None

    def tearDown(self):
        if self.single:
            self.single.close()
        tr.Replication.tearDown(self)

    def start(self, n, extra=()):
        fwd = ["--forward-timeout-ms", str(FORWARD_TIMEOUT_MS)] + list(extra)
        self.replicas = [self.start_replica("r%d" % i, extra=fwd) for i in range(n)]
        self.single = tsd.Daemon(args=["--model", "%s=%s" % (MODEL, ms.golden_file(CASE)), "--threads", "1"]
                                 + list(extra))
        return self.replicas

    def test_by_id_on_any_replica_exactly_once(self):
        a, b, c = self.start(3)
        rows, kind, signal = tr.request_at(0)
        # A server-made id, feedback on another replica: asked of the replica that made it.
        id_a, id_s = infer(a, rows), infer(self.single, rows)
        self.assertNotEqual(id_a.split("-")[0], infer(b, rows).split("-")[0], "replicas share an id prefix")
        status, first, _, via = by_id(b, id_a, kind, signal)
        self.assertEqual(status, 200, first[:300])
        self.assertEqual(via, "r0")
        status, want, *_ = by_id(self.single, id_s, kind, signal)
        self.assertEqual(status, 200, want[:300])
        got, ref = json.loads(first), json.loads(want)
        self.assertEqual(got["id"], id_a)
        self.assertEqual((got["step"], got["loss"]), (ref["step"], ref["loss"]), "not the single node's step")
        self.assertEqual(self.converged(1), ms.export(self.single, MODEL))
        self.assertEqual(a.metric("tscale_forward_received_total"), 1)
        self.assertEqual(b.metric("tscale_forward_answered_total"), 1)
        # The repeat on a third replica reaches the holder again: the first answer, nothing applied.
        status, again, _, via = by_id(c, id_a, kind, signal)
        self.assertEqual((status, again, via), (200, first, "r0"))
        self.assertEqual(a.metric("tscale_forward_received_total"), 2)
        time.sleep(0.5)
        self.converged(1)
        # A changed body under the used id: 409, wherever it is sent.
        other = [(x + 1) % 2 for x in signal] if kind == "label" else signal
        if other != signal:
            self.assertEqual(by_id(c, id_a, kind, other)[0], 409)

        # A client-chosen id: asked of every replica, the one that holds it answers.
        rows, kind, signal = tr.request_at(1)
        self.assertEqual(infer(a, rows, id="client-7"), "client-7")
        infer(self.single, rows, id="client-7")
        status, got, *_ = by_id(c, "client-7", kind, signal)
        self.assertEqual(status, 200, got[:300])
        status, want, *_ = by_id(self.single, "client-7", kind, signal)
        self.assertEqual(json.loads(got)["loss"], json.loads(want)["loss"])
        self.assertEqual(self.converged(2), ms.export(self.single, MODEL))

        # The same label at once on every replica: one step, one answer for all.
        rows, kind, signal = tr.request_at(2)
        infer(a, rows, id="client-8")
        answers = []
        threads = [threading.Thread(target=lambda d=d: answers.append(by_id(d, "client-8", kind, signal)[:2]))
                   for d in (b, c, a, b, c)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(len(answers), 5)
        self.assertEqual({st for st, _ in answers}, {200}, answers)
        self.assertEqual(len({body for _, body in answers}), 1, answers)
        infer(self.single, rows, id="client-8")
        self.assertEqual(by_id(self.single, "client-8", kind, signal)[0], 200)
        self.assertEqual(self.converged(3), ms.export(self.single, MODEL))

        # Nobody holds it: 404 that says so, after --forward-timeout-ms for a client id, at
        # once for the id of a run that is gone (nobody listens on its subject).
        status, body, took, via = by_id(b, "nobody-has-this", kind, signal)
        self.assertEqual(status, 404, body)
        self.assertIsNone(via)
        self.assertIn(b"no replica holds", body)
        self.assertIn(b"--forward-timeout-ms", body)
        self.assertGreaterEqual(took, FORWARD_TIMEOUT_MS / 1000 - 0.05)
        self.assertLess(took, FORWARD_TIMEOUT_MS / 1000 + 10)
        status, body, *_ = by_id(b, "0123456789abcdef-1", kind, signal)
        self.assertEqual(status, 404, body)
        self.assertIn(b"gone", body)
        self.assertEqual(b.metric("tscale_forward_misses_total"), 2)
        # The receiving replica's own ids are not asked of anyone.
        sent = b.metric("tscale_forward_sent_total")
        own = infer(b, rows).split("-")[0] + "-999999"
        status, body, *_ = by_id(b, own, kind, signal)
        self.assertEqual(status, 404, body)
        self.assertIn(b"feedback window", body)
        self.assertEqual(b.metric("tscale_forward_sent_total"), sent)
        self.converged(3)

    def test_forwarded_tensors_are_exact_and_gone_is_410(self):
        # A NATS with a small max_payload, for the 413 below.
        self.nats.stop()
        conf = os.path.join(self.tmp, "nats.conf")
        with open(conf, "w") as f:
            f.write("max_payload: 4096\n")
        self.nats = tr.NatsServer(os.path.join(self.tmp, "nats-small"), extra=["-c", conf])
        # No exactly-once records: a second feedback on a used inference is the holder's 410.
        a, b = self.start(2, ["--feedback-id-window", "0"])
        rows, _, _ = tr.request_at(2)
        out_dim = len(a.json("POST", "/v2/models/%s/infer" % MODEL, oipc.infer_body(rows))["outputs"][0]["data"]) \
            // len(rows)
        grad = [[((i * 7 + j * 3) % 11 - 5) / 7.0 for j in range(out_dim)] for i in range(len(rows))]
        id_a, id_s = infer(a, rows), infer(self.single, rows)
        # FP64 on the wire from the client; forwarded as the same numbers.
        status, got, *_ = by_id(b, id_a, "grad_output", grad, "FP64")
        self.assertEqual(status, 200, got[:300])
        status, want, *_ = by_id(self.single, id_s, "grad_output", grad, "FP64")
        self.assertEqual(status, 200, want[:300])
        self.assertEqual(json.loads(got)["step"], json.loads(want)["step"])
        blob = self.converged(1)
        self.assertEqual(blob, ms.export(self.single, MODEL))
        status, body, _, via = by_id(b, id_a, "grad_output", grad, "FP64")
        self.assertEqual((status, via), (410, "r0"), body)
        self.assertIn(b"already received its feedback", body)
        # Over NATS' max_payload: refused before it is sent, and says so. (An id may be at most
        # 1024 bytes, so the size comes from the gradient's rows.)
        status, body, *_ = by_id(b, "x" * 1000, "grad_output", grad * 100, "FP64")
        self.assertEqual(status, 413, body)
        self.assertIn(b"max_payload (4096 bytes)", body)
        self.assertEqual(b.metric("tscale_forward_sent_total"), 2)
        self.converged(1)


if __name__ == "__main__":
    unittest.main()
