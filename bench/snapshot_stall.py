#!/usr/bin/env python3
"""snapshot_stall.py — what persistence costs serving, on a large model (issue 4).

One run:
  1. serve a >= 50M-weight model (build/tscaled init) on 127.0.0.1, port 0, temp db,
     --snapshot-interval 0, --log-level debug (for the per-snapshot copy line);
  2. CLIENTS threads each send batch-1 binary inference requests back to back on a kept-alive
     connection, recording each request's start and end;
  3. after a warm-up and a quiet baseline window, SNAPSHOTS cycles of: one feedback step (so the
     state changed), a pause, POST /admin/models/m/snapshots (answers once the write is fsynced),
     a pause, a quiet window as long as that snapshot call (the control), a pause;
  4. latency of the requests overlapping a snapshot call vs those overlapping a quiet window
     (the same rule, so the same bias towards long requests), and of all quiet requests
     (overlapping no feedback step and no snapshot nor the pause after one; warm-up excluded);
  5. the daemon's own numbers: write duration from its snapshot log lines, the loop's copy from
     its debug lines and /metrics (tscale_snapshot_copy_seconds);
  6. recovery: a feedback step, SIGTERM (time to exit, with the final snapshot), restart with
     the same --model (time from spawn to the listening line, and the daemon's own log times),
     a feedback step, kill -9, restart again; both restarts must come back at the final
     snapshot's step (the step after it is what kill -9 loses).

Prints one table per run and a table of medians over the runs. The machine's load average is
printed with every run: numbers taken on a busy machine say so.

    python3 bench/snapshot_stall.py                  # 3 runs, 32 clients, 50M weights
    python3 bench/snapshot_stall.py --runs 1 --snapshots 4 --layers linear:1024x1024

Stdlib only; reuses tests/e2e/tsd.py. Bounded: about 40 s per run plus model creation.
"""
import argparse
import http.client
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import oipc  # noqa: E402
import tsd  # noqa: E402

BINARY = tsd.BINARY if os.path.isabs(tsd.BINARY) else os.path.join(ROOT, tsd.BINARY)

LAYERS = "linear:4096x4096,relu,linear:4096x4096,relu,linear:4096x4096"
MODEL = "m"
SNAP_LINE = re.compile(r"snapshot (\d+) of model '[^']*': .*, (\d+) bytes, ([0-9.]+) ms")
COPY_LINE = re.compile(r"state copied on the loop in ([0-9.]+) ms")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT(\d\d):(\d\d):(\d\d\.\d+)Z")


def percentile(xs, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


def inspect(model_file):
    out = subprocess.run([BINARY, "inspect", "--json", model_file], capture_output=True, text=True,
                         check=True)
    info = json.loads(out.stdout)
    return info, int(info["in_dim"])


class Clients:
    """n threads of back-to-back batch-1 inference; records (start, end, status) per request."""

    def __init__(self, port, n, body, headers):
        self.port, self.body, self.headers = port, body, headers
        self.stop = threading.Event()
        self.records = [[] for _ in range(n)]
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i):
        rec = self.records[i]
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                c.request("POST", f"/v2/models/{MODEL}/infer", body=self.body, headers=self.headers)
                r = c.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException):
                status = 0
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            rec.append((t0, time.monotonic(), status))
        c.close()

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(90)
        return [r for rec in self.records for r in rec]


def timed(d, method, path, body=None, headers=None, expect=200):
    t0 = time.monotonic()
    status, _, data = d.request(method, path, body, headers, timeout=120)
    t1 = time.monotonic()
    if status != expect:
        raise RuntimeError(f"{method} {path}: {status}, expected {expect}: {data[:300]!r}")
    return t0, t1, data


def metric(text, name):
    m = re.search(r"^" + re.escape(name) + r" ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def log_seconds(line):
    """Seconds-of-the-day of a log line's timestamp (enough for intervals under a day)."""
    m = STAMP.match(line)
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None


def log_span(d, start, end):
    """Seconds from the first log line matching start (None: the first line) to the first
    matching end, by the daemon's own clock; NaN when either is missing."""
    def first(pat):
        return next((log_seconds(l) for l in d.log_lines
                     if log_seconds(l) is not None and (pat is None or re.search(pat, l))), None)
    a, b = first(start), first(end)
    return float("nan") if a is None or b is None else (b - a) % 86400


def bodies(dim):
    """(infer body, headers), (feedback body, headers): one fixed row, binary tensor data."""
    x = [((i * 37) % 101) / 101.0 - 0.5 for i in range(dim)]
    return (oipc.binary_request([("input", "FP32", [1, dim], x)],
                                outputs=[{"name": "output", "parameters": {"binary_data": True}}]),
            oipc.binary_request([("input", "FP32", [1, dim], x), ("label", "INT64", [1], [3])]))


def model_step(d):
    models = d.json("GET", "/admin/models")["models"]
    return next(m["step"] for m in models if m["name"] == MODEL)


def serve_and_snapshot(args, model_file, dim, db_dir):
    """Steps 1-5 of one run; leaves the daemon running and returns (daemon, results)."""
    t0 = time.monotonic()
    d = tsd.Daemon(args=["--model", f"{MODEL}={model_file}", "--snapshot-interval", "0",
                         "--log-level", "debug"] + args.daemon_arg, db_dir=db_dir, start_timeout=300)
    res = {"first_start_s": time.monotonic() - t0}
    (body, headers), (fb_body, fb_headers) = bodies(dim)
    clients = Clients(d.port, args.clients, body, headers)
    load0 = os.getloadavg()
    t_begin = time.monotonic()
    clients.start()
    time.sleep(args.warmup)
    t_measure = time.monotonic()
    time.sleep(args.baseline)
    feedbacks, snaps, shams = [], [], []
    for _ in range(args.snapshots):
        f0, f1, _ = timed(d, "POST", f"/v2/models/{MODEL}/feedback", fb_body, fb_headers)
        feedbacks.append((f0, f1))
        time.sleep(args.settle)
        s0, s1, _ = timed(d, "POST", f"/admin/models/{MODEL}/snapshots", b"", None, expect=201)
        snaps.append((s0, s1))
        time.sleep(args.settle)
        # The control: a window as long as the snapshot call, with nothing happening in it.
        # Requests overlapping a window are biased towards long ones (a request of length L
        # overlaps a window of length W with odds ~ W + L), so only the same rule applied to
        # a same-length quiet window is a fair baseline.
        h0 = time.monotonic()
        time.sleep(s1 - s0)
        shams.append((h0, time.monotonic()))
        time.sleep(args.settle)
    time.sleep(args.tail)
    recs = clients.finish()
    t_end = time.monotonic()
    load1 = os.getloadavg()

    def overlaps(a, b, spans, after=0.0):
        return any(a < e + after and b > s for s, e in spans)

    ok = [(a, b) for a, b, st in recs if st == 200 and a >= t_measure]
    during = [b - a for a, b in ok if overlaps(a, b, snaps)]
    control = [b - a for a, b in ok if overlaps(a, b, shams)]
    quiet = [b - a for a, b in ok if not overlaps(a, b, snaps, args.settle / 2)
             and not overlaps(a, b, feedbacks, args.settle / 2)]
    errors = sum(1 for r in recs if r[2] != 200)
    _, _, mtext = timed(d, "GET", "/metrics")
    mtext = mtext.decode()
    writes = [float(m.group(3)) for m in map(SNAP_LINE.search, d.log_lines) if m]
    sbytes = [int(m.group(2)) for m in map(SNAP_LINE.search, d.log_lines) if m]
    copies = [float(m.group(1)) for m in map(COPY_LINE.search, d.log_lines) if m]
    res.update({
        "load_before": load0[0], "load_after": load1[0],
        "requests": len(recs), "errors": errors, "rps": len(recs) / (t_end - t_begin),
        "n_quiet": len(quiet), "n_during": len(during), "n_control": len(control),
        "p50_control_ms": 1e3 * percentile(control, 50),
        "p99_control_ms": 1e3 * percentile(control, 99),
        "p50_quiet_ms": 1e3 * percentile(quiet, 50), "p99_quiet_ms": 1e3 * percentile(quiet, 99),
        "p50_snap_ms": 1e3 * percentile(during, 50), "p99_snap_ms": 1e3 * percentile(during, 99),
        "max_snap_ms": 1e3 * max(during),
        "snap_call_ms": 1e3 * statistics.median(e - s for s, e in snaps),
        "feedback_ms": 1e3 * statistics.median(e - s for s, e in feedbacks),
        # the admin snapshots only (the import at start is a snapshot too, written before serving)
        "write_ms": statistics.median(writes[-args.snapshots:]),
        "write_max_ms": max(writes[-args.snapshots:]),
        "snapshot_bytes": sbytes[-1],
        "copy_ms": statistics.median(copies[-args.snapshots:]),
        "copy_max_ms": max(copies[-args.snapshots:]),
        "metrics_write_mean_ms": 1e3 * metric(mtext, "tscale_snapshot_seconds_sum")
        / metric(mtext, "tscale_snapshot_seconds_count"),
        "metrics_copy_mean_ms": 1e3 * metric(mtext, "tscale_snapshot_copy_seconds_sum")
        / metric(mtext, "tscale_snapshot_copy_seconds_count"),
    })
    res["p99_ratio"] = res["p99_snap_ms"] / res["p99_control_ms"]
    res["p50_ratio"] = res["p50_snap_ms"] / res["p50_control_ms"]
    return d, res


def recovery(args, model_file, dim, db_dir, d, res):
    """Step 6 on the same database: feedback, SIGTERM (the final snapshot is written), restart;
    feedback, kill -9 (that step is lost), restart. Both restarts must come back at the step
    of the final snapshot."""
    _, (fb_body, fb_headers) = bodies(dim)
    timed(d, "POST", f"/v2/models/{MODEL}/feedback", fb_body, fb_headers)
    saved = model_step(d)
    t0 = time.monotonic()
    rc = d.stop(120)
    res["sigterm_exit_s"] = time.monotonic() - t0
    final = [m for m in map(SNAP_LINE.search, d.log_lines) if m and "reason shutdown" in m.group(0)]
    res["final_write_ms"] = float(final[-1].group(3)) if final else float("nan")
    d.close()
    if rc != 0:
        raise RuntimeError(f"tscaled exited {rc} on SIGTERM:\n{d.log()[-2000:]}")
    for how in ("after_sigterm", "after_kill9"):
        t0 = time.monotonic()
        d = tsd.Daemon(args=["--model", f"{MODEL}={model_file}", "--snapshot-interval", "0"]
                       + args.daemon_arg, db_dir=db_dir, start_timeout=300)
        try:
            res[f"restart_{how}_s"] = time.monotonic() - t0
            res[f"restart_{how}_log_s"] = log_span(d, None, tsd.LISTEN_RE.pattern)
            res[f"restart_{how}_recover_s"] = log_span(d, None, f"model '{MODEL}' recovered")
            if model_step(d) != saved:
                raise RuntimeError(f"restart {how}: step {model_step(d)}, expected {saved}")
            if how == "after_sigterm":
                timed(d, "POST", f"/v2/models/{MODEL}/feedback", fb_body, fb_headers)
                d.proc.kill()  # kill -9: the step just taken is lost, the snapshot is not
                d.wait(30)
            else:
                d.stop(120)
        finally:
            d.close()
    return res


ROWS = [  # (label, key, format)
    ("load average (1 min) before / after", ("load_before", "load_after"), "%.2f / %.2f"),
    ("requests (errors), req/s", ("requests", "errors", "rps"), "%d (%d), %.0f/s"),
    ("all quiet requests: n, p50, p99 ms", ("n_quiet", "p50_quiet_ms", "p99_quiet_ms"), "%d, %.1f, %.1f"),
    ("overlapping a quiet window: n, p50, p99 ms", ("n_control", "p50_control_ms", "p99_control_ms"),
     "%d, %.1f, %.1f"),
    ("overlapping a snapshot: n, p50, p99 ms", ("n_during", "p50_snap_ms", "p99_snap_ms"),
     "%d, %.1f, %.1f"),
    ("overlapping a snapshot: max ms", ("max_snap_ms",), "%.1f"),
    ("snapshot / quiet window: p50, p99", ("p50_ratio", "p99_ratio"), "%.2f, %.2f"),
    ("snapshot bytes", ("snapshot_bytes",), "%d"),
    ("snapshot write (log) median / max ms", ("write_ms", "write_max_ms"), "%.1f / %.1f"),
    ("POST snapshots round trip ms", ("snap_call_ms",), "%.1f"),
    ("loop stall: state copy median / max ms", ("copy_ms", "copy_max_ms"), "%.2f / %.2f"),
    ("/metrics means: write, copy ms", ("metrics_write_mean_ms", "metrics_copy_mean_ms"), "%.1f, %.2f"),
    ("feedback step (batch 1) ms", ("feedback_ms",), "%.1f"),
    ("first start (import the file) s", ("first_start_s",), "%.2f"),
    ("SIGTERM to exit s (final snapshot write ms)", ("sigterm_exit_s", "final_write_ms"), "%.2f (%.0f)"),
    ("restart after SIGTERM: spawn→listening, log: →recovered, →listening s",
     ("restart_after_sigterm_s", "restart_after_sigterm_recover_s", "restart_after_sigterm_log_s"),
     "%.2f, %.2f, %.2f"),
    ("restart after kill -9: spawn→listening, log: →recovered, →listening s",
     ("restart_after_kill9_s", "restart_after_kill9_recover_s", "restart_after_kill9_log_s"),
     "%.2f, %.2f, %.2f"),
]


def table(title, results, first=1):
    """Markdown: one column per run (numbered from first), then the medians when several."""
    print(f"\n{title}:\n\n| measure | " + " | ".join(f"run {first + i}" for i in range(len(results))) +
          (" | median |" if len(results) > 1 else " |"))
    print("|---" * (len(results) + 1 + (len(results) > 1)) + "|")
    for label, keys, fmt in ROWS:
        cells = [fmt % tuple(r[k] for k in keys) for r in results]
        if len(results) > 1:
            cells.append(fmt % tuple(statistics.median(r[k] for r in results) for k in keys))
        print(f"| {label} | " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--layers", default=LAYERS)
    ap.add_argument("--snapshots", type=int, default=10, help="snapshots per run")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--baseline", type=float, default=3.0)
    ap.add_argument("--settle", type=float, default=0.7,
                    help="pause between feedback, snapshot and quiet window, s")
    ap.add_argument("--tail", type=float, default=2.0)
    ap.add_argument("--daemon-arg", action="append", default=[],
                    help="extra tscaled flag (repeat), e.g. --daemon-arg=--threads=2")
    ap.add_argument("--json", help="also write the per-run results here")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="tscale-snapbench-")
    try:
        model_file = os.path.join(work, "model.safetensors")
        subprocess.run([BINARY, "init", "--layers", args.layers, "--out", model_file], check=True,
                       stdout=subprocess.DEVNULL)
        info, dim = inspect(model_file)
        print(f"model: {args.layers}: {info['params']} ternary weights, {info['groups']} groups; "
              f"{args.clients} clients, batch-1 binary inference; {args.snapshots} snapshots per run; "
              f"{os.cpu_count()} CPUs; tscaled {' '.join(args.daemon_arg)}")
        results = []
        for run in range(args.runs):
            db_dir = os.path.join(work, f"run{run}")
            os.mkdir(db_dir)
            d, res = serve_and_snapshot(args, model_file, dim, db_dir)
            try:
                recovery(args, model_file, dim, db_dir, d, res)
            finally:
                d.close()
            shutil.rmtree(db_dir, ignore_errors=True)
            results.append(res)
            table(f"run {run + 1} of {args.runs}", [res], run + 1)
            sys.stdout.flush()
        if args.runs > 1:
            table(f"all {args.runs} runs", results)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
