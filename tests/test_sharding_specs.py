"""Mesh specs, rule sets, model checks, dp placement and flags: no multi-device JAX needed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import pytest
from jax.sharding import AbstractMesh

from engine.config import add_engine_flags, engine_config
from engine.data_parallel import DataParallelScheduler
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from models.head_layout import pad_heads, plan_head_layout
from sharding import ModelSharding, ShardingRules, build_mesh, load_rules, parse_mesh_spec
from sharding.cli import add_multihost_args, init_distributed_from_args
from sharding.rules import RULE_SETS
from tests.tiny_models import tiny_config


@pytest.mark.parametrize(("spec", "sizes"), [
    ("tp=4", {"dp": 1, "tp": 4}), ("dp=2", {"dp": 2, "tp": 1}), (" dp=2 , tp=2 ", {"dp": 2, "tp": 2}),
])
def test_parse_mesh_spec(spec: str, sizes: dict[str, int]) -> None:
    assert parse_mesh_spec(spec) == sizes


@pytest.mark.parametrize(("spec", "words"), [
    ("", "empty mesh spec"), ("tp", "AXIS=SIZE"), ("tp=abc", "positive integer"), ("tp=0", "positive integer"),
    ("tp=-1", "positive integer"), ("pp=2", "unknown mesh axis 'pp'"), ("tp=2,ep=4", "not supported yet"),
    ("tp=2,tp=2", "given twice"),
])
def test_bad_mesh_specs(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_mesh_spec(spec)


def test_mesh_size_must_match_the_devices() -> None:
    one = jax.devices()[:1]
    with pytest.raises(ValueError, match="needs 2 devices, more than the 1 available"):
        build_mesh(parse_mesh_spec("tp=2"), one)
    mesh = build_mesh(parse_mesh_spec("tp=1"), one)
    assert dict(mesh.shape) == {"dp": 1, "tp": 1}


def test_rule_sets_by_name_and_file(tmp_path: Path) -> None:
    assert set(RULE_SETS) >= {"default", "replicated-embed", "fsdp-like", "replicated"}
    assert load_rules("default") == ("default", ShardingRules())
    json_file = tmp_path / "wide.json"
    json_file.write_text(json.dumps({"extends": "replicated-embed", "mlp": None, "embed": ["tp"]}))
    name, rules = load_rules(str(json_file))
    assert name == "wide" and rules == RULE_SETS["replicated-embed"].replace(mlp=None, embed="tp")
    yaml_file = tmp_path / "heads.yaml"
    yaml_file.write_text("vocab: null\nkv_heads: null\n")
    assert load_rules(str(yaml_file))[1] == ShardingRules(vocab=None, kv_heads=None)


@pytest.mark.parametrize(("content", "words"), [
    ({"heads": "tp"}, "unknown logical axes"), ({"mlp": "model"}, "unknown mesh axis 'model'"),
    ({"extends": "megatron"}, "extends 'megatron'"),
])
def test_bad_rule_files(tmp_path: Path, content: dict[str, object], words: str) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=words):
        load_rules(str(path))


def test_unknown_rule_set_name() -> None:
    with pytest.raises(ValueError, match="unknown sharding rules 'megatron'"):
        load_rules("megatron")


def test_one_mesh_axis_cannot_split_two_dimensions() -> None:
    with pytest.raises(ValueError, match="onto one mesh axis"):
        ShardingRules(embed="tp").spec(("embed", "mlp"))


def _sharding(dp: int, tp: int, rules: ShardingRules | None = None) -> ModelSharding:
    return ModelSharding(AbstractMesh((dp, tp), ("dp", "tp")), rules or ShardingRules(), "test")  # type: ignore[arg-type]


def test_kv_heads_fewer_than_tp_are_copied() -> None:
    sharding = _sharding(1, 4)
    padded = sharding.check_model(tiny_config(num_heads=8, num_kv_heads=2, head_dim=8))
    assert (padded.num_heads, padded.num_kv_heads) == (8, 4)  # each kv head on 2 devices, 2 queries each
    assert sharding.head_layout.kv_source == (0, 0, 1, 1)
    assert sharding.kv_cache_split() == (1, 4)
    sharding = _sharding(2, 2)
    padded = sharding.check_model(tiny_config(num_heads=8, num_kv_heads=2, head_dim=8))
    assert (padded.num_heads, padded.num_kv_heads) == (8, 2) and sharding.head_layout.is_identity
    assert sharding.kv_cache_split() == (2, 2)


@pytest.mark.parametrize(("heads", "tp", "padded", "q_source", "kv_source"), [
    ((9, 3), 4, (12, 4), (*range(9), -1, -1, -1), (0, 1, 2, -1)),  # SmolLM2-135M: a zero kv head, 3 zero q heads
    ((9, 3), 3, (9, 3), tuple(range(9)), (0, 1, 2)),
    ((9, 3), 8, (16, 8), (0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, -1, -1, -1, -1), (0, 0, 1, 1, 2, 2, -1, -1)),
    ((28, 4), 8, (32, 8), tuple(h for g in range(4) for h in (*range(7 * g, 7 * g + 7), -1)), (0, 0, 1, 1, 2, 2, 3, 3)),
    ((64, 8), 16, (64, 16), tuple(range(64)), tuple(i // 2 for i in range(16))),
])
def test_head_layouts(heads: tuple[int, int], tp: int, padded: tuple[int, int], q_source: tuple[int, ...],
                      kv_source: tuple[int, ...]) -> None:
    layout = plan_head_layout(*heads, tp)
    assert (layout.padded_heads, layout.padded_kv_heads) == padded
    assert layout.q_source == q_source and layout.kv_source == kv_source
    group = heads[0] // heads[1]
    new_group = padded[0] // padded[1]
    for h, source in enumerate(layout.q_source):  # every real query reads a copy of its own kv head
        if source >= 0:
            assert layout.kv_source[h // new_group] == source // group
    assert sorted(s for s in layout.q_source if s >= 0) == list(range(heads[0]))


def test_padded_parameters_compute_the_same_projection() -> None:
    import numpy as np

    layout = plan_head_layout(9, 3, 4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    wq = rng.standard_normal((16, 9 * 4)).astype(np.float32)  # head_dim 4
    wo = rng.standard_normal((9 * 4, 16)).astype(np.float32)
    q = pad_heads(("embed", "q_heads"), wq, layout)
    o = pad_heads(("q_heads", "embed"), wo, layout)
    assert q.shape == (16, 48) and o.shape == (48, 16)
    assert (q[:, 36:] == 0).all() and (o[36:] == 0).all()
    np.testing.assert_allclose(x @ q @ o, x @ wq @ wo, rtol=1e-5)


@pytest.mark.parametrize(("overrides", "axis"), [
    (dict(vocab_size=258), "vocab"),
    (dict(intermediate_size=130), "mlp"),
])
def test_model_dimensions_that_do_not_divide(overrides: dict[str, int], axis: str) -> None:
    with pytest.raises(ValueError, match=f"model's {axis} dimension"):
        _sharding(1, 4).check_model(tiny_config(**overrides))


def test_heads_split_over_two_different_axes_are_refused() -> None:
    with pytest.raises(ValueError, match="same single mesh axis"):
        _sharding(1, 4, ShardingRules(kv_heads=None)).check_model(tiny_config(num_heads=8, head_dim=8))


def test_replicated_embed_accepts_any_vocab() -> None:
    _sharding(1, 4, RULE_SETS["replicated-embed"]).check_model(tiny_config(vocab_size=258, num_heads=8, head_dim=8))


def test_batch_and_kv_blocks_belong_to_dp() -> None:
    with pytest.raises(ValueError, match="batch must map to 'dp'"):
        _sharding(1, 2, ShardingRules(batch="tp"))
    with pytest.raises(ValueError, match="data-parallel replicas"):
        _sharding(2, 1, ShardingRules(batch=None, kv_blocks=None))


def _seq(tokens: list[int], n: int = 1) -> list[Sequence]:
    params = SamplingParams(temperature=0, max_tokens=4, n=n)
    seqs = [Sequence("r", i, tokens, params, 0, 4) for i in range(n)]
    for child in seqs[1:]:
        child.awaiting_fork = True
    seqs[0].forks = seqs[1:]
    return seqs


def test_dp_placement_balances_follows_prefixes_and_keeps_forks_together() -> None:
    scheduler = DataParallelScheduler(2, blocks_per_replica=16, block_size=16, max_num_seqs=8,
                                      max_num_batched_tokens=256)
    shared = list(range(1, 34))  # two full blocks and one token
    first = _seq(shared)[0]
    scheduler.add(first)
    batch = scheduler.schedule()
    assert batch.dp_ranks == [0] and batch.seqs == [first]
    scheduler.complete(batch)  # registers first's two full blocks in replica 0's prefix cache
    again = _seq(shared + [99])[0]
    scheduler.add(again)  # replica 0 is busier, but holds the prefix
    other = _seq([7] * 20)[0]
    scheduler.add(other)
    parent, child = _seq([5] * 20, n=2)
    scheduler.add(parent)
    scheduler.add(child)
    ranks = {seq.seq_id: rank for rank, replica in enumerate(scheduler.replicas)
             for seq in [*replica.waiting, *replica.running]}
    assert ranks[again.seq_id] == 0 and ranks[other.seq_id] == 1
    assert ranks[parent.seq_id] == ranks[child.seq_id]
    batch = scheduler.schedule()
    assert again in batch.seqs and again.num_cached_tokens == 32
    assert scheduler.block_manager.num_blocks == 32


def test_flags() -> None:
    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    add_multihost_args(parser)
    args = parser.parse_args(["--mesh", "dp=2, tp=4", "--sharding-rules", "fsdp-like"])
    config = engine_config(args)
    assert (config.mesh, config.sharding_rules) == ("dp=2,tp=4", "fsdp-like")
    init_distributed_from_args(args)  # single process: nothing to join
    with pytest.raises(SystemExit):
        parser.parse_args(["--mesh", "tp=abc"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--sharding-rules", "megatron"])
    with pytest.raises(ValueError, match="--process-id needs"):
        init_distributed_from_args(parser.parse_args(["--process-id", "1"]))
