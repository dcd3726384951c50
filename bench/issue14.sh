#!/bin/sh
# issue14.sh BENCH — issue 14's rows for one 4096x4096 layer (gs 32): forward at batch
# 1/8/16/32/64/256 and the feedback step (feedback: a layer with nothing below; feedback-dx:
# a layer with layers below, adding backward_x) at batch 8 and 32, each tscale-bench run
# timing tscale and OpenBLAS in the same run. JSON lines on stderr, a Markdown table on
# stdout (ratios to OpenBLAS, and of the steps to the forward at the same batch size; the
# CPU column is the process's CPU time per run: below threads × median, the cores were shared).
# THREADS (default 2). KERNEL (optional) forces a family.
set -e
bench=${1:-build/tscale-bench}
run() { "$bench" --threads "${THREADS:-2}" ${KERNEL:+--kernel "$KERNEL"} --json "$@"; }
{
  for b in 1 8 16 32 64 256; do
    reps=$(( b == 1 ? 501 : b >= 64 ? 11 : 31 ))
    run --op forward --out 4096 --in 4096 --batch $b --reps $reps
  done
  for op in feedback feedback-dx; do
    for b in 8 32; do
      run --op $op --out 4096 --in 4096 --batch $b --reps "${STEP_REPS:-7}"
    done
  done
} | tee /dev/stderr | python3 -c '
import json, sys
print("| work (4096x4096, gs 32) | kernel | tscale median (min–max) µs | tscale CPU µs | OpenBLAS median µs | tscale / OpenBLAS | step / forward (same batch, same run) |")
print("|---|---|---|---|---|---|---|")
for line in sys.stdin:
    r = json.loads(line)
    what = "forward batch %d" % r["batch"] if r["op"] == "forward" else \
        "%s step batch %d (%s)" % (r["op"], r["batch"], "forward, score, update" if r["op"] == "feedback"
                                   else "forward, score, backward_x, update")
    step = "%.2f (forward %.0f, score %.0f, backward_x %.0f, scale refresh %.0f)" % (
        r["over_forward"], r["forward_median_us"], r["score_median_us"], r["backward_x_median_us"],
        r["scales_median_us"]) if r["op"] != "forward" else ""
    print("| %s | %s | %.0f (%.0f–%.0f) | %.0f | %.0f %s | %.3f | %s |" % (
        what, r["kernel"], r["median_us"], r["min_us"], r["max_us"], r["cpu_us"], r["openblas_median_us"],
        r["openblas"], r["ratio_to_openblas"], step))
'
