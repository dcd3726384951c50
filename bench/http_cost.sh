#!/bin/sh
# http_cost.sh [TSCALED...] — what one request costs the server: wrk -t2 -c16 keep-alive,
# batch-1 JSON inference on `demo`, against each tscaled binary given (default build/tscaled)
# and the bare libmicrohttpd server (build/mhd-baseline), interleaved, ROUNDS rounds (3);
# `perf stat` over 4 s of each 6 s run counts the server process's CPU time and context
# switches, divided by the requests answered. Needs wrk and perf (linux-perf).
set -eu
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- build/tscaled
PORT=18191
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,16],"data":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6]}]}'
LUA
for round in $(seq "${ROUNDS:-3}"); do
  for b in "$@" baseline; do
    rm -f "$tmp"/t.db*
    if [ "$b" = baseline ]; then ./build/mhd-baseline $PORT 2>/dev/null & P=$!
    else "$b" --listen 127.0.0.1:$PORT --db "$tmp/t.db" --snapshot-interval 0 2>/dev/null & P=$!; fi
    sleep 0.7
    wrk -t2 -c16 -d6s --latency -s "$tmp/post.lua" http://127.0.0.1:$PORT/v2/models/demo/infer > "$tmp/w.txt" &
    W=$!
    sleep 1
    perf stat -x, -e task-clock,context-switches -p $P -- sleep 4 2> "$tmp/s.txt"
    wait $W
    kill $P; wait $P 2>/dev/null || true
    rps=$(awk '/Requests\/sec/{print $2}' "$tmp/w.txt"); p99=$(awk '/ 99%/{print $2}' "$tmp/w.txt")
    awk -F, -v r="$rps" -v b="$b" -v n="$round" -v p="$p99" '/task-clock/{t=$1} /context-switches/{c=$1}
      END{printf "%s %-24s %8.0f req/s  p99 %-8s %5.1f us CPU/req  %4.2f context switches/req\n", n, b, r, p, t*1000/(r*4), c/(r*4)}' "$tmp/s.txt"
  done
done
