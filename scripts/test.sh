#!/usr/bin/env bash
# Lint, strict types and the whole test suite (unit, API, gateway, real local LLM, CLI).
# Arguments go to pytest (e.g. -m "not llm", -k gateway).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export LITELLM_LOCAL_MODEL_COST_MAP=True
echo "==> ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "==> mypy --strict"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/pytest "$@"
