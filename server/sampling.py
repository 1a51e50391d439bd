"""From request fields to SamplingParams, with the model's generation-config defaults (vLLM's
``--generation-config``) filling what the request leaves unset."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.request_errors import RequestValidationError
from engine.sampling_params import SamplingParams
from server.errors import bad_request
from server.protocol import SamplingFields

logger = logging.getLogger(__name__)

# generation_config.json key -> request field it supplies a default for
GENERATION_CONFIG_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


def load_generation_defaults(source: str, model: str | None) -> dict[str, Any]:
    """``vllm``: none; ``auto``: the model folder's generation_config.json if it has one; else a folder."""
    if source == "vllm":
        return {}
    if source == "auto":
        if model is None or not Path(model).is_dir():
            return {}
        path = Path(model) / "generation_config.json"
        if not path.is_file():
            return {}
    else:
        path = Path(source) / "generation_config.json"
        if not path.is_file():
            raise ValueError(f"--generation-config {source}: no generation_config.json in that folder")
    raw = json.loads(path.read_text())
    defaults = {ours: raw[theirs] for theirs, ours in GENERATION_CONFIG_KEYS.items() if raw.get(theirs) is not None}
    if defaults:
        logger.info("Default sampling parameters from %s: %s", path, defaults)
    return defaults


def check_stream_options(req: SamplingFields) -> None:
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options can only be set when stream is true", "stream_options")


def sampling_params(
    req: SamplingFields,
    defaults: Mapping[str, Any],
    *,
    max_tokens: int | None,
    logprobs: int | None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    """Raises RequestValidationError (a 400 naming the field) when a value is out of range."""

    def pick(name: str, fallback: Any) -> Any:
        value = getattr(req, name)
        return value if value is not None else defaults.get(name, fallback)

    return SamplingParams(
        n=req.n,
        temperature=pick("temperature", 1.0),
        top_p=pick("top_p", 1.0),
        top_k=pick("top_k", 0),
        min_p=pick("min_p", 0.0),
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=pick("repetition_penalty", 1.0),
        logit_bias=_logit_bias(req.logit_bias),
        max_tokens=max_tokens if max_tokens is not None else defaults.get("max_tokens"),
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
        stop=req.stop,
        stop_token_ids=req.stop_token_ids,
        include_stop_str_in_output=req.include_stop_str_in_output,
        skip_special_tokens=req.skip_special_tokens,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    """Keys are token ids as strings (JSON object keys); their range is SamplingParams.validate's."""
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        if not key.strip().isascii() or not key.strip().isdigit():
            raise RequestValidationError(f"logit_bias keys must be token ids, got {key[:40]!r}", "logit_bias")
        out[int(key)] = value
    return out
