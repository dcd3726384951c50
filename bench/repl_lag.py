"""repl_lag.py — a rough first measurement of replication (issue 12), not the benchmark the
issue asks for: 3 replicas of build/tscaled and a nats-server -js on loopback (the e2e
test's set-up, model mlp_silu_xent), N sequential feedback steps to one replica, each followed
by polling the two others' GET /admin/models until they show the step. Prints p50/p99 of the
feedback latency on a single node, on the replica (journal + PubAck), and of the delay from
the answer on one replica until both others show the step (polling included).

    python3 bench/repl_lag.py [N]        (N = 100 by default)"""
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import modelstate as ms  # noqa: E402
import test_replication as t  # noqa: E402
import tsd  # noqa: E402
N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
tmp = tempfile.mkdtemp()
nats = t.NatsServer(os.path.join(tmp, "nats"))
class R(t.Replication):
    def runTest(self): pass
r = R(); r.tmp = tmp; r.nats = nats
reps = [r.start_replica("r%d" % i) for i in range(3)]
single = tsd.Daemon(args=["--model", "m=%s" % ms.golden_file(t.CASE), "--threads", "1"])
def step(d):
    for m in d.json("GET", "/admin/models")["models"]:
        if m["name"] == "m": return m["step"]
def lat(d, k):
    t0 = time.perf_counter(); s, _, b = t.feedback(d, k); assert s == 200, b; return time.perf_counter() - t0, json.loads(b)["step"]
try:
    fb_single = [lat(single, k)[0] for k in range(N)]
    fb_repl, prop = [], []
    for k in range(N):
        dt, st = lat(reps[0], k)
        t1 = time.perf_counter()
        while not all(step(d) >= st for d in reps[1:]): pass
        fb_repl.append(dt); prop.append(time.perf_counter() - t1)
    q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))] * 1000
    print("N=%d feedback latency single node p50 %.2f ms p99 %.2f ms" % (N, q(fb_single, .5), q(fb_single, .99)))
    print("N=%d feedback latency replicated (journal + PubAck) p50 %.2f ms p99 %.2f ms" % (N, q(fb_repl, .5), q(fb_repl, .99)))
    print("N=%d answer on r0 -> both others show the step (incl. polling /admin/models) p50 %.2f ms p99 %.2f ms" % (N, q(prop, .5), q(prop, .99)))
finally:
    for d in reps + [single]: d.stop(); d.close()
    nats.stop()
