# deploy/smoke-lib.sh — what the container smoke tests share (smoke-test.sh,
# smoke-test-replication.sh): logging, the container engine and compose command, and HTTP with
# curl. Sourced, not run. Before sourcing, set SMOKE_NAME (the log prefix); before http, set
# BASE (http://127.0.0.1:PORT), WORK (a private temporary directory) and LOGF (the log file).
#
# Environment: SMOKE_ENGINE (docker|podman), SMOKE_COMPOSE (the compose command); by default
# docker (+ docker compose / docker-compose) when a Docker engine answers, else podman +
# podman-compose.

log() { printf '%s %s: %s\n' "$(date +%H:%M:%S)" "${SMOKE_NAME:-smoke}" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
now() { date +%s; }

if [ -n "${SMOKE_ENGINE:-}" ]; then ENGINE=$SMOKE_ENGINE
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then ENGINE=docker
elif command -v podman >/dev/null 2>&1; then ENGINE=podman
else die "no container engine: install Docker, or podman and podman-compose"; fi
if [ -n "${SMOKE_COMPOSE:-}" ]; then COMPOSE=$SMOKE_COMPOSE
elif [ "$ENGINE" = podman ]; then COMPOSE=podman-compose
elif docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"
else COMPOSE=docker-compose; fi
for tool in curl python3 timeout; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed on the host"
done

# A free TCP port on the host's loopback (for a published port).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# http METHOD PATH [TOKEN] [JSON]: sets $status; the body is in $WORK/body.
http() {
    set -- "$1" "$2" "${3:-}" "${4:-}"
    _m=$1 _p=$2 _t=$3 _d=$4
    set -- -sS --max-time 30 -o "$WORK/body" -w '%{http_code}' -X "$_m"
    [ -z "$_t" ] || set -- "$@" -H "Authorization: Bearer $_t"
    [ -z "$_d" ] || set -- "$@" -H 'Content-Type: application/json' --data-binary "$_d"
    status=$(curl "$@" "$BASE$_p" 2>>"$LOGF") || status=000
}
expect() { [ "$status" = "$1" ] || die "$2: HTTP $status, expected $1: $(head -c 300 "$WORK/body")"; }
# json EXPR: evaluate a Python expression over the last body, bound to d.
json() { python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$WORK/body" "$1"; }

# The compose project: PROJECT (name) and COMPOSE_FILE must be set before these are called.
# compose ARGS...: the project, as the README runs it (its output goes to the log file).
compose() {
    # shellcheck disable=SC2086 # COMPOSE may be two words ("docker compose")
    timeout 300 $COMPOSE -p "$PROJECT" -f "$COMPOSE_FILE" "$@" >>"$LOGF" 2>&1 ||
        { tail -n 30 "$LOGF" >&2; die "$COMPOSE $*: failed"; }
}
# service_cid SERVICE: its container (compose v1, v2 and podman-compose all set these labels).
service_cid() {
    $ENGINE ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" 2>/dev/null | head -n 1
}
# What of the project is still there: containers, volumes, networks (nothing when clean).
leftovers() {
    $ENGINE ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null
    $ENGINE volume ls -q 2>/dev/null | grep "^${PROJECT}_" || true
    $ENGINE network ls --format '{{.Name}}' 2>/dev/null | grep "^${PROJECT}_" || true
}
# Remove the project whatever state it is in; never fails.
teardown() {
    # shellcheck disable=SC2086
    timeout 180 $COMPOSE -p "$PROJECT" -f "$COMPOSE_FILE" down -v -t 10 >>"$LOGF" 2>&1 || true
    # podman-compose 1.0 can leave the network (and volumes, after a failed start) behind.
    for _c in $($ENGINE ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
        $ENGINE rm -f "$_c" >/dev/null 2>&1 || true
    done
    for _v in $($ENGINE volume ls -q 2>/dev/null | grep "^${PROJECT}_"); do
        $ENGINE volume rm "$_v" >/dev/null 2>&1 || true
    done
    $ENGINE network rm "${PROJECT}_default" >/dev/null 2>&1 || true
}
# healthy CONTAINER: the image's HEALTHCHECK passes. podman here has no systemd to schedule
# checks: run one, as `podman healthcheck run` does; Docker reports its own.
healthy() {
    if [ "$ENGINE" = podman ]; then
        podman healthcheck run "$1" >/dev/null 2>&1
    else
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null)" = healthy ]
    fi
}
