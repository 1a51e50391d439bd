"""HF model directories: ``config.json`` plus one or many ``*.safetensors`` files.

The safetensors format is an 8-byte header length, a JSON header and raw little-endian
tensor bytes; reading it through ``np.memmap`` streams one tensor at a time and lets a
truncated file be reported precisely.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (is this a HuggingFace model directory?)")
    return json.loads(path.read_text())


def safetensors_files(model_dir: Path) -> list[Path]:
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({model_dir / f for f in weight_map.values()})
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index}: shard files missing: {', '.join(absent)}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
    return files


def _read_header(file: Path) -> tuple[dict[str, Any], int]:
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{file}: truncated safetensors file (no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise ValueError(f"{file}: truncated safetensors file (header of {header_len} bytes)")
        try:
            header = json.loads(f.read(header_len))
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: corrupt safetensors header ({err})") from err
    header.pop("__metadata__", None)
    return header, 8 + header_len


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    """Yields ``(name, array)`` one tensor at a time, memory-mapped (bf16 as ml_dtypes)."""
    for file in files:
        header, data_start = _read_header(file)
        size = Path(file).stat().st_size
        for name, info in header.items():
            dtype = _DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"{file}: tensor {name!r} has unsupported dtype {info['dtype']}")
            begin, end = info["data_offsets"]
            if data_start + end > size:
                raise ValueError(
                    f"{file}: truncated safetensors file: tensor {name!r} ends at byte "
                    f"{data_start + end} but the file has {size}"
                )
            shape = tuple(info["shape"])
            if (end - begin) != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
                raise ValueError(f"{file}: tensor {name!r} byte size does not match shape {shape}")
            array = np.memmap(file, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)
            yield name, np.asarray(array)
