#!/usr/bin/env python3
"""journal_encoding.py — how to encode a journal entry, by measurement (issue 11).

Serves a model with build/tscaled, applies N feedback steps (random inputs, random labels),
then reads the journal entries the daemon wrote and compares, per step, the bytes of:
  int16      2 bytes per group (the scores' own type)
  int8       1 byte per group (what tscale writes when every score fits, always for gs <= 127)
  zlib-1/6   the int8 payload through zlib (Python's), and its compression time per step
  lzma       the int8 payload through xz (preset 1)
  zstd-3     the int8 payload through the zstd command (level 3; time includes the process)
  entropy    the Shannon bound of the scores' empirical distribution (order 0)

    python3 bench/journal_encoding.py                       # demo model
    python3 bench/journal_encoding.py --layers linear:4096x4096 --steps 40 --rows 8
"""
import argparse
import collections
import json
import math
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
import lzma

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import tsd  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", help="architecture for `tscaled init` (default: the demo model)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rows", type=int, default=1)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tscale-enc-")
    dargs = ["--snapshot-interval", "0"]
    model = "demo"
    if args.layers:
        path = os.path.join(tmp, "m.safetensors")
        subprocess.run([os.path.join(tsd.ROOT, "build/tscaled"), "init", "--layers", args.layers,
                        "--out", path, "--seed", "1"], check=True, capture_output=True)
        dargs += ["--model", "m=" + path]
        model = "m"
    rng = random.Random(1)
    with tsd.Daemon(args=dargs, db_dir=tmp) as d:
        meta = d.json("GET", "/v2/models/" + model)
        n_in, n_out = meta["inputs"][0]["shape"][1], meta["outputs"][0]["shape"][1]
        for k in range(args.steps):
            x = [rng.gauss(0, 1) for _ in range(args.rows * n_in)]
            body = {"id": "enc-%d" % k, "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [args.rows, n_in], "data": x},
                {"name": "label", "datatype": "INT64", "shape": [args.rows],
                 "data": [rng.randrange(n_out) for _ in range(args.rows)]}]}
            d.json("POST", "/v2/models/%s/feedback" % model, body)
        db = sqlite3.connect(os.path.join(tmp, "tscale.db"))
        payloads = [p for (p,) in db.execute("SELECT payload FROM journal ORDER BY seq")]
        db.close()
    groups = len(payloads[0]) - 1
    counts = collections.Counter()
    for p in payloads:
        counts.update(p[1:])
    total = sum(counts.values())
    entropy_bits = -sum(c / total * math.log2(c / total) for c in counts.values())
    rows = [("int16", 2 * groups, 0.0), ("int8 (tscale)", 1 + groups, 0.0)]
    for name, fn in (("zlib-1", lambda b: zlib.compress(b, 1)), ("zlib-6", lambda b: zlib.compress(b, 6)),
                     ("lzma-1", lambda b: lzma.compress(b, preset=1))):
        t0 = time.perf_counter()
        sizes = [len(fn(p)) for p in payloads]
        rows.append((name, sum(sizes) / len(sizes), (time.perf_counter() - t0) / len(payloads) * 1e6))
    t0 = time.perf_counter()
    sizes = [len(subprocess.run(["zstd", "-3", "-q", "-c"], input=p, capture_output=True, check=True).stdout)
             for p in payloads[:50]]
    rows.append(("zstd-3 (cli)", sum(sizes) / len(sizes), (time.perf_counter() - t0) / len(sizes) * 1e6))
    rows.append(("entropy bound", entropy_bits * groups / 8, 0.0))
    out = {"model": args.layers or "demo", "groups": groups, "steps": len(payloads), "rows": args.rows,
           "distinct_scores": len(counts), "entropy_bits_per_group": round(entropy_bits, 3)}
    print(json.dumps(out))
    print("%-16s %14s %10s %14s" % ("encoding", "bytes/step", "vs int8", "encode us/step"))
    for name, size, us in rows:
        print("%-16s %14.1f %9.2fx %14.1f" % (name, size, size / (1 + groups), us))


if __name__ == "__main__":
    main()
