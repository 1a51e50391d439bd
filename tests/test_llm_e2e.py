"""End to end on the real default model: the whole engine (paged cache, continuous batching,
chunked prefill) reproduces HF transformers' greedy continuations of SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import LLM, SamplingParams

GOLDEN = json.loads((Path(__file__).parent / "golden" / "smollm2.json").read_text())

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm() -> LLM:
    # A small token budget forces chunked prefill and mixed prefill/decode steps.
    return LLM(max_model_len=512, max_num_seqs=8, max_num_batched_tokens=32, compilation_cache_dir=None,
               precompile=False)


def test_generate_matches_hf_greedy(llm: LLM) -> None:
    prompts = [{"prompt_token_ids": case["prompt_ids"]} for case in GOLDEN["cases"]]
    params = SamplingParams(temperature=0, max_tokens=GOLDEN["new_tokens"], ignore_eos=True)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    for case, out in zip(GOLDEN["cases"], outputs, strict=True):
        assert out.outputs[0].token_ids == case["output_ids"]
        assert out.prompt_token_ids == case["prompt_ids"]
    stats = llm.engine.stats()
    assert stats.num_free_blocks == stats.num_blocks


def test_text_prompts_tokenize_like_hf(llm: LLM) -> None:
    case = next(c for c in GOLDEN["cases"] if c.get("messages") is None)
    out = llm.generate(case["prompt_text"], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    assert out.prompt_token_ids == case["prompt_ids"]
    assert out.outputs[0].token_ids == case["output_ids"][:4]
    assert out.outputs[0].text == llm.get_tokenizer().decode(case["output_ids"][:4])


def test_chat_applies_template_and_stops_at_eos(llm: LLM) -> None:
    case = next(c for c in GOLDEN["cases"] if c.get("messages"))
    out = llm.chat(case["messages"], SamplingParams(temperature=0, max_tokens=200), use_tqdm=False)[0]
    assert out.prompt_token_ids == case["prompt_ids"]
    completion = out.outputs[0]
    assert completion.finish_reason == "stop"
    assert completion.token_ids[-1] in llm.engine.eos_token_ids
    assert "<|im_end|>" not in completion.text and completion.text.strip()


def test_stop_string_is_trimmed(llm: LLM) -> None:
    case = next(c for c in GOLDEN["cases"] if c.get("messages") is None)
    tokenizer = llm.get_tokenizer()
    full = tokenizer.decode(case["output_ids"])
    stop = full.strip().split()[2]
    out = llm.generate({"prompt_token_ids": case["prompt_ids"]},
                       SamplingParams(temperature=0, max_tokens=24, stop=[stop]), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == full[: full.index(stop)]
    kept = llm.generate({"prompt_token_ids": case["prompt_ids"]},
                        SamplingParams(temperature=0, max_tokens=24, stop=[stop], include_stop_str_in_output=True),
                        use_tqdm=False)[0].outputs[0]
    assert kept.text == full[: full.index(stop) + len(stop)]


def test_logprobs_and_prompt_logprobs(llm: LLM) -> None:
    case = GOLDEN["cases"][2]
    out = llm.generate({"prompt_token_ids": case["prompt_ids"]},
                       SamplingParams(temperature=0, max_tokens=3, logprobs=2, prompt_logprobs=1),
                       use_tqdm=False)[0]
    completion = out.outputs[0]
    assert len(completion.logprobs) == 3
    for token, position in zip(completion.token_ids, completion.logprobs, strict=True):
        assert position[token].rank == 1  # greedy picks the top token
        assert len(position) == 2
    assert completion.cumulative_logprob == pytest.approx(
        sum(p[t].logprob for t, p in zip(completion.token_ids, completion.logprobs, strict=True)))
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(case["prompt_ids"])
    for token, position in zip(case["prompt_ids"][1:], out.prompt_logprobs[1:], strict=True):
        assert token in position and position[token].logprob <= 0
