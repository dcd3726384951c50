"""soak.py — load and soak test of tscaled (issue 7). Loopback only, bounded, not part of
`make test`: run it by hand (`make soak`, or the command below) and paste its report into
the README.

    python3 tests/soak/soak.py [--binary build/tscaled] [--seconds 240] [--out report.txt]

What it does, on a fresh database and a model made by `tscaled init`:
  1. warm-up (at the overload's concurrency), then "at capacity": wrk with a few
     connections, mixed infer and feedback (tests/soak/mix.lua), while snapshots run on the
     timer and by POST .../snapshots;
  2. "overload": wrk with many connections against a small queue limit (--max-queue-rows),
     so the daemon must shed load with 503 + Retry-After; halfway through it, a restore
     to a snapshot taken earlier (a real rollback) while the load keeps running;
  3. SIGTERM (exit 0 expected), restart on the same database.
RSS of the daemon is sampled every second throughout.

Checks (each failure is listed and the exit status is 1):
  - the daemon never crashed, exited 0 on SIGTERM, and restarted with the final step;
  - RSS after warm-up stays within 10% of its level at the end of warm-up;
  - every acknowledged feedback is counted in step: the daemon's feedback_steps counter
    says how many steps it applied (applied ≥ acknowledged; the difference, at most the
    connections, were in flight when wrk stopped, which does not read their answers); those
    steps took the values {s0+1 .. s0+a} before the restore and {s_r+1 .. final} after it
    (s_r: the restored snapshot's step; a = applied - (final - s_r)); every acknowledged
    feedback's step must be one of them, no value acknowledged more often than it was taken:
    a lost, double-counted or phantom step breaks it;
  - error responses are only of documented kinds (503 with Retry-After); no socket errors.
"""
import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import tsd  # noqa: E402

MODEL = "soak"
LAYERS = "rmsnorm:128/gs32,linear:128x512/gs32+bias,gelu,linear:512x512/gs64,relu,linear:512x32/gs32"
IN_DIM, OUT_DIM = 128, 32


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Sampler(threading.Thread):
    """RSS of pid every second, as (seconds since start, kB)."""

    def __init__(self, pid, t0):
        super().__init__(daemon=True)
        self.pid, self.t0, self.samples, self.stop = pid, t0, [], threading.Event()

    def run(self):
        while not self.stop.wait(1.0):
            kb = rss_kb(self.pid)
            if kb is not None:
                self.samples.append((time.time() - self.t0, kb))


def wrk(port, seconds, connections, threads, rows, feedback, out):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "60s",
           "-s", os.path.join(HERE, "mix.lua"), f"http://127.0.0.1:{port}", "--",
           MODEL, str(IN_DIM), str(OUT_DIM), str(rows), str(feedback), out]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if p.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stdout}\n{p.stderr}")
    with open(out) as f:
        return json.load(f), p.stdout


def model_info(d):
    for m in d.json("GET", "/admin/models")["models"]:
        if m["name"] == MODEL:
            return m
    raise RuntimeError(f"model {MODEL} missing from /admin/models")


def step_of(d):
    return int(model_info(d)["step"])


class Admin(threading.Thread):
    """Snapshots every `every` seconds; once `restore_at` (time.time()) passes, a restore to
    a snapshot from the middle of the model's list (one retention has not deleted)."""

    def __init__(self, d, every, restore_at):
        super().__init__(daemon=True)
        self.d, self.every, self.restore_at = d, every, restore_at
        self.stop, self.snapshots, self.statuses = threading.Event(), [], collections.Counter()
        self.restored = None   # (snapshot_id, its step, step just before)
        self.error = None

    def run(self):
        try:
            while not self.stop.wait(self.every):
                status, _, body = self.d.request("POST", f"/admin/models/{MODEL}/snapshots", timeout=120)
                self.statuses[f"snapshot {status}"] += 1
                if status == 201:
                    self.snapshots.append((time.time(), json.loads(body)))
                if self.restored is None and time.time() >= self.restore_at:
                    self.restore()
        except Exception as e:  # reported, not swallowed
            self.error = repr(e)

    def restore(self):
        before = step_of(self.d)
        listed = self.d.json("GET", f"/admin/models/{MODEL}/snapshots")["snapshots"]  # newest first
        cands = [x for x in listed if int(x["step"]) < before]
        target = cands[len(cands) // 2]
        status, _, body = self.d.request("POST", f"/admin/models/{MODEL}/restore",
                                         {"snapshot_id": target["snapshot_id"]}, timeout=120)
        self.statuses[f"restore {status}"] += 1
        if status != 200:
            raise RuntimeError(f"restore: {status} {body[:300]!r}")
        self.restored = (target["snapshot_id"], int(target["step"]), before)


def check_steps(acked, applied, s0, restored, final, in_flight):
    """The step accounting described at the top. applied: feedback steps the daemon applied
    (its feedback_steps counter); in_flight: most requests that can have been applied without
    their answer being read (wrk stops without reading the answers still on the way).
    Returns a list of failures."""
    fails = []
    if not 0 <= applied - len(acked) <= in_flight:
        fails.append(f"steps: the daemon applied {applied} feedback steps, {len(acked)} were "
                     f"acknowledged (at most {in_flight} can be unread at the end)")
    if restored is None:
        possible = list(range(s0 + 1, final + 1))
    else:
        s_r = restored[1]
        before = applied - (final - s_r)   # steps applied before the restore
        if before < 0 or final < s_r:
            return fails + [f"steps: {applied} applied, final {final}, restored to {s_r}: impossible"]
        possible = list(range(s0 + 1, s0 + before + 1)) + list(range(s_r + 1, final + 1))
    extra = collections.Counter(acked) - collections.Counter(possible)
    if extra:
        fails.append(f"steps: {sum(extra.values())} acknowledged step values that no applied step "
                     f"had (or more often than one did), e.g. {sorted(extra)[:5]}")
    return fails


def quiesce(d, timeout=120):
    """Wait until the queue is empty and no step is being applied (wrk leaves requests in
    flight when it stops); returns the model's info then."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        info = model_info(d)
        key = (info["feedback_steps"], info["step"])
        if info.get("queue_rows", 0) == 0 and key == last:
            return info
        last = key
        time.sleep(0.5)
    raise RuntimeError("the daemon did not become idle after the load stopped")


def merge(results):
    counts = collections.Counter()
    for r in results:
        counts.update(r["counts"])
    return counts


def rss_report(samples, warm_end):
    after = [kb for t, kb in samples if t >= warm_end]
    base_window = [kb for t, kb in samples if warm_end <= t < warm_end + 10] or after[:1]
    base = sorted(base_window)[len(base_window) // 2]
    peak = max(after)
    curve = []
    next_t = 0.0
    for t, kb in samples:
        if t >= next_t:
            curve.append((t, kb))
            next_t += 15.0
    return base, peak, curve


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "tscaled"))
    ap.add_argument("--seconds", type=int, default=240, help="total load time (default 240)")
    ap.add_argument("--out", help="also write the report to this file")
    ap.add_argument("--threads", type=int, default=2, help="daemon compute threads")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("soak: needs wrk (apt-get install wrk)")
    warm = max(20, args.seconds // 4)
    at_cap = (args.seconds - warm) // 2
    over = args.seconds - warm - at_cap

    work = tempfile.mkdtemp(prefix="tscale-soak-")
    model_file = os.path.join(work, "soak.safetensors")
    subprocess.run([args.binary, "init", "--layers", LAYERS, "--out", model_file, "--name", MODEL,
                    "--seed", "7"], check=True, capture_output=True)
    tsd.BINARY = os.path.abspath(args.binary)
    daemon_args = ["--model", f"{MODEL}={model_file}", "--snapshot-interval", "5",
                   "--threads", str(args.threads), "--max-queue-rows", "128", "--max-batch", "64",
                   "--snapshot-keep", "10"]
    failures, lines = [], []
    d = tsd.Daemon(args=daemon_args, db_dir=work)
    try:
        t0 = time.time()
        sampler = Sampler(d.proc.pid, t0)
        sampler.start()
        s0 = step_of(d)
        applied0 = int(model_info(d)["feedback_steps"])
        # warm-up at the overload's concurrency: its connections' buffers are part of the baseline
        phases = [("warm-up", warm, 96, 4), ("at capacity", at_cap, 4, 4), ("overload", over, 96, 4)]
        results = []
        # snapshots from the start: the database reaches its retained size (and SQLite's page
        # cache its size) during the warm-up
        admin = Admin(d, 7, restore_at=float("inf"))
        admin.start()
        warm_end = None
        for name, secs, conns, rows in phases:
            if name == "overload":
                admin.restore_at = time.time() + secs / 2
            if name == "at capacity":
                warm_end = time.time() - t0
            out = os.path.join(work, f"wrk-{len(results)}.json")
            r, _ = wrk(d.port, secs, conns, 2, rows, 0.3, out)
            r["phase"], r["seconds"], r["connections"] = name, secs, conns
            results.append(r)
            if d.proc.poll() is not None:
                failures.append(f"daemon exited with {d.proc.returncode} during {name}")
                break
        admin.stop.set()
        admin.join(180)
        sampler.stop.set()
        sampler.join(5)
        if admin.error:
            failures.append(f"admin thread: {admin.error}")
        if admin.restored is None:
            failures.append("no restore happened")
        info = quiesce(d)
        final, applied = int(info["step"]), int(info["feedback_steps"]) - applied0
        acked = [s for r in results for s in r["steps"]]
        in_flight = sum(r["connections"] for r in results)
        failures += check_steps(acked, applied, s0, admin.restored, final, in_flight)
        counts = merge(results)
        for kind, n in counts.items():
            if not (kind.endswith(" 200") or kind.startswith("503 ")):
                failures.append(f"undocumented response kind: {kind!r} x{n}")
        for r in results:
            if r["retry_after_missing"]:
                failures.append(f"{r['phase']}: {r['retry_after_missing']} 503s without Retry-After")
            sock = {k: r["wrk"][k] for k in ("connect", "read", "write", "timeout") if r["wrk"][k]}
            if sock:
                failures.append(f"{r['phase']}: socket errors {sock}")
        base, peak, curve = rss_report(sampler.samples, warm_end)
        if peak > base * 1.10:
            failures.append(f"RSS grew from {base} kB to {peak} kB after warm-up (> 10%)")
        rc = d.stop(120)
        if rc != 0:
            failures.append(f"SIGTERM: exit status {rc}")
        d2 = tsd.Daemon(args=daemon_args, db_dir=work)
        try:
            after = step_of(d2)
            if after != final:
                failures.append(f"after restart step is {after}, before shutdown {final}")
        finally:
            d2.close()

        lines.append(f"tscale soak: {args.seconds} s of load on loopback, model {LAYERS}")
        lines.append(f"daemon: --threads {args.threads} --max-queue-rows 128 --max-batch 64 "
                     f"--snapshot-interval 5 --snapshot-keep 10; machine: {os.cpu_count()} cores (shared)")
        lines.append("")
        lines.append(f"{'phase':<12} {'s':>4} {'conns':>5} {'requests':>9} {'req/s':>7} {'p50 ms':>7} "
                     f"{'p99 ms':>7}  responses")
        for r in results:
            w = r["wrk"]
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(r["counts"].items()))
            lines.append(f"{r['phase']:<12} {r['seconds']:>4} {r['connections']:>5} {w['requests']:>9} "
                         f"{w['requests'] / max(w['duration_us'], 1) * 1e6:>7.0f} "
                         f"{w['latency_p50_us'] / 1000:>7.1f} {w['latency_p99_us'] / 1000:>7.1f}  {kinds}")
        lines.append("")
        lines.append(f"total responses by kind: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        lines.append(f"admin: " + ", ".join(f"{k}: {v}" for k, v in sorted(admin.statuses.items())))
        if admin.restored:
            sid, s_r, before = admin.restored
            lines.append(f"restore: to snapshot {sid} (step {s_r}) while at step {before}, under load")
        lines.append(f"feedback: {len(acked)} acknowledged, {applied} applied (the rest were in flight "
                     f"when wrk stopped); step {s0} -> {final}, the same after SIGTERM and restart; "
                     f"every acknowledged step accounted for: "
                     f"{'yes' if not any(f.startswith('steps') for f in failures) else 'NO'}")
        lines.append(f"RSS: {base / 1024:.1f} MiB after warm-up, peak after it {peak / 1024:.1f} MiB "
                     f"({(peak / base - 1) * 100:+.1f}%)")
        lines.append("RSS curve (s: MiB): " + "  ".join(f"{t:.0f}: {kb / 1024:.1f}" for t, kb in curve))
        lines.append("")
        lines.append("result: " + ("PASS" if not failures else "FAIL"))
        lines += [f"  - {f}" for f in failures]
    finally:
        d.close()
        shutil.rmtree(work, ignore_errors=True)
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
