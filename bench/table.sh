#!/bin/sh
# table.sh BENCH — the shapes (4096x4096 and 1024x1024, gs 32), one tscale-bench
# run each (tscale and OpenBLAS in the same run), as JSON lines on stderr and a Markdown
# table on stdout. THREADS (default 2) threads. Bounded: about a minute on 2 cores.
set -e
bench=${1:-build/tscale-bench}
run() { "$bench" --threads "${THREADS:-2}" --json "$@"; }
{
  run --op forward --out 4096 --in 4096 --batch 1 --cold-weights --reps 31
  run --op forward --out 4096 --in 4096 --batch 1 --cold --reps 31
  run --op forward --out 4096 --in 4096 --batch 1 --reps 1001
  run --op forward --out 4096 --in 4096 --batch 8 --reps 31
  run --op forward --out 4096 --in 4096 --batch 256 --reps 7
  run --op feedback --out 4096 --in 4096 --batch 8 --reps 41
  run --op forward --out 1024 --in 1024 --batch 1 --reps 1001
  run --op forward --out 1024 --in 1024 --batch 64 --reps 101
} | tee /dev/stderr | python3 -c '
import json, sys
print("| op | shape | batch | weights | tscale median (min–max) µs | tscale CPU µs | OpenBLAS median µs | ratio | note |")
print("|---|---|---|---|---|---|---|---|---|")
for line in sys.stdin:
    r = json.loads(line)
    note = ("step/forward %.2f (forward %.0f, score %.0f, scale refresh %.0f); with backward_x %.0f "
            "(a layer with layers below) %.2f" % (
        r["over_forward"], r["forward_median_us"], r["score_median_us"], r["scales_median_us"],
        r["backward_x_median_us"], r["with_backward_x_over_forward"]) if r["op"] == "feedback" else "")
    if not note and r["batch"] == 1 and r["out"] == 4096:
        note = "%.3f bytes/weight resident" % r["bytes_per_weight"]
    print("| %s | %dx%d | %d | %s | %.0f (%.0f–%.0f) | %.0f | %.0f %s | %.3f | %s |" % (
        r["op"], r["out"], r["in"], r["batch"], r["cold_mode"], r["median_us"],
        r["min_us"], r["max_us"], r["cpu_us"], r["openblas_median_us"], r["openblas"],
        r["ratio_to_openblas"], note))
'
