#!/usr/bin/env bash
# Re-resolve the dependency ranges of pyproject.toml into requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --upgrade pip
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "$tmp/venv/bin/pip" install --quiet ".[dev]"
{
  echo "# Pinned dependency set of tipml (runtime + dev), Python 3.11, Linux x86_64."
  echo "# Regenerate: bash scripts/lock.sh (fresh venv, install pyproject ranges, pip freeze)."
  "$tmp/venv/bin/pip" freeze --exclude-editable | grep -v '^tipml'
} > requirements.lock
rm -rf "$tmp"
echo "requirements.lock updated"
