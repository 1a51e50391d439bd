"""The API server's half of a request: token ids from the core become text, stop strings, logprob
entries and the cumulative RequestOutputs the HTTP handlers consume.

Each sample gets the same StopChecker the in-process engine uses (incremental UTF-8-safe
detokenization, stop strings with the held-back tail), fed token by token. The core has already
applied stop ids, eos and lengths; a stop string is found here, and the request is aborted in the
core once every sample has stopped (an engine request's samples cannot be aborted one by one, so
a sample stopped by a string may run on in the core until its siblings stop; its extra tokens are
dropped here).
"""

from __future__ import annotations

import dataclasses
import sys

from engine.core.messages import SequenceDelta, WireLogprobs
from engine.core.served_model import ServedModel
from engine.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestOutput
from engine.sampling_params import SamplingParams
from engine.stop_checker import StopChecker


@dataclasses.dataclass
class _Sample:
    """One sample's progress, with the two fields StopChecker reads from a Sequence."""

    checker: StopChecker
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    max_tokens: int = sys.maxsize  # the core ends a sample at its length; StopChecker need not
    done_in_core: bool = False

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids)


class RequestTracker:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 model: ServedModel) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.model = model
        self.samples = [_Sample(StopChecker(model.tokenizer, prompt_token_ids, params, model.eos_token_ids))
                        for _ in range(params.n)]
        for sample in self.samples:
            sample.logprobs = [] if params.logprobs is not None else None
        self.prompt_logprobs: list[PositionLogprobs | None] | None = None
        self.num_cached_tokens = 0

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.samples)

    def apply(self, delta: SequenceDelta) -> bool:
        """Takes one step's delta; True when the request has just ended here but still runs in the core."""
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = [None if p is None else self._position(p) for p in delta.prompt_logprobs]
        if delta.index == 0 and delta.num_cached_tokens:
            self.num_cached_tokens = delta.num_cached_tokens
        sample = self.samples[delta.index]
        sample.done_in_core = delta.finish_reason is not None
        if sample.finish_reason is not None:
            return False
        for i, token in enumerate(delta.new_token_ids):
            sample.token_ids.append(token)
            if sample.logprobs is not None and delta.logprobs is not None:
                sample.logprobs.append(self._position(delta.logprobs[i]))
            reason = sample.checker.on_token(sample, token)  # type: ignore[arg-type]
            if reason is not None:
                sample.finish_reason, sample.stop_reason = reason
                break
        if delta.cumulative_logprob is not None:
            sample.cumulative_logprob = delta.cumulative_logprob
        if sample.finish_reason is None and delta.finish_reason is not None:
            sample.finish_reason, sample.stop_reason = delta.finish_reason, delta.stop_reason
        return self.finished and not all(s.done_in_core for s in self.samples)

    def output(self) -> RequestOutput:
        """A snapshot: the lists are copies, so later deltas never change an output already handed out."""
        outputs = [
            CompletionOutput(
                index=i, text=s.checker.visible_text(s.finish_reason is not None), token_ids=list(s.token_ids),
                cumulative_logprob=s.cumulative_logprob, logprobs=list(s.logprobs) if s.logprobs is not None else None,
                finish_reason=s.finish_reason, stop_reason=s.stop_reason,
            )
            for i, s in enumerate(self.samples)
        ]
        return RequestOutput(request_id=self.request_id, prompt=None, prompt_token_ids=self.prompt_token_ids,
                             prompt_logprobs=self.prompt_logprobs, outputs=outputs, finished=self.finished,
                             num_cached_tokens=self.num_cached_tokens)

    def _position(self, wire: WireLogprobs) -> PositionLogprobs:
        return {token: Logprob(logprob, rank, self._token_text(token)) for token, logprob, rank in wire}

    def _token_text(self, token: int) -> str | None:
        return self.model.decode([token]) if self.model.tokenizer is not None else None
