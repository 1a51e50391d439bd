"""orbax-checkpoint cache of converted parameters, so a second start skips conversion."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import jax
from flax.traverse_util import flatten_dict, unflatten_dict

from models.config import ModelConfig
from models.registry import model_family
from models.weight_table import ParamPath
from models.weights import ShardingFor, param_shapes


def cache_root() -> Path:
    return Path(os.environ.get("TESSERA_CACHE_DIR", Path.home() / ".cache" / "tessera")) / "params"


def cache_key(source: Path, config: ModelConfig) -> str:
    """Changes whenever the source file(s) or the target dtype change."""
    source = source.resolve()
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    digest = hashlib.sha256(config.dtype.encode())
    for f in files:
        stat = f.stat()
        digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{source.name}-{digest.hexdigest()[:16]}"


def restore_params(
    path: Path, config: ModelConfig, sharding_for: ShardingFor | None = None
) -> dict[str, Any] | None:
    """The cached parameters placed as ``sharding_for`` says, or None if there is no cache."""
    import orbax.checkpoint as ocp

    if not (path / "_CHECKPOINT_METADATA").exists() and not path.is_dir():
        return None
    table = model_family(config.architecture).weights
    abstract: dict[ParamPath, jax.ShapeDtypeStruct] = {}
    for p, spec in param_shapes(config).items():
        if sharding_for is None:
            sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        else:
            sharding = sharding_for(table.weight_at(p), spec.shape)
        abstract[p] = jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=sharding)
    try:
        with ocp.StandardCheckpointer() as ckpt:
            return ckpt.restore(path.resolve(), unflatten_dict(abstract))
    except (FileNotFoundError, ValueError):
        return None


def save_params(path: Path, params: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp

    path.parent.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path.resolve(), params, force=True)
        ckpt.wait_until_finished()


def flat_param_count(params: dict[str, Any]) -> int:
    return sum(int(x.size) for x in flatten_dict(params).values())
