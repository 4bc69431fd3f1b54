#!/usr/bin/env bash
# The whole system on embedded defaults: install, assemble the local model, start the service
# (with its llama.cpp model), drive it with the simulator and print a summary.
# Arguments go to `tipml demo` (e.g. --duration 60, --keep-serving, --port 8000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export LITELLM_LOCAL_MODEL_COST_MAP=True
exec .venv/bin/tipml demo "$@"
