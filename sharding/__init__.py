"""Sharding: mesh specs, the logical-to-mesh axis rules, data-parallel replicas, multi-host.

``ModelSharding.from_spec("dp=2,tp=2", rules="default")`` is the entry point; see
docs/sharding.md.
"""

from sharding.mesh import build_mesh, mesh_from_spec, parse_mesh_spec
from sharding.model_sharding import ModelSharding
from sharding.rules import RULE_SETS, ShardingRules, load_rules

__all__ = ["RULE_SETS", "ModelSharding", "ShardingRules", "build_mesh", "load_rules", "mesh_from_spec",
           "parse_mesh_spec"]
