"""The bucket plan: the finite list of step programs the engine can ever launch.

Every step is padded to a planned shape (token rows, sequence rows, block-table width) and
its sampler switches are folded onto a planned variant, so the set of programs is known at
start-up and can be compiled before the server says ready (engine/step_programs.py). The plan
is derived from the engine config alone:

  - decode steps (one token per sequence) pad to ``seqs`` rows from the sequence ladder;
  - steps with a prefill chunk pad to ``tokens`` rows from the token ladder, ``seqs`` from the
    sequence ladder when the attention backend's cost depends on it (else the ladder's top
    rung that fits), and a query window of the whole bucket;
  - block-table widths come from a ladder only for backends that read every listed block
    (the plain-XLA reference); kernels that stop at the sequence's length get one width.

Sampler variants: on CPU and TPU a conditional costs nothing, so one program serves every
request and the sampler skips what no row asks for at run time (``SamplerMode.gated``). On GPU
a conditional makes the host wait for the device (it reads the predicate back), which would
stall the step pipeline, so there are two static variants: greedy (argmax only) and full
(sampling, filters, logprobs, bias and penalties, each row masked by its own settings), plus
prompt logprobs as its own variant of prefill steps (it needs logits of every token; a decode
step's are one more [seqs, vocab] pass, so its full variant always includes them). Logprob widths are one
width (20) and bias/penalty history widths are fixed, so none of them multiplies programs.

The structured-output token mask (``mask_words`` packed int32 words per row, 0 when the engine
has no tokenizer to compile grammars with) rides in every sampling variant except static greedy:
a step with a constrained row is folded onto a non-greedy variant, and unconstrained steps of
those variants carry an all-ones mask (skipped by the gated sampler's conditional; one fused
``where`` in GPU's full variant). So structured outputs add no program to the plan.
Measurements behind these choices: docs/compilation.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.request_limits import MAX_BIAS_ROW_ENTRIES, MAX_LOGPROBS
from engine.sampler import SamplerMode

MIN_TOKEN_BUCKET = 16
MIN_SEQ_BUCKET = 4
MIN_WIDTH_BUCKET = 4

GREEDY = SamplerMode(all_greedy=True, use_filters=False, num_logprobs=0)


@dataclasses.dataclass(frozen=True)
class ShapeCost:
    """Which padded dimensions change an attention backend's work (and so deserve a ladder)."""

    width: bool  # reads every block the table lists
    mixed_seqs: bool  # pays per padded sequence row in a step with prefill chunks


# Backends not listed are treated like the reference: every dimension laddered (safe, more programs).
SHAPE_COSTS = {
    "reference": ShapeCost(width=True, mixed_seqs=True),
    "cpu": ShapeCost(width=False, mixed_seqs=False),  # loops over each sequence's own blocks (docs/cpu.md)
    "pallas_gpu": ShapeCost(width=False, mixed_seqs=False),
    "pallas_tpu": ShapeCost(width=False, mixed_seqs=False),
}


@dataclasses.dataclass(frozen=True)
class ProgramKey:
    """One step program: padded per-replica shapes plus the static sampler switches."""

    tokens: int
    seqs: int
    width: int
    window: int  # max_query_len: 1 for decode steps
    mode: SamplerMode
    prompt_k: int | None
    bias_width: int
    history_width: int
    mask_words: int = 0  # packed token-mask words per row (structured outputs); 0: no mask

    def describe(self) -> str:
        kind = "decode" if self.window == 1 else "mixed"
        extra = f", prompt logprobs {self.prompt_k}" if self.prompt_k is not None else ""
        extra += f", token mask {self.mask_words} words" if self.mask_words else ""
        return (f"{kind} tokens={self.tokens} seqs={self.seqs} width={self.width} window={self.window} "
                f"sampler={self.mode.name}{extra}")


def doubling_ladder(low: int, top: int) -> tuple[int, ...]:
    """``low, 2*low, 4*low, ...`` below ``top``, then ``top`` itself (at least ``low``)."""
    top = max(low, top)
    rungs = [low << i for i in range(max(0, math.ceil(math.log2(top / low))))]
    return tuple(r for r in rungs if r < top) + (top,)


def fit(ladder: tuple[int, ...], n: int) -> int:
    """The smallest rung that holds ``n``."""
    for rung in ladder:
        if rung >= n:
            return rung
    raise ValueError(f"{n} exceeds the largest bucket {ladder[-1]} of {ladder}")


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    token_ladder: tuple[int, ...]  # padded token rows of steps with a prefill chunk
    seq_ladder: tuple[int, ...]  # padded sequence rows (decode steps: also their token rows)
    width_ladder: tuple[int, ...]  # block-table widths
    cost: ShapeCost
    runtime_switches: bool  # one gated sampler variant (CPU, TPU) or static ones (GPU)
    bias_width: int
    history_width: int
    copy_ladder: tuple[int, ...]  # copy-on-write block pairs per step (at most one per sequence)
    dp: int = 1
    fold: bool = True  # fold steps onto the planned variants; off (no precompile): each step's own switches
    mask_words: int = 0  # token-mask width of the non-greedy variants; 0: structured outputs unavailable

    @classmethod
    def build(cls, *, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int, block_size: int,
              attention_backend: str, platform: str, dp: int = 1, token_buckets: Sequence[int] | None = None,
              seq_buckets: Sequence[int] | None = None, fold: bool = True, mask_words: int = 0) -> BucketPlan:
        seq_top = max(MIN_SEQ_BUCKET, max_num_seqs)
        seqs = _explicit(seq_buckets, seq_top) or doubling_ladder(MIN_SEQ_BUCKET, seq_top)
        tokens = _explicit(token_buckets, max_num_batched_tokens) or doubling_ladder(
            MIN_TOKEN_BUCKET, max(MIN_TOKEN_BUCKET, max_num_batched_tokens))
        cost = SHAPE_COSTS.get(attention_backend, SHAPE_COSTS["reference"])
        max_blocks = -(-max_model_len // block_size)
        widths = doubling_ladder(min(MIN_WIDTH_BUCKET, max_blocks), max_blocks) if cost.width else (max_blocks,)
        return cls(tokens, seqs, widths, cost, runtime_switches=platform != "gpu",
                   bias_width=MAX_BIAS_ROW_ENTRIES, history_width=max(16, -(-max_model_len // 16) * 16),
                   copy_ladder=doubling_ladder(MIN_SEQ_BUCKET, dp * seq_top), dp=dp, fold=fold,
                   mask_words=mask_words)

    # ---- choosing a step's program ------------------------------------------------------------
    def shapes(self, num_tokens: int, num_seqs: int, widest: int, decode_only: bool) -> tuple[int, int, int]:
        """Padded (tokens, sequences, block-table width) per replica for a step of this size."""
        width = fit(self.width_ladder, widest)
        if decode_only:
            seqs = fit(self.seq_ladder, num_seqs)
            return seqs, seqs, width
        tokens = fit(self.token_ladder, num_tokens)
        return tokens, self._mixed_seqs(tokens, num_seqs), width

    def _mixed_seqs(self, tokens: int, num_seqs: int) -> int:
        if self.cost.mixed_seqs:
            return fit(self.seq_ladder, num_seqs)
        return fit(self.seq_ladder, min(tokens, self.seq_ladder[-1]))

    def mode_for(self, wanted: SamplerMode, extras: bool) -> SamplerMode:
        """The planned sampler variant that serves a step needing ``wanted`` (and bias/penalties)."""
        if self.runtime_switches:
            return SamplerMode(False, True, MAX_LOGPROBS, gated=True)
        if wanted.all_greedy and not wanted.num_logprobs and not extras:
            return GREEDY
        return SamplerMode(False, True, MAX_LOGPROBS)

    def normalize(self, inputs: Any) -> Any:
        """A built StepInput moved onto its planned program: window, sampler variant, fixed
        logprob, bias and history widths. The outputs a row asked for are unchanged."""
        sampling = inputs.sampling
        if sampling.wants_logprobs is None:
            sampling = sampling.replace(wants_logprobs=np.full(sampling.temperature.shape[0],
                                                               bool(inputs.mode.num_logprobs)))
        if not self.fold:  # compiled on first use: only the switches this step needs (tests, --skip-warmup)
            return inputs.replace(sampling=sampling)
        constrained = np.shape(inputs.token_bitmask)[1] > 0
        extras = sampling.bias_ids.shape[1] > 0 or sampling.history.shape[1] > 0 or constrained
        mode = self.mode_for(inputs.mode, extras)
        wide = not mode.all_greedy
        inputs = inputs.replace(token_bitmask=self._mask_for(inputs.token_bitmask, self.mask_words if wide else 0))
        sampling = sampling.replace(
            bias_ids=_widen(sampling.bias_ids, self.bias_width if wide else 0, -1),
            bias_values=_widen(sampling.bias_values, self.bias_width if wide else 0, 0.0),
            history=_widen(sampling.history, self.history_width if wide else 0, -1),
            history_is_output=_widen(sampling.history_is_output, self.history_width if wide else 0, False),
        )
        decode = inputs.max_query_len == 1
        prompt = inputs.prompt_k is not None or (decode and not mode.all_greedy)
        if inputs.prompt_k is None:  # no row asked: a gated program skips them, others compute and drop them
            prompt_targets = np.full(np.shape(inputs.prompt_targets), -1, np.int32)  # -1: skip prompt logprobs
            inputs = inputs.replace(prompt_targets=prompt_targets)
        return inputs.replace(
            sampling=sampling, mode=mode, max_query_len=1 if decode else np.shape(inputs.input_ids)[0] // self.dp,
            prompt_k=MAX_LOGPROBS if (prompt or self.runtime_switches) else None,  # prompt_targets -1: none
        )

    def _mask_for(self, mask: Any, words: int) -> np.ndarray:
        """The step's token mask at the variant's width: as built, or all ones when no row is constrained."""
        rows, current = np.shape(mask)
        if current == words:
            return np.asarray(mask)
        if current:
            raise ValueError(f"a token mask of {current} words per row does not fit the planned width {words}")
        return _allow_all(rows, words)

    # ---- the whole plan ---------------------------------------------------------------------
    def keys(self) -> list[ProgramKey]:
        """Every program the engine may launch, smallest first."""
        keys = []
        for seqs in self.seq_ladder:
            for width in self.width_ladder:
                keys += self._variants(seqs, seqs, width, 1)
        for tokens in self.token_ladder:
            seq_rungs = [s for s in self.seq_ladder if s <= tokens] or [self.seq_ladder[0]]
            if not self.cost.mixed_seqs:
                seq_rungs = [self._mixed_seqs(tokens, 1)]
            for seqs in seq_rungs:
                for width in self.width_ladder:
                    keys += self._variants(tokens, seqs, width, tokens)
        return sorted(set(keys), key=lambda k: (k.tokens * k.width, k.seqs, k.window, str(k)))

    def _variants(self, tokens: int, seqs: int, width: int, window: int) -> list[ProgramKey]:
        b, h, m = self.bias_width, self.history_width, self.mask_words
        if self.runtime_switches:
            return [ProgramKey(tokens, seqs, width, window, SamplerMode(False, True, MAX_LOGPROBS, gated=True),
                               MAX_LOGPROBS, b, h, m)]
        full = SamplerMode(False, True, MAX_LOGPROBS)
        with_prompt = ProgramKey(tokens, seqs, width, window, full, MAX_LOGPROBS, b, h, m)
        if window == 1:  # a decode step's prompt logprobs cost one more [seqs, vocab] pass: always in "full"
            return [ProgramKey(tokens, seqs, width, window, GREEDY, None, 0, 0), with_prompt]
        return [ProgramKey(tokens, seqs, width, window, GREEDY, None, 0, 0),
                ProgramKey(tokens, seqs, width, window, full, None, b, h, m), with_prompt]

    def key_of(self, inputs: Any) -> ProgramKey:
        """The program a (normalized) StepInput runs."""
        s = inputs.sampling
        return ProgramKey(
            tokens=np.shape(inputs.input_ids)[0] // self.dp, seqs=np.shape(inputs.seq_lens)[0] // self.dp,
            width=np.shape(inputs.block_tables)[1], window=inputs.max_query_len, mode=inputs.mode,
            prompt_k=inputs.prompt_k, bias_width=s.bias_ids.shape[1], history_width=s.history.shape[1],
            mask_words=np.shape(inputs.token_bitmask)[1],
        )

    def describe(self) -> str:
        keys = self.keys()
        decode = sum(k.window == 1 for k in keys)
        return (f"bucket plan: {len(keys)} step programs ({decode} decode, {len(keys) - decode} with prefill) + "
                f"{len(self.copy_ladder)} block-copy programs; tokens {list(self.token_ladder)}, "
                f"seqs {list(self.seq_ladder)}, widths {list(self.width_ladder)}, "
                f"sampler {'one gated variant' if self.runtime_switches else 'greedy / full / prompt logprobs'}"
                f"{f', token mask {self.mask_words} words' if self.mask_words else ''}")


def _explicit(ladder: Sequence[int] | None, top: int) -> tuple[int, ...] | None:
    """A configured ladder, sorted, cut at ``top`` and closed by it (so every step fits)."""
    if not ladder:
        return None
    rungs = sorted({int(r) for r in ladder if 0 < int(r) < top})
    return tuple(rungs) + (top,)


@functools.lru_cache(maxsize=32)
def _allow_all(rows: int, words: int) -> np.ndarray:
    """A read-only all-ones token mask, shared by every unconstrained step of this shape."""
    mask = np.full((rows, words), -1, np.int32)
    mask.setflags(write=False)
    return mask


def _widen(array: Any, width: int, fill: Any) -> np.ndarray:
    """``array`` [rows, w] padded (or, when it is all padding, cut) to [rows, width]."""
    array = np.asarray(array)
    rows, current = array.shape
    if current == width:
        return array
    if current > width:
        if (array[:, width:] != fill).any():
            raise ValueError(f"{current} sampler side entries per row do not fit the planned width {width}")
        return array[:, :width]
    out = np.full((rows, width), fill, array.dtype)
    out[:, :current] = array
    return out
