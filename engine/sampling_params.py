"""Per-request sampling settings, validated up front so bad input never reaches the device.

``validate`` accepts exactly what the server's request structs accept (both read their bounds from
engine/request_limits.py) and raises RequestValidationError, carrying the field, for anything else:
a wrong type, a value outside its dtype or meaning, a token id outside the vocabulary. Nothing a
caller puts in these fields can make a later engine step raise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NoReturn

from engine import request_limits as lim
from engine.request_errors import RequestValidationError
from engine.structured_output.spec import StructuredOutputSpec

MAX_LOGPROBS = lim.MAX_LOGPROBS


@dataclasses.dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    # The output must match this (JSON schema, any JSON object, regex, choice, grammar); vLLM's dict
    # form ({"json": schema}, {"regex": pattern}, ...) is turned into one. Whether the grammar library
    # can compile it is found when the engine admits the request.
    structured_outputs: StructuredOutputSpec | None = None

    def __post_init__(self) -> None:
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputSpec.from_options(self.structured_outputs)
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is None or isinstance(self.stop, tuple):
            self.stop = list(self.stop or [])
        if self.stop_token_ids is None or isinstance(self.stop_token_ids, tuple):
            self.stop_token_ids = list(self.stop_token_ids or [])
        self.validate()
        if self.top_k == -1:
            self.top_k = 0
        if self.temperature < lim.GREEDY_TEMPERATURE_EPS:
            self.temperature = 0.0

    def validate(self, vocab_size: int | None = None, num_eos_ids: int = 0) -> None:
        """Raises RequestValidationError ("<field> must ..., got ...", param the field) unless every
        field is in range.

        With ``vocab_size``, token ids (logit_bias keys, stop_token_ids) must also be below it.
        ``num_eos_ids``: the model's eos ids, which min_tokens suppresses through the bias row.
        """
        max_id = vocab_size - 1 if vocab_size is not None else lim.INT32_MAX
        _check_int("n", self.n, 1, lim.MAX_N)
        _check_float("temperature", self.temperature, 0.0, lim.MAX_TEMPERATURE)
        _check_float("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_int("top_k", self.top_k, -1, lim.INT32_MAX)
        _check_float("min_p", self.min_p, 0.0, 1.0)
        if self.seed is not None:
            _check_int("seed", self.seed, lim.INT64_MIN, lim.INT64_MAX)
        _check_float("presence_penalty", self.presence_penalty, lim.MIN_PENALTY, lim.MAX_PENALTY)
        _check_float("frequency_penalty", self.frequency_penalty, lim.MIN_PENALTY, lim.MAX_PENALTY)
        _check_float("repetition_penalty", self.repetition_penalty, lim.MIN_REPETITION_PENALTY,
                     lim.MAX_REPETITION_PENALTY)
        self._check_logit_bias(max_id)
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, 1, lim.MAX_TOKENS_LIMIT)
        _check_int("min_tokens", self.min_tokens, 0, self.max_tokens or lim.MAX_TOKENS_LIMIT)
        for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                _bad(name, "must be true or false", getattr(self, name))
        self._check_stops(max_id)
        self._check_bias_row(num_eos_ids)
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0, lim.MAX_LOGPROBS)
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputSpec):
            _bad("structured_outputs", "must be a StructuredOutputSpec or a dict like {'json': schema}",
                 self.structured_outputs)

    def _check_logit_bias(self, max_id: int) -> None:
        bias = self.logit_bias
        if bias is None:
            return
        if not isinstance(bias, dict) or len(bias) > lim.MAX_LOGIT_BIAS_ENTRIES:
            _bad("logit_bias", f"must map at most {lim.MAX_LOGIT_BIAS_ENTRIES} token ids to biases", bias)
        for token, value in bias.items():
            _check_int("logit_bias", token, 0, max_id, what="token id")
            _check_float("logit_bias", value, -lim.MAX_LOGIT_BIAS, lim.MAX_LOGIT_BIAS, what="bias")

    def _check_bias_row(self, num_eos_ids: int) -> None:
        suppressed = num_eos_ids + len(self.stop_token_ids or ()) if self.min_tokens else 0
        entries = len(self.logit_bias or {})
        if entries + suppressed > lim.MAX_BIAS_ROW_ENTRIES:
            _bad("logit_bias", f"must have at most {lim.MAX_BIAS_ROW_ENTRIES - suppressed} entries with these "
                 f"stop ids and min_tokens", entries)

    def _check_stops(self, max_id: int) -> None:
        stop, ids = self.stop, self.stop_token_ids
        if not isinstance(stop, list) or len(stop) > lim.MAX_STOP_STRINGS:
            _bad("stop", f"must be a string or a list of at most {lim.MAX_STOP_STRINGS} strings", stop)
        for s in stop:
            if not isinstance(s, str) or not 0 < len(s) <= lim.MAX_STOP_STRING_CHARS:
                _bad("stop", f"strings must be non-empty and at most {lim.MAX_STOP_STRING_CHARS} characters", s)
        if not isinstance(ids, list) or len(ids) > lim.MAX_STOP_TOKEN_IDS:
            _bad("stop_token_ids", f"must be a list of at most {lim.MAX_STOP_TOKEN_IDS} token ids", ids)
        for token in ids:
            _check_int("stop_token_ids", token, 0, max_id, what="token id")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    @property
    def uses_filters(self) -> bool:
        return not self.greedy and (self.top_p < 1 or self.top_k > 0 or self.min_p > 0)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> SamplingParams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        return cls(**fields)


def _bad(name: str, why: str, value: Any) -> NoReturn:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise RequestValidationError(f"{name} {why}, got {shown}", name)


def _check_int(name: str, value: Any, low: int, high: int, what: str = "") -> None:
    subject = f"{what} " if what else ""
    if isinstance(value, bool) or not isinstance(value, int):
        _bad(name, f"{subject}must be an integer", value)
    if not low <= value <= high:
        _bad(name, f"{subject}must be in [{low}, {high}]", value)


def _check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
                 what: str = "") -> None:
    subject = f"{what} " if what else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _bad(name, f"{subject}must be a number", value)
    in_range = (low < value if low_open else low <= value) and value <= high
    if not math.isfinite(value) or not in_range:
        _bad(name, f"{subject}must be in {'(' if low_open else '['}{low}, {high}]", value)
