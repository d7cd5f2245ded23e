#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv, or $LOGMEL_VENV) and install the package into it.
# Sourced by demo.sh and test.sh. The first run downloads torch and compiles fairseq (5-10 minutes);
# later runs reuse the environment until setup.py changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LOGMEL_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3.11}"
command -v "$PYTHON_BIN" >/dev/null || PYTHON_BIN=python3

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON_BIN" -m venv "$VENV"
fi
STAMP="$VENV/.fairseq_logmel_conformer-installed"
WANT="$(cat "$ROOT/setup.py" | sha1sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    "$VENV/bin/pip" install --quiet --upgrade pip setuptools wheel
    # torch first, then fairseq built against it without a second torch download (no build isolation).
    "$VENV/bin/pip" install --quiet "torch==2.9.1" "torchaudio==2.9.1" numpy cython
    "$VENV/bin/pip" install --quiet --no-build-isolation "fairseq-fixed==0.12.3.1"
    # compat mode puts the repository on sys.path, so Hydra finds hydra_plugins/ in the checkout.
    "$VENV/bin/pip" install --quiet --no-build-isolation -e "$ROOT[test]" --config-settings editable_mode=compat
    # The HEAR validator's metadata asks for tensorflow, which it needs only for TensorFlow models.
    "$VENV/bin/pip" install --quiet --no-deps "hearvalidator==2021.0.2"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
