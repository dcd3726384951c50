#!/bin/sh
# plot.sh BENCH OUTDIR — forward time vs batch size, tscale vs dense OpenBLAS, on a
# 4096x4096 layer with 2 threads: OUTDIR/forward_vs_batch.jsonl (the bench's JSON lines)
# and OUTDIR/forward_vs_batch.png. Runs are bounded (--reps) so it takes a few minutes.
set -e
bench=$1; out=$2
json=$out/forward_vs_batch.jsonl; dat=$(mktemp); trap 'rm -f "$dat"' EXIT
: > "$json"
for b in 1 2 4 8 16 32 64 128 256; do
  reps=20; [ "$b" -ge 64 ] && reps=7
  "$bench" --op forward --out 4096 --in 4096 --batch "$b" --threads 2 --reps "$reps" --json | tee -a "$json"
done
python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["batch"], r["median_us"] / 1000, r["openblas_median_us"] / 1000, r["kernel"])
' "$json" > "$dat"
kernel=$(awk 'NR==1{print $4}' "$dat")
gnuplot <<GP
set terminal pngcairo size 900,600 noenhanced
set output "$out/forward_vs_batch.png"
set title "forward, 4096x4096 layer, 2 threads (medians)"
set xlabel "batch size"; set ylabel "time per forward (ms)"
set logscale xy; set grid; set key bottom right; set xrange [0.8:320]
set xtics (1,2,4,8,16,32,64,128,256)
plot "$dat" using 1:2 with linespoints lw 2 title "tscale ($kernel, ternary, float32 activations)", \
     "$dat" using 1:3 with linespoints lw 2 title "OpenBLAS sgemv/sgemm (dense float32)"
GP
echo "wrote $out/forward_vs_batch.png"
