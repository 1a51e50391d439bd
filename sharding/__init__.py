"""Sharding: mesh specs, the logical-to-mesh axis rules, multi-host.

``ModelSharding.from_spec("dp=2,tp=2", rules="default")`` is the entry point; see
docs/sharding.md. Each name below is imported when first used, so importing the package loads
nothing (not even JAX).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sharding.mesh import build_mesh, mesh_from_spec, parse_mesh_spec
    from sharding.model_sharding import ModelSharding
    from sharding.rules import RULE_SETS, ShardingRules, load_rules

_EXPORTS = {
    "RULE_SETS": "sharding.rules",
    "ModelSharding": "sharding.model_sharding",
    "ShardingRules": "sharding.rules",
    "build_mesh": "sharding.mesh",
    "load_rules": "sharding.rules",
    "mesh_from_spec": "sharding.mesh",
    "parse_mesh_spec": "sharding.mesh",
}
__all__ = [
    "ModelSharding",
    "RULE_SETS",
    "ShardingRules",
    "build_mesh",
    "load_rules",
    "mesh_from_spec",
    "parse_mesh_spec",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
