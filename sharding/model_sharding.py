"""Where every parameter, KV pool and step input of one model lives on a mesh.

``ModelSharding`` turns the rules table (sharding/rules.py) into concrete ``NamedSharding``s:
the loaders call ``param_sharding`` for each tensor as they read it, the runner allocates the
KV cache with ``kv_cache_sharding`` and jits its step with the batch and replicated shardings,
and ``per_replica`` makes each dp replica run the step on its own sequences and block pool.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from models.config import ModelConfig
from models.llama import KV_CACHE_LOGICAL_AXES, logical_axes_of
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
        self.model_rules = rules  # rules as adapted to a model by check_model

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
    def check_model(self, config: ModelConfig) -> None:
        """Checks every sharded model dimension divides; adapts kv heads as vLLM does.

        With fewer kv heads than shards (tp a multiple of them) the kv heads, their projections
        and the KV cache are replicated instead of split; any other dimension that does not
        divide is an error that names the rule to change.
        """
        dims = {"vocab": config.vocab_size, "embed": config.hidden_size, "q_heads": config.num_heads,
                "kv_heads": config.num_kv_heads, "mlp": config.intermediate_size}
        rules = self.rules
        for axis, size in dims.items():
            entry = getattr(rules, axis)
            shards = self.axis_size(entry)
            if size % shards == 0:
                continue
            if axis == "kv_heads" and shards % size == 0:
                logger.info("%d kv heads over %d shards: replicating kv heads", size, shards)
                rules = rules.replace(kv_heads=None)
                continue
            raise ValueError(
                f"the model's {axis} dimension ({size}) does not divide over {shards} shards "
                f"(rules {self.rules_name!r} map {axis} -> {entry!r} on mesh {describe_mesh(self.mesh)}); "
                f"use a mesh whose size divides it, or a rule set that maps {axis} elsewhere"
            )
        self.model_rules = rules

    def param_sharding(self, path: tuple[str, ...], shape: tuple[int, ...]) -> NamedSharding:
        """The placement of one parameter; loaders call it before putting the tensor on device.

        Before ``check_model`` has seen the config this cannot tell kv heads that must be
        replicated from ones that divide; ``shard_params`` then moves those few tensors.
        """
        logical = logical_axes_of(path)
        name = "/".join(path)
        if len(logical) != len(shape):
            raise ValueError(f"parameter {name} has shape {shape} but logical axes {logical}")
        spec = self.model_rules.spec(logical)
        for dim, (size, entry) in enumerate(zip(shape, spec)):
            shards = self.axis_size(entry)
            if size % shards:
                raise ValueError(
                    f"parameter {name} dimension {dim} ({logical[dim]}, size {size}) does not divide "
                    f"over {shards} shards of mesh axis {entry!r} (rules {self.rules_name!r}); use a mesh "
                    f"whose size divides it, or a rule set that maps {logical[dim]} elsewhere"
                )
        return NamedSharding(self.mesh, spec)

    def shard_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with every tensor where ``param_sharding`` says; placed ones are not moved."""
        flat = flatten_dict(params)
        for path, array in flat.items():
            target = self.param_sharding(path, array.shape)
            current = getattr(array, "sharding", None)
            if current is None or not current.is_equivalent_to(target, array.ndim):
                flat[path] = jax.device_put(array, target)
        return unflatten_dict(flat)

    def splits_heads(self) -> bool:
        return self.axis_size(self.model_rules.q_heads) > 1

    def check_attention_backend(self, backend: str) -> None:
        """Warns when a Pallas kernel would see heads split over devices: XLA cannot partition
        a custom call, so it would gather the kernel's operands (the KV pools) onto every device."""
        if backend != "reference" and self.splits_heads():
            logger.warning(
                "attention backend %r with q heads split over %d devices: the kernel is not partitioned "
                "per head shard yet, so XLA gathers its operands; use attention_backend='reference' "
                "(docs/sharding.md, Limitations)", backend, self.axis_size(self.model_rules.q_heads))

    # ---- KV cache and step inputs ----------------------------------------------------------
    def kv_cache_sharding(self) -> NamedSharding:
        """Of each layer's K and V pool ``[num_blocks, block_size, kv_heads, head_dim]``."""
        return NamedSharding(self.mesh, self.model_rules.spec(KV_CACHE_LOGICAL_AXES))

    def kv_cache_split(self) -> tuple[int, int]:
        """(how many slices the block axis is cut into, how many the kv-head axis is cut into)."""
        return self.axis_size(self.model_rules.kv_blocks), self.axis_size(self.model_rules.kv_heads)

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
