"""The OpenAI-compatible server driven by the official ``openai`` client (base_url changed only),
on the tiny random model with SmolLM2's tokenizer."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openai import OpenAI

GREEDY: dict[str, Any] = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def client(tiny_server: Any) -> OpenAI:
    return OpenAI(base_url=f"{tiny_server.url}/v1", api_key="unused", max_retries=0, timeout=600)


def _stream_text(stream: Any) -> tuple[str, list[Any]]:
    chunks = list(stream)
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks


def test_models_list_and_retrieve(client: OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny", "tiny-alias"]
    assert models[0].owned_by == "tessera" and models[0].max_model_len == 512  # type: ignore[attr-defined]
    assert client.models.retrieve("tiny-alias").id == "tiny-alias"


def test_completion_matches_its_stream(client: OpenAI, tiny_server: Any) -> None:
    full = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=12, **GREEDY)
    choice = full.choices[0]
    assert choice.finish_reason == "length" and choice.text
    assert full.usage is not None and full.usage.completion_tokens == 12
    tokenized = httpx.post(f"{tiny_server.url}/tokenize", json={"prompt": "The quick brown fox"}).json()
    assert full.usage.prompt_tokens == tokenized["count"]
    text, chunks = _stream_text(client.completions.create(
        model="tiny", prompt="The quick brown fox", max_tokens=12, stream=True, **GREEDY))
    assert text == choice.text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_token_id_prompts_and_several_prompts(client: OpenAI) -> None:
    out = client.completions.create(model="tiny", prompt=[[11, 12, 13], [21, 22]], n=2, max_tokens=3,
                                    seed=7, temperature=1.0)
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    assert out.usage is not None and out.usage.prompt_tokens == 5 and out.usage.completion_tokens == 12
    single = client.completions.create(model="tiny", prompt=[11, 12, 13], max_tokens=3, **GREEDY)
    assert single.usage is not None and single.usage.prompt_tokens == 3


def test_n_choices_stream_each_index_to_its_finish(client: OpenAI) -> None:
    chunks = list(client.completions.create(model="tiny", prompt="Once upon a time", n=3, max_tokens=5,
                                            temperature=1.0, seed=1, stream=True))
    texts = {i: "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i)
             for i in range(3)}
    assert all(texts.values())
    finishes = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(finishes) == [0, 1, 2]


def test_seeded_sampling_is_reproducible(client: OpenAI) -> None:
    def once() -> str:
        return client.completions.create(model="tiny", prompt="Seeds", max_tokens=8, temperature=1.0, seed=42,
                                         extra_body={"ignore_eos": True}).choices[0].text

    assert once() == once()


def test_completion_logprobs(client: OpenAI) -> None:
    out = client.completions.create(model="tiny", prompt="Log probabilities", max_tokens=5, logprobs=3, **GREEDY)
    lp = out.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value is not None and value <= 0
        assert token in top and 3 <= len(top) <= 4
        assert max(top.values()) == pytest.approx(value)  # greedy picks the most likely token
    assert lp.text_offset == sorted(lp.text_offset)


def test_echo_prepends_the_prompt_with_its_logprobs(client: OpenAI) -> None:
    out = client.completions.create(model="tiny", prompt="Echo this", max_tokens=3, echo=True, logprobs=1,
                                    **GREEDY)
    choice = out.choices[0]
    assert choice.text.startswith("Echo this")
    assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
    assert choice.logprobs.token_logprobs[0] is None  # the first prompt token has no logprob
    assert len(choice.logprobs.token_logprobs) == out.usage.prompt_tokens + 3  # type: ignore[union-attr]


def test_stop_string_truncates_and_reports(client: OpenAI) -> None:
    base = client.completions.create(model="tiny", prompt="Stop here", max_tokens=16, **GREEDY).choices[0].text
    stop = base[len(base) // 2: len(base) // 2 + 3]
    assert stop.strip(), f"need a visible stop string in {base!r}"
    cut = base[: base.index(stop)]
    out = client.completions.create(model="tiny", prompt="Stop here", max_tokens=16, stop=[stop], **GREEDY)
    assert out.choices[0].text == cut
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].stop_reason == stop  # type: ignore[attr-defined]
    streamed, _ = _stream_text(client.completions.create(model="tiny", prompt="Stop here", max_tokens=16,
                                                          stop=stop, stream=True, **GREEDY))
    assert streamed == cut


def test_chat_matches_its_stream_role_first_usage_last(client: OpenAI) -> None:
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=10, **GREEDY)
    message = full.choices[0].message
    assert message.role == "assistant" and message.content
    assert full.usage is not None and full.usage.completion_tokens == 10
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=10,
                                                 stream=True, stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == message.content
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens


def test_chat_text_parts_and_logprobs(client: OpenAI) -> None:
    out = client.chat.completions.create(
        model="tiny-alias", max_tokens=4, logprobs=True, top_logprobs=2, **GREEDY,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "you"}]}],
    )
    assert out.model == "tiny-alias"
    content = out.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.bytes == list(entry.token.encode())
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)


def test_chat_n_and_stop(client: OpenAI) -> None:
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Count"}], n=2,
                                         max_tokens=6, temperature=1.0, seed=3)
    assert sorted(c.index for c in out.choices) == [0, 1]
    base = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Go"}], max_tokens=12,
                                          **GREEDY).choices[0].message.content or ""
    stop = base[4:7]
    stopped = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Go"}],
                                             max_tokens=12, stop=[stop], **GREEDY)
    assert stopped.choices[0].message.content == base[: base.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_tokenize_detokenize_round_trip(tiny_server: Any) -> None:
    with httpx.Client(base_url=tiny_server.url) as http:
        tokens = http.post("/tokenize", json={"model": "tiny", "prompt": "Hello, world!"}).json()
        assert tokens["count"] == len(tokens["tokens"]) > 0 and tokens["max_model_len"] == 512
        assert http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"] == "Hello, world!"
        chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
        assert chat["count"] > tokens["count"] - 2  # the chat template wraps the message in role markers


def test_health_version_metrics_and_docs(tiny_server: Any) -> None:
    with httpx.Client(base_url=tiny_server.url) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/version").json()["version"]
        metrics = http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        for name in ("tessera:num_requests_running", "tessera:num_requests_waiting", "tessera:kv_cache_usage_perc",
                     "tessera:prompt_tokens_total", "tessera:generation_tokens_total",
                     "tessera:time_to_first_token_seconds_bucket", "tessera:inter_token_latency_seconds_count",
                     "tessera:e2e_request_latency_seconds_sum", "tessera:num_compilations_total"):
            assert name in metrics.text
        assert http.get("/docs").status_code == 200
        schema = http.get("/docs/openapi.json").json()
        assert {"/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(schema["paths"])
