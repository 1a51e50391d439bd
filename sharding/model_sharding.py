"""Where every parameter, KV pool and step input of one model lives on a mesh.

``ModelSharding`` turns the rules table (sharding/rules.py) into concrete ``NamedSharding``s:
the loaders call ``param_sharding`` for each tensor as they read it (with its declaration from
the model family's weight table, which names its logical axes), the runner allocates the
KV cache with ``kv_cache_sharding`` and jits its step with the batch and replicated shardings,
and ``per_replica`` makes each dp replica run the step on its own sequences and block pool.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from models.config import ModelConfig
from models.head_layout import HeadLayout, pad_heads, padded_config, padded_shape, padding_bytes, plan_head_layout
from models.llama import KV_CACHE_LOGICAL_AXES
from models.registry import model_family
from models.weight_table import Weight, WeightTable
from ops.head_sharded_attention import HeadSharding
from sharding.mesh import describe_mesh, mesh_from_spec
from sharding.rules import AxisName, ShardingRules, load_rules, mesh_axes_of

logger = logging.getLogger(__name__)

REPLICA_AXIS = "dp"


class ModelSharding:
    def __init__(self, mesh: Mesh, rules: ShardingRules, rules_name: str = "custom") -> None:
        for axis in ("batch", "kv_blocks"):
            if getattr(rules, axis) not in (REPLICA_AXIS, None):
                raise ValueError(
                    f"sharding rules {rules_name!r}: {axis} must map to {REPLICA_AXIS!r} or nothing "
                    f"(sequences and their KV blocks are split over data-parallel replicas only)"
                )
        if mesh.shape[REPLICA_AXIS] > 1 and (rules.batch, rules.kv_blocks) != (REPLICA_AXIS, REPLICA_AXIS):
            raise ValueError(
                f"mesh {describe_mesh(mesh)} has data-parallel replicas but rules {rules_name!r} do not map "
                f"batch and kv_blocks to {REPLICA_AXIS!r}"
            )
        self.mesh = mesh
        self.rules_name = rules_name
        self.rules = rules
        self.head_layout: HeadLayout | None = None  # set by check_model
        self.model_config: ModelConfig | None = None  # the padded config, set by check_model
        self.weights: WeightTable | None = None  # the model family's, set by check_model

    @classmethod
    def from_spec(
        cls, spec: str, rules: str | ShardingRules = "default", devices: Sequence[jax.Device] | None = None
    ) -> ModelSharding:
        name, table = load_rules(rules)
        return cls(mesh_from_spec(spec, devices), table, name)

    @property
    def dp(self) -> int:
        return int(self.mesh.shape[REPLICA_AXIS])

    @property
    def tp(self) -> int:
        return int(self.mesh.shape["tp"])

    def axis_size(self, entry: AxisName) -> int:
        return math.prod(int(self.mesh.shape[name]) for name in mesh_axes_of(entry))

    def describe(self) -> str:
        platform = self.mesh.devices.flat[0].platform
        return (f"mesh {describe_mesh(self.mesh)} over {self.mesh.size} {platform} devices, "
                f"sharding rules {self.rules_name!r}")

    # ---- the model -----------------------------------------------------------------------
    def check_model(self, config: ModelConfig) -> ModelConfig:
        """Checks every sharded model dimension divides; pads the heads where they do not.

        Returns the config the model runs with: the same, or with padded head counts
        (``models.head_layout``: zero query heads, copied or zero kv heads), which computes the
        same function. Any other dimension that does not divide is an error naming the rule.
        """
        rules = self.rules
        q_entry, kv_entry = rules.q_heads, rules.kv_heads
        heads_split = self.axis_size(q_entry) > 1 or self.axis_size(kv_entry) > 1
        if heads_split and (q_entry != kv_entry or not isinstance(q_entry, str)):
            raise ValueError(
                f"rules {self.rules_name!r} map q_heads -> {q_entry!r} and kv_heads -> {kv_entry!r}: "
                "split heads need both on the same single mesh axis (attention runs per head shard)"
            )
        dims = {"vocab": config.vocab_size, "embed": config.hidden_size, "mlp": config.intermediate_size}
        for axis, size in dims.items():
            entry = getattr(rules, axis)
            shards = self.axis_size(entry)
            if size % shards:
                raise ValueError(
                    f"the model's {axis} dimension ({size}) does not divide over {shards} shards "
                    f"(rules {self.rules_name!r} map {axis} -> {entry!r} on mesh {describe_mesh(self.mesh)}); "
                    f"use a mesh whose size divides it, or a rule set that maps {axis} elsewhere"
                )
        layout = plan_head_layout(config.num_heads, config.num_kv_heads, self.axis_size(q_entry))
        self.head_layout = layout
        if not layout.is_identity:
            self._log_padding(config, layout)
        self.model_config = padded_config(config, layout)
        self.weights = model_family(config.architecture).weights
        return self.model_config

    def _log_padding(self, config: ModelConfig, layout: HeadLayout) -> None:
        shards = self.axis_size(self.rules.q_heads)
        weights, kv_per_token = padding_bytes(config, layout, jnp.dtype(config.jnp_dtype).itemsize)
        kv_share = layout.padded_kv_heads / max(shards, 1) / config.num_kv_heads
        logger.warning(
            "%d query / %d kv heads over %d shards need padding: %s; costs %.1f MiB more weights "
            "(%.1f MiB per device) and %d more KV-cache bytes per token (each device holds %.2fx the "
            "unsharded model's KV per token)",
            config.num_heads, config.num_kv_heads, shards, layout.describe(), weights / 2**20,
            weights / shards / 2**20, kv_per_token, kv_share,
        )

    def head_sharding(self) -> HeadSharding | None:
        """Where attention runs per head shard (``ops.head_sharded_attention``), or None."""
        if not self.splits_heads():
            return None
        return HeadSharding(self.mesh, cast(str, self.rules.q_heads))  # a single axis name (check_model)

    def param_sharding(self, weight: Weight, shape: tuple[int, ...]) -> NamedSharding:
        """The placement of one parameter; loaders call it before putting the tensor on device.

        A tensor still in the checkpoint's head layout (before ``check_model`` has seen the
        config, or before ``shard_params`` pads it) keeps any dimension that does not divide
        whole; ``shard_params`` then pads and places it.
        """
        logical, name = weight.axes, weight.name
        if len(logical) != len(shape):
            raise ValueError(f"parameter {name} has shape {shape} but logical axes {logical}")
        spec = list(self.rules.spec(logical))
        final = self.head_layout is not None and padded_shape(logical, shape, self.head_layout) == tuple(shape)
        for dim, (size, entry) in enumerate(zip(shape, spec, strict=True)):
            shards = self.axis_size(entry)
            if size % shards == 0:
                continue
            if not final:
                spec[dim] = None
                continue
            raise ValueError(
                f"parameter {name} dimension {dim} ({logical[dim]}, size {size}) does not divide "
                f"over {shards} shards of mesh axis {entry!r} (rules {self.rules_name!r}); use a mesh "
                f"whose size divides it, or a rule set that maps {logical[dim]} elsewhere"
            )
        return NamedSharding(self.mesh, PartitionSpec(*spec))

    def shard_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` padded to the head layout and placed as ``param_sharding`` says.

        Tensors already in place are not moved; a tensor to pad is padded on its devices and
        lands directly in its final sharding, one tensor at a time.
        """
        if self.head_layout is None or self.weights is None:
            raise RuntimeError("shard_params before check_model: the head layout is not known yet")
        flat = flatten_dict(params)
        for path, array in flat.items():
            weight = self.weights.weight_at(path)
            shape = padded_shape(weight.axes, array.shape, self.head_layout)
            target = self.param_sharding(weight, shape)
            if shape != tuple(array.shape):
                pad = jax.jit(functools.partial(pad_heads, weight.axes, layout=self.head_layout, xp=jnp),
                              out_shardings=target)
                flat[path] = pad(array)
                continue
            current = getattr(array, "sharding", None)
            if current is None or not current.is_equivalent_to(target, array.ndim):
                flat[path] = jax.device_put(array, target)
        return unflatten_dict(flat)

    def splits_heads(self) -> bool:
        return self.axis_size(self.rules.q_heads) > 1

    def check_attention_backend(self, backend: str) -> None:
        """Every backend runs per head shard when heads are split (``head_sharding``); nothing
        to refuse. Kept as the runner's hook for backend/mesh combinations."""
        if self.splits_heads():
            logger.info("attention backend %r runs per head shard over mesh axis %r",
                        backend, self.rules.q_heads)

    # ---- KV cache and step inputs ----------------------------------------------------------
    def kv_cache_sharding(self) -> NamedSharding:
        """Of each layer's K and V pool ``[num_blocks, block_size, kv_heads, head_dim]``."""
        return NamedSharding(self.mesh, self.rules.spec(KV_CACHE_LOGICAL_AXES))

    def kv_cache_split(self) -> tuple[int, int]:
        """(how many slices the block axis is cut into, how many the kv-head axis is cut into)."""
        return self.axis_size(self.rules.kv_blocks), self.axis_size(self.rules.kv_heads)

    def batch_sharding(self) -> NamedSharding:
        """Of every step input: its leading (token or sequence) axis is split over replicas."""
        return NamedSharding(self.mesh, PartitionSpec(self.rules.batch))

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def per_replica(self, step: Callable[..., Any]) -> Callable[..., Any]:
        """Runs ``step(params, kv_caches, *inputs)`` once per dp replica on its own slice.

        Each replica sees its own sequences and its own part of every block pool (block ids
        local to it), so attention never reaches across replicas; within a replica the tp
        axis stays automatic and XLA inserts the tensor-parallel collectives.
        """
        if self.dp == 1:
            return step
        sliced = PartitionSpec(REPLICA_AXIS)

        def replicated_step(params: Any, *sliced_args: Any) -> Any:
            return jax.shard_map(
                step, mesh=self.mesh, in_specs=(PartitionSpec(), *[sliced] * len(sliced_args)),
                out_specs=sliced, axis_names={REPLICA_AXIS}, check_vma=False,
            )(params, *sliced_args)

        return replicated_step

    def put_batch(self, inputs: Any) -> Any:
        """Step inputs (host numpy, the same on every process) as arrays jit accepts.

        One process lets jit place numpy itself; across processes each process builds the
        shards it holds from its identical copy.
        """
        if jax.process_count() == 1:
            return inputs
        sharding = self.batch_sharding()

        def to_global(array: np.ndarray) -> jax.Array:
            return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

        return jax.tree.map(to_global, inputs)
