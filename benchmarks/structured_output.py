"""Costs of constrained decoding on the host and the device, without the model.

Measures, for the default model's tokenizer (SmolLM2, 49k) and a synthetic 128k vocabulary
(SmolLM2's tokens plus longer words made of them, the size of Llama 3's):
  - building the grammar library's tokenizer index (once per server start);
  - compiling a ~30-property JSON schema (first request with a new schema; later ones hit the cache);
  - mask time per decode step at batch B: B requests each writing its own document of that
    schema, masks filled for all rows (llguidance's thread pool) and tokens accepted;
  - on the JAX device: the jitted ``apply_bitmask`` + argmax at [B, vocab] against argmax alone.

  python -m benchmarks.structured_output --batch 64 --steps 200
  python -m benchmarks.structured_output --batch 64 --steps 200 --skip-host   # device part only
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any, cast

import jax
import jax.numpy as jnp
import llguidance
import llguidance.hf
import numpy as np

from engine.environment import configure_process
from engine.structured_output import (
    GrammarCompiler,
    StructuredOutputSpec,
    allocate_bitmask,
    apply_bitmask,
    fill_bitmasks,
)
from engine.structured_output.grammar_compiler import MASK_SLICES

LLAMA3_VOCAB = 128256


def thirty_property_schema() -> dict[str, Any]:
    """A typical API-response schema: 30 properties of mixed types, nested object, arrays, enums."""
    props: dict[str, Any] = {}
    for i in range(8):
        props[f"name_{i}"] = {"type": "string", "maxLength": 24}
    for i in range(6):
        props[f"count_{i}"] = {"type": "integer", "minimum": 0, "maximum": 100000}
    for i in range(4):
        props[f"score_{i}"] = {"type": "number"}
    for i in range(4):
        props[f"flag_{i}"] = {"type": "boolean"}
    for i in range(3):
        props[f"status_{i}"] = {"enum": ["active", "inactive", "pending", "archived"]}
    for i in range(3):
        props[f"tags_{i}"] = {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4}
    props["address"] = {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                                         "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                        "required": ["street", "city", "zip"], "additionalProperties": False}
    props["created"] = {"type": "string", "format": "date"}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def random_document(schema: dict[str, Any], rng: random.Random) -> str:
    """A document that validates against ``thirty_property_schema()``, with random values."""
    words = ["alpha", "Paris", "blue sky", "node-7", "Zoë", "x", "report", "42 things"]
    doc: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        kind = prop.get("type", "enum")
        if kind == "string":
            doc[name] = "2026-11-30" if prop.get("format") == "date" else rng.choice(words)
        elif kind == "integer":
            doc[name] = rng.randint(0, 100000)
        elif kind == "number":
            doc[name] = round(rng.uniform(-100, 100), rng.randint(0, 4))
        elif kind == "boolean":
            doc[name] = rng.random() < 0.5
        elif kind == "enum":
            doc[name] = rng.choice(prop["enum"])
        elif kind == "array":
            doc[name] = [rng.choice(words)[:12] for _ in range(rng.randint(0, 4))]
        else:
            doc[name] = {"street": "1 Main St", "city": rng.choice(words), "zip": f"{rng.randint(0, 99999):05d}"}
    return json.dumps(doc, ensure_ascii=False)


def synthetic_tokenizer(base: Any, vocab_size: int, seed: int = 0) -> llguidance.LLTokenizer:
    """``base``'s tokens plus random longer words, up to ``vocab_size`` tokens: a word token
    (with or without its leading space) followed by a word piece, which is how real vocabularies
    grow (Llama 3's extra tokens are mostly longer and multilingual words). Text is encoded with
    the base tokenizer (a valid tokenization in the larger vocabulary)."""
    base_ll = llguidance.hf.from_tokenizer(base.hf, eos_token=sorted(base.eos_token_ids), slices=[])
    specials = [i for i in range(base.vocab_size) if base_ll.is_special_token(i)]
    tokens = [base_ll.decode_bytes([i]) if i not in specials else base.hf.convert_ids_to_tokens(i).encode()
              for i in range(base.vocab_size)]
    heads = [t for i, t in enumerate(tokens) if i not in specials and t.lstrip(b" ").isalpha()]
    pieces = [t for t in heads if t.isalpha()]
    seen, rng = set(tokens), random.Random(seed)
    while len(tokens) < vocab_size:
        token = rng.choice(heads) + rng.choice(pieces)
        if token not in seen:
            seen.add(token)
            tokens.append(token)

    class Wrapped:
        eos_token_id = min(base.eos_token_ids)
        bos_token_id = base.bos_token_id
        special_token_ids = specials

        def __call__(self, text: bytes) -> list[int]:
            return base.encode(text.decode("utf-8", errors="replace"), add_special_tokens=False)

    Wrapped.tokens = tokens  # type: ignore[attr-defined]
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(Wrapped()), slices=MASK_SLICES)


def host_costs(ll_tokenizer: llguidance.LLTokenizer, encode: Any, batch: int, steps: int) -> dict[str, float]:
    schema = thirty_property_schema()
    compiler = GrammarCompiler(ll_tokenizer)
    spec = StructuredOutputSpec.json_schema(schema)
    t0 = time.perf_counter()
    compiled = compiler.compile(spec)
    compile_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    first = compiled.matcher()
    first.fill_bitmask(allocate_bitmask(1, ll_tokenizer.vocab_size), 0)
    first_mask_ms = (time.perf_counter() - t0) * 1e3
    rng = random.Random(0)
    docs = [encode(random_document(schema, rng)) for _ in range(batch)]
    matchers = [compiled.matcher() for _ in range(batch)]
    bitmask = allocate_bitmask(batch, ll_tokenizer.vocab_size)
    rows = list(zip(matchers, range(batch), strict=True))
    fill_times, accept_times = [], []
    for step in range(min(steps, min(len(d) for d in docs))):
        t0 = time.perf_counter()
        fill_bitmasks(bitmask, rows)
        fill_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for matcher, doc in zip(matchers, docs, strict=True):
            if not matcher.accept_token(doc[step]):
                raise RuntimeError(f"document token refused at step {step}: {matcher.error}")
        accept_times.append(time.perf_counter() - t0)
    fill_ms = statistics.median(fill_times) * 1e3
    accept_ms = statistics.median(accept_times) * 1e3
    return {"vocab": ll_tokenizer.vocab_size, "compile_ms": compile_ms, "compile_plus_first_mask_ms":
            compile_ms + first_mask_ms, "batch": batch, "steps": len(fill_times),
            "fill_batch_ms_median": fill_ms, "fill_batch_ms_p90": float(np.percentile(fill_times, 90)) * 1e3,
            "accept_batch_ms_median": accept_ms, "per_token_us": (fill_ms + accept_ms) * 1e3 / batch}


def device_costs(batch: int, vocab: int, repeats: int = 50) -> dict[str, str | float]:
    logits = jax.random.normal(jax.random.key(0), (batch, vocab), jnp.float32)
    mask = jnp.asarray(np.random.default_rng(0).integers(-2**31, 2**31, (batch, (vocab + 31) // 32), dtype=np.int32))
    plain = jax.jit(lambda x: jnp.argmax(x, -1))
    masked = jax.jit(lambda x, m: jnp.argmax(apply_bitmask(x, m), -1))

    def timed(fn: Any, *args: Any) -> float:
        fn(*args).block_until_ready()
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = fn(*args)
        out.block_until_ready()
        return (time.perf_counter() - t0) / repeats * 1e6

    plain_us, masked_us = timed(plain, logits), timed(masked, logits, mask)
    return {"device": str(jax.devices()[0]), "batch": batch, "vocab": vocab, "argmax_us": plain_us,
            "mask_then_argmax_us": masked_us, "mask_added_us": masked_us - plain_us}


def main() -> None:
    configure_process()  # a benchmark is an engine start: settings before any device use
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--vocab", type=int, default=LLAMA3_VOCAB, help="synthetic vocabulary size")
    parser.add_argument("--skip-host", action="store_true", help="only the device-side mask cost")
    args = parser.parse_args()
    for vocab in (49152, args.vocab):
        print(json.dumps({"part": "device_mask", **device_costs(args.batch, vocab)}))
    if args.skip_host:
        return
    from engine.tokenizer import Tokenizer
    from models.loaders.gguf_loader import read_gguf
    from models.loaders.load import default_model_path

    base = Tokenizer.from_gguf(read_gguf(default_model_path()))

    def encode(text: str) -> list[int]:
        return base.encode(text, add_special_tokens=False)

    t0 = time.perf_counter()
    fast = cast(Any, base.hf)  # a GGUF's tokenizer is a fast (Rust-backed) one, which llguidance reads
    smollm = llguidance.hf.from_tokenizer(fast, eos_token=sorted(base.eos_token_ids), slices=MASK_SLICES)
    print(json.dumps({"part": "tokenizer_index", "vocab": smollm.vocab_size, "ms": (time.perf_counter() - t0) * 1e3}))
    print(json.dumps({"part": "host_mask", "tokenizer": "smollm2", **host_costs(smollm, encode, args.batch,
                                                                                args.steps)}))
    t0 = time.perf_counter()
    big = synthetic_tokenizer(base, args.vocab)
    print(json.dumps({"part": "tokenizer_index", "vocab": big.vocab_size, "ms": (time.perf_counter() - t0) * 1e3}))
    print(json.dumps({"part": "host_mask", "tokenizer": f"synthetic-{args.vocab}",
                      **host_costs(big, encode, args.batch, args.steps)}))


if __name__ == "__main__":
    main()
