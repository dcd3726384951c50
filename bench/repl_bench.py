#!/usr/bin/env python3
"""repl_bench.py — what replication costs (issue 12, item 11), on this machine: one
`nats-server -js` and three replicas of build/tscaled on loopback.

  1. Delay: a steady feedback rate (--rate steps/s, one client, every request with its OIP id)
     on replica r0 only. Two observers poll the step of r1 and r2 (GET /admin/models) as fast
     as they can; the delay of step k is the first time an observer sees step >= k minus the
     time r0's 200 for step k reached the client (acknowledged = journaled + JetStream PubAck).
     Its resolution is one poll interval (printed). It can be negative: JetStream delivers
     the delta to the consumers while the PubAck travels back to r0 and r0 answers.
  2. Bytes per step: nats-server's /varz (monitoring port) in_bytes / out_bytes and the
     stream's bytes (/jsz?streams=1) over the steps of part 1. These count messages (headers +
     payload), not the NATS protocol's framing or TCP.
  3. CPU per step: CPU time (/proc/PID/task/*/schedstat, ns) of r0 (takes the steps,
     publishes) and of r1/r2 (only consume and apply deltas), per step, over a second run of
     half the steps that nothing polls.
  4. Inference: three wrk -t1 -c16 at once on POST /v2/models/M/infer (batch 1): all against
     one daemon without --replicate, then all against r0 of the three replicas, then one
     against each replica (summed); each while the steady feedback runs on r0 (on the single
     node: on itself); also the daemons' CPU time per inference request.

With --batch-ms 0,1,2,5 it measures instead, for each --replicate-batch-ms (several steps
summed into one message, server/repl/repl.h), fresh replicas each time: the steady rate of
part 1 (one client), then --clients clients (16) sending feedback to r0 as fast as they are
answered for --seconds: acknowledged steps/s, NATS message bytes and PubAcks (r0's
tscale_repl_messages_published_total) per step, and the ack → applied delay (observers as in
part 1). No inference phase.

On a 2-core machine the three replicas, NATS, wrk and the client share the same cores: this
shows the overhead, not the scale. The estimate for N machines scales the single node's
measured inference rate by the CPU time left after the measured per-step and per-delta costs
(printed with the table).

    python3 bench/repl_bench.py [--model demo|mid] [--rate 50] [--seconds 10] [--wrk-seconds 5]
                                [--runs 3] [--batch-ms 0,1,2,5 [--clients 16]]
Prints one JSON line per run, then a table of the medians and the N-machine estimate.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import tsd  # noqa: E402
from test_replication import NatsServer, free_port  # noqa: E402

MID = "rmsnorm:1024,linear:1024x4096,gelu,linear:4096x1024"


def cpu_s(pid):
    """CPU seconds of a process's live threads so far, from the scheduler's nanosecond counts
    (/proc/PID/task/*/schedstat; /proc/PID/stat counts in 10 ms ticks, too coarse per step).
    A thread that ended in between is not counted: the daemon's threads live as long as it."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))]


class Nats(NatsServer):
    """The end-to-end tests' NatsServer with its monitoring port (-m) too: /varz and /jsz give
    the bytes."""

    def __init__(self, tmp):
        self.mport = free_port()
        super().__init__(os.path.join(tmp, "nats"), extra=["-m", str(self.mport)])

    def varz(self):
        return get_json("http://127.0.0.1:%d/varz" % self.mport)

    def stream_bytes(self):
        j = get_json("http://127.0.0.1:%d/jsz?streams=1" % self.mport)
        streams = [s for a in j.get("account_details", []) for s in a.get("stream_detail", [])]
        return sum(s["state"]["bytes"] for s in streams), sum(s["state"]["messages"] for s in streams)


def model_args(model, tmp):
    """(daemon args, model name, input width) of the benchmark's model."""
    if model == "demo":
        return [], "demo", 16
    path = os.path.join(tmp, "mid.safetensors")
    if not os.path.exists(path):
        subprocess.run([os.path.join(tsd.ROOT, "build/tscaled"), "init", "--layers", MID, "--out", path,
                        "--seed", "1"], check=True, capture_output=True)
    return ["--model", "mid=" + path], "mid", 1024


def row(n_in, k):
    return [(((i * 37 + k * 11) % 101) / 50.0 - 1.0) for i in range(n_in)]


def step_of(d, name):
    _, _, body = d.request("GET", "/admin/models")
    return [m["step"] for m in json.loads(body)["models"] if m["name"] == name][0]


class Feeder(threading.Thread):
    """Feedback at a steady rate on one daemon until stopped (or `count` steps); records the
    time each 200 arrived (perf_counter), by the step it answers."""

    def __init__(self, d, name, n_in, rate, count=None, prefix="f"):
        super().__init__(daemon=True)
        self.d, self.name, self.n_in, self.rate, self.count, self.prefix = d, name, n_in, rate, count, prefix
        self.acked, self.failed, self.latency_ms = {}, 0, []
        self.stop_ev = threading.Event()

    def run(self):
        t_next, k = time.perf_counter(), 0
        while not self.stop_ev.is_set() and (self.count is None or k < self.count):
            body = {"id": "%s-%d" % (self.prefix, k), "inputs": [
                {"name": "input", "shape": [1, self.n_in], "datatype": "FP32", "data": row(self.n_in, k)},
                {"name": "label", "shape": [1], "datatype": "INT64", "data": [k % 4]}]}
            t_sent = time.perf_counter()
            status, _, out = self.d.request("POST", "/v2/models/%s/feedback" % self.name, body)
            t = time.perf_counter()
            if status == 200:
                self.acked[json.loads(out)["step"]] = t
                self.latency_ms.append((t - t_sent) * 1e3)
            else:
                self.failed += 1
            k += 1
            t_next += 1.0 / self.rate
            time.sleep(max(0.0, t_next - time.perf_counter()))


class Observer(threading.Thread):
    """Polls a replica's step as fast as it can; records when each step was first seen."""

    def __init__(self, d, name):
        super().__init__(daemon=True)
        self.d, self.name = d, name
        self.seen, self.polls, self.last = {}, 0, 0
        self.stop_ev = threading.Event()

    def run(self):
        conn = self.d.conn()
        t0 = time.perf_counter()
        while not self.stop_ev.is_set():
            conn.request("GET", "/admin/models")
            models = json.loads(conn.getresponse().read())["models"]
            t = time.perf_counter()
            s = [m["step"] for m in models if m["name"] == self.name][0]
            for k in range(self.last + 1, s + 1):
                self.seen[k] = t
            self.last = max(self.last, s)
            self.polls += 1
        self.poll_ms = (time.perf_counter() - t0) * 1e3 / max(self.polls, 1)


def wrk(ports, name, n_in, seconds, tmp):
    """Inference requests/s summed over one wrk (-t1 -c16) per port, run at the same time."""
    lua = os.path.join(tmp, "infer.lua")
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = %s\n' % json.dumps(
            json.dumps({"inputs": [{"name": "input", "shape": [1, n_in], "datatype": "FP32", "data": row(n_in, 0)}]})))
    procs = [subprocess.Popen(["wrk", "-t1", "-c16", "-d%ds" % seconds, "-s", lua,
                               "http://127.0.0.1:%d/v2/models/%s/infer" % (p, name)],
                              stdout=subprocess.PIPE, text=True) for p in ports]
    total = 0.0
    for p in procs:
        out = p.communicate()[0]
        total += float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
        if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
            raise RuntimeError("wrk: some inference requests failed:\n" + out)
    return total


def infer_phase(targets, feed_d, name, n_in, a, tmp):
    """Three wrk, one per target (a target may repeat), while feedback runs on feed_d at the
    steady rate; returns (requests/s summed, CPU seconds per request of the targets)."""
    f = Feeder(feed_d, name, n_in, a.rate, prefix="w%d-%d" % (len(targets), time.time_ns()))
    f.start()
    pids = set(d.proc.pid for d in targets)
    c0 = sum(cpu_s(p) for p in pids)
    rps = wrk([d.port for d in targets], name, n_in, a.wrk_seconds, tmp)
    c1 = sum(cpu_s(p) for p in pids)
    f.stop_ev.set()
    f.join(30)
    return rps, (c1 - c0) / max(rps * a.wrk_seconds, 1)


def start_replicas(nats, margs, extra=()):
    reps = [tsd.Daemon(args=margs + ["--snapshot-interval", "0", "--replicate", nats.url(), "--replica-id", "r%d" % i]
                       + list(extra)) for i in range(3)]
    deadline = time.time() + 20
    while not all(b"\ntscale_repl_connected 1" in d.request("GET", "/metrics")[2] for d in reps):
        if time.time() > deadline:
            raise RuntimeError("replicas did not connect to NATS")
        time.sleep(0.1)
    return reps


def feedback_phase(nats, reps, name, n_in, feeders):
    """Run the feeders (on reps[0]) to the end while two observers poll r1 and r2; returns the
    delays (ms), the steps acknowledged, the seconds the feeders ran, and per step: NATS bytes
    and messages in/out, and r0's published messages (PubAcks)."""
    obs = [Observer(d, name) for d in reps[1:]]
    for o in obs:
        o.start()
    v0 = nats.varz()
    m0 = [reps[0].metric(k) for k in ("tscale_repl_messages_published_total", "tscale_repl_deltas_published_total")]
    t0 = time.perf_counter()
    for f in feeders:
        f.start()
    for f in feeders:
        f.join()
    secs = time.perf_counter() - t0
    acked = {k: t for f in feeders for k, t in f.acked.items()}
    last = max(acked)
    deadline = time.time() + 30
    while any(o.last < last for o in obs) and time.time() < deadline:
        time.sleep(0.01)
    v1 = nats.varz()
    m1 = [reps[0].metric(k) for k in ("tscale_repl_messages_published_total", "tscale_repl_deltas_published_total")]
    for o in obs:
        o.stop_ev.set()
        o.join(10)
    steps = len(acked)
    delays = [(o.seen[k] - t) * 1e3 for o in obs for k, t in acked.items() if k in o.seen]
    latency = [x for f in feeders for x in f.latency_ms]
    return {
        "latency_p50_ms": round(pct(latency, 50), 2), "latency_p99_ms": round(pct(latency, 99), 2),
        "steps": steps, "failed": sum(f.failed for f in feeders), "seconds": round(secs, 2),
        "steps_per_s": round(steps / secs, 1),
        "delay_p50_ms": round(pct(delays, 50), 2), "delay_p99_ms": round(pct(delays, 99), 2),
        "nats_in_bytes_per_step": round((v1["in_bytes"] - v0["in_bytes"]) / steps, 1),
        "nats_out_bytes_per_step": round((v1["out_bytes"] - v0["out_bytes"]) / steps, 1),
        "nats_in_msgs_per_step": round((v1["in_msgs"] - v0["in_msgs"]) / steps, 3),
        "pubacks_per_step": round((m1[0] - m0[0]) / max(m1[1] - m0[1], 1), 3),
        "poll_interval_ms": round(statistics.mean(o.poll_ms for o in obs), 2),
    }


class Timed(Feeder):
    """A Feeder as fast as it is answered, for `seconds`."""

    def __init__(self, d, name, n_in, seconds, prefix):
        super().__init__(d, name, n_in, rate=1e9, prefix=prefix)
        self.seconds = seconds

    def run(self):
        threading.Timer(self.seconds, self.stop_ev.set).start()
        super().run()


def batch_run(a, batch_ms):
    """Fresh replicas with --replicate-batch-ms batch_ms: steady rate, then a.clients clients."""
    tmp = tempfile.mkdtemp(prefix="tscale-rbench-")
    margs, name, n_in = model_args(a.model, tmp)
    nats = Nats(tmp)
    reps = []
    res = {"model": name, "batch_ms": batch_ms}
    try:
        reps = start_replicas(nats, margs, ["--replicate-batch-ms", str(batch_ms)])
        Feeder(reps[0], name, n_in, a.rate, count=1, prefix="warm").run()
        while any(step_of(d, name) < 1 for d in reps):
            time.sleep(0.05)
        steady = feedback_phase(nats, reps, name, n_in,
                                [Feeder(reps[0], name, n_in, a.rate, count=int(a.rate * a.seconds), prefix="s")])
        busy = feedback_phase(nats, reps, name, n_in,
                              [Timed(reps[0], name, n_in, a.seconds, prefix="c%d-" % i) for i in range(a.clients)])
        res.update({"steady_" + k: v for k, v in steady.items()})
        res.update({"busy_" + k: v for k, v in busy.items()})
    finally:
        for d in reps:
            d.close()
        nats.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res), flush=True)
    return res


def batch_report(rows, a):
    print("\n| --replicate-batch-ms | load | steps/s acked | feedback latency p50 / p99 ms | PubAcks per step "
          "| NATS bytes in / out per step | ack → applied p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for load, label in (("steady", "%.0f/s, 1 client" % a.rate), ("busy", "%d clients" % a.clients)):
            g = lambda k: r["%s_%s" % (load, k)]  # noqa: E731
            print("| %d | %s | %.0f | %.2f / %.2f | %.3f | %.0f / %.0f | %.2f / %.2f |" % (
                r["batch_ms"], label, g("steps_per_s"), g("latency_p50_ms"), g("latency_p99_ms"),
                g("pubacks_per_step"), g("nats_in_bytes_per_step"),
                g("nats_out_bytes_per_step"), g("delay_p50_ms"), g("delay_p99_ms")))


def one_run(a):
    """Everything once, in fresh processes; returns the measurements."""
    tmp = tempfile.mkdtemp(prefix="tscale-rbench-")
    margs, name, n_in = model_args(a.model, tmp)
    res = {"model": name, "rate": a.rate}
    nats = Nats(tmp)
    reps = []
    try:
        # --- 4a. the single node, without replication ---
        with tsd.Daemon(args=margs + ["--snapshot-interval", "0"]) as single:
            res["single_rps"], res["single_cpu_per_req_ms"] = (lambda r: (r[0], r[1] * 1e3))(
                infer_phase([single] * 3, single, name, n_in, a, tmp))
        # --- 1-3. three replicas, steady feedback on r0 ---
        reps = start_replicas(nats, margs)
        # A warm-up step (the stream and the consumers exist from then on), then measure.
        Feeder(reps[0], name, n_in, a.rate, count=1, prefix="warm").run()
        while any(step_of(d, name) < 1 for d in reps):
            time.sleep(0.05)
        obs = [Observer(d, name) for d in reps[1:]]
        for o in obs:
            o.start()
        v0, (sb0, sm0) = nats.varz(), nats.stream_bytes()
        c0 = [cpu_s(d.proc.pid) for d in reps]
        f = Feeder(reps[0], name, n_in, a.rate, count=int(a.rate * a.seconds), prefix="delay")
        f.run()
        last = max(f.acked)
        deadline = time.time() + 30
        while any(o.last < last for o in obs) and time.time() < deadline:
            time.sleep(0.01)
        c1 = [cpu_s(d.proc.pid) for d in reps]
        v1, (sb1, sm1) = nats.varz(), nats.stream_bytes()
        for o in obs:
            o.stop_ev.set()
            o.join(10)
        steps = len(f.acked)
        delays = [(o.seen[k] - t) * 1e3 for o in obs for k, t in f.acked.items() if k in o.seen]
        res.update({
            "steps": steps, "failed": f.failed, "delays": len(delays),
            "delay_p50_ms": round(pct(delays, 50), 2), "delay_p99_ms": round(pct(delays, 99), 2),
            "delay_max_ms": round(max(delays), 2),
            "poll_interval_ms": round(statistics.mean(o.poll_ms for o in obs), 2),
            "nats_in_bytes_per_step": round((v1["in_bytes"] - v0["in_bytes"]) / steps, 1),
            "nats_out_bytes_per_step": round((v1["out_bytes"] - v0["out_bytes"]) / steps, 1),
            "nats_in_msgs_per_step": round((v1["in_msgs"] - v0["in_msgs"]) / steps, 2),
            "nats_out_msgs_per_step": round((v1["out_msgs"] - v0["out_msgs"]) / steps, 2),
            "stream_bytes_per_step": round((sb1 - sb0) / max(sm1 - sm0, 1), 1),
            # The observers' polling is in these too (a GET /admin/models per poll on r1, r2).
            "origin_cpu_per_step_ms": round((c1[0] - c0[0]) * 1e3 / steps, 3),
            "apply_cpu_per_delta_ms": round(statistics.mean(c1[i] - c0[i] for i in (1, 2)) * 1e3 / steps, 3),
        })
        # An idle replica's CPU per delta without observers polling it: a second, unpolled run.
        c0 = [cpu_s(d.proc.pid) for d in reps]
        f2 = Feeder(reps[0], name, n_in, a.rate, count=int(a.rate * a.seconds / 2), prefix="cpu")
        f2.run()
        target = step_of(reps[0], name)
        deadline = time.time() + 30
        while any(step_of(d, name) < target for d in reps[1:]) and time.time() < deadline:
            time.sleep(0.2)
        c1 = [cpu_s(d.proc.pid) for d in reps]
        res["apply_cpu_per_delta_unpolled_ms"] = round(
            statistics.mean(c1[i] - c0[i] for i in (1, 2)) * 1e3 / len(f2.acked), 3)
        res["origin_cpu_per_step_unpolled_ms"] = round((c1[0] - c0[0]) * 1e3 / len(f2.acked), 3)
        # --- 4b, 4c. inference on one replica, then on all three ---
        res["r0_rps"], cpu = infer_phase(reps[:1] * 3, reps[0], name, n_in, a, tmp)
        res["r0_cpu_per_req_ms"] = cpu * 1e3
        res["all3_rps"], cpu = infer_phase(reps, reps[0], name, n_in, a, tmp)
        res["all3_cpu_per_req_ms"] = cpu * 1e3
    finally:
        for d in reps:
            d.close()
        nats.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for k in ("single_rps", "r0_rps", "all3_rps"):
        res[k] = round(res[k])
    for k in ("single_cpu_per_req_ms", "r0_cpu_per_req_ms", "all3_cpu_per_req_ms"):
        res[k] = round(res[k], 4)
    print(json.dumps(res), flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo", choices=("demo", "mid"))
    ap.add_argument("--rate", type=float, default=50.0, help="feedback steps/s on r0")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the delay measurement")
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3, help="the table shows the medians of the runs")
    ap.add_argument("--batch-ms", help="comma-separated --replicate-batch-ms values to compare (feedback only)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent feedback clients (with --batch-ms)")
    a = ap.parse_args()
    if a.batch_ms:
        values = [int(v) for v in a.batch_ms.split(",")]
        runs = [[batch_run(a, b) for b in values] for _ in range(a.runs)]  # interleaved: load drifts alike
        batch_report([{k: (statistics.median(run[i][k] for run in runs) if isinstance(v, (int, float)) else v)
                       for k, v in runs[0][i].items()} for i in range(len(values))], a)
        return
    runs = [one_run(a) for _ in range(a.runs)]
    report({k: (statistics.median(r[k] for r in runs) if isinstance(v, (int, float)) else v)
            for k, v in runs[0].items()}, a.runs)


def report(r, runs):
    print("\n| %s, %.0f feedback steps/s on r0, median of %d runs | value |" % (r["model"], r["rate"], runs))
    print("|---|---|")
    print("| ack on r0 → applied on r1/r2, p50 / p99 / max | %.2f / %.2f / %.2f ms (%d samples, poll every %.2f ms) |" % (
        r["delay_p50_ms"], r["delay_p99_ms"], r["delay_max_ms"], r["delays"], r["poll_interval_ms"]))
    print("| NATS message bytes in / out per step (varz) | %.0f / %.0f (%.1f / %.1f messages) |" % (
        r["nats_in_bytes_per_step"], r["nats_out_bytes_per_step"], r["nats_in_msgs_per_step"], r["nats_out_msgs_per_step"]))
    print("| stream bytes per stored delta | %.0f |" % r["stream_bytes_per_step"])
    print("| CPU per step on r0 (takes it, journals, publishes) | %.3f ms |" % r["origin_cpu_per_step_unpolled_ms"])
    print("| CPU per delta on r1/r2 (consume + apply) | %.3f ms |" % r["apply_cpu_per_delta_unpolled_ms"])
    print("| inference req/s: single node, no --replicate | %.0f (%.3f ms CPU/req) |" % (r["single_rps"], r["single_cpu_per_req_ms"]))
    print("| inference req/s: r0 of 3 replicas | %.0f (%.3f ms CPU/req) |" % (r["r0_rps"], r["r0_cpu_per_req_ms"]))
    print("| inference req/s: all 3 replicas at once (summed) | %.0f (%.3f ms CPU/req) |" % (r["all3_rps"], r["all3_cpu_per_req_ms"]))
    # N machines, F feedback steps/s in total spread evenly: each machine takes F/N steps
    # (origin cost each) and applies the others' F(N-1)/N deltas, where the single node took
    # all F steps itself. Inference is what is left, at the single node's measured rate.
    f, rps = r["rate"], r["single_rps"]
    origin, apply_ms = r["origin_cpu_per_step_unpolled_ms"], r["apply_cpu_per_delta_unpolled_ms"]
    print("\nExpected on N machines like this one (2 cores), %.0f feedback steps/s in total: each machine spends "
          "%.0f × %.3f ms = %.1f ms of CPU per second applying the others' deltas (%.2f %% of its cores) and "
          "%.0f/N × %.3f ms taking its own steps, so inference ≈ N × %.0f req/s:" % (
              f, f, apply_ms, f * apply_ms, f * apply_ms / 20.0, f, origin, rps))
    for n in (1, 3, 10):
        cpu = f / n * origin + f * (n - 1) / n * apply_ms  # ms per second, vs f * origin on one node
        print("  N=%d: %.0f req/s (replication and feedback: %.1f ms CPU/s per machine)" % (
            n, n * rps * (2000.0 - cpu) / (2000.0 - f * origin), cpu))


if __name__ == "__main__":
    main()
