"""benchmarks/serve.py runs against a URL and with its own in-process server on a dummy model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.serve import main as bench_main

TINY_HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
    "eos_token_id": 0,
}


def _check(figures: dict[str, Any], requests: int) -> None:
    assert figures["completed"] == requests and figures["failed"] == 0
    assert figures["total_output_tokens"] > 0 and figures["output_throughput"] > 0
    for key in ("mean_ttft_ms", "median_tpot_ms"):
        assert figures[key] > 0
    # a server that falls behind coalesces a stream's tokens into one chunk: then no gap between chunks exists
    assert (figures["p99_itl_ms"] > 0) == (figures["streamed_chunks"] > requests)


def test_against_a_url_chat_and_sharegpt(tiny_server: Any, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    figures = bench_main(["--base-url", tiny_server.url, "--endpoint", "chat", "--dataset", "sharegpt",
                          "--num-prompts", "6", "--sharegpt-max-input-len", "64", "--sharegpt-max-output-len", "8",
                          "--request-rate", "50", "--max-concurrency", "3", "--warmup-passes", "0",
                          "--result-json", str(out)])
    _check(figures, 6)
    assert json.loads(out.read_text())["completed"] == 6


def test_in_process_dummy_model_without_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    figures = bench_main(["--num-prompts", "4", "--random-input-len", "20", "--random-output-len", "4",
                          "--random-range-ratio", "0.5", "--warmup-passes", "1",
                          "--model", str(tmp_path), "--load-format", "dummy", "--skip-warmup",
                          "--num-gpu-blocks-override", "64", "--max-num-seqs", "4"])
    _check(figures, 4)
    assert figures["compilations_during_run"] >= 0  # reported, so a run that compiled can be spotted
