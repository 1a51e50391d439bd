#!/usr/bin/env bash
# One device-tool call: install carried wheels, then run the named GPU jobs, writing to $OUT.
#   bash scripts/gpu_run.sh parity throughput prefix
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
OUT=${OUT:-/tmp/out}
MODEL=benchmarks/configs/llama-3-8b
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
git log -1 --format=%h 2>/dev/null || true
for job in "$@"; do
  echo "=== $job $(date +%T)"
  case "$job" in
    parity) timeout 150 python3 scripts/gpu_parity.py --out "$OUT/parity.json" ;;
    throughput) timeout 300 python3 -m benchmarks.throughput --model $MODEL --load-format dummy --dtype bfloat16 \
        --num-prompts 256 --input-len 128 --output-len 128 --output-json "$OUT/throughput.json" ;;
    throughput-reference) TESSERA_ATTENTION_BACKEND=reference timeout 170 python3 -m benchmarks.throughput \
        --model $MODEL --load-format dummy --dtype bfloat16 --num-prompts 256 --input-len 128 --output-len 128 \
        --output-json "$OUT/throughput_reference.json" ;;
    prefix) timeout 200 python3 -m benchmarks.prefix --model $MODEL --load-format dummy --dtype bfloat16 \
        --num-requests 32 --prefix-len 2000 --question-len 32 --output-len 32 --output-json "$OUT/prefix.json" ;;
    serve) timeout 210 python3 -m benchmarks.serve --model $MODEL --load-format dummy --dtype bfloat16 \
        --num-prompts 256 --random-input-len 128 --random-output-len 128 --result-json "$OUT/serve.json" ;;
    *) echo "unknown job $job" ;;
  esac
done
echo "=== done $(date +%T)"
