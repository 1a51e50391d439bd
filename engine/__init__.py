"""Tessera's engine: ``from engine import LLM, SamplingParams``."""

import os

# Let the engine size the KV cache from the device's memory itself (gpu_memory_utilization)
# instead of XLA's default 75% preallocation; must be set before JAX initialises a GPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
# transformers is only our tokenizer and config library; its "PyTorch was not found" notice is noise.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from engine import log  # noqa: E402

log.configure()

from engine.config import EngineConfig  # noqa: E402
from engine.llm import LLM  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.outputs import CompletionOutput, Logprob, RequestOutput  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402

__all__ = ["LLM", "CompletionOutput", "EngineConfig", "LLMEngine", "Logprob", "RequestOutput", "SamplingParams"]
