#!/bin/sh
# http_bench.sh — wrk against tscaled (batch-1 JSON inference on the demo model) and against
# the bare libmicrohttpd baseline (build/mhd-baseline), same load, same machine; prints both
# wrk reports. Usage: sh bench/http_bench.sh [DURATION] [CONNECTIONS]   (default 10s 16)
set -eu
cd "$(dirname "$0")/.."
DUR=${1:-10s}
CONNS=${2:-16}
PORT_T=18081
PORT_B=18090
tmp=$(mktemp -d)
cat > "$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,16],"data":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6]}]}'
LUA
./build/tscaled --listen 127.0.0.1:$PORT_T --db "$tmp/bench.db" --snapshot-interval 0 2>"$tmp/tscaled.log" &
TPID=$!
./build/mhd-baseline $PORT_B 2>/dev/null &
BPID=$!
trap 'kill $TPID $BPID 2>/dev/null; wait $TPID $BPID 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 1
echo "== tscaled: POST /v2/models/demo/infer, batch 1, JSON"
wrk -t2 -c"$CONNS" -d"$DUR" --latency -s "$tmp/post.lua" "http://127.0.0.1:$PORT_T/v2/models/demo/infer"
echo "== mhd-baseline: fixed response"
wrk -t2 -c"$CONNS" -d"$DUR" --latency -s "$tmp/post.lua" "http://127.0.0.1:$PORT_B/v2/models/demo/infer"
