#!/usr/bin/env bash
# The integration suite: qasup against the real programs (Sanic 25 with 4 workers; Debian's nginx, redis-server,
# memcached and postgresql 15; FastChat 0.2.36 with a real model worker on the CPU).
#
#   tests/integration/run.sh                 # everything; extra arguments go to pytest (-k nginx, -x, ...)
#
# It installs what is missing first: the project's venv (.venv, with the test extras) if there is none, the four
# Debian packages with apt-get (as root, or through sudo), FastChat's own venv (setup_fastchat.sh). Then it runs
# pytest on tests/integration with QASUP_INTEGRATION=1 (the default `pytest -q` skips these tests) and
# QASUP_INTEGRATION_REQUIRE=1 (a program missing after the install is a failure, not a skip).
# Environment: PYTHON (the interpreter for a new .venv, default python3.11 or python3).
# Exit: pytest's (0 all passed); 1 when an install failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)

# ---- the project's venv
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import supervisor, pytest, sanic' >/dev/null 2>&1; then
    py=${PYTHON:-python3.11}
    command -v "$py" >/dev/null 2>&1 || py=python3
    echo "run.sh: making .venv with $py (pip install -e '.[test]')"
    "$py" -m venv .venv
    .venv/bin/python -m pip install -q -e '.[test]'
fi

# ---- Debian's servers
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v memcached >/dev/null 2>&1 || missing+=(memcached)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
        echo "run.sh: ${missing[*]} missing, and installing them needs root (or sudo)" >&2; exit 1
    fi
    echo "run.sh: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt=("${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}")
    if ! "${apt[@]}" >/tmp/qasup-it-apt.log 2>&1; then   # the package lists may be absent or stale
        "${sudo[@]}" apt-get update -q >>/tmp/qasup-it-apt.log 2>&1 || true
        "${apt[@]}" >>/tmp/qasup-it-apt.log 2>&1 || { tail -20 /tmp/qasup-it-apt.log >&2; exit 1; }
    fi
fi

# ---- FastChat's venv (helper script; idempotent, about 1 s when it is there)
if [ -f tests/integration/setup_fastchat.sh ]; then
    PYTHON=${PYTHON:-python3.11} bash tests/integration/setup_fastchat.sh || exit 1
fi
echo "run.sh: installs done in $(( $(date +%s) - start )) s"

# ---- the suite
t0=$(date +%s)
set +e
QASUP_INTEGRATION=1 QASUP_INTEGRATION_REQUIRE=1 .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/integration "$@"
code=$?
set -e
echo "run.sh: the integration suite took $(( $(date +%s) - t0 )) s (exit $code)"
exit $code
