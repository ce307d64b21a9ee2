#!/usr/bin/env bash
# Makes tests/integration/.venv-fastchat: FastChat 0.2.36 (fschat) with what its controller, OpenAI API server
# and Transformers model worker need on the CPU, for the FastChat integration tests (tests/integration/fastchat/).
#
#   bash tests/integration/setup_fastchat.sh        # idempotent; about 1 s when the venv is already there
#
# torch is the CPU build 2.13.0 (pip takes the wheel that lies on this machine's disk); it is installed first and
# alone, and every other package comes from tests/integration/fastchat/requirements.txt (exact pins, so that pip
# never resolves torch again and never pulls a CUDA build of several GB). Environment:
#   PYTHON              the interpreter to build the venv with (default python3; must be 3.11 for that wheel)
#   QASUP_FASTCHAT_VENV where to make it (default tests/integration/.venv-fastchat)
# Exit: 0 ready; non-zero: the install failed (pip's output says why).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${QASUP_FASTCHAT_VENV:-$here/.venv-fastchat}"
reqs="$here/fastchat/requirements.txt"
python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || python=python3
torch_pin="torch==2.13.0"
stamp="$venv/.qasup-setup"
# The stamp holds what the venv was made from: the pins and the torch version. A change of either rebuilds it.
want="$(cat "$reqs"; echo "$torch_pin")"

# Quick check that the venv still holds what the stamp says (package metadata only: importing torch takes seconds).
check='from importlib.metadata import version as v
assert v("fschat") == "0.2.36" and v("torch").startswith("2.13.0") and int(v("transformers").split(".")[0]) < 5
v("accelerate")'

start=$(date +%s)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "setup_fastchat: $venv is ready ($(( $(date +%s) - start )) s)"
    exit 0
fi

echo "setup_fastchat: making $venv (fschat 0.2.36, $torch_pin CPU build, transformers<5)"
rm -rf "$venv"
"$python" -m venv "$venv"
pip() {   # quiet, without the lines about configured local indexes that do not hold a package
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$@" 2>&1 \
        | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}
# torch first and alone: the exact version, so pip takes the CPU wheel on disk.
pip "$torch_pin"
# Then everything else pinned; torch is held at what is installed, so nothing can replace it.
pip -r "$reqs" "$torch_pin"
"$venv/bin/python" - <<'EOF'
import fastchat, torch, transformers
assert fastchat.__version__ == "0.2.36", fastchat.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert not torch.version.cuda, f"a CUDA build of torch was installed ({torch.version.cuda}); expected the CPU build"
assert int(transformers.__version__.split(".")[0]) < 5, transformers.__version__
EOF
printf '%s' "$want" >"$stamp"
echo "setup_fastchat: ready in $(( $(date +%s) - start )) s"
