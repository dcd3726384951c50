"""rss.py — resident memory of a served model: RssAnon of build/tscaled per weight after
loading the model file, after recovering it from the database, and after a while of feedback
with snapshots (issue 14's memory row). Starts the real daemon on 127.0.0.1 port 0 with a
temporary database, as the end-to-end tests do.

    python3 bench/rss.py [--layers SPEC] [--minutes M] [--binary build/tscaled]

Prints one line per phase and the model's own bytes (`tscaled inspect`); the environment is
passed on, so `MALLOC_MMAP_THRESHOLD_=131072 python3 bench/rss.py` compares glibc settings.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import tsd  # noqa: E402


def rss(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    return out


def smaps(pid, top=8):
    """The largest anonymous mappings (by resident anon bytes): where the memory is."""
    maps, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                cur = [head[5] if len(head) > 5 else "[anon]", 0, head[0]]
                maps.append(cur)
            elif head[0] == "Anonymous:":
                cur[1] += int(head[1]) * 1024
    for name, anon, rng in sorted(maps, key=lambda m: -m[1])[:top]:
        lo, hi = (int(v, 16) for v in rng.split("-"))
        print(f"    {anon / 1e6:7.2f} MB anon of {(hi - lo) / 1e6:8.2f} MB  {name}")


def report(phase, d, weights):
    time.sleep(0.5)
    r = rss(d.proc.pid)
    m = d.metric("process_resident_memory_bytes")
    print(f"{phase:<28} RssAnon {r['RssAnon'] / 1e6:7.1f} MB = {r['RssAnon'] / weights:.3f} B/weight"
          f"   (VmRSS {r['VmRSS'] / 1e6:.1f} MB, file {r['RssFile'] / 1e6:.1f} MB"
          + (f", /metrics {m / 1e6:.1f} MB" if m is not None else "") + ")", flush=True)
    if SMAPS:
        smaps(d.proc.pid)
    return r["RssAnon"] / weights


SMAPS = False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="linear:4096x4096,relu,linear:4096x4096")
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--binary", default=os.path.join(tsd.ROOT, "build", "tscaled"))
    ap.add_argument("--smaps", action="store_true", help="list the largest anonymous mappings")
    a = ap.parse_args()
    global SMAPS
    SMAPS = a.smaps
    tsd.BINARY = os.path.abspath(a.binary)
    tmp = tempfile.mkdtemp(prefix="tscale-rss-")
    path = os.path.join(tmp, "m.safetensors")
    subprocess.run([a.binary, "init", "--layers", a.layers, "--out", path], check=True,
                   stdout=subprocess.DEVNULL)
    info = json.loads(subprocess.run([a.binary, "inspect", "--json", path], check=True,
                                     capture_output=True, text=True).stdout)
    weights, own = info["params"], info["bytes_in_memory"]
    print(f"model {a.layers}: {weights} weights, ts_model_bytes {own} ({own / weights:.3f} B/weight)")
    args = ["--model", "m=" + path, "--snapshot-interval", "1"]
    d = tsd.Daemon(args=args, db_dir=tmp, env=dict(os.environ))
    try:
        report("after load", d, weights)
        d.stop()
    finally:
        d.close()
    d = tsd.Daemon(args=["--snapshot-interval", "1"], db_dir=tmp, env=dict(os.environ))
    try:
        report("after recovery", d, weights)
        n_in = int(a.layers.split(",")[0].split(":")[1].split("x")[0])
        rng = random.Random(1)
        end, steps = time.time() + a.minutes * 60, 0
        while time.time() < end:
            x = [rng.gauss(0, 1) for _ in range(n_in)]
            d.json("POST", "/v2/models/m/feedback", {"inputs": [
                {"name": "input", "shape": [1, n_in], "datatype": "FP32", "data": x},
                {"name": "label", "shape": [1], "datatype": "INT64", "data": [rng.randrange(4)]}]})
            steps += 1
        snaps = d.metric("tscale_snapshots_total")
        report(f"after {a.minutes:g} min feedback", d, weights)
        took = d.metric("tscale_snapshot_seconds_sum")
        print(f"  ({steps} feedback steps, {snaps:.0f} snapshots, {1e3 * took / max(snaps, 1):.1f} ms "
              "per snapshot write)")
        d.stop()
    finally:
        d.close()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
