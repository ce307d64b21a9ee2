#!/usr/bin/env bash
# Container smoke test: builds the image from this checkout's Dockerfile on a local Debian bookworm base
# (make-base.sh; no image registry needed) and runs the demo stack in it with qasup as PID 1. Checks:
#   the compose file (docker-compose config, when Debian's docker-compose is installed);
#   the build: the Python check installs python3.11-venv on a base without it; HEALTHCHECK kept (--format docker);
#     no build/, /src or qasup.egg-info in the image; the demo and its stand-ins shipped (qasup check passes);
#   the run: PID 1 is qasup; `qasup status` through exec; the HEALTHCHECK turning unhealthy when sanic is stopped
#     and healthy again when it is started (podman healthcheck run); N orphans made inside, all reaped (0 zombies);
#     `podman stop -t 75` exits 0, well before the grace period, with none of the container's processes left;
#     SIGINT (podman kill --signal INT) is an ordered shutdown with exit code 0.
# Results (times, outputs) are written to $QASUP_CT_RESULTS and recorded in docs/container.md.
#
#   sudo tests/container/run.sh          # root; installs podman, runc, debootstrap (and docker-compose) with apt-get
#
# Environment: QASUP_CT_CONTEXT (build context, default this checkout), QASUP_CT_IMAGE, QASUP_BASE_IMAGE,
# QASUP_CT_RUNTIME (runc), QASUP_CT_STORAGE (e.g. vfs), QASUP_CT_NETWORK (network of the runs, default none:
# the demo's ports stay inside the container), QASUP_CT_ORPHANS (1000), QASUP_CT_RESULTS, QASUP_CT_KEEP=1 (keep the
# containers for a look), QASUP_CT_NO_CACHE=1 (build every step again), QASUP_CT_CA / PIP_CERT (a CA bundle for
# pip in the build), PIP_INDEX_URL.
# Exit: 0 every check passed; 1 a check failed (the message says which); 77 cannot run here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

CONTEXT=${QASUP_CT_CONTEXT:-$repo}
RESULTS=${QASUP_CT_RESULTS:-/tmp/qasup-container-results.txt}
ORPHANS=${QASUP_CT_ORPHANS:-1000}
QASUP_CT_NETWORK=${QASUP_CT_NETWORK:-none}
GRACE=75            # the stop grace period, stop_budget + 15 s (qasup.toml; tests/test_container_files.py checks it)
DEMO=/workspace/examples/demo/qasup.toml
PY=/opt/qasup/bin/python
C1=qasup-smoke-$$
C2=qasup-smoke-int-$$

[ "$(id -u)" -eq 0 ] || { echo "run.sh needs root (podman as root; see docs/container.md)" >&2; exit 77; }
ensure_tools podman runc debootstrap
command -v docker-compose >/dev/null 2>&1 || ensure_tools docker-compose || true

# This machine's limits: podman asks for more open files and processes than the hard limits allow (runc then
# fails with "error setting rlimit type 7/6: operation not permitted"), so ask for what is there.
nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
nproc=$(ulimit -Hu); pid_max=$(cat /proc/sys/kernel/pid_max)
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; } && nproc=$pid_max
RUN_OPTS=(--network "$QASUP_CT_NETWORK" --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
ONE_OFF=("${RUN_OPTS[@]}" --no-healthcheck)

: >"$RESULTS"
ms() { date +%s%3N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1000 }'; }
record() { say "$*"; printf '%s\n' "$*" >>"$RESULTS"; }
ok() { record "ok   $*"; }
fail() { record "FAIL $*"; exit 1; }
cleanup() {
    [ -n "${QASUP_CT_KEEP:-}" ] && return
    local c
    for c in "$C1" "$C2"; do pm rm -f --ignore -t 0 "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
log=$(mktemp -d /tmp/qasup-ct.XXXXXX)
rev=$(git -C "$CONTEXT" rev-parse --short HEAD 2>/dev/null || echo '?')
record "# container smoke test, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(podman --version)," \
    "$($QASUP_CT_RUNTIME --version | head -1)"
record "# kernel $(uname -r); context $CONTEXT ($rev); logs in $log"

# ---- 0. the compose file
compose=$repo/examples/compose/docker-compose.yaml
if command -v docker-compose >/dev/null 2>&1; then
    if docker-compose -f "$compose" config >"$log/compose.txt" 2>&1; then
        grep -q 'wait-ready' "$log/compose.txt" || fail "compose config lost the healthcheck"
        ok "docker-compose config ($(docker-compose version --short)): valid; stop_grace_period" \
            "$(grep -m1 'stop_grace_period' "$log/compose.txt" | tr -s ' ')"
    else
        cat "$log/compose.txt" >&2; fail "docker-compose config refused $compose"
    fi
else
    record "skip docker-compose config (no docker-compose here)"
fi

# ---- 1. base and build
pm image exists "$QASUP_BASE_IMAGE" || "$here/make-base.sh"
# A CA bundle for pip in the build where this machine's HTTPS goes through an intercepting proxy (the base's
# Debian bundle does not know its CA): QASUP_CT_CA, else pip's own PIP_CERT. It is mounted for the build only.
build_opts=()
ca=${QASUP_CT_CA:-${PIP_CERT:-}}
if [ -n "$ca" ] && [ -r "$ca" ]; then
    build_opts+=(--volume "$ca:/run/qasup-build-ca.crt:ro" --build-arg PIP_CERT=/run/qasup-build-ca.crt)
fi
[ -n "${PIP_INDEX_URL:-}" ] && build_opts+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
[ -n "${QASUP_CT_NO_CACHE:-}" ] && build_opts+=(--no-cache)
t0=$(ms)
pm build --format docker --network host "${build_opts[@]}" --build-arg "BASE_IMAGE=$QASUP_BASE_IMAGE" \
    -t "$QASUP_CT_IMAGE" -f "$CONTEXT/Dockerfile" "$CONTEXT" >"$log/build.txt" 2>&1 \
    || { tail -30 "$log/build.txt" >&2; fail "build"; }
t1=$(ms)
cached=$(grep -c 'Using cache' "$log/build.txt" || true)
ok "build --format docker: $(secs "$t0" "$t1") s ($cached steps from the cache);" \
    "image $(pm image inspect --format '{{.Size}}' "$QASUP_CT_IMAGE") bytes"

check_py="import ensurepip, venv, sys; print(sys.version.split()[0])"
if base_py=$(pm run --rm "${ONE_OFF[@]}" "$QASUP_BASE_IMAGE" python3.11 -c "$check_py" 2>&1); then
    base_py="has ensurepip and venv ($base_py)"
else
    base_py="has python3.11 without ensurepip"
fi
image_py=$(pm run --rm "${ONE_OFF[@]}" --entrypoint python3.11 "$QASUP_CT_IMAGE" -c "$check_py") \
    || fail "python3.11 in the image lacks ensurepip or venv"
ok "Python check: the base $base_py; the image's python3.11 $image_py has both; qasup runs from /opt/qasup"

hc=$(pm image inspect --format '{{json .Config.Healthcheck}}' "$QASUP_CT_IMAGE")
case "$hc" in *wait-ready*) ok "HEALTHCHECK in the image: $hc" ;; *) fail "no HEALTHCHECK in the image: $hc" ;; esac
# The demo containers run the image's HEALTHCHECK command by hand (podman healthcheck run), with two settings
# changed, which podman 4.3 takes only together with the command itself (it ignores --health-* otherwise):
#   interval disabled: no systemd here to schedule it (podman logs "unable to get systemd connection");
#   start period 0: podman 4.3 counts no failed check during the start period (the image's 10m), not even
#   after a passing one, where Docker ends the start period at the first pass.
[ "$(pm image inspect --format '{{index .Config.Healthcheck.Test 0}}' "$QASUP_CT_IMAGE")" = CMD ] \
    || fail "the HEALTHCHECK is not in exec form (CMD [...])"
DEMO_OPTS=("${RUN_OPTS[@]}" --health-interval disable --health-start-period 0s
    --health-cmd "$(pm image inspect --format '{{json (slice .Config.Healthcheck.Test 1)}}' "$QASUP_CT_IMAGE")"
    --health-retries "$(pm image inspect --format '{{.Config.Healthcheck.Retries}}' "$QASUP_CT_IMAGE")"
    --health-timeout "$(pm image inspect --format '{{.Config.Healthcheck.Timeout}}' "$QASUP_CT_IMAGE")")

left=$(pm run --rm "${ONE_OFF[@]}" --entrypoint /bin/sh "$QASUP_CT_IMAGE" -c \
    'find / -xdev \( -name "qasup.egg-info" -o -path /src -o -path /opt/qasup/src -o -path /opt/qasup/build \
      -o -path /workspace/build \) -print 2>/dev/null; true')
[ -z "$left" ] || fail "build leftovers in the image: $left"
ok "no build/, /src or qasup.egg-info in the image"

out=$(pm run --rm "${ONE_OFF[@]}" "$QASUP_CT_IMAGE" --config "$DEMO" check 2>&1) || fail "demo check in the image: $out"
ok "the demo is in the image: qasup --config $DEMO check -> $out"

# ---- 2. the demo as PID 1
t0=$(ms)
pm run -d --name "$C1" "${DEMO_OPTS[@]}" "$QASUP_CT_IMAGE" --config "$DEMO" up >/dev/null 2>"$log/run.txt" \
    || { cat "$log/run.txt" >&2; fail "podman run"; }
pm exec "$C1" qasup wait-ready --timeout 120s >"$log/wait.txt" 2>&1 || { cat "$log/wait.txt" >&2; fail "wait-ready"; }
ok "demo up and ready: $(secs "$t0" "$(ms)") s from podman run"

pid1=$(pm exec "$C1" cat /proc/1/cmdline | tr '\0' ' ')
case "$pid1" in *qasup*" up"*) ok "PID 1 is qasup: $pid1" ;; *) fail "PID 1 is not qasup: $pid1" ;; esac

pm exec "$C1" qasup status >"$log/status.txt" 2>&1 || { cat "$log/status.txt" >&2; fail "qasup status exit $?"; }
grep -Eq '^sanic +ready' "$log/status.txt" || { cat "$log/status.txt" >&2; fail "sanic not ready in status"; }
ok "qasup status through exec: exit 0, $(grep -Eo '[0-9]+/[0-9]+ services ready' "$log/status.txt")"
sed 's/^/     /' "$log/status.txt" >>"$RESULTS"

# ---- 3. the HEALTHCHECK follows the services
health() { pm inspect --format '{{.State.Health.Status}}' "$C1"; }
pm healthcheck run "$C1" >/dev/null 2>&1 || fail "healthcheck run while ready"
[ "$(health)" = healthy ] || fail "health is $(health) while ready"
ok "healthcheck run while ready: exit 0, $(health) ($(pm inspect --format '{{json .Config.Healthcheck}}' "$C1"))"
pm exec "$C1" qasup stop sanic >"$log/stop-sanic.txt" 2>&1 || fail "qasup stop sanic: $(cat "$log/stop-sanic.txt")"
for _ in 1 2 3; do        # the image's --retries=3: three failed checks in a row make it unhealthy
    if pm healthcheck run "$C1" >/dev/null 2>&1; then fail "healthcheck passed with sanic stopped"; fi
done
[ "$(health)" = unhealthy ] || fail "health is $(health) after 3 failed checks"
ok "sanic stopped: healthcheck run exits 1 (x3), $(health)"
t0=$(ms)
pm exec "$C1" qasup start sanic >"$log/start-sanic.txt" 2>&1 || fail "qasup start sanic: $(cat "$log/start-sanic.txt")"
pm exec "$C1" qasup wait-ready sanic --timeout 60s >/dev/null 2>&1 || fail "sanic not ready again"
pm healthcheck run "$C1" >/dev/null 2>&1 || fail "healthcheck failed after sanic came back"
[ "$(health)" = healthy ] || fail "health is $(health) after sanic came back"
ok "sanic started again: ready in $(secs "$t0" "$(ms)") s, healthcheck run exits 0, $(health)"

# ---- 4. orphan reaping
read -r before _ _ < <(pm exec -i "$C1" "$PY" - <"$here/procs.py")
t0=$(ms)
pm exec -i "$C1" "$PY" - "$ORPHANS" /tmp/orphans.out <"$here/orphans.py" || fail "could not make $ORPHANS orphans"
deadline=$(( $(ms) + 60000 ))
while :; do
    read -r total zombies orphans < <(pm exec -i "$C1" "$PY" - <"$here/procs.py")
    [ "$zombies" -eq 0 ] && [ "$orphans" -eq 0 ] && break
    [ "$(ms)" -lt "$deadline" ] || fail "after 60 s: $zombies zombies, $orphans orphans left ($total processes)"
done
[ "$total" -eq "$before" ] || fail "process count $before before the orphans, $total after"
reparented=$(pm exec "$C1" cat /tmp/orphans.out | tr -cd R | wc -c)
[ "$reparented" -eq "$ORPHANS" ] || fail "$reparented of $ORPHANS orphans saw PID 1 as their parent"
pm exec "$C1" qasup status >/dev/null 2>&1 || fail "stack not ready after the orphans"
ok "$ORPHANS orphans re-parented to PID 1 and reaped: 0 zombies after $(secs "$t0" "$(ms)") s;" \
    "$total processes before and after; stack still ready"

# ---- 5. podman stop -t GRACE: ordered shutdown, exit 0, nothing left
mapfile -t hpids < <(pm top "$C1" hpid | tail -n +2 | tr -d ' ')
t0=$(ms)
pm stop -t "$GRACE" "$C1" >/dev/null
t1=$(ms)
code=$(pm inspect --format '{{.State.ExitCode}}' "$C1")
[ "$code" -eq 0 ] || fail "exit code $code after podman stop"
elapsed=$(secs "$t0" "$t1")
awk -v e="$elapsed" -v g="$GRACE" 'BEGIN { exit !(e < g) }' \
    || fail "stop took $elapsed s: SIGKILLed at the grace period"
alive=()
for p in "${hpids[@]}"; do [ -d "/proc/$p" ] && alive+=("$p"); done
[ "${#alive[@]}" -eq 0 ] || fail "processes left after stop: ${alive[*]}"
ok "podman stop -t $GRACE: exit code 0 in $elapsed s; none of the ${#hpids[@]} processes left"
record "     the console's last lines (podman logs --tail 4):"
pm logs --tail 4 "$C1" 2>&1 | sed 's/^/     /' >>"$RESULTS"

# ---- 6. SIGINT
pm run -d --name "$C2" "${DEMO_OPTS[@]}" "$QASUP_CT_IMAGE" --config "$DEMO" up >/dev/null 2>>"$log/run.txt"
pm exec "$C2" qasup wait-ready --timeout 120s >/dev/null 2>&1 || fail "second container not ready"
t0=$(ms)
pm kill --signal INT "$C2" >/dev/null
code=$(pm wait "$C2")
[ "$code" -eq 0 ] || fail "exit code $code after SIGINT"
ok "SIGINT: ordered shutdown, exit code 0 in $(secs "$t0" "$(ms)") s"

record "# all checks passed"
