#!/usr/bin/env bash
# Makes sure Microsoft's pinned Python SDKs (requirements.txt) are installed in <repo>/target/contract-venv
# and prints the path of its python. The venv is rebuilt only when requirements.txt changes. The contract
# suite (run.sh) runs in it, and the operator's integration tests read what the operator wrote with it.
#
#   python="$(emulator/contract/sdk-venv.sh)"
#
# Environment: PYTHON, the interpreter for the venv (default python3.11, else python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/target/contract-venv"
requirements="$here/requirements.txt"

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
fi

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
stamp="$venv/.requirements.sha256"
# One installer at a time: tests run side by side and may all ask at once.
exec 9>"$repo/target/.contract-venv.lock"
flock 9
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "contract suite: installing $requirements into $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
    echo "$want" >"$stamp"
fi
echo "$venv/bin/python"
