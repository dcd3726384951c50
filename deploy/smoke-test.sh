#!/bin/sh
# deploy/smoke-test.sh — the container deployment, for real, the way deploy/README.md tells an
# operator to run it: build the image, start the compose project, infer, send feedback, take a
# snapshot, kill the container hard (SIGKILL), start it again and check the state came back
# from the volume (snapshot + feedback journal: nothing acknowledged lost), stop it gracefully and check the final snapshot, back up the database,
# check the healthcheck, then tear everything down (containers, network, volume).
#
#   deploy/smoke-test.sh            from anywhere; uses docker (+ docker compose / docker-compose)
#                                   when a Docker engine answers, else podman + podman-compose
#
# Environment: SMOKE_ENGINE (docker|podman), SMOKE_COMPOSE (the compose command),
# SMOKE_IMAGE (tag to build, default tscale:smoke), SMOKE_WAIT (seconds to wait for a state,
# default 120), SMOKE_KEEP_IMAGE=0 (remove the image at the end; kept by default so the next
# run reuses its layers). Needs curl and python3 on the host. Every step is bounded in time,
# and the trap tears the project down on failure or interruption too.
set -eu

cd "$(dirname "$0")/.."
COMPOSE_FILE=deploy/docker-compose.yml
PROJECT=tscale-smoke-$$
IMAGE=${SMOKE_IMAGE:-tscale:smoke}
WAIT=${SMOKE_WAIT:-120}
T0=$(date +%s)

SMOKE_NAME=smoke
. deploy/smoke-lib.sh

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tscale-smoke.XXXXXX")
chmod 0700 "$WORK"
LOGF=$WORK/engine.log

# compose, leftovers, teardown, healthy: smoke-lib.sh. The project's tscale container:
cid() { service_cid tscale; }
cleanup() {
    rc=$?
    trap - EXIT INT TERM
    if [ "$rc" -ne 0 ]; then
        c=$(cid)
        if [ -n "$c" ]; then
            log "daemon log (last 40 lines):"
            $ENGINE logs "$c" 2>&1 | tail -n 40 >&2 || true
        fi
        teardown
    fi
    [ -z "$(leftovers)" ] || { log "FAIL: left behind: $(leftovers | tr '\n' ' ')"; rc=1; }
    if [ "${SMOKE_KEEP_IMAGE:-1}" = 0 ]; then $ENGINE rmi "$IMAGE" >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- HTTP against the published port (http, expect, json: smoke-lib.sh) ------------------
model_step() { # the step of model demo, from GET /admin/models
    http GET /admin/models "$ADMIN_TOKEN"
    expect 200 "GET /admin/models"
    json '[m for m in (d["models"] if isinstance(d, dict) else d) if m["name"] == "demo"][0]["step"]'
}
wait_healthy() { # $1: what for; uses the image's HEALTHCHECK command, as the engine does
    _deadline=$(($(now) + WAIT))
    while :; do
        _c=$(cid)
        if [ -n "$_c" ] && healthy "$_c"; then return 0; fi
        [ "$(now)" -lt "$_deadline" ] || die "$1: not healthy after ${WAIT}s"
        sleep 1
    done
}

log "engine: $ENGINE, compose: $COMPOSE, project: $PROJECT"

# --- 1. build the image ----------------------------------------------------------------
t=$(now)
timeout 1500 "$ENGINE" build -t "$IMAGE" . >>"$LOGF" 2>&1 || { tail -n 40 "$LOGF" >&2; die "image build failed"; }
BUILD_S=$(($(now) - t))
SIZE=$($ENGINE image inspect -f '{{.Size}}' "$IMAGE")
log "image $IMAGE built in ${BUILD_S}s, $((SIZE / 1000000)) MB"

# --- 2. tokens (compose secrets) and settings, as deploy/README.md -------------------------
mkdir -p "$WORK/secrets" "$WORK/models"
for f in admin_token feedback_token; do
    # readable by the container's user (uid 10001); the directory keeps others out on the host
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/secrets/$f"
    chmod 0644 "$WORK/secrets/$f"
done
ADMIN_TOKEN=$(cat "$WORK/secrets/admin_token")
FEEDBACK_TOKEN=$(cat "$WORK/secrets/feedback_token")
PORT=$(free_port)
BASE=http://127.0.0.1:$PORT
export TSCALE_IMAGE="$IMAGE" TSCALE_PUBLISH="127.0.0.1:$PORT" TSCALE_SECRETS_DIR="$WORK/secrets" \
    TSCALE_MODELS_DIR="$WORK/models"
# No timer snapshots: what survives the SIGKILL is the admin snapshot plus the journal after it.
export TSCALE_SNAPSHOT_INTERVAL=0

# --- 3. start, wait until healthy ---------------------------------------------------------
t=$(now)
compose up -d tscale
wait_healthy "first start"
UP_S=$(($(now) - t))
log "up -> healthy in ${UP_S}s"
http GET /v2/health/ready
expect 200 "GET /v2/health/ready"

# --- 4. infer, feedback, snapshot --------------------------------------------------------
http GET /v2/models/demo
expect 200 "GET /v2/models/demo"
IN=$(json 'd["inputs"][0]["shape"][1]')
OUT=$(json 'd["outputs"][0]["shape"][1]')
INFER=$(python3 -c 'import json, sys; n = int(sys.argv[1]); print(json.dumps({"id": "smoke", "inputs": [{"name": "input", "shape": [2, n], "datatype": "FP32", "data": [((i * 7) % 11 - 5) / 5 for i in range(2 * n)]}]}))' "$IN")
FEEDBACK=$(python3 -c 'import json, sys; n, o = int(sys.argv[1]), int(sys.argv[2]); print(json.dumps({"inputs": [{"name": "input", "shape": [1, n], "datatype": "FP32", "data": [((i * 3) % 7 - 3) / 3 for i in range(n)]}, {"name": "target", "shape": [1, o], "datatype": "FP32", "data": [1.0] * o}]}))' "$IN" "$OUT")
http POST /v2/models/demo/infer "" "$INFER"
expect 200 "infer"
[ "$(json 'd["outputs"][0]["shape"]')" = "[2, $OUT]" ] || die "infer: output shape $(json 'd["outputs"][0]["shape"]'), expected [2, $OUT]"
[ "$(json 'd["id"]')" = smoke ] || die "infer: id not echoed"

http POST /v2/models/demo/feedback "" "$FEEDBACK"
expect 401 "feedback without the feedback token"
for want in 1 2; do
    http POST /v2/models/demo/feedback "$FEEDBACK_TOKEN" "$FEEDBACK"
    expect 200 "feedback $want"
    [ "$(json 'd["step"]')" = "$want" ] || die "feedback: step $(json 'd["step"]'), expected $want"
done
# The port is published, so this client is not loopback to the daemon: admin needs the token.
http POST /admin/models/demo/snapshots
expect 401 "snapshot without the admin token"
http POST /admin/models/demo/snapshots "$FEEDBACK_TOKEN"
expect 403 "snapshot with the feedback token"
http POST /admin/models/demo/snapshots "$ADMIN_TOKEN"
expect 201 "snapshot"
[ "$(json 'd["step"]')" = 2 ] || die "snapshot: step $(json 'd["step"]'), expected 2"
# One more step that no snapshot holds: the feedback journal (--journal yes, the default) keeps
# it, so SIGKILL loses nothing that was answered 200 (SPEC §6).
http POST /v2/models/demo/feedback "$FEEDBACK_TOKEN" "$FEEDBACK"
expect 200 "feedback 3"
http POST /v2/models/demo/infer "" "$INFER"
expect 200 "infer after feedback 3"
cp "$WORK/body" "$WORK/infer-before-kill.json"

# --- 5. kill -9, start again, the state comes back from the volume --------------------------
C=$(cid)
STARTED=$($ENGINE inspect -f '{{.State.StartedAt}}' "$C")
$ENGINE kill -s KILL "$C" >>"$LOGF" 2>&1 || die "kill -s KILL failed"
_deadline=$(($(now) + WAIT))
while [ "$($ENGINE inspect -f '{{.State.Running}} {{.State.StartedAt}}' "$C")" = "true $STARTED" ]; do
    [ "$(now)" -lt "$_deadline" ] || die "the container survived SIGKILL"
    sleep 1
done
t=$(now)
compose start tscale # a no-op when the restart policy has already restarted it
wait_healthy "restart after SIGKILL"
RESTART_S=$(($(now) - t))
[ "$($ENGINE inspect -f '{{.State.StartedAt}}' "$C")" != "$STARTED" ] || die "the container was not restarted"
STEP=$(model_step)
[ "$STEP" = 3 ] || die "after SIGKILL: step $STEP, expected 3 (the snapshot's 2 + 1 from the journal)"
http POST /v2/models/demo/infer "" "$INFER"
expect 200 "infer after SIGKILL"
python3 - "$WORK/infer-before-kill.json" "$WORK/body" <<'EOF' || die "after SIGKILL: outputs differ from those before it"
import json, sys
a, b = (json.load(open(p))["outputs"][0]["data"] for p in sys.argv[1:3])
sys.exit(0 if len(a) == len(b) and all(abs(x - y) <= 1e-5 + 1e-5 * abs(y) for x, y in zip(a, b)) else 1)
EOF
log "SIGKILL: state recovered from the volume (snapshot step 2 + journal: step 3), restart -> healthy in ${RESTART_S}s"

# --- 6. graceful stop keeps everything (final snapshot), then start again -------------------
http POST /v2/models/demo/feedback "$FEEDBACK_TOKEN" "$FEEDBACK"
expect 200 "feedback before stop"
compose stop -t 60 tscale
[ "$($ENGINE inspect -f '{{.State.ExitCode}}' "$C")" = 0 ] || die "SIGTERM: exit code $($ENGINE inspect -f '{{.State.ExitCode}}' "$C"), expected 0"
compose start tscale
wait_healthy "start after stop"
STEP=$(model_step)
[ "$STEP" = 4 ] || die "after a graceful stop: step $STEP, expected 4 (the final snapshot's)"
log "SIGTERM: exit 0, final snapshot kept step 4"

# --- 7. online backup, metrics, healthcheck, secrets stay out of the logs ------------------
rm -f "$WORK/backup.db"
$ENGINE exec "$C" tscaled backup /data/backup.db >>"$LOGF" 2>&1 || die "tscaled backup failed"
$ENGINE cp "$C:/data/backup.db" "$WORK/backup.db" >>"$LOGF" 2>&1 || die "copying the backup out failed"
$ENGINE exec "$C" rm /data/backup.db >>"$LOGF" 2>&1 || die "removing the backup from the volume failed"
python3 - "$WORK/backup.db" <<'EOF' || die "the backup is not a sound SQLite database"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
assert db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] > 0
EOF
http GET /metrics
expect 200 "GET /metrics"
[ -s "$WORK/body" ] || die "GET /metrics: empty"
if [ "$ENGINE" = podman ]; then
    podman healthcheck run "$C" >>"$LOGF" 2>&1 || die "podman healthcheck run: unhealthy"
else
    $ENGINE exec "$C" tscaled healthcheck >>"$LOGF" 2>&1 || die "tscaled healthcheck: unhealthy"
fi
$ENGINE logs "$C" >"$WORK/daemon.log" 2>&1
if grep -qF -e "$ADMIN_TOKEN" -e "$FEEDBACK_TOKEN" "$WORK/daemon.log"; then die "a token appears in the daemon's log"; fi

# --- 8. restore the backup: stop, replace the database on the volume, start -----------------
http POST /v2/models/demo/feedback "$FEEDBACK_TOKEN" "$FEEDBACK"
expect 200 "feedback after the backup"
compose stop -t 60 tscale
timeout 120 "$ENGINE" run --rm -u 0 -v "${PROJECT}_data:/data" -v "$WORK/backup.db:/restore.db:ro" \
    --entrypoint sh "$IMAGE" -c 'rm -f /data/tscale.db-wal /data/tscale.db-shm &&
        cp /restore.db /data/tscale.db && chown 10001:10001 /data/tscale.db && chmod 0600 /data/tscale.db' \
    >>"$LOGF" 2>&1 || die "restoring the backup into the volume failed"
compose start tscale
wait_healthy "start after restore"
STEP=$(model_step)
[ "$STEP" = 4 ] || die "after restoring the backup: step $STEP, expected 4 (the backup's)"
log "backup taken while serving, restored: step 4"

# --- 9. tear down: containers, network and volume -----------------------------------------
compose down -v -t 60
teardown # what podman-compose 1.0 leaves behind
[ -z "$(leftovers)" ] || die "left behind after down: $(leftovers | tr '\n' ' ')"

log "PASS in $(($(now) - T0))s: build ${BUILD_S}s, image $((SIZE / 1000000)) MB, up -> healthy ${UP_S}s, restart -> healthy ${RESTART_S}s"
