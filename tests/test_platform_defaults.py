"""Platform defaults: an unset engine field takes its platform's value, a set one is kept."""

from __future__ import annotations

from engine.config import CPU_DEFAULTS, EngineConfig


def test_cpu_fills_unset_fields_only():
    cpu = EngineConfig().with_platform_defaults("cpu")
    assert cpu.max_num_batched_tokens == CPU_DEFAULTS.max_num_batched_tokens
    assert cpu.token_bucket_ladder == CPU_DEFAULTS.token_bucket_ladder
    assert cpu.seq_bucket_ladder == CPU_DEFAULTS.seq_bucket_ladder
    explicit = EngineConfig(max_num_batched_tokens=4096, seq_bucket_ladder=(16,)).with_platform_defaults("cpu")
    assert explicit.max_num_batched_tokens == 4096 and explicit.seq_bucket_ladder == (16,)


def test_cpu_chunk_default_needs_chunked_prefill():
    # Without chunked prefill a step must hold a whole prompt: the engine sizes it from max_model_len.
    assert EngineConfig(enable_chunked_prefill=False).with_platform_defaults("cpu").max_num_batched_tokens is None
    explicit = EngineConfig(enable_chunked_prefill=False, max_num_batched_tokens=4000)
    assert explicit.with_platform_defaults("cpu").max_num_batched_tokens == 4000


def test_other_platforms_unchanged_and_input_not_mutated():
    config = EngineConfig()
    assert config.with_platform_defaults("gpu") == config
    config.with_platform_defaults("cpu")
    assert config.max_num_batched_tokens is None
