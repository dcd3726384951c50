#!/usr/bin/env python3
"""forward_bench.py — what forwarding feedback by inference id costs (issue 15,
server/repl/forward.h), on this machine: one `nats-server -js` and three replicas of
build/tscaled on loopback (the golden mlp_silu_xent model, --threads 1).

Each round makes three inferences on replica r0 and sends one by-id feedback (a label) for
each, one request at a time, interleaved:
  local      to r0 itself (no forwarding);
  direct     to r1, for an id r0 made (asked of r0 only, <stream>.byid.<r0's prefix>);
  broadcast  to r1, for a client-chosen id (asked of every replica, <stream>.byid.any).
Every answer is a 200 after the step is journaled and acknowledged by JetStream; the time is
the client's, request to answer. Then one miss of each kind (client-chosen id nobody holds:
waits out --forward-timeout-ms; id of a run that is gone: nobody listens, answered at once).

    python3 bench/forward_bench.py [--rounds 100] [--runs 3] [--forward-timeout-ms 1000]
Prints one JSON line per run (milliseconds), then the medians over runs.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import modelstate as ms  # noqa: E402
import oipc  # noqa: E402
import tsd  # noqa: E402
from test_replication import CASE, NatsServer, request_at, wait_for  # noqa: E402

PATH = "/v2/models/m/"


def timed(d, body):
    t0 = time.perf_counter()
    status, _, data = d.request("POST", PATH + "feedback", body)
    return status, data, (time.perf_counter() - t0) * 1000


def one_run(rounds, timeout_ms):
    tmp = tempfile.mkdtemp(prefix="tscale-fwd-bench-")
    nats = NatsServer(os.path.join(tmp, "nats"))
    reps = []
    try:
        for i in range(3):
            db = os.path.join(tmp, "r%d" % i)
            os.makedirs(db)
            d = tsd.Daemon(args=["--model", "m=%s" % ms.golden_file(CASE), "--replicate", nats.url(),
                                 "--replica-id", "r%d" % i, "--threads", "1",
                                 "--forward-timeout-ms", str(timeout_ms)], db_dir=db)
            reps.append(d)
            wait_for("r%d to connect" % i, lambda: d.metric("tscale_repl_connected") == 1, 15)
        r0, r1 = reps[0], reps[1]
        rows, kind, signal = request_at(0)
        sig = oipc.tensor(kind, signal, "INT64")
        times = {"local": [], "direct": [], "broadcast": []}
        for k in range(rounds):
            for mode in times:
                cid = "bench-%d" % k if mode == "broadcast" else None
                id = r0.json("POST", PATH + "infer", oipc.infer_body(rows, id=cid))["id"]
                status, data, ms_ = timed(r0 if mode == "local" else r1, {"id": id, "inputs": [sig]})
                if status != 200:
                    raise RuntimeError("%s feedback: %d %s" % (mode, status, data[:200]))
                times[mode].append(ms_)
        out = {m: {"median": statistics.median(v), "p90": sorted(v)[int(0.9 * len(v))], "max": max(v)}
               for m, v in times.items()}
        out["miss_broadcast"] = timed(r1, {"id": "nobody-has-this", "inputs": [sig]})[2]
        out["miss_gone_run"] = timed(r1, {"id": "0123456789abcdef-1", "inputs": [sig]})[2]
        return out
    finally:
        for d in reps:
            d.stop()
            d.close()
        nats.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--forward-timeout-ms", type=int, default=1000)
    a = ap.parse_args()
    runs = []
    for _ in range(a.runs):
        runs.append(one_run(a.rounds, a.forward_timeout_ms))
        print(json.dumps(runs[-1], sort_keys=True), flush=True)
    print("medians over %d runs of %d rounds (ms):" % (a.runs, a.rounds))
    for m in ("local", "direct", "broadcast"):
        print("  %-9s median %6.2f  p90 %6.2f  max %7.2f" % (
            m, *(statistics.median(r[m][q] for r in runs) for q in ("median", "p90", "max"))))
    for m in ("miss_broadcast", "miss_gone_run"):
        print("  %-14s %7.1f" % (m, statistics.median(r[m] for r in runs)))


if __name__ == "__main__":
    main()
