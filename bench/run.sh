#!/bin/sh
# Benchmarks, qasup vs supervisord: see bench/run.py --help. Uses $QASUP_PYTHON, else ./.venv/bin/python,
# else python3 (the harness itself needs only the standard library).
here=$(cd "$(dirname "$0")" && pwd)
py=${QASUP_PYTHON:-}
[ -z "$py" ] && [ -x "$here/../.venv/bin/python" ] && py="$here/../.venv/bin/python"
exec "${py:-python3}" "$here/run.py" "$@"
