#!/bin/bash
# journal_cpu.sh — where demo's feedback CPU goes, --journal yes against no (README, "The CPU
# budget"): wrk -t2 -c16 on the same machine as the daemon, every request with its own id.
# Prints per run: steps/s, the daemon's CPU per step (/proc/PID/stat), wrk's (/usr/bin/time)
# and the machine's idle + iowait share (/proc/stat).
#     bash bench/journal_cpu.sh [ROUNDS=3] [SECONDS=4]
set -eu
ROUNDS=${1:-3}; SECS=${2:-4}
BIN=$(cd "$(dirname "$0")/.." && pwd)/build/tscaled
TMP=$(mktemp -d /tmp/tscale-jcpu-XXXXXX); trap 'rm -rf "$TMP"' EXIT
cat > "$TMP/fb.lua" <<'LUA'
local n = 0
function setup(thread) n = n + 1; thread:set("tid", n) end
function init(args) prefix = "t" .. tid .. "-" .. tostring(math.random(1, 1e9)) .. "-"; count = 0 end
function request()
  count = count + 1
  local body = '{"id":"' .. prefix .. count .. '","inputs":[{"name":"input","datatype":"FP32","shape":[1,16],"data":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,-0.1,-0.2,-0.3,-0.4,-0.5,-0.6,-0.7,-0.8]},{"name":"label","datatype":"INT64","shape":[1],"data":[3]}]}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
LUA
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
idle_total() { head -1 /proc/stat | awk '{t = 0; for (i = 2; i <= 9; i++) t += $i; print $5 + $6, t}'; }
one() {
    rm -f "$TMP"/t.db*
    "$BIN" --listen 127.0.0.1:0 --db "$TMP/t.db" --journal "$1" > "$TMP/d.log" 2>&1 &
    local pid=$! port=""
    for _ in $(seq 100); do
        port=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$TMP/d.log" | head -1 | sed 's/.*://') && [ -n "$port" ] && break
        sleep 0.05
    done
    local c0 c1 i0 i1; c0=$(ticks $pid); i0=$(idle_total)
    /usr/bin/time -f "%U %S" -o "$TMP/wrk.time" wrk -t2 -c16 -d${SECS}s -s "$TMP/fb.lua" \
        "http://127.0.0.1:$port/v2/models/demo/feedback" > "$TMP/wrk.out"
    i1=$(idle_total); c1=$(ticks $pid)
    kill $pid; wait $pid 2>/dev/null || true
    awk -v j="$1" -v s="$SECS" -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v i0="$i0" -v i1="$i1" \
        -v w="$(cat "$TMP/wrk.time")" -v r="$(awk '/Requests\/sec/{print $2}' "$TMP/wrk.out")" 'BEGIN {
        split(w, a, " "); split(i0, x, " "); split(i1, y, " "); n = r * s
        printf "journal %-3s %6.0f steps/s  daemon %5.1f us/step  wrk %5.1f us/step  idle+iowait %2.0f %%\n",
               j, r, c / hz * 1e6 / n, (a[1] + a[2]) * 1e6 / n, (y[1] - x[1]) * 100 / (y[2] - x[2]) }'
}
for _ in $(seq "$ROUNDS"); do one yes; one no; done
