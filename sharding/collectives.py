"""Counts the collectives XLA put in a compiled program, for checking a tensor-parallel step.

Megatron-style tensor parallelism needs exactly two all-reduces per decoder layer (after
``o_proj`` and after ``down_proj``); anything more (an all-gather of the KV pool, a gathered
weight, an all-to-all) is a layout mistake that costs bandwidth on every step. ``count_collectives``
reads the optimized HLO text of ``jit(...).lower(...).compile()`` and returns how many of each
collective it holds, with the element count of the largest of each kind, so a test or a
benchmark can say where they sit (docs/sharding.md, "Collectives").
"""

from __future__ import annotations

import dataclasses
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# "%name = f32[8,64]{1,0} all-reduce(...)", also the async "-start" forms GPUs use
_INSTRUCTION = re.compile(r"=\s+(?:\(?)([a-z0-9]+)\[([\d,]*)\][^ ]*\)?\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


@dataclasses.dataclass
class CollectiveCount:
    count: int = 0
    largest_elements: int = 0  # elements of the biggest operand of this kind
    shapes: list[str] = dataclasses.field(default_factory=list)


def count_collectives(hlo_text: str) -> dict[str, CollectiveCount]:
    """Every collective of the compiled HLO by kind (kinds that do not occur are absent)."""
    found: dict[str, CollectiveCount] = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.search(line)
        if match is None:
            continue
        dtype, dims, kind = match.groups()
        elements = 1
        for d in filter(None, dims.split(",")):
            elements *= int(d)
        entry = found.setdefault(kind, CollectiveCount())
        entry.count += 1
        entry.largest_elements = max(entry.largest_elements, elements)
        entry.shapes.append(f"{dtype}[{dims}]")
    return found


def describe_collectives(found: dict[str, CollectiveCount], num_layers: int) -> str:
    if not found:
        return "no collectives"
    parts = []
    for kind, entry in sorted(found.items()):
        shapes = ", ".join(sorted(set(entry.shapes)))
        parts.append(f"{kind}: {entry.count} ({entry.count / num_layers:.2f} per layer; shapes {shapes})")
    return "; ".join(parts)
