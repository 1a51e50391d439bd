"""Reasoning parsers (deepseek_r1, qwen3): whole outputs, and streams cut at every point (no tag text
leaks, pieces add up to the whole-output split)."""

from __future__ import annotations

import random

import pytest

from server.reasoning_parsers import get_reasoning_parser

CASES = [  # parser, output, reasoning_content, content
    ("deepseek_r1", "<think>\nLet me think.</think>\n\nThe answer is 4.", "\nLet me think.", "\n\nThe answer is 4."),
    ("deepseek_r1", "Prompt opened the tag. 2+2</think>4", "Prompt opened the tag. 2+2", "4"),
    ("deepseek_r1", "cut short while thinking <", "cut short while thinking <", None),
    ("deepseek_r1", "<think></think>direct", None, "direct"),
    ("qwen3", "<think>\nhmm, a < b</think>\n\nYes.", "\nhmm, a < b", "\n\nYes."),
    ("qwen3", "No thinking here, </think> is just text.", None, "No thinking here, </think> is just text."),
    ("qwen3", "  <think>cut short", "cut short", None),
    ("qwen3", "<thin", None, "<thin"),
    ("qwen3", "", None, None),
]


@pytest.mark.parametrize("name,text,reasoning,content", CASES)
def test_extract(name: str, text: str, reasoning: str | None, content: str | None) -> None:
    assert get_reasoning_parser(name).extract(text) == (reasoning, content)


@pytest.mark.parametrize("name,text,reasoning,content", CASES)
def test_stream_pieces_add_up(name: str, text: str, reasoning: str | None, content: str | None) -> None:
    rng = random.Random(text)
    for _ in range(10):
        stream = get_reasoning_parser(name).stream()
        got_reasoning = got_content = ""
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 8))))
        bounds = [0, *cuts, len(text)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            piece = stream.feed(text[a:b])
            assert "</think>" not in piece.reasoning + piece.content or "</think>" in (content or "")
            got_reasoning += piece.reasoning
            got_content += piece.content
            if got_content:
                assert stream.reasoning_ended or reasoning is None
        last = stream.finish()
        got_reasoning += last.reasoning
        got_content += last.content
        assert (got_reasoning, got_content) == (reasoning or "", content or "")


def test_reasoning_end_is_reported_at_the_tag() -> None:
    stream = get_reasoning_parser("deepseek_r1").stream()
    assert stream.feed("thinking</thi").reasoning == "thinking" and not stream.reasoning_ended
    assert stream.feed("nk>").content == "" and stream.reasoning_ended


def test_unknown_reasoning_parser() -> None:
    with pytest.raises(ValueError, match="deepseek_r1"):
        get_reasoning_parser("o1")
