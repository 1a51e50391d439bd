"""Compiles the step for the commonest shapes before the server accepts requests."""

from __future__ import annotations

import logging
import time

from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

WARMUP_PROMPT_TOKENS = 16


def warm_up(engine: LLMEngine) -> None:
    """A short prompt decoded greedily and with sampling: the smallest prefill and decode programs of
    both sampler modes. Larger shapes compile when traffic first needs them (each is logged)."""
    runs = {
        "greedy": SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True),
        "sampled": SamplingParams(max_tokens=2, ignore_eos=True, seed=0),
    }
    prompt = [0] * min(WARMUP_PROMPT_TOKENS, engine.max_model_len - 2)
    started = time.perf_counter()
    compiled_before = engine.stats().num_compilations
    for i, (name, params) in enumerate(runs.items(), start=1):
        engine.add_request(f"warmup-{name}", prompt, params)
        while engine.has_unfinished_requests():
            engine.step()
        logger.info("Warm-up %d/%d (%s decoding): %d program(s) compiled, %.1fs", i, len(runs), name,
                    engine.stats().num_compilations - compiled_before, time.perf_counter() - started)
