"""Per-sequence detokenization and stop conditions (eos, stop ids, stop strings, lengths)."""

from __future__ import annotations

from typing import Any

from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


class StopChecker:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], params: SamplingParams,
                 eos_token_ids: frozenset[int]) -> None:
        self.params = params
        self.eos_token_ids = eos_token_ids
        self.text = ""
        self._detok = None
        if tokenizer is not None:
            from engine.tokenizer import IncrementalDetokenizer

            self._detok = IncrementalDetokenizer(tokenizer, prompt_ids, params.skip_special_tokens)
        stops = params.stop or []
        # While running, hold back a tail that could still become a stop string, so streamed
        # text never has to be taken back.
        self._hold = max((len(s) for s in stops), default=1) - 1

    def visible_text(self, finished: bool) -> str:
        if finished or not self._hold:
            return self.text
        return self.text[: max(0, len(self.text) - self._hold)]

    def on_token(self, seq: Sequence, token: int) -> tuple[str, int | str | None] | None:
        """Appends the token's text; returns (finish_reason, stop_reason) when the sequence ends.

        min_tokens needs no check here: the sampler masks eos and stop ids until it is reached.
        """
        p = self.params
        if token in (p.stop_token_ids or ()):
            return "stop", token
        if token in self.eos_token_ids and not p.ignore_eos:
            return "stop", None
        if self._detok is not None:
            delta = self._detok.add([token])
            if delta:
                self.text += delta
                stopped = self._find_stop(len(delta))
                if stopped is not None:
                    return "stop", stopped
        if seq.num_output_tokens >= seq.max_tokens:
            return "length", None
        return None

    def _find_stop(self, delta_len: int) -> str | None:
        for stop in self.params.stop or []:
            window_start = max(0, len(self.text) - delta_len - len(stop) + 1)
            at = self.text.find(stop, window_start)
            if at >= 0:
                keep = at + len(stop) if self.params.include_stop_str_in_output else at
                self.text = self.text[:keep]
                return stop
        return None
