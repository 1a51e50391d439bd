"""One declaration per weight: a model family's parameters under every name they go by.

A parameter has a Flax path (the modules' names), an HF safetensors name, a GGUF (llama.cpp)
name and logical axes (which ``sharding/`` maps onto the mesh), and HF stores projections as
``[out, in]`` where Flax wants ``[in, out]``. A family lists each weight once with all of them
(``models/llama.py: LLAMA_WEIGHTS``); the safetensors and GGUF loaders, the dummy loader, the
checkpoint cache and the sharding read that table, and a parameter it does not declare is an
error, never a guess.

Per-layer weights are declared relative to their decoder layer; every scheme numbers layers
the same way (Flax ``layers_3/...``, HF ``model.layers.3....``, GGUF ``blk.3....``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable

ParamPath = tuple[str, ...]
LogicalAxes = tuple[str | None, ...]
NORM_AXES: LogicalAxes = ("norm",)


@dataclasses.dataclass(frozen=True)
class Weight:
    """One parameter: its Flax path, logical axes, HF name, GGUF name and HF-to-Flax transpose."""

    path: ParamPath
    axes: LogicalAxes  # one logical axis name (or None) per dimension
    hf: str
    gguf: str
    transpose: bool = False  # HF's [out, in] -> Flax's [in, out]

    @property
    def is_norm(self) -> bool:
        """Norm scales start at one in random (dummy) weights; everything else is noise."""
        return self.axes == NORM_AXES

    @property
    def name(self) -> str:
        return "/".join(self.path)

    def in_layer(self, index: int) -> Weight:
        """This per-layer weight as decoder layer ``index``'s, in every naming scheme."""
        return dataclasses.replace(
            self, path=(f"layers_{index}", *self.path),
            hf=f"model.layers.{index}.{self.hf}", gguf=f"blk.{index}.{self.gguf}",
        )


# How each scheme names layer i's weights: (pattern splitting off the index, the name within the layer).
_LAYER_NAMES: dict[str, tuple[re.Pattern[str], Callable[[Weight], str]]] = {
    "path": (re.compile(r"layers_(\d+)/(.+)"), lambda w: w.name),
    "hf": (re.compile(r"model\.layers\.(\d+)\.(.+)"), lambda w: w.hf),
    "gguf": (re.compile(r"blk\.(\d+)\.(.+)"), lambda w: w.gguf),
}


@dataclasses.dataclass(frozen=True)
class WeightTable:
    """Every weight a model family may have; which of them a model has depends on its config."""

    family: str
    model: tuple[Weight, ...]  # in the model's own scope (embedding, final norm, LM head)
    layer: tuple[Weight, ...]  # in each decoder layer's scope
    hf_ignored: str = r"(rotary_emb\.inv_freq|\.rotary_emb\.)"  # HF tensors the model recomputes, not loads

    def weight_at(self, path: ParamPath) -> Weight:
        """The declaration of the Flax parameter at ``path``; an undeclared one is an error."""
        weight = self._find("path", "/".join(path))
        if weight is None:
            raise ValueError(
                f"parameter {'/'.join(path)} is not declared in the {self.family} weight table: "
                "declare it (with its HF and GGUF names and logical axes) next to the module that creates it"
            )
        return weight

    def from_hf(self, name: str) -> Weight | None:
        """The weight an HF tensor name loads into, or None for a name the family does not have."""
        return self._find("hf", name)

    def from_gguf(self, name: str) -> Weight | None:
        return self._find("gguf", name)

    def ignores_hf(self, name: str) -> bool:
        return re.search(self.hf_ignored, name) is not None

    def _find(self, scheme: str, name: str) -> Weight | None:
        model, layer = self._by_name[scheme]
        if name in model:
            return model[name]
        pattern, _ = _LAYER_NAMES[scheme]
        match = pattern.fullmatch(name)
        if match is None or match.group(2) not in layer:
            return None
        return layer[match.group(2)].in_layer(int(match.group(1)))

    @functools.cached_property
    def _by_name(self) -> dict[str, tuple[dict[str, Weight], dict[str, Weight]]]:
        """Per scheme: the model-scope and the layer-scope weights by their name in that scheme."""
        return {scheme: ({key(w): w for w in self.model}, {key(w): w for w in self.layer})
                for scheme, (_, key) in _LAYER_NAMES.items()}

