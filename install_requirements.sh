#!/usr/bin/env bash
# Creates .venv (if missing) and installs the pinned requirements into it.
# Running it again is harmless: pip only installs what is missing or at another version.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
# numpy 2.4, scipy 1.17, matplotlib 3.11 and av 18 publish wheels for Python >= 3.11 only
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    found=$("$PYTHON" --version 2>&1 | head -1)
    echo "error: Python >= 3.11 is required ($found found; set PYTHON=python3.11 or newer)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "Creating virtual environment in .venv"
    "$PYTHON" -m venv .venv
fi
# The stamp records the requirements that were installed, so a second run skips pip entirely.
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "Requirements already installed in .venv"
    exit 0
fi
.venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
echo "$want" > "$stamp"
echo "Installed requirements into .venv"
