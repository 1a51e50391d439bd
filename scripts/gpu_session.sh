#!/usr/bin/env bash
# The H200 measurements of the step-pipeline, compile-once and engine-core issues (#10, #11, #12), as
# one device-tool call each:   bash scripts/gpu_session.sh JOB [JOB ...]   (writes JSON/logs to $OUT)
# Jobs: roofline b1 b1-sync offline256 offline512 sharegpt serve-cold serve-warm serve-rate4 structured8b soak8b
# (the last two run an 8B body with SmolLM2's vocabulary and tokenizer: .gpu_tokenizer/ is the default model's
# tokenizer saved as an HF directory, carried; grammars need a tokenizer and the 8B configs have none). To make it:
#   python -c "import json; from models.loaders.load import default_model_path; from engine.tokenizer import load_tokenizer
#   t = load_tokenizer(default_model_path()); t.hf.save_pretrained('.gpu_tokenizer')
#   json.dump({'eos_token_id': sorted(t.eos_token_ids), 'bos_token_id': t.bos_token_id},
#             open('.gpu_tokenizer/generation_config.json', 'w'))"        (and add /.gpu_tokenizer/ to .git/info/exclude)
# Carried wheels are installed first. The GPU image lacks: litestar litestar-htmx multipart polyfactory faker
# rich-click sniffio msgspec uvicorn gguf pyzmq llguidance jsonschema jsonschema-specifications referencing rpds-py (download them into .whl as the device README says; the
# 2026-11-30 run lacked sniffio and every server job failed at import).
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
OUT=${OUT:-/tmp/out}
MODEL=benchmarks/configs/llama-3-8b
DUMMY=(--model $MODEL --load-format dummy --dtype bfloat16)
export TESSERA_COMPILATION_CACHE=/tmp/tessera-xla
ulimit -n; cat /proc/sys/net/core/somaxconn; nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

wait_ready() {  # wait_ready PORT LOG -> seconds until /health answers 200 (gives up if the server died)
  local start=$(date +%s.%N)
  for _ in $(seq 1 600); do
    kill -0 $SERVER 2>/dev/null || { echo "server exited"; tail -5 "$2"; return 1; }
    if python3 -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$1/health', timeout=2).status_code != 200)" 2>/dev/null; then
      python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')"; return 0
    fi
    sleep 0.5
  done
  echo "never ready"; tail -30 "$2"; return 1
}

serve_start() {  # serve_start NAME: starts the server, prints start-to-ready seconds
  python3 -m engine.serve "${DUMMY[@]}" --host 127.0.0.1 --port 8000 --max-num-seqs 256 \
    --disable-log-requests > "$OUT/server_$1.log" 2>&1 &
  SERVER=$!
  echo "start to ready ($1): $(wait_ready 8000 "$OUT/server_$1.log") s"
  kill -0 $SERVER 2>/dev/null || exit 1
}

serve_stop() { kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; grep -i -E "compil|late" "$OUT/server_$1.log" | tail -5
  grep -E "^TcpExt" /proc/net/netstat | python3 -c "import sys; h, v = sys.stdin.read().split(chr(10))[:2]
print({k: x for k, x in zip(h.split(), v.split()) if 'Listen' in k or 'Abort' in k})"; }

smol_vocab_model() {  # an 8B body with SmolLM2's vocabulary, tokenizer and stop ids
  mkdir -p /tmp/llama8b-smolvocab && cp .gpu_tokenizer/* /tmp/llama8b-smolvocab/
  python3 -c "import json; c = json.load(open('$MODEL/config.json')); c.update(vocab_size=49152, bos_token_id=1, eos_token_id=2)
json.dump(c, open('/tmp/llama8b-smolvocab/config.json', 'w'))"
}

for job in "$@"; do
  echo "=== $job $(date +%T)"
  case "$job" in
    roofline) timeout 120 python3 -c "
from benchmarks.roofline import copy_bandwidths, matmul_rate
print({k: round(v / 1e12, 3) for k, v in copy_bandwidths(2**30).items()}, 'TB/s (1 GiB)')
print({k: round(v / 1e12, 3) for k, v in copy_bandwidths(2 * 2**30).items()}, 'TB/s (2 GiB)')
print(round(matmul_rate() / 1e12, 1), 'TFLOP/s bf16 8192^3')" ;;
    b1) timeout 300 python3 -m benchmarks.throughput "${DUMMY[@]}" --batch1 --output-json "$OUT/b1.json" | tail -6 ;;
    b1-sync) timeout 300 python3 -m benchmarks.throughput "${DUMMY[@]}" --batch1 --no-async-scheduling \
        --output-json "$OUT/b1_sync.json" | tail -6 ;;
    offline256) timeout 400 python3 -m benchmarks.throughput "${DUMMY[@]}" --num-prompts 1000 --input-len 256 \
        --output-len 256 --max-num-seqs 256 --output-json "$OUT/offline256.json" | tail -6 ;;
    offline512) timeout 400 python3 -m benchmarks.throughput "${DUMMY[@]}" --num-prompts 1000 --input-len 256 \
        --output-len 256 --max-num-seqs 512 --output-json "$OUT/offline512.json" | tail -6 ;;
    offline256-sync) timeout 400 python3 -m benchmarks.throughput "${DUMMY[@]}" --num-prompts 1000 --input-len 256 \
        --output-len 256 --max-num-seqs 256 --no-async-scheduling --output-json "$OUT/offline256_sync.json" | tail -6 ;;
    sharegpt) timeout 400 python3 -m benchmarks.throughput "${DUMMY[@]}" --dataset sharegpt --num-prompts 1000 \
        --max-num-seqs 256 --output-json "$OUT/offline_sharegpt.json" | tail -6 ;;
    serve-cold|serve-warm)  # start to ready (cold, then warm compilation cache), then 1000 ShareGPT-like at rate inf
      serve_start "$job"
      timeout 300 python3 -m benchmarks.serve --base-url http://127.0.0.1:8000 --dataset sharegpt --num-prompts 1000 \
        --warmup-passes 0 --result-json "$OUT/serve_sharegpt_${job#serve-}.json" | tail -14
      serve_stop "$job" ;;
    serve-rate4)
      serve_start "$job"
      timeout 300 python3 -m benchmarks.serve --base-url http://127.0.0.1:8000 --num-prompts 200 --request-rate 4 \
        --random-input-len 256 --random-output-len 128 --warmup-passes 0 --result-json "$OUT/serve_rate4.json" | tail -14
      serve_stop "$job" ;;
    structured8b) smol_vocab_model
      timeout 400 python3 -m benchmarks.structured_decode --model /tmp/llama8b-smolvocab --load-format dummy \
        --dtype bfloat16 --skip-validity --batch 64 --output-len 256 | tail -4 ;;
    soak8b) smol_vocab_model  # max-num-seqs 64: the programs structured8b compiled
      timeout 400 python3 -m benchmarks.soak --duration-s ${SOAK_S:-180} --concurrency 64 --model /tmp/llama8b-smolvocab \
        --load-format dummy --dtype bfloat16 --max-num-seqs 64 ${SOAK_ARGS:-} | tail -1 ;;
    *) echo "unknown job $job" ;;
  esac
done
echo "=== done $(date +%T)"
