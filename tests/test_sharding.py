"""Sharded = unsharded: tp=1,2,4,8 and dp=2,tp=2 on 8 CPU devices, Llama- and Qwen2-style, and
SmolLM2-135M's 9 q / 3 kv heads padded for tp=2 and tp=4.

The 8-device runs need ``--xla_force_host_platform_device_count=8`` before JAX starts, so
they run once in a subprocess (this file as a module: ``python -m tests.test_sharding OUT``)
that writes JSON; the tests below check it. Spec, rules and model checks run in-process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUM_DEVICES = 8
MODELS: dict[str, dict[str, Any]] = {
    # 2 kv heads: split for tp <= 2, each copied onto tp/2 devices for tp = 4, 8
    "llama": dict(architecture="LlamaForCausalLM", num_heads=8, num_kv_heads=2, head_dim=8),
    "qwen2": dict(architecture="Qwen2ForCausalLM", num_heads=8, num_kv_heads=4, head_dim=8,
                  attention_bias=True, tie_word_embeddings=True),
    # SmolLM2-135M's heads: 9 q / 3 kv, padded to 12 q / 4 kv for tp = 2, 4 (models/head_layout.py)
    "smollm-heads": dict(architecture="LlamaForCausalLM", num_heads=9, num_kv_heads=3, head_dim=8),
}
LAYOUTS = [("tp=1", "default"), ("tp=2", "default"), ("tp=4", "default"), ("tp=8", "default"),
           ("dp=2,tp=2", "default")]
MODEL_LAYOUTS = {"smollm-heads": [("tp=2", "default"), ("tp=4", "default")]}
EXTRA_LAYOUTS = {"llama": [("tp=2", "replicated-embed"), ("tp=2", "fsdp-like"), ("dp=4,tp=2", "default")]}
# query / kv heads after padding, by (model, tp), where they differ from the model's
PADDED_HEADS = {("llama", 4): (8, 4), ("llama", 8): (8, 8), ("qwen2", 8): (8, 8),
                ("smollm-heads", 2): (12, 4), ("smollm-heads", 4): (12, 4)}


def layouts_of(model: str) -> list[tuple[str, str]]:
    return MODEL_LAYOUTS.get(model, LAYOUTS) + EXTRA_LAYOUTS.get(model, [])
COLLECTIVE_LAYOUTS = ("tp=4",)  # layouts whose compiled decode step is checked for its collectives
BAD_SPECS = ["tp=3", "tp=16", "dp=2,tp=2", "tp=abc", "pp=2", "ep=2"]
PROMPTS = [[3, 4, 5], list(range(20, 37)), list(range(100, 130)), [7] * 9]
NUM_BLOCKS = 32
WATCHED = {
    "embed": ("embed_tokens", "embedding"),
    "q_proj": ("layers_0", "self_attn", "q_proj", "kernel"),
    "k_proj": ("layers_0", "self_attn", "k_proj", "kernel"),
    "k_bias": ("layers_0", "self_attn", "k_proj", "bias"),
    "o_proj": ("layers_0", "self_attn", "o_proj", "kernel"),
    "down_proj": ("layers_0", "mlp", "down_proj", "kernel"),
    "lm_head": ("lm_head", "kernel"),
}


# ---- the 8-device worker ------------------------------------------------------------------
def host_params(config: Any, sharding: Any = None) -> dict[str, Any]:
    """Random weights read from host memory and placed one tensor at a time, as a checkpoint
    loader does (jax.device_put; on a multi-process mesh it checks every process agrees)."""
    import jax
    import numpy as np
    from flax.traverse_util import unflatten_dict

    from models.registry import model_family
    from models.weights import param_shapes

    rng = np.random.default_rng(3)
    table = model_family(config.architecture).weights
    params = {}
    for path, spec in sorted(param_shapes(config).items()):
        array = (rng.standard_normal(spec.shape) * 0.2).astype(np.float32)
        where = sharding.param_sharding(table.weight_at(path), array.shape) if sharding else jax.local_devices()[0]
        params[path] = jax.device_put(array, where)
    return unflatten_dict(params)


def _shards(array: Any) -> dict[str, Any]:
    return {"shape": list(array.shape), "spec": str(getattr(array.sharding, "spec", None)),
            "shards": sorted({tuple(s.data.shape) for s in array.addressable_shards}),
            "devices": len(array.addressable_shards)}


def _run(config: Any, spec: str | None, rules: str) -> dict[str, Any]:
    import jax
    from flax.traverse_util import flatten_dict

    from engine import EngineConfig, LLMEngine, SamplingParams
    from models.loaders import LoadedModel
    from sharding import ModelSharding, parse_mesh_spec
    from tests.tiny_models import run_to_completion

    sharding = None
    if spec is not None:
        size = 1
        for n in parse_mesh_spec(spec).values():
            size *= n
        sharding = ModelSharding.from_spec(spec, rules, devices=jax.devices()[:size])
        sharding.check_model(config)
    engine = LLMEngine(EngineConfig(num_gpu_blocks_override=NUM_BLOCKS, max_num_seqs=8, compilation_cache_dir=None,
                                    precompile=False),
                       LoadedModel(config, host_params(config, sharding), None, "tiny", Path(".")), sharding)
    for i, prompt in enumerate(PROMPTS):
        # the last request samples twice: its second sample shares the prompt's blocks (copy-on-write)
        sampling = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=2, prompt_logprobs=1,
                                  n=2 if i == len(PROMPTS) - 1 else 1)
        engine.add_request(str(i), prompt, sampling)
    replicas = getattr(engine.scheduler, "replicas", [engine.scheduler])
    queued = [len(r.waiting) for r in replicas]
    done = run_to_completion(engine)
    result: dict[str, Any] = {"queued_per_replica": queued, "tokens": [], "logprobs": [], "prompt_logprobs": []}
    for i in range(len(PROMPTS)):
        out = done[str(i)]
        for completion in out.outputs:
            result["tokens"].append(completion.token_ids)
            result["logprobs"].append([sorted(lp.logprob for lp in pos.values()) for pos in completion.logprobs])
        result["prompt_logprobs"].append([sorted(lp.logprob for lp in pos.values())
                                          for pos in out.prompt_logprobs[1:]])
    flat = flatten_dict(engine.runner.params)
    result["params"] = {name: _shards(flat[path]) for name, path in WATCHED.items() if path in flat}
    result["kv_cache"] = _shards(engine.runner.kv_caches[0][0])
    stats = engine.stats()
    result["blocks_free_after"] = [stats.num_free_blocks, stats.num_blocks]
    if spec in COLLECTIVE_LAYOUTS and rules == "default":
        result["collectives"] = _decode_step_collectives(engine)
    return result


def _decode_step_collectives(engine: Any) -> dict[str, Any]:
    """The collectives of the compiled greedy decode step of 8 sequences (sharding/collectives.py).

    Reaches into the runner for its bucket plan and program lowering: adapt here if those change.
    """
    from engine.sampler import SamplerMode
    from ops.pallas_cases import pool_copies
    from sharding.collectives import count_collectives

    runner = engine.runner
    programs = runner.plan.keys()  # a BucketPlan: keys() lists its programs (it is no mapping)
    decode = [key for key in programs if key.window == 1 and key.seqs == 8]
    assert decode, f"no 8-sequence decode program in {runner.plan.describe()}"
    # the greedy sampler (static switches, as the GPU plan's greedy variant): its only cross-shard
    # work is picking each shard's best candidates; filters and logprobs would gather whole logits
    greedy = dataclasses.replace(decode[0], mode=SamplerMode(True, False, 0), prompt_k=None, mask_words=0)
    compiled = runner._lower_program(greedy, runner.kv_caches, runner._sampled_tokens).compile()
    text = compiled.as_text()
    found = {kind: dataclasses.asdict(entry) for kind, entry in count_collectives(text).items()}
    shard = runner.kv_caches[0][0].addressable_shards[0].data
    # the per-shard KV write must stay in place: no copy of a buffer shaped like a pool shard (the
    # sampler's logits and the CPU attention's gathered key tiles can be as large, so sizes alone
    # would not tell them apart)
    found["pool_copies"] = [line for line in pool_copies(text, shard.size) if _dims(line) == list(shard.shape)]
    return found


def _dims(hlo_line: str) -> list[int]:
    """The dimensions of the buffer an HLO instruction defines."""
    match = re.search(r"= \w+\[([\d,]+)\]", hlo_line)
    return [int(d) for d in match.group(1).split(",")] if match else []


def _bad_spec_errors() -> dict[str, str]:
    from sharding import ModelSharding

    errors = {}
    for spec in BAD_SPECS:
        try:
            ModelSharding.from_spec(spec)
            errors[spec] = "no error"
        except ValueError as err:
            errors[spec] = str(err)
    return errors


def worker(out_path: str) -> None:
    import jax

    from tests.tiny_models import tiny_config

    assert jax.device_count() == NUM_DEVICES, jax.devices()
    results: dict[str, Any] = {"bad_specs": _bad_spec_errors()}
    for name, overrides in MODELS.items():
        config = tiny_config(**overrides)
        runs = {"unsharded": _run(config, None, "default")}
        for spec, rules in layouts_of(name):
            runs[f"{spec}/{rules}"] = _run(config, spec, rules)
        results[name] = runs
    Path(out_path).write_text(json.dumps(results))


# ---- tests on the worker's results --------------------------------------------------------
@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sharding") / "results.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}")
    proc = subprocess.run([sys.executable, "-m", "tests.test_sharding", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


def _all_layouts() -> list[tuple[str, str]]:
    return [(model, f"{spec}/{rules}") for model in MODELS for spec, rules in layouts_of(model)]


@pytest.mark.parametrize(("model", "layout"), _all_layouts())
def test_sharded_matches_unsharded(results: dict[str, Any], model: str, layout: str) -> None:
    want, got = results[model]["unsharded"], results[model][layout]
    assert got["tokens"] == want["tokens"]
    for key in ("logprobs", "prompt_logprobs"):
        for got_seq, want_seq in zip(got[key], want[key], strict=True):
            for got_pos, want_pos in zip(got_seq, want_seq, strict=True):
                assert got_pos == pytest.approx(want_pos, abs=2e-5), key
    assert got["blocks_free_after"][0] == got["blocks_free_after"][1]  # every block came back


def _expected_shard(name: str, model: str, tp: int, rules: str) -> tuple[int, ...] | None:
    config = MODELS[model]
    hidden, mlp, vocab, d = 64, 128, 256, config["head_dim"]
    heads, kv_heads = config["num_heads"], config["num_kv_heads"]
    if rules != "fsdp-like":
        heads, kv_heads = PADDED_HEADS.get((model, tp), (heads, kv_heads))
    q, kv = heads * d, kv_heads * d
    if rules == "fsdp-like":
        split_embed = {"embed": (vocab, hidden // tp), "q_proj": (hidden // tp, q), "k_proj": (hidden // tp, kv),
                       "k_bias": (kv,), "o_proj": (q, hidden // tp), "down_proj": (mlp, hidden // tp),
                       "lm_head": (hidden // tp, vocab)}
        return split_embed[name]
    vocab_tp = 1 if rules == "replicated-embed" else tp
    return {"embed": (vocab // vocab_tp, hidden), "q_proj": (hidden, q // tp), "k_proj": (hidden, kv // tp),
            "k_bias": (kv // tp,), "o_proj": (q // tp, hidden), "down_proj": (mlp // tp, hidden),
            "lm_head": (hidden, vocab // vocab_tp)}[name]


@pytest.mark.parametrize(("model", "layout"), _all_layouts())
def test_parameters_and_kv_cache_are_split(results: dict[str, Any], model: str, layout: str) -> None:
    from sharding import parse_mesh_spec

    spec, rules = layout.split("/")
    sizes = parse_mesh_spec(spec)
    tp, dp = sizes["tp"], sizes["dp"]
    config = MODELS[model]
    run = results[model][layout]
    for name, info in run["params"].items():
        assert info["devices"] == tp * dp, name
        assert info["shards"] == [list(_expected_shard(name, model, tp, rules))], (name, info)
    kv_heads = config["num_kv_heads"]
    if rules != "fsdp-like":
        kv_heads = PADDED_HEADS.get((model, tp), (0, kv_heads))[1]
    kv_tp = 1 if rules == "fsdp-like" else tp
    cache = run["kv_cache"]
    assert cache["shape"] == [NUM_BLOCKS, 16, kv_heads, config["head_dim"]]
    assert cache["shards"] == [[NUM_BLOCKS // dp, 16, kv_heads // kv_tp, config["head_dim"]]], cache
    if dp > 1:  # requests spread evenly; both samples of the n=2 request on one replica
        assert sorted(run["queued_per_replica"]) == sorted(_expected_spread(dp))


def _expected_spread(dp: int) -> list[int]:
    counts = [0] * dp
    for i in range(len(PROMPTS)):
        counts[i % dp] += 2 if i == len(PROMPTS) - 1 else 1
    return counts


@pytest.mark.parametrize("model", list(MODELS))
def test_two_all_reduces_per_layer_and_no_gathered_pool(results: dict[str, Any], model: str) -> None:
    """tp=4 decode: the KV pools are updated in place per shard; one all-reduce after each o_proj and each
    down_proj, one after the vocab-parallel embedding lookup; the only gathers are the sampler's per-shard best
    candidates ([sequences, k] numbers), never a weight, an activation or the KV pool."""
    from tests.tiny_models import tiny_config

    found = results[model]["tp=4/default"]["collectives"]
    assert found.pop("pool_copies") == [], "the KV write copies its pool shard"
    layers = tiny_config().num_layers
    assert found["all-reduce"]["count"] == 2 * layers + 1, found
    assert found["all-reduce"]["largest_elements"] == 8 * 64, found  # [sequences, hidden]
    assert set(found) <= {"all-reduce", "all-gather"}, found
    if "all-gather" in found:
        assert found["all-gather"]["largest_elements"] <= 8 * 4 * 2, found


@pytest.mark.parametrize(("spec", "words"), [
    ("tp=3", ["needs 3 devices", "8 available"]),
    ("tp=16", ["needs 16 devices", "more than the 8"]),
    ("dp=2,tp=2", ["needs 4 devices"]),
    ("tp=abc", ["positive integer", "'abc'"]),
    ("pp=2", ["unknown mesh axis 'pp'", "dp, tp"]),
    ("ep=2", ["not supported yet"]),
])
def test_bad_specs_on_8_devices(results: dict[str, Any], spec: str, words: list[str]) -> None:
    message = results["bad_specs"][spec]
    for word in words:
        assert word in message, message


if __name__ == "__main__":
    worker(sys.argv[1])
