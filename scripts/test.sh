#!/usr/bin/env bash
# Lint, strict types and the whole test suite (unit, API, gateway, events on a real
# nats-server, real local LLM, CLI), then the TypeScript client against the real service.
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
echo "==> TypeScript client (clients/typescript): generated types, tests against the real service"
if command -v npm >/dev/null 2>&1; then
  (cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && \
    TIPML_PYTHON="$PWD/../../.venv/bin/python" npm test)
elif [ "${CI:-}" = "true" ]; then
  echo "npm is required in CI for the TypeScript side of the contract" >&2
  exit 1
else
  echo "npm not found: skipped the TypeScript client tests (install Node.js 20+ to run them)"
fi
