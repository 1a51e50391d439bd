"""The one table that maps the model's logical axes onto mesh axes, and its named variants.

The model names logical axes only (each weight's in its family's weight table, e.g.
``models.llama.LLAMA_WEIGHTS``, and the KV pools' in ``models.llama.KV_CACHE_LOGICAL_AXES``); a
rule set says, for each of them, which mesh axis (or tuple of mesh axes, or none) splits it.
Everything else in ``sharding/`` derives from this table, so a sweep over layouts is a sweep
over rule sets. Layers are unrolled in the model (each layer has its own parameters and KV
pool), so there is no "layers" axis to shard: pipeline parallelism is not offered.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jax.sharding import PartitionSpec

AxisName = str | tuple[str, ...] | None
MESH_AXES = ("dp", "tp")


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Logical axis -> mesh axis. The defaults are Megatron-style tensor parallelism with a
    vocab-parallel embedding and LM head, and data parallelism over sequences and KV blocks."""

    vocab: AxisName = "tp"
    embed: AxisName = None
    q_heads: AxisName = "tp"
    kv_heads: AxisName = "tp"
    mlp: AxisName = "tp"
    norm: AxisName = None
    kv_blocks: AxisName = "dp"  # each dp replica owns a slice of every layer's block pool
    batch: AxisName = "dp"  # the sequences (and their tokens) of one step

    def spec(self, logical: tuple[str | None, ...]) -> PartitionSpec:
        """The PartitionSpec of an array whose dimensions carry these logical axes."""
        physical = [getattr(self, axis) if axis is not None else None for axis in logical]
        used = [name for entry in physical for name in mesh_axes_of(entry)]
        if len(used) != len(set(used)):
            raise ValueError(f"logical axes {logical} map two dimensions onto one mesh axis: {physical}")
        return PartitionSpec(*physical)

    def replace(self, **changes: AxisName) -> ShardingRules:
        return dataclasses.replace(self, **changes)


RULE_SETS: dict[str, ShardingRules] = {
    "default": ShardingRules(),
    # Embedding and LM head whole on every device: no all-reduce after the lookup and no
    # cross-device reduction over the logits when sampling, at the cost of vocab x hidden
    # memory per device (twice when untied).
    "replicated-embed": ShardingRules(vocab=None),
    # Every weight split along the hidden dimension instead of heads/mlp; XLA gathers or
    # reduces around each matmul. The KV cache is not split over tp.
    "fsdp-like": ShardingRules(vocab=None, embed="tp", q_heads=None, kv_heads=None, mlp=None),
    # tp devices all hold and compute everything: the baseline that shows what tp buys.
    "replicated": ShardingRules(vocab=None, q_heads=None, kv_heads=None, mlp=None),
}


def load_rules(name_or_file: str | ShardingRules) -> tuple[str, ShardingRules]:
    """A rule set by name (see RULE_SETS) or from a JSON/YAML file of ``logical axis: mesh axis``.

    A file may start from a named set with ``extends: NAME`` (default: "default"); axes it
    does not mention keep that set's mapping. Returns a display name and the rules.
    """
    if isinstance(name_or_file, ShardingRules):
        return "custom", name_or_file
    if name_or_file in RULE_SETS:
        return name_or_file, RULE_SETS[name_or_file]
    path = Path(name_or_file)
    if not path.is_file():
        raise ValueError(
            f"unknown sharding rules {name_or_file!r}: not one of {', '.join(RULE_SETS)} and not a file"
        )
    return path.stem, rules_from_mapping(_read_mapping(path), source=str(path))


def rules_from_mapping(mapping: dict[str, Any], source: str = "<rules>") -> ShardingRules:
    mapping = dict(mapping)
    base_name = mapping.pop("extends", "default")
    if base_name not in RULE_SETS:
        raise ValueError(f"{source}: extends {base_name!r}, which is not one of {', '.join(RULE_SETS)}")
    fields = {f.name for f in dataclasses.fields(ShardingRules)}
    unknown = sorted(set(mapping) - fields)
    if unknown:
        raise ValueError(f"{source}: unknown logical axes {unknown}; known: {', '.join(sorted(fields))}")
    changes = {axis: _axis_name(value, axis, source) for axis, value in mapping.items()}
    return RULE_SETS[base_name].replace(**changes)


def _read_mapping(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: sharding rules must be a mapping of logical axis to mesh axis")
    return data


def _axis_name(value: Any, axis: str, source: str) -> AxisName:
    names = tuple(value) if isinstance(value, list | tuple) else ((value,) if value is not None else ())
    for name in names:
        if name not in MESH_AXES:
            raise ValueError(f"{source}: {axis} maps to unknown mesh axis {name!r}; mesh axes: {', '.join(MESH_AXES)}")
    if not names:
        return None
    return names[0] if len(names) == 1 else names


def mesh_axes_of(entry: AxisName) -> tuple[str, ...]:
    """The mesh axes an entry of the table names, as a tuple."""
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)
