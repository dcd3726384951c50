#!/usr/bin/env python3
"""journal_bench.py — what the feedback journal costs (issue 11): feedback steps/s and p99
with 16 concurrent keep-alive clients (wrk -t2 -c16; --clients N), --journal yes against --journal no in
the same run, alternating, on the demo model and a mid-sized one
(rmsnorm:1024, linear 1024x4096, gelu, linear 4096x1024). Every request carries its own OIP
id (as a client that retries safely does). Also: journal bytes per step (payload) and bytes
the daemon wrote to storage per step (/proc/PID/io write_bytes: WAL, checkpoints, fsyncs), and
where the CPU went: the daemon's per step, wrk's per step (it shares the machine's cores) and
the machine's idle + iowait share during the run (/proc/stat).

    python3 bench/journal_bench.py [--seconds 10] [--runs 3] [--models demo,mid]
Prints one JSON line per run and a table of medians.
"""
import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import tsd  # noqa: E402

MID = "rmsnorm:1024,linear:1024x4096,gelu,linear:4096x1024"

LUA = r"""
local n = 0
local prefix = ""
function setup(thread) n = n + 1; thread:set("tid", n) end
function init(args) prefix = "t" .. tid .. "-" .. tostring(math.random(1, 1e9)) .. "-"; count = 0 end
function request()
  count = count + 1
  local body = '{"id":"' .. prefix .. count .. '","inputs":[{"name":"input","datatype":"FP32","shape":[1,%d],"data":[%s]},{"name":"label","datatype":"INT64","shape":[1],"data":[%d]}]}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
"""


def metric(text, name):
    m = re.search(r"^%s(?:\{[^}]*\})? ([0-9.e+]+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else 0.0


def write_bytes(pid):
    with open("/proc/%d/io" % pid) as f:
        return int(re.search(r"^write_bytes: (\d+)", f.read(), re.M).group(1))


def cpu_seconds(pid):
    """User + system CPU time of process pid so far (/proc/PID/stat), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_total():
    """(idle + iowait, all) jiffies of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return v[3] + v[4], sum(v)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_run(model, journal, seconds, tmp, clients=16):
    args = ["--journal", journal]
    name, n_in = "demo", 16
    if model == "mid":
        path = os.path.join(tmp, "mid.safetensors")
        if not os.path.exists(path):
            subprocess.run([os.path.join(tsd.ROOT, "build/tscaled"), "init", "--layers", MID, "--out", path,
                            "--seed", "1"], check=True, capture_output=True)
        args += ["--model", "mid=" + path]
        name, n_in = "mid", 1024
    x = ",".join("%.3f" % (((k * 37) % 101) / 50.0 - 1.0) for k in range(n_in))
    lua = os.path.join(tmp, "fb.lua")
    with open(lua, "w") as f:
        f.write(LUA % (n_in, x, 3))
    with tsd.Daemon(args=args) as d:
        wb0, cpu0, idle0, wrk0 = write_bytes(d.proc.pid), cpu_seconds(d.proc.pid), idle_total(), children_cpu()
        out = subprocess.run(["wrk", "-t2", "-c%d" % clients, "-d%ds" % seconds, "--latency", "-s", lua,
                              "http://127.0.0.1:%d/v2/models/%s/feedback" % (d.port, name)],
                             capture_output=True, text=True, check=True).stdout
        idle1, wrk1 = idle_total(), children_cpu()
        time.sleep(0.2)
        wb1, cpu1 = write_bytes(d.proc.pid), cpu_seconds(d.proc.pid)
        m = d.request("GET", "/metrics")[2].decode()
    steps = metric(m, "tscale_feedback_steps_total")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"^\s+99%\s+([0-9.]+)(us|ms|s)", out, re.M)
    p99_ms = float(p99.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    r = {"model": model, "journal": journal, "clients": clients, "steps_per_s": round(steps / seconds, 1),
         "p99_ms": p99_ms, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
         "journal_bytes_per_step": round(metric(m, "tscale_journal_bytes_total") / max(steps, 1), 1),
         "disk_bytes_per_step": round((wb1 - wb0) / max(steps, 1), 1),
         "daemon_cpu_us_per_step": round((cpu1 - cpu0) * 1e6 / max(steps, 1), 1),
         "wrk_cpu_us_per_step": round((wrk1 - wrk0) * 1e6 / max(steps, 1), 1),
         "idle_percent": round(100.0 * (idle1[0] - idle0[0]) / max(idle1[1] - idle0[1], 1), 1),
         "commits": metric(m, "tscale_journal_commits_total"),
         "steps_per_commit": round(steps / max(metric(m, "tscale_journal_commits_total"), 1), 2)}
    print(json.dumps(r), flush=True)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", default="demo,mid")
    ap.add_argument("--clients", type=int, default=16, help="concurrent keep-alive connections")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tscale-jbench-")
    results = []
    for _ in range(a.runs):
        for model in a.models.split(","):
            for journal in ("yes", "no"):
                results.append(one_run(model, journal, a.seconds, tmp, a.clients))
    print("\n| model | journal | steps/s (median) | p99 ms | daemon CPU µs/step | wrk CPU µs/step | machine idle | "
          "steps per commit | journal B/step | disk B/step |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in a.models.split(","):
        med = {}
        for journal in ("yes", "no"):
            rs = [r for r in results if r["model"] == model and r["journal"] == journal]
            med[journal] = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in ("model", "journal", "clients")}
            m = med[journal]
            print("| %s | %s | %.0f | %.2f | %.0f | %.0f | %.0f %% | %s | %s | %.0f |" % (
                model, journal, m["steps_per_s"], m["p99_ms"], m["daemon_cpu_us_per_step"],
                m["wrk_cpu_us_per_step"], m["idle_percent"],
                "%.1f" % m["steps_per_commit"] if journal == "yes" else "—",
                "%.0f" % m["journal_bytes_per_step"] if journal == "yes" else "—", m["disk_bytes_per_step"]))
        print("| %s | yes/no | %.2f× | | | | | | | |" % (model, med["yes"]["steps_per_s"] / med["no"]["steps_per_s"]))


if __name__ == "__main__":
    main()
