"""Each family's weight table declares exactly the parameters its module creates, and nothing
outside the table loads, shards or gets random weights silently."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.registry import SUPPORTED_ARCHITECTURES, model_family
from models.weights import assemble_params, param_shapes
from sharding.model_sharding import ModelSharding
from tests.tiny_models import tiny_config

# Every optional weight present: q/k/v biases, q/k norms and an untied LM head.
EVERY_WEIGHT = dict(attention_bias=True, qk_norm=True, tie_word_embeddings=False)


@pytest.mark.parametrize("architecture", sorted(SUPPORTED_ARCHITECTURES))
def test_table_declares_every_parameter_and_no_other(architecture: str) -> None:
    config = tiny_config(architecture=architecture, **EVERY_WEIGHT)
    table = model_family(architecture).weights
    shapes = param_shapes(config)
    weights = [table.weight_at(path) for path in shapes]
    assert len(shapes) == len(table.model) + config.num_layers * len(table.layer)
    for weight in weights:
        assert len(weight.axes) == len(shapes[weight.path].shape), weight.name
        assert table.from_hf(weight.hf) == weight and table.from_gguf(weight.gguf) == weight


def test_a_parameter_the_table_does_not_declare_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    llama = model_family("LlamaForCausalLM")
    rows = tuple(w for w in llama.weights.layer if w.path[-2] != "gate_proj")
    family = dataclasses.replace(llama, weights=dataclasses.replace(llama.weights, layer=rows))
    monkeypatch.setitem(SUPPORTED_ARCHITECTURES, "GatelessForCausalLM", family)
    with pytest.raises(ValueError, match="layers_0/mlp/gate_proj/kernel is not declared in the llama weight table"):
        param_shapes(tiny_config(architecture="GatelessForCausalLM"))


def test_sharding_an_undeclared_parameter_is_an_error() -> None:
    sharding = ModelSharding.from_spec("tp=1")
    sharding.check_model(tiny_config())
    with pytest.raises(ValueError, match="layers_0/mystery/scale is not declared"):
        sharding.shard_params({"layers_0": {"mystery": {"scale": np.ones(4, np.float32)}}})


def test_unknown_checkpoint_tensors_are_errors_not_skipped() -> None:
    config = tiny_config()
    with pytest.raises(ValueError, match="unexpected tensor 'model.layers.0.mlp.extra_proj.weight'"):
        assemble_params([("model.layers.0.mlp.extra_proj.weight", np.zeros((4, 4), np.float32))], config)
    table = model_family("LlamaForCausalLM").weights
    assert table.from_gguf("blk.0.ffn_extra.weight") is None
    assert table.ignores_hf("model.layers.0.self_attn.rotary_emb.inv_freq")
