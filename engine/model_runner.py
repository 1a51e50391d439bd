"""Owns the parameters, the paged KV cache and the jitted step; turns a scheduled batch
into padded device arrays and back into sampled tokens.

Each bucket (padded token count, sequence count, block-table width, sampler mode) is one
compiled program. The cache is donated to the step, so it is updated in place.

With a ``ModelSharding`` the step is jitted with explicit in/out shardings over its mesh; with
dp replicas every input is laid out as ``dp`` equal slices, slice ``r`` holding replica
``r``'s sequences with block ids local to its part of the pool (sharding/data_parallel.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from engine.bucket_plan import BucketPlan, ProgramKey, fit
from engine.compilation import compilation_count
from engine.sampler import SamplerMode, SamplingTensors, gated_token_logprobs, pow2_at_least, sample
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence
from engine.step_programs import StepPrograms
from models.config import ModelConfig
from models.llama import CausalLM
from models.registry import build_model
from ops.attention import AttentionMetadata
from sharding.data_parallel import DataParallelBatch
from sharding.multihost import StepChannel

if TYPE_CHECKING:
    from sharding.model_sharding import ModelSharding

logger = logging.getLogger(__name__)

KVCaches = list[tuple[jax.Array, jax.Array]]
CPU_DEFAULT_KV_BYTES = 512 * 1024**2


@dataclasses.dataclass
class StepOutput:
    tokens: np.ndarray  # [S] sampled token per scheduled sequence (meaningful where it samples)
    samples: np.ndarray  # [S] bool: this step ended the sequence's known tokens, so it sampled
    logprob: np.ndarray | None = None  # [S]
    rank: np.ndarray | None = None  # [S]
    top_logprobs: np.ndarray | None = None  # [S, k]
    top_ids: np.ndarray | None = None  # [S, k]
    prompt: dict[int, tuple[np.ndarray, ...]] = dataclasses.field(default_factory=dict)  # row -> arrays


def _logprob_width(requested: int) -> int:
    return 1 if requested <= 1 else (5 if requested <= 5 else 20)


class ModelRunner:
    def __init__(
        self,
        config: ModelConfig,
        params: dict[str, Any],
        *,
        block_size: int,
        max_model_len: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        attention_backend: str,
        num_blocks: int | None = None,
        kv_cache_memory_bytes: int | None = None,
        gpu_memory_utilization: float = 0.9,
        sharding: ModelSharding | None = None,
        token_buckets: list[int] | None = None,
        seq_buckets: list[int] | None = None,
    ) -> None:
        self.config = config
        self.params = params
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.attention_backend = attention_backend
        if sharding is not None:
            sharding.check_attention_backend(attention_backend)
        self.model: CausalLM = build_model(config, attention_backend)
        self.sharding = sharding
        self.dp = sharding.dp if sharding is not None else 1
        self.bytes_per_block = (
            config.num_layers * 2 * block_size * config.num_kv_heads * config.head_dim
            * jnp.dtype(config.jnp_dtype).itemsize
        )
        self.plan = BucketPlan.build(
            max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
            block_size=block_size, attention_backend=attention_backend, platform=jax.default_backend(), dp=self.dp,
            token_buckets=token_buckets, seq_buckets=seq_buckets)
        logger.info(self.plan.describe())
        self._step = self._jit_step()
        self.programs = StepPrograms("step", self._compile_program, ProgramKey.describe)
        self.copy_programs = StepPrograms("block copy", self._compile_copy, lambda width: f"{width} block pairs")
        self.last_device_wait_s = 0.0
        blocks = num_blocks or self._blocks_for_memory(kv_cache_memory_bytes, gpu_memory_utilization)
        self.num_blocks = blocks - blocks % self.dp  # every dp replica gets an equal slice of the pool
        if self.num_blocks < self.dp:
            raise ValueError(f"{blocks} KV blocks cannot be split over {self.dp} data-parallel replicas")
        self.kv_caches = self._allocate_cache()
        multi_process = sharding is not None and jax.process_count() > 1
        self.step_channel = StepChannel(self._dummy_inputs(1, 1, 1)) if multi_process else None

    def _jit_step(self) -> Any:
        static = dict(static_argnums=(8, 9), donate_argnums=(1,))  # (mode, prompt_k); positional for in_shardings
        if self.sharding is None:
            return jax.jit(self._step_impl, **static)
        params = jax.tree.map(lambda a: a.sharding, self.params)
        caches = [(self.sharding.kv_cache_sharding(),) * 2] * self.config.num_layers
        inputs = [self.sharding.batch_sharding()] * 6
        return jax.jit(self._step_impl, in_shardings=(params, caches, *inputs),
                       out_shardings=(caches, self.sharding.replicated()), **static)

    # ---- KV cache -------------------------------------------------------------------------
    def _blocks_for_memory(self, kv_bytes: int | None, utilization: float) -> int:
        if kv_bytes is None:
            stats = jax.local_devices()[0].memory_stats() or {}
            if "bytes_limit" in stats:
                budget = utilization * stats["bytes_limit"]
                activation = self._activation_peak_bytes()
                kv_bytes = int(budget - stats.get("bytes_in_use", 0) - activation)
                logger.info(
                    "memory: limit %.2f GiB, in use %.2f GiB, activation peak %.2f GiB",
                    stats["bytes_limit"] / 2**30, stats.get("bytes_in_use", 0) / 2**30, activation / 2**30,
                )
            else:
                kv_bytes = CPU_DEFAULT_KV_BYTES
        # kv_bytes is one device's share: it holds 1/block_slices of the blocks, 1/head_slices of each
        block_slices, head_slices = self.sharding.kv_cache_split() if self.sharding else (1, 1)
        blocks = kv_bytes * head_slices // self.bytes_per_block * block_slices
        if blocks < 1:
            raise ValueError(
                f"no memory left for the KV cache ({kv_bytes / 2**20:.0f} MiB); lower max_num_batched_tokens "
                "or max_model_len, or raise gpu_memory_utilization"
            )
        return int(blocks)

    def _activation_peak_bytes(self) -> int:
        """Temporary memory of the largest planned program, measured from its compiled form."""
        cache = jax.ShapeDtypeStruct((self.dp, self.block_size, self.config.num_kv_heads, self.config.head_dim),
                                     self.config.jnp_dtype)
        key = max(self.plan.keys(), key=lambda k: (k.tokens * k.width, k.seqs, k.prompt_k is not None))
        compiled = self._lower_program(key, [(cache, cache)] * self.config.num_layers).compile()
        analysis = compiled.memory_analysis()
        return int(getattr(analysis, "temp_size_in_bytes", 0)) if analysis is not None else 0

    def _allocate_cache(self) -> KVCaches:
        c = self.config
        shape = (self.num_blocks, self.block_size, c.num_kv_heads, c.head_dim)

        def zeros() -> KVCaches:
            return [(jnp.zeros(shape, c.jnp_dtype), jnp.zeros(shape, c.jnp_dtype)) for _ in range(c.num_layers)]

        out_shardings = None
        if self.sharding is not None:
            out_shardings = [(self.sharding.kv_cache_sharding(),) * 2] * c.num_layers
        return jax.jit(zeros, out_shardings=out_shardings)()

    def kv_cache_summary(self) -> str:
        tokens = self.num_blocks * self.block_size
        return (
            f"KV cache: {self.num_blocks} blocks of {self.block_size} tokens "
            f"({tokens} tokens, {self.num_blocks * self.bytes_per_block / 2**30:.2f} GiB); "
            f"maximum concurrency for {self.max_model_len} tokens per request: {tokens / self.max_model_len:.2f}x"
        )

    # ---- the jitted step -----------------------------------------------------------------
    def _step_impl(
        self,
        params: dict[str, Any],
        kv_caches: KVCaches,
        input_ids: jax.Array,
        positions: jax.Array,
        md: AttentionMetadata,
        logits_indices: jax.Array,
        sampling: SamplingTensors,
        prompt_targets: jax.Array,
        mode: SamplerMode,
        prompt_k: int | None,
    ) -> tuple[KVCaches, dict[str, jax.Array]]:
        forward = functools.partial(self._forward, mode=mode, prompt_k=prompt_k)
        if self.sharding is not None:
            forward = self.sharding.per_replica(forward)
        return forward(params, kv_caches, input_ids, positions, md, logits_indices, sampling, prompt_targets)

    def _forward(
        self,
        params: dict[str, Any],
        kv_caches: KVCaches,
        input_ids: jax.Array,
        positions: jax.Array,
        md: AttentionMetadata,
        logits_indices: jax.Array,
        sampling: SamplingTensors,
        prompt_targets: jax.Array,
        *,
        mode: SamplerMode,
        prompt_k: int | None,
    ) -> tuple[KVCaches, dict[str, jax.Array]]:
        variables = {"params": params}
        hidden, kv_caches = self.model.apply(variables, input_ids, positions, kv_caches, md)
        logits = self.model.apply(variables, hidden[logits_indices], method=CausalLM.logits)
        tokens, logprobs = sample(logits, sampling, mode)
        out = {"tokens": tokens}
        if logprobs is not None:
            out.update(zip(("logprob", "rank", "top_logprobs", "top_ids"), logprobs))
        if prompt_k is not None:
            def all_logits() -> jax.Array:
                return self.model.apply(variables, hidden, method=CausalLM.logits)

            lp, rank, tv, ti = gated_token_logprobs(mode.gated, jnp.any(prompt_targets >= 0), all_logits,
                                                    prompt_targets, prompt_k)
            out.update(prompt_logprob=lp, prompt_rank=rank, prompt_top_logprobs=tv, prompt_top_ids=ti)
        return kv_caches, out

    # ---- step programs ------------------------------------------------------------------------
    def precompile(self, workers: int | None = None) -> float:
        """Compiles (or loads from the persistent cache) every program of the bucket plan."""
        seconds = self.copy_programs.precompile(list(self.plan.copy_ladder), workers, show_progress=False)
        return seconds + self.programs.precompile(self.plan.keys(), workers)

    def compile_progress(self) -> tuple[int, int]:
        """(programs ready, programs planned) of the precompile, block copies included."""
        tables = (self.copy_programs, self.programs)
        return sum(t.compiled for t in tables), len(self.plan.copy_ladder) + len(self.plan.keys())

    @property
    def late_compilations(self) -> int:
        return self.programs.late_compilations + self.copy_programs.late_compilations

    def _compile_program(self, key: ProgramKey) -> Any:
        return self._lower_program(key, self.kv_caches).compile()

    def _compile_copy(self, width: int) -> Any:
        return self._copy_blocks.lower(self.kv_caches, np.zeros((2, width), np.int32)).compile()

    def _lower_program(self, key: ProgramKey, kv_caches: Any) -> Any:
        step = self.plan.normalize(_StepView.padding(self._dummy_inputs(key.tokens, key.seqs, key.width), key))
        return self._step.lower(self.params, kv_caches, *step.arrays(), step.mode, step.prompt_k)

    # ---- host-side batch preparation -------------------------------------------------------

    def _dummy_inputs(self, tokens: int, seqs: int, width: int) -> tuple[Any, ...]:
        """Padding-only step inputs with ``tokens`` and ``seqs`` rows per dp replica."""
        all_tokens, all_seqs = self.dp * tokens, self.dp * seqs
        md = AttentionMetadata(
            slot_mapping=np.full(all_tokens, -1, np.int32), block_tables=np.zeros((all_seqs, width), np.int32),
            seq_lens=np.zeros(all_seqs, np.int32), query_start_loc=np.zeros(self.dp * (seqs + 1), np.int32),
            max_query_len=tokens,
        )
        sampling = _sampling_arrays([], all_seqs, 0, 0)
        return (np.zeros(all_tokens, np.int32), np.zeros(all_tokens, np.int32), md, np.zeros(all_seqs, np.int32),
                sampling, np.zeros(all_tokens, np.int32))

    def execute(self, batch: ScheduledBatch, eos_ids: frozenset[int]) -> StepOutput:
        seqs, counts = batch.seqs, batch.num_new_tokens
        ranks = batch.dp_ranks if isinstance(batch, DataParallelBatch) else [0] * len(seqs)
        decode_only = all(n == 1 for n in counts)
        widest = max(-(-(s.num_computed_tokens + n) // self.block_size) for s, n in zip(seqs, counts))
        tokens_of, seqs_of = [0] * self.dp, [0] * self.dp
        for rank, n in zip(ranks, counts):
            tokens_of[rank] += n
            seqs_of[rank] += 1
        t_pad, s_pad, width = self.plan.shapes(max(tokens_of), max(seqs_of), widest, decode_only)
        bs, dp = self.block_size, self.dp
        input_ids = np.zeros(dp * t_pad, np.int32)
        positions = np.zeros(dp * t_pad, np.int32)
        slots = np.full(dp * t_pad, -1, np.int32)
        prompt_targets = np.zeros(dp * t_pad, np.int32)
        block_tables = np.zeros((dp * s_pad, width), np.int32)
        seq_lens = np.zeros(dp * s_pad, np.int32)
        qsl = np.zeros(dp * (s_pad + 1), np.int32)
        logits_indices = np.zeros(dp * s_pad, np.int32)
        samples = np.zeros(len(seqs), bool)
        rows = np.zeros(len(seqs), np.int64)  # each sequence's row in the padded, replica-sliced layout
        placed: list[tuple[Sequence | None, bool]] = [(None, False)] * (dp * s_pad)
        prompt_rows: dict[int, tuple[int, int, int]] = {}
        prompt_k = -1
        filled = [0] * dp
        local = [0] * dp  # next token offset within each replica's slice
        for i, (seq, n, rank) in enumerate(zip(seqs, counts, ranks)):
            start = seq.num_computed_tokens
            end = start + n
            j, cursor = filled[rank], rank * t_pad + local[rank]
            rows[i] = row = rank * s_pad + j
            table = seq.block_table
            # Positions whose KV is already cached (a reused prefix, a forked prompt) are not
            # rewritten: another sequence may be reading that block.
            if n == 1:  # decode: plain ints are several times cheaper than numpy on one element
                input_ids[cursor] = seq.token_ids[start]
                positions[cursor] = start
                if start >= seq.kv_present_tokens:
                    slots[cursor] = table[start // bs] * bs + start % bs
            else:
                pos = np.arange(start, end, dtype=np.int32)
                input_ids[cursor : cursor + n] = seq.token_ids[start:end]
                positions[cursor : cursor + n] = pos
                slot = np.asarray(table, np.int32)[pos // bs] * bs + pos % bs
                slots[cursor : cursor + n] = np.where(pos < seq.kv_present_tokens, -1, slot)
            block_tables[row, : len(table)] = table
            seq_lens[row] = end
            qsl[rank * (s_pad + 1) + j + 1] = local[rank] + n
            logits_indices[row] = local[rank] + n - 1
            samples[i] = end == seq.num_tokens
            placed[row] = (seq, bool(samples[i]))
            if seq.wants_prompt_logprobs() and start < seq.num_prompt_tokens:
                last = min(end, seq.num_prompt_tokens - 1)
                targets = seq.token_ids[start + 1 : last + 1]
                prompt_targets[cursor : cursor + len(targets)] = targets
                prompt_rows[i] = (cursor, start, len(targets))
                prompt_k = max(prompt_k, seq.params.prompt_logprobs or 0)
            filled[rank] += 1
            local[rank] += n
        for rank in range(dp):
            qsl[rank * (s_pad + 1) + filled[rank] + 1 : (rank + 1) * (s_pad + 1)] = local[rank]
        md = AttentionMetadata(slot_mapping=slots, block_tables=block_tables, seq_lens=seq_lens,
                               query_start_loc=qsl,
                               max_query_len=1 if decode_only else min(t_pad, pow2_at_least(max(counts), 16)))
        sampling_seqs = [s for s, take in zip(seqs, samples) if take]
        mode = SamplerMode(
            all_greedy=all(s.params.greedy for s in sampling_seqs),
            use_filters=any(s.params.uses_filters for s in sampling_seqs),
            num_logprobs=_logprob_width(max((s.params.logprobs for s in sampling_seqs
                                             if s.params.logprobs is not None), default=-1))
            if any(s.params.logprobs is not None for s in sampling_seqs) else 0,
        )
        bias_width, history_width = _side_widths(seqs, samples, eos_ids)
        sampling = _sampling_arrays(placed, dp * s_pad, bias_width, history_width, eos_ids)
        prompt_width = _logprob_width(prompt_k) if prompt_k >= 0 else None
        step = self.plan.normalize(_StepView(input_ids, positions, md, logits_indices, sampling, prompt_targets,
                                             mode, prompt_width))
        inputs, mode, prompt_width = step.arrays(), step.mode, step.prompt_k
        if batch.copies:
            if self.step_channel is not None:
                self.step_channel.send_copies(batch.copies)
            self.copy_blocks(batch.copies)
        if self.step_channel is not None:
            self.step_channel.send_step(inputs, mode, prompt_width)
        out = self.run_step(inputs, mode, prompt_width)
        dispatched = time.perf_counter()
        host = jax.device_get(out)
        self.last_device_wait_s = time.perf_counter() - dispatched
        result = StepOutput(tokens=host["tokens"][rows], samples=samples)
        if mode.num_logprobs:
            result.logprob = host["logprob"][rows]
            result.rank = host["rank"][rows]
            result.top_logprobs = host["top_logprobs"][rows]
            result.top_ids = host["top_ids"][rows]
        for row, (cursor, start, count) in prompt_rows.items():
            window = slice(cursor, cursor + count)
            result.prompt[row] = (start, host["prompt_logprob"][window], host["prompt_rank"][window],
                                  host["prompt_top_logprobs"][window], host["prompt_top_ids"][window])
        return result

    def run_step(self, inputs: tuple[Any, ...], mode: SamplerMode, prompt_k: int | None) -> dict[str, jax.Array]:
        """Launches the step on prepared inputs; other processes of a multi-host mesh replay
        process 0's inputs through here (sharding/multihost.py)."""
        if self.sharding is not None:
            inputs = self.sharding.put_batch(inputs)
        key = self.plan.key_of(_StepView(*inputs, mode, prompt_k))
        self.kv_caches, out = self.programs.run(key, self.params, self.kv_caches, *inputs)
        return out

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicates whole blocks in every layer's pools, in place (donated)."""
        width = fit(self.plan.copy_ladder, len(copies))
        pairs = np.stack([np.zeros(width, np.int32), np.full(width, self.num_blocks, np.int32)])
        pairs[:, : len(copies)] = np.asarray(copies, np.int32).T
        self.kv_caches = self.copy_programs.run(width, self.kv_caches, pairs)

    @staticmethod
    @functools.partial(jax.jit, donate_argnums=(0,))
    def _copy_blocks(kv_caches: KVCaches, pairs: jax.Array) -> KVCaches:
        src, dst = pairs[0], pairs[1]  # padding pairs target block num_blocks: dropped
        return [(k.at[dst].set(k[src], mode="drop"), v.at[dst].set(v[src], mode="drop")) for k, v in kv_caches]

    @property
    def num_compilations(self) -> int:
        return compilation_count()


@dataclasses.dataclass(frozen=True)
class _StepView:
    """The step's inputs under the attribute names the bucket plan reads."""

    input_ids: Any
    positions: Any
    md: AttentionMetadata
    logits_indices: Any
    sampling: SamplingTensors
    prompt_targets: Any
    mode: SamplerMode
    prompt_k: int | None

    @classmethod
    def padding(cls, inputs: tuple[Any, ...], key: ProgramKey) -> _StepView:
        view = cls(*inputs, mode=key.mode, prompt_k=key.prompt_k)
        md = dataclasses.replace(view.md, max_query_len=key.window)
        sampling = _sampling_arrays([], view.sampling.temperature.shape[0], key.bias_width, key.history_width)
        return dataclasses.replace(view, md=md, sampling=sampling)

    @property
    def seq_lens(self) -> Any:
        return self.md.seq_lens

    @property
    def block_tables(self) -> Any:
        return self.md.block_tables

    @property
    def max_query_len(self) -> int:
        return self.md.max_query_len

    def replace(self, **changes: Any) -> _StepView:
        if "max_query_len" in changes:
            changes["md"] = dataclasses.replace(self.md, max_query_len=changes.pop("max_query_len"))
        return dataclasses.replace(self, **changes)

    def arrays(self) -> tuple[Any, ...]:
        return (self.input_ids, self.positions, self.md, self.logits_indices, self.sampling, self.prompt_targets)


def _side_widths(seqs: list[Sequence], samples: np.ndarray, eos_ids: frozenset[int]) -> tuple[int, int]:
    bias, history = 0, 0
    for seq, take in zip(seqs, samples):
        if not take:
            continue
        p = seq.params
        n = len(p.logit_bias or {})
        if seq.num_output_tokens < p.min_tokens:
            n += len(eos_ids) + len(p.stop_token_ids)
        bias = max(bias, n)
        if p.uses_penalties:
            history = max(history, seq.num_tokens)
    return (pow2_at_least(bias) if bias else 0), (pow2_at_least(history, 16) if history else 0)


_SETTING_COLUMNS = (
    ("temperature", np.float32), ("top_p", np.float32), ("top_k", np.int32), ("min_p", np.float32),
    ("presence_penalty", np.float32), ("frequency_penalty", np.float32), ("repetition_penalty", np.float32),
    ("seeds", np.uint32), ("counters", np.int32),
)


def _sampling_arrays(
    rows: list[tuple[Sequence | None, bool]], s_pad: int, bias_width: int, history_width: int,
    eos_ids: frozenset[int] = frozenset(),
) -> SamplingTensors:
    # One row of per-request settings per padded sequence, converted to arrays in one go.
    padding = (0.0, 1.0, 0, 0.0, 0.0, 0.0, 1.0, 0, 0)
    settings = [padding] * s_pad
    bias_ids = np.full((s_pad, bias_width), -1, np.int32)
    bias_values = np.zeros((s_pad, bias_width), np.float32)
    history = np.full((s_pad, history_width), -1, np.int32)
    is_output = np.zeros((s_pad, history_width), bool)
    for i, (seq, take) in enumerate(rows):
        if not take or seq is None:
            continue
        p = seq.params
        settings[i] = (p.temperature, p.top_p, p.top_k, p.min_p, p.presence_penalty, p.frequency_penalty,
                       p.repetition_penalty, seq.seed & 0xFFFFFFFF, seq.num_output_tokens)
        if p.logit_bias or seq.num_output_tokens < p.min_tokens:
            entries = list((p.logit_bias or {}).items())
            if seq.num_output_tokens < p.min_tokens:
                entries += [(tok, -math.inf) for tok in (*eos_ids, *p.stop_token_ids)]
            for j, (tok, value) in enumerate(entries):
                bias_ids[i, j], bias_values[i, j] = tok, value
        if p.uses_penalties and history_width:
            history[i, : seq.num_tokens] = seq.token_ids
            is_output[i, seq.num_prompt_tokens : seq.num_tokens] = True
    columns = list(zip(*settings))
    t = {name: np.asarray(col, dtype) for (name, dtype), col in zip(_SETTING_COLUMNS, columns)}
    return SamplingTensors(**t, bias_ids=bias_ids, bias_values=bias_values, history=history,
                           history_is_output=is_output)
