"""Small random models for fast engine tests (real-model tests use SmolLM2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import EngineConfig, LLMEngine
from models.config import ModelConfig
from models.loaders import LoadedModel
from models.loaders.dummy import dummy_params


def tiny_config(**overrides: Any) -> ModelConfig:
    fields: dict[str, Any] = dict(
        architecture="LlamaForCausalLM", vocab_size=256, hidden_size=64, intermediate_size=128,
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=512,
        eos_token_ids=(0,),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_engine(config: ModelConfig | None = None, tokenizer: Any = None, seed: int = 1,
                **engine_kwargs: Any) -> LLMEngine:
    config = config or tiny_config()
    loaded = LoadedModel(config, dummy_params(config, seed=seed), tokenizer, "tiny", Path("."))
    engine_kwargs.setdefault("num_gpu_blocks_override", 128)
    engine_kwargs.setdefault("max_num_seqs", 8)
    engine_kwargs.setdefault("compilation_cache_dir", None)
    engine_kwargs.setdefault("precompile", False)  # shapes compile on first use: most tests use a few
    return LLMEngine(EngineConfig(**engine_kwargs), loaded)


def run_to_completion(engine: LLMEngine) -> dict[str, Any]:
    """Steps until idle; returns each request's final RequestOutput by id."""
    done = {}
    for _ in range(10_000):
        if not engine.has_unfinished_requests():
            return done
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    raise AssertionError("engine did not finish")
