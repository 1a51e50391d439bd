"""Mesh specs (``tp=4``, ``dp=2,tp=2``) and the device mesh they describe.

The mesh always has both axes, ``dp`` outermost and ``tp`` innermost, so that on a multi-host
machine tp groups stay on one host's fast interconnect (devices are ordered by process).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh

from sharding.rules import MESH_AXES

RESERVED_AXES = {"ep": "expert parallelism (ep) is reserved for mixture-of-experts models and not supported yet"}


def parse_mesh_spec(spec: str) -> dict[str, int]:
    """``"dp=2,tp=4"`` -> ``{"dp": 2, "tp": 4}``; axes left out have size 1."""
    if not spec or not spec.strip():
        raise ValueError("empty mesh spec; expected e.g. 'tp=4' or 'dp=2,tp=2'")
    sizes = dict.fromkeys(MESH_AXES, 1)
    seen: set[str] = set()
    for part in spec.split(","):
        name, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not name:
            raise ValueError(f"mesh spec {spec!r}: expected AXIS=SIZE entries separated by commas, got {part!r}")
        if name in RESERVED_AXES:
            raise ValueError(f"mesh spec {spec!r}: {RESERVED_AXES[name]}")
        if name not in MESH_AXES:
            raise ValueError(
                f"mesh spec {spec!r}: unknown mesh axis {name!r}; known axes: {', '.join(MESH_AXES)}"
            )
        if name in seen:
            raise ValueError(f"mesh spec {spec!r}: axis {name!r} given twice")
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"mesh spec {spec!r}: size of {name!r} must be a positive integer, got {value!r}")
        seen.add(name)
        sizes[name] = int(value)
    return sizes


def combine_mesh_flags(mesh: str | None, tensor_parallel_size: int | None = None,
                       data_parallel_size: int | None = None) -> str | None:
    """``--mesh`` and vLLM's ``--tensor-parallel-size/-tp``, ``--data-parallel-size/-dp`` as one spec.

    The sizes alone give ``tp=T``, ``dp=D`` or ``dp=D,tp=T`` (None when both are 1 or absent:
    one device), as ``--mesh`` would spell them; next to
    ``--mesh`` they must repeat its sizes, and a disagreement is an error naming both.
    """
    sizes = {"tp": tensor_parallel_size, "dp": data_parallel_size}
    flags = {"tp": "--tensor-parallel-size", "dp": "--data-parallel-size"}
    for axis, size in sizes.items():
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"{flags[axis]} must be a positive integer, got {size!r}")
    if mesh is None:
        given = {axis: size for axis, size in sizes.items() if size is not None}
        if all(size == 1 for size in given.values()):
            return None
        return ",".join(f"{axis}={given[axis]}" for axis in MESH_AXES if given.get(axis, 1) > 1)
    parsed = parse_mesh_spec(mesh)
    for axis, size in sizes.items():
        if size is not None and size != parsed[axis]:
            raise ValueError(
                f"{flags[axis]} {size} disagrees with --mesh {mesh} ({axis}={parsed[axis]}); "
                f"give one of them, or the same size in both"
            )
    return mesh


def build_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over exactly ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    needed = math.prod(sizes.values())
    shape = " x ".join(f"{name}={sizes[name]}" for name in MESH_AXES)
    if needed != len(devices):
        hint = (
            "; choose sizes whose product is the device count, or make fewer devices visible "
            "(CUDA_VISIBLE_DEVICES, --xla_force_host_platform_device_count on CPU)"
        )
        relation = "more than the" if needed > len(devices) else "not the"
        raise ValueError(f"mesh {shape} needs {needed} devices, {relation} {len(devices)} available{hint}")
    return jax.make_mesh(
        tuple(sizes[name] for name in MESH_AXES), MESH_AXES,
        axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices,
    )


def mesh_from_spec(spec: str, devices: Sequence[jax.Device] | None = None) -> Mesh:
    return build_mesh(parse_mesh_spec(spec), devices)


def describe_mesh(mesh: Mesh) -> str:
    return ",".join(f"{name}={size}" for name, size in mesh.shape.items())
