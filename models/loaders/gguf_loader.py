"""GGUF files (llama.cpp's format): config, tokenizer metadata and dequantized weights.

``read_gguf(path)`` opens the file (memory-mapped, nothing is dequantized yet) and returns a
``GGUFModel`` whose ``hf_config`` is an HF ``config.json``-style dict and whose ``tensors()``
yields ``(hf_name, float32 array in HF layout)`` one tensor at a time, ready for
``models.weights.assemble_params``. Tensor names translate through the model family's weight
table (``models.weight_table``), which declares each weight's GGUF name next to its HF name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderTensor
from gguf.quants import dequantize

from models.registry import model_family
from models.weight_table import WeightTable

Q = GGMLQuantizationType

# GGUF ``general.architecture`` -> HF ``architectures[0]``. Mistral files use "llama".
SUPPORTED_ARCHS: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
DEQUANTIZABLE: frozenset[GGMLQuantizationType] = frozenset(
    {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K}
)

# Llama 3.1's rope scaling arrives as precomputed per-frequency factors, folded into hf_config.
_ROPE_FREQS = "rope_freqs.weight"


@dataclasses.dataclass(frozen=True)
class TokenizerParts:
    """The tokenizer as GGUF metadata describes it (``tokenizer.ggml.*``)."""

    model: str | None  # tokenizer.ggml.model: "gpt2" for byte-level BPE
    pre: str | None  # tokenizer.ggml.pre: which pre-tokenizer regex the merges were learned with
    tokens: list[str]
    token_types: list[int]  # llama.cpp's: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    merges: list[str]  # "left right", best first
    bos_token_id: int | None
    eos_token_id: int | None
    eot_token_id: int | None
    eom_token_id: int | None
    pad_token_id: int | None
    unk_token_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None


class GGUFModel:
    """An opened GGUF file; weights stay memory-mapped until ``tensors()`` reads them."""

    def __init__(self, path: Path, reader: GGUFReader) -> None:
        self.path = path
        self._reader = reader
        self.architecture: str = _field(reader, "general.architecture", path=path)
        if self.architecture not in SUPPORTED_ARCHS:
            raise ValueError(
                f"{path}: unsupported GGUF architecture {self.architecture!r}; "
                f"supported: {', '.join(sorted(SUPPORTED_ARCHS))}"
            )
        self._weights = model_family(SUPPORTED_ARCHS[self.architecture]).weights
        self._by_name: dict[str, ReaderTensor] = {t.name: t for t in reader.tensors}
        for tensor in reader.tensors:
            if tensor.name != _ROPE_FREQS:
                _hf_name(self._weights, tensor.name, path)
                _require_dequantizable(tensor, path)
        self.tokenizer_parts = self._read_tokenizer_parts()
        self.hf_config: dict[str, Any] = self._build_hf_config()

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yields ``(hf_name, float32 array in HF layout)``, dequantizing one tensor at a time."""
        heads = self.hf_config["num_attention_heads"]
        kv_heads = self.hf_config["num_key_value_heads"]
        for tensor in self._reader.tensors:
            if tensor.name == _ROPE_FREQS:
                continue
            name = _hf_name(self._weights, tensor.name, self.path)
            array = dequantize_tensor(tensor, self.path)
            # llama.cpp interleaves the rotary halves of q/k rows for its rope; HF's rotate-half
            # layout is the un-interleaved one. Qwen files are written in HF's layout.
            if self.architecture == "llama":
                if ".q_proj." in name:
                    array = unpermute_qk(array, heads)
                elif ".k_proj." in name:
                    array = unpermute_qk(array, kv_heads)
            yield name, array

    def _get(self, key: str, default: Any = None) -> Any:
        return _field(self._reader, key, default, path=self.path)

    def _read_tokenizer_parts(self) -> TokenizerParts:
        t = "tokenizer.ggml."
        return TokenizerParts(
            model=self._get(t + "model"),
            pre=self._get(t + "pre"),
            tokens=self._get(t + "tokens", []),
            token_types=[int(x) for x in self._get(t + "token_type", [])],
            merges=self._get(t + "merges", []),
            bos_token_id=self._get(t + "bos_token_id"),
            eos_token_id=self._get(t + "eos_token_id"),
            eot_token_id=self._get(t + "eot_token_id"),
            eom_token_id=self._get(t + "eom_token_id"),
            pad_token_id=self._get(t + "padding_token_id"),
            unk_token_id=self._get(t + "unknown_token_id"),
            add_bos=bool(self._get(t + "add_bos_token", False)),
            add_eos=bool(self._get(t + "add_eos_token", False)),
            chat_template=self._get("tokenizer.chat_template"),
        )

    def _build_hf_config(self) -> dict[str, Any]:
        a = self.architecture + "."
        tok = self.tokenizer_parts
        hidden = int(self._require(a + "embedding_length"))
        heads = int(self._require(a + "attention.head_count"))
        kv_heads = self._get(a + "attention.head_count_kv", heads)
        if isinstance(kv_heads, list):
            raise ValueError(f"{self.path}: per-layer head_count_kv is not supported")
        embed = self._require_tensor("token_embd.weight")
        head_dim = int(self._get(a + "attention.key_length") or hidden // heads)
        eos_ids = list(dict.fromkeys(
            i for i in (tok.eos_token_id, tok.eot_token_id, tok.eom_token_id) if i is not None
        ))
        config: dict[str, Any] = {
            "architectures": [SUPPORTED_ARCHS[self.architecture]],
            "model_type": self.architecture,
            "vocab_size": int(self._get(a + "vocab_size") or embed.shape[1]),
            "hidden_size": hidden,
            "intermediate_size": int(self._require(a + "feed_forward_length")),
            "num_hidden_layers": int(self._require(a + "block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(kv_heads),
            "head_dim": head_dim,
            "rms_norm_eps": self._get(a + "attention.layer_norm_rms_epsilon", 1e-6),
            "rope_theta": self._get(a + "rope.freq_base", 10000.0),
            "max_position_embeddings": int(self._get(a + "context_length", 4096)),
            "tie_word_embeddings": "output.weight" not in self._by_name,
            "attention_bias": "blk.0.attn_q.bias" in self._by_name,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None),
            "pad_token_id": tok.pad_token_id,
            "torch_dtype": self._checkpoint_dtype(),
        }
        window = self._get(a + "attention.sliding_window")
        if window:
            config["sliding_window"] = int(window)
        if self.architecture == "qwen2":
            config["use_sliding_window"] = False
        rope_dim = int(self._get(a + "rope.dimension_count") or head_dim)
        scaling = self._rope_scaling(config["rope_theta"], rope_dim)
        if scaling:
            config["rope_scaling"] = scaling
        return config

    def _rope_scaling(self, theta: float, rope_dim: int) -> dict[str, Any] | None:
        a = self.architecture + "."
        if _ROPE_FREQS in self._by_name:
            factors = dequantize_tensor(self._by_name[_ROPE_FREQS], self.path)
            return llama3_scaling_from_factors(factors, theta, rope_dim, self.path)
        kind = self._get(a + "rope.scaling.type")
        if kind in (None, "none"):
            return None
        scaling: dict[str, Any] = {"rope_type": kind, "factor": self._get(a + "rope.scaling.factor", 1.0)}
        original = self._get(a + "rope.scaling.original_context_length")
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling

    def _checkpoint_dtype(self) -> str:
        """float16/bfloat16 when every matrix is stored so; quantized or mixed files: float32."""
        kinds = {t.tensor_type for t in self._reader.tensors if len(t.shape) == 2}
        if kinds == {Q.F16}:
            return "float16"
        if kinds == {Q.BF16}:
            return "bfloat16"
        return "float32"

    def _require(self, key: str) -> Any:
        value = self._get(key)
        if value is None:
            raise ValueError(f"{self.path}: GGUF metadata key {key!r} is missing")
        return value

    def _require_tensor(self, name: str) -> ReaderTensor:
        if name not in self._by_name:
            raise ValueError(f"{self.path}: tensor {name!r} is missing")
        return self._by_name[name]


def read_gguf(path: str | Path) -> GGUFModel:
    """Opens and validates a GGUF file (architecture, tensor names and types) without reading weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError) as err:
        raise ValueError(f"{path}: not a readable GGUF file, truncated or corrupt ({err})") from err
    return GGUFModel(path, reader)


def dequantize_tensor(tensor: ReaderTensor, path: Path | str = "<gguf>") -> np.ndarray:
    """The tensor as float32 in numpy (= HF) axis order: ``[out, in]`` for a matrix."""
    _require_dequantizable(tensor, path)
    shape = tuple(int(d) for d in reversed(tensor.shape))
    return np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)


def unpermute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverts llama.cpp's q/k row permutation: within each head, rows were reordered from
    ``[first half, second half]`` to interleaved pairs; this puts them back (weights or biases)."""
    half = weight.shape[0] // num_heads // 2
    return (
        weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def llama3_scaling_from_factors(
    factors: np.ndarray, theta: float, rope_dim: int, path: Path | str = "<gguf>"
) -> dict[str, Any] | None:
    """Recovers HF's llama3 ``rope_scaling`` from llama.cpp's per-frequency divisors.

    Each divisor is 1 (short wavelengths), ``factor`` (long ones) or, in between,
    ``1 / ((1 - s) / factor + s)`` with ``s = (original / wavelength - low) / (high - low)``,
    which is linear in 1/wavelength. Only two of (original, low, high) are identifiable, and
    any consistent choice gives the same frequencies; Llama 3.x uses low = 1, so we fix that.
    """
    factors = factors.astype(np.float64)
    factor = float(factors.max())
    if np.allclose(factors, 1.0):
        return None
    inv_freq = 1.0 / (theta ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim))
    if factors.shape != inv_freq.shape:
        raise ValueError(f"{path}: {_ROPE_FREQS} has {factors.size} entries, expected {inv_freq.size}")
    middle = (factors > 1 + 1e-4) & (factors < factor - 1e-4 * factor)
    if middle.sum() < 2:
        raise ValueError(f"{path}: cannot infer llama3 rope scaling from {_ROPE_FREQS}")
    smooth = (1 / factors[middle] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(inv_freq[middle] / (2 * math.pi), smooth, 1)
    # smooth = slope / wavelength + intercept; with low = 1: intercept = -1 / (high - 1).
    high = 1.0 - 1.0 / intercept
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": float(high),
        "original_max_position_embeddings": int(round(slope * (high - 1.0))),
    }


def _require_dequantizable(tensor: ReaderTensor, path: Path | str) -> None:
    if tensor.tensor_type not in DEQUANTIZABLE:
        raise ValueError(
            f"{path}: tensor {tensor.name!r} has GGUF type {tensor.tensor_type.name}, which is not "
            f"supported; supported: {', '.join(sorted(q.name for q in DEQUANTIZABLE))}"
        )


def _hf_name(weights: WeightTable, gguf_name: str, path: Path | str) -> str:
    weight = weights.from_gguf(gguf_name)
    if weight is None:
        raise ValueError(f"{path}: unexpected tensor {gguf_name!r}")
    return weight.hf


def _field(reader: GGUFReader, key: str, default: Any = None, *, path: Path | str) -> Any:
    field = reader.get_field(key)
    if field is None:
        return default
    try:
        value = field.contents()
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: unreadable GGUF metadata {key!r} ({err})") from err
    if field.types == [GGUFValueType.FLOAT32]:
        # Shortest decimal that rounds to the stored float32: 1e-05, not 9.999999747378752e-06.
        return float(str(np.float32(value)))
    return value
