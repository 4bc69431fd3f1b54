#!/usr/bin/env bash
# Create .venv and install the pinned dependencies and tipml itself.
# Idempotent: does nothing when requirements.lock and pyproject.toml are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  if ! "$PY" -m venv .venv 2>/dev/null; then
    # Some distributions ship Python without the venv module; virtualenv comes from PyPI.
    rm -rf .venv
    "$PY" -m pip install --quiet --user virtualenv
    "$PY" -m virtualenv --quiet .venv
  fi
fi

stamp=.venv/.tipml-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "==> installing pinned dependencies (first run builds llama.cpp: ~7 min on 2 cores)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # llama.cpp tuned to the build machine's CPU (GGML_NATIVE=ON) crashed at the first token on
  # this machine's virtual CPU; the portable build still uses AVX2/FMA (see docs/adr/0002).
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" \
    .venv/bin/python -m pip install --quiet -r requirements.lock
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
export LITELLM_LOCAL_MODEL_COST_MAP=True
.venv/bin/tipml assemble-model >/dev/null
