"""Engine logprobs (one {token id: Logprob} dict per position) in the two OpenAI wire formats."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engine.outputs import Logprob, PositionLogprobs
from server.responses import ChatLogprobEntry, ChatLogprobs, CompletionLogProbs, TopLogprob

# JSON has no -inf; vLLM reports impossible tokens as -9999.0 too.
MIN_LOGPROB = -9999.0


def token_text(token_id: int, logprob: Logprob | None) -> str:
    if logprob is not None and logprob.decoded_token is not None:
        return logprob.decoded_token
    return f"token_id:{token_id}"


def _clamp(value: float) -> float:
    return max(value, MIN_LOGPROB)


def completion_logprobs(
    token_ids: Sequence[int],
    positions: Sequence[PositionLogprobs | None],
    top_k: int,
    text_offset: int,
    decode: Callable[[int], str],
) -> CompletionLogProbs:
    """``positions[i]`` scores ``token_ids[i]``; None (the first prompt token) has no score."""
    out = CompletionLogProbs(text_offset=[], token_logprobs=[], tokens=[], top_logprobs=[])
    for token, position in zip(token_ids, positions, strict=False):  # a missing score never fails a response
        if position is None:
            text = decode(token)
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
        else:
            chosen = position.get(token)
            text = token_text(token, chosen)
            out.token_logprobs.append(_clamp(chosen.logprob) if chosen is not None else None)
            out.top_logprobs.append({
                token_text(t, lp): _clamp(lp.logprob) for t, lp in position.items()
                if t == token or (lp.rank is not None and lp.rank <= top_k)
            })
        out.tokens.append(text)
        out.text_offset.append(text_offset)
        text_offset += len(text)
    return out


def chat_logprobs(token_ids: Sequence[int], positions: Sequence[PositionLogprobs], top_k: int) -> ChatLogprobs:
    content = []
    for token, position in zip(token_ids, positions, strict=False):  # a missing score never fails a response
        chosen = position.get(token)
        text = token_text(token, chosen)
        alternatives = sorted(
            ((t, lp) for t, lp in position.items() if lp.rank is not None and lp.rank <= top_k),
            key=lambda item: item[1].rank or 0,
        )
        content.append(ChatLogprobEntry(
            token=text,
            logprob=_clamp(chosen.logprob) if chosen is not None else MIN_LOGPROB,
            bytes=list(text.encode("utf-8")),
            top_logprobs=[
                TopLogprob(token=token_text(t, lp), logprob=_clamp(lp.logprob),
                           bytes=list(token_text(t, lp).encode("utf-8")))
                for t, lp in alternatives
            ],
        ))
    return ChatLogprobs(content=content)
