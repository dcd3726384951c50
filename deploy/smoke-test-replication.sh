#!/bin/sh
# deploy/smoke-test-replication.sh — the replicated deployment (docker-compose.replicated.yml),
# for real: a 3-node NATS JetStream cluster, 3 tscale replicas, HAProxy in front.
#
#   1. build the three images (tscale, Debian's nats-server, Debian's haproxy), start them all,
#      wait until every replica is healthy and connected to NATS;
#   2. feedback through the load balancer, each request with an OIP id, spread over the
#      replicas (each must have published some); convergence: GET /admin/models/demo/export,
#      asked of each replica directly, byte-identical on all three, step = steps acknowledged;
#      ids sent again (each three times) are answered and change nothing (the balancer sticks
#      ids to a replica); a label for an inference of each replica sent by id to another
#      replica, then again to the third: forwarded to the holder, applied once;
#   3. kill -s KILL one tscale replica and the NATS node that leads the stream (the stream must
#      have 3 replicas, one per node); more feedback through the load balancer (the two live
#      replicas take it; the stream elects another leader and keeps its quorum);
#   4. start both again: the killed replica recovers from its volume and catches up from the
#      stream; convergence again, and no acknowledged step lost (step = all steps acknowledged);
#   5. a fourth replica, tscale-4, with an empty database (a container of the same image on the
#      project's network, not behind the load balancer) joins: it loads the newest published
#      state and replays the rest; the four exports are byte-identical; more feedback (through
#      the load balancer, and to the new replica directly) and convergence of all four;
#   6. tear everything down (containers, network, volumes).
#
# A feedback request that is not answered 200 is retried with the same id (the load balancer
# sends it to the same replica: haproxy.cfg), so every step is counted exactly once.
#
#   deploy/smoke-test-replication.sh
#
# Environment: SMOKE_ENGINE, SMOKE_COMPOSE (smoke-lib.sh), SMOKE_IMAGE (default tscale:smoke,
# the same tag as smoke-test.sh, so a run after it reuses the image), SMOKE_WAIT (seconds to
# wait for a state, default 120), SMOKE_STEPS (feedback steps per phase, default 12),
# SMOKE_KEEP_IMAGE=0 (remove the images at the end). Needs curl and python3 on the host.
# Every step is bounded in time; the trap tears the project down on failure or interruption.
set -eu

cd "$(dirname "$0")/.."
SMOKE_NAME=smoke-repl
. deploy/smoke-lib.sh

COMPOSE_FILE=deploy/docker-compose.replicated.yml
PROJECT=tscale-repl-smoke-$$
IMAGE=${SMOKE_IMAGE:-tscale:smoke}
NATS_IMAGE=tscale-nats:smoke
LB_IMAGE=tscale-haproxy:smoke
WAIT=${SMOKE_WAIT:-120}
STEPS=${SMOKE_STEPS:-12}
REPLICAS="tscale1 tscale2 tscale3"
T0=$(now)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tscale-smoke-repl.XXXXXX")
chmod 0700 "$WORK"
LOGF=$WORK/engine.log

# compose, service_cid, leftovers, teardown, healthy: smoke-lib.sh.
cleanup() {
    rc=$?
    trap - EXIT INT TERM
    if [ "$rc" -ne 0 ]; then
        for s in $REPLICAS tscale4 nats1 nats2 nats3 lb; do
            c=$(service_cid "$s")
            [ -n "$c" ] || continue
            log "$s log (last 15 lines):"
            $ENGINE logs "$c" 2>&1 | tail -n 15 >&2 || true
        done
        teardown
    fi
    [ -z "$(leftovers)" ] || { log "FAIL: left behind: $(leftovers | tr '\n' ' ')"; rc=1; }
    if [ "${SMOKE_KEEP_IMAGE:-1}" = 0 ]; then $ENGINE rmi "$IMAGE" "$NATS_IMAGE" "$LB_IMAGE" >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# replica_port SERVICE: its published port on the host.
replica_port() {
    case $1 in tscale1) echo "$P1" ;; tscale2) echo "$P2" ;; tscale3) echo "$P3" ;; tscale4) echo "$P4" ;; esac
}
# metric SERVICE NAME: a metric's value on one replica (empty when absent).
metric() {
    curl -sS --max-time 10 "http://127.0.0.1:$(replica_port "$1")/metrics" 2>>"$LOGF" |
        awk -v n="$2" '$1 == n { print $2; exit }'
}
# wait_ready SERVICE...: each one healthy (the image's HEALTHCHECK) and connected to NATS.
wait_ready() {
    _deadline=$(($(now) + WAIT))
    for _s in "$@"; do
        while :; do
            _c=$(service_cid "$_s")
            if [ -n "$_c" ] && healthy "$_c" && [ "$(metric "$_s" tscale_repl_connected)" = 1 ]; then
                break
            fi
            [ "$(now)" -lt "$_deadline" ] || die "$_s: not healthy and connected to NATS after ${WAIT}s"
            sleep 1
        done
    done
}
# kill9 SERVICE: SIGKILL its container and wait until it is no longer running.
kill9() {
    _c=$(service_cid "$1")
    $ENGINE kill -s KILL "$_c" >>"$LOGF" 2>&1 || die "kill -s KILL $1 failed"
    _deadline=$(($(now) + WAIT))
    while [ "$($ENGINE inspect -f '{{.State.Running}}' "$_c")" = true ]; do
        [ "$(now)" -lt "$_deadline" ] || die "$1 survived SIGKILL"
        sleep 1
    done
}

# stream_leader MONITOR_PORT: "LEADER REPLICAS" of the tscale stream, from a NATS node's /jsz.
stream_leader() {
    curl -sS --max-time 10 "http://127.0.0.1:$1/jsz?accounts=true&streams=true" 2>>"$LOGF" | python3 -c '
import json, sys
j = json.load(sys.stdin)
s = [s for a in j.get("account_details", []) for s in a.get("stream_detail", []) if s["name"] == "tscale"][0]
print(s["cluster"]["leader"], 1 + len(s["cluster"].get("replicas", [])))'
}

# feed PREFIX COUNT: COUNT feedback steps through the load balancer, ids PREFIX-0.., one
# after the other; a step not answered 200 is retried with its id until it is (within
# WAIT). Prints the number acknowledged and the retries.
feed() {
    python3 - "$BASE" "$FEEDBACK_TOKEN" "$1" "$2" "$WAIT" "$IN" "$OUT" <<'PY'
import json, sys, time, urllib.error, urllib.request
base, token, prefix, count, wait, n, o = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
acked = retries = 0
for k in range(count):
    body = json.dumps({"id": "%s-%d" % (prefix, k), "inputs": [
        {"name": "input", "shape": [1, n], "datatype": "FP32", "data": [((i * 3 + k) % 7 - 3) / 3 for i in range(n)]},
        {"name": "target", "shape": [1, o], "datatype": "FP32", "data": [float((k + j) % 2) for j in range(o)]}]}).encode()
    deadline = time.time() + wait
    while True:
        req = urllib.request.Request(base + "/v2/models/demo/feedback", body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": "Bearer " + token})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                code, text = r.status, r.read()
        except urllib.error.HTTPError as e:
            code, text = e.code, e.read()
        except OSError as e:
            code, text = 0, str(e).encode()
        if code == 200:
            acked += 1
            break
        if time.time() > deadline:
            sys.exit("feedback %s-%d: still HTTP %d after %.0f s: %s" % (prefix, k, code, wait, text[:300]))
        retries += 1
        time.sleep(0.5)
print(acked, retries)
PY
}
# byid: an inference on each replica (asked directly), its label sent by inference id to the
# next replica and then again to the one after: the first is forwarded to the replica that
# holds the input and applied there; the repeat, forwarded again, answers the first answer.
# Prints the number of steps applied.
byid() {
    python3 - "$FEEDBACK_TOKEN" "$IN" "$OUT" "$P1" "$P2" "$P3" <<'PY'
import json, sys, urllib.error, urllib.request
token, n, o, ports = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def post(port, path, doc):
    req = urllib.request.Request("http://127.0.0.1:%s/v2/models/demo/%s" % (port, path), json.dumps(doc).encode(),
                                 method="POST", headers={"Content-Type": "application/json",
                                                         "Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
for i, port in enumerate(ports):
    x = [((j * 5 + i) % 7 - 3) / 3 for j in range(n)]
    status, body = post(port, "infer", {"inputs": [{"name": "input", "shape": [1, n], "datatype": "FP32", "data": x}]})
    if status != 200:
        sys.exit("inference on port %s: HTTP %d %s" % (port, status, body[:300]))
    fb = {"id": json.loads(body)["id"], "inputs": [{"name": "label", "shape": [1], "datatype": "INT64", "data": [i % o]}]}
    first, again = post(ports[(i + 1) % 3], "feedback", fb), post(ports[(i + 2) % 3], "feedback", fb)
    if first[0] != 200 or again != first:
        sys.exit("feedback by id %s: %s, then %s" % (fb["id"], first, again))
print(len(ports))
PY
}
# converged WANT [PORT...]: wait until the exports (asked of each replica directly: the three,
# or the ports given) are byte-identical and the step is WANT; prints the export's SHA-256.
converged() {
    _want=$1
    shift
    [ $# -gt 0 ] || set -- "$P1" "$P2" "$P3"
    python3 - "$_want" "$WAIT" "$ADMIN_TOKEN" "$@" <<'PY'
import hashlib, json, sys, time, urllib.request
want, wait, token, ports = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
def get(port, path):
    req = urllib.request.Request("http://127.0.0.1:%s%s" % (port, path), headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()
deadline, last = time.time() + wait, None
while time.time() < deadline:
    try:
        blobs = [get(p, "/admin/models/demo/export") for p in ports]
        steps = [[m["step"] for m in json.loads(get(p, "/admin/models"))["models"] if m["name"] == "demo"][0] for p in ports]
        last = (steps, [hashlib.sha256(b).hexdigest()[:12] for b in blobs])
        if steps == [want] * len(ports) and all(b == blobs[0] for b in blobs):
            print(hashlib.sha256(blobs[0]).hexdigest())
            sys.exit(0)
    except OSError as e:
        last = str(e)
    time.sleep(0.5)
sys.exit("not converged at step %d after %.0f s: steps, export digests %s" % (want, wait, last))
PY
}

log "engine: $ENGINE, compose: $COMPOSE, project: $PROJECT"

# --- 1. images, settings, start ------------------------------------------------------------
t=$(now)
timeout 1500 "$ENGINE" build -t "$IMAGE" . >>"$LOGF" 2>&1 || { tail -n 40 "$LOGF" >&2; die "tscale image build failed"; }
timeout 600 "$ENGINE" build -t "$NATS_IMAGE" -f deploy/replicated/nats.Dockerfile deploy/replicated >>"$LOGF" 2>&1 ||
    { tail -n 40 "$LOGF" >&2; die "nats image build failed"; }
timeout 600 "$ENGINE" build -t "$LB_IMAGE" -f deploy/replicated/haproxy.Dockerfile deploy/replicated >>"$LOGF" 2>&1 ||
    { tail -n 40 "$LOGF" >&2; die "haproxy image build failed"; }
BUILD_S=$(($(now) - t))
log "images built in ${BUILD_S}s"

mkdir -p "$WORK/secrets" "$WORK/models"
for f in admin_token feedback_token; do
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/secrets/$f"
    chmod 0644 "$WORK/secrets/$f" # readable by the container's user; $WORK keeps others out
done
ADMIN_TOKEN=$(cat "$WORK/secrets/admin_token")
FEEDBACK_TOKEN=$(cat "$WORK/secrets/feedback_token")
PORT=$(free_port) P1=$(free_port) P2=$(free_port) P3=$(free_port) M1=$(free_port) M2=$(free_port) M3=$(free_port)
BASE=http://127.0.0.1:$PORT
export TSCALE_IMAGE="$IMAGE" TSCALE_NATS_IMAGE="$NATS_IMAGE" TSCALE_LB_IMAGE="$LB_IMAGE" \
    TSCALE_PUBLISH="127.0.0.1:$PORT" TSCALE1_PUBLISH="127.0.0.1:$P1" TSCALE2_PUBLISH="127.0.0.1:$P2" \
    TSCALE3_PUBLISH="127.0.0.1:$P3" NATS1_MONITOR="127.0.0.1:$M1" NATS2_MONITOR="127.0.0.1:$M2" \
    NATS3_MONITOR="127.0.0.1:$M3" TSCALE_SECRETS_DIR="$WORK/secrets" TSCALE_MODELS_DIR="$WORK/models"
# The test kills and starts containers itself: no engine restarts behind its back. States are
# published every 2 s (default: the 30 s snapshot interval), so tscale4 finds a recent one.
export TSCALE_RESTART=no TSCALE_REPLICATE_STATE_INTERVAL=2

t=$(now)
compose up -d
wait_ready $REPLICAS
http GET /v2/models/demo
deadline=$(($(now) + WAIT))
while [ "$status" != 200 ]; do # the load balancer's first health checks
    [ "$(now)" -lt "$deadline" ] || die "GET /v2/models/demo through the load balancer: HTTP $status"
    sleep 1
    http GET /v2/models/demo
done
UP_S=$(($(now) - t))
IN=$(json 'd["inputs"][0]["shape"][1]')
OUT=$(json 'd["outputs"][0]["shape"][1]')
log "up -> 3 replicas healthy and connected, load balancer serving in ${UP_S}s"

# --- 2. feedback spread over the replicas, convergence --------------------------------------
R=$(feed a "$STEPS") || die "feedback through the load balancer failed (above)"
set -- $R
ACKED=$1
log "phase 1: $ACKED steps acknowledged through the load balancer ($2 retries)"
for s in $REPLICAS; do
    n=$(metric "$s" tscale_repl_deltas_published_total)
    [ "${n:-0}" != 0 ] || die "$s published no delta: the load balancer did not spread the feedback"
done
t=$(now)
SHA=$(converged "$ACKED") || die "the replicas did not converge (above)"
log "converged at step $ACKED in $(($(now) - t))s: the three exports are byte-identical (sha256 ${SHA%"${SHA#????????????}"})"
# The same ids again, through the load balancer: each must reach the replica that took it
# (haproxy.cfg sticks feedback ids), which answers its first answer and applies nothing. Sent
# as a-0, a-1, a-0, a-1, a-0, a-1, round robin alone would bring each to all three replicas,
# and two of them would apply it as a new step.
for _ in 1 2 3; do
    R=$(feed a 2) || die "feedback through the load balancer failed (above)"
    set -- $R
    [ "$1" = 2 ] || die "repeated ids: $1 of 2 answered 200"
done
SHA=$(converged "$ACKED") || die "the replicas did not converge (above)"
log "2 ids sent 3 times each again through the load balancer: answered, nothing applied twice (step $ACKED)"
# Feedback by inference id on replicas other than the one that answered the inference.
N=$(byid) || die "feedback by inference id across replicas failed (above)"
ACKED=$((ACKED + N))
SHA=$(converged "$ACKED") || die "the replicas did not converge (above)"
log "$N labels sent by inference id to other replicas than the inference's (and again to a third): applied once each (step $ACKED)"

# --- 3. kill one replica and the stream's leader NATS node, more feedback ----------------------
set -- $(stream_leader "$M1") ''
LEADER=$1
case $LEADER in nats1|nats2|nats3) ;; *) die "no leader of stream 'tscale' in nats1's /jsz" ;; esac
[ "${2:-}" = 3 ] || die "stream 'tscale' has ${2:-?} replicas, expected 3 (TSCALE_REPLICATE_REPLICAS)"
kill9 tscale2
kill9 "$LEADER"
log "killed tscale2 and $LEADER, the stream's leader (SIGKILL)"
R=$(feed b "$STEPS") || die "feedback through the load balancer failed (above)"
set -- $R
ACKED=$((ACKED + $1))
log "phase 2: $1 more steps acknowledged with tscale2 and $LEADER down ($2 retries)"

# --- 4. start them again: recovery, catch-up, convergence, nothing lost ----------------------
t=$(now)
compose start "$LEADER" tscale2
wait_ready tscale2
SHA=$(converged "$ACKED") || die "the replicas did not converge (above)"
log "restarted and converged in $(($(now) - t))s at step $ACKED = every acknowledged step (sha256 ${SHA%"${SHA#????????????}"})"
for s in $REPLICAS; do
    [ "$(metric "$s" tscale_repl_connected)" = 1 ] || die "$s is not connected to NATS"
done

# --- 5. a fourth replica with an empty database joins -----------------------------------------
# A container of the same image and settings as tscale3 (its TSCALE_* environment, the
# secrets) on the project's network, with the project's label (so teardown removes it), a new
# replica id and a fresh /data volume.
t=$(now)
C3=$(service_cid tscale3)
NET=$($ENGINE inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{println $k}}{{end}}' "$C3" | head -n 1)
$ENGINE inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$C3" | grep '^TSCALE_' |
    sed 's/^TSCALE_REPLICA_ID=.*/TSCALE_REPLICA_ID=tscale-4/' >"$WORK/tscale4.env"
grep -q '^TSCALE_REPLICA_ID=tscale-4$' "$WORK/tscale4.env" || die "tscale3's environment has no TSCALE_REPLICA_ID"
P4=$(free_port)
J4=$PROJECT-tscale4
$ENGINE run -d --name "$J4" --network "$NET" -p "127.0.0.1:$P4:8080" --env-file "$WORK/tscale4.env" \
    -v "$WORK/secrets:/run/secrets:ro" --label "com.docker.compose.project=$PROJECT" \
    --label com.docker.compose.service=tscale4 "$IMAGE" >>"$LOGF" 2>&1 || die "starting tscale4 failed"
wait_ready tscale4
SHA=$(converged "$ACKED" "$P1" "$P2" "$P3" "$P4") || die "tscale4 did not converge with the others (above)"
[ "$(metric tscale4 tscale_repl_states_loaded_total)" != 0 ] || die "tscale4 loaded no published state"
log "tscale4 (empty database) joined from the published state and converged in $(($(now) - t))s at step $ACKED"
R=$(feed c "$STEPS") || die "feedback through the load balancer failed (above)"
set -- $R
ACKED=$((ACKED + $1))
BASE=http://127.0.0.1:$P4 # its own feedback reaches the others too
R=$(feed d 2) || die "feedback to tscale4 failed (above)"
set -- $R
ACKED=$((ACKED + $1))
BASE=http://127.0.0.1:$PORT
SHA=$(converged "$ACKED" "$P1" "$P2" "$P3" "$P4") || die "the four replicas did not converge (above)"
log "phase 3: $STEPS steps through the load balancer and 2 on tscale4: the four converged at step $ACKED"
$ENGINE rm -f -v "$J4" >>"$LOGF" 2>&1 || die "removing tscale4 failed"

# --- 6. tear down --------------------------------------------------------------------------
compose down -v -t 30
teardown # what podman-compose 1.0 leaves behind
[ -z "$(leftovers)" ] || die "left behind after down: $(leftovers | tr '\n' ' ')"
log "PASS in $(($(now) - T0))s: images ${BUILD_S}s, up ${UP_S}s, $ACKED steps acknowledged, none lost"
