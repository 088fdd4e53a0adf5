#!/usr/bin/env bash
# Makes sure the pinned Azure CLI (az-requirements.txt) is installed in <repo>/target/az-venv and prints
# the path of its `az`. The venv is rebuilt only when az-requirements.txt changes; installing takes a
# minute or two the first time, and says so on stderr.
#
#   az="$(emulator/contract/az-venv.sh)"
#
# Environment: PYTHON, the interpreter for the venv (default python3.11, else python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/target/az-venv"
requirements="$here/az-requirements.txt"

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
fi

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
stamp="$venv/.requirements.sha256"
if [[ ! -x "$venv/bin/az" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "az: installing the pinned Azure CLI into $venv (once; a minute or two)..." >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
    echo "$want" >"$stamp"
    echo "az: installed $("$venv/bin/az" version --query '"azure-cli"' -o tsv 2>/dev/null)" >&2
fi
echo "$venv/bin/az"
