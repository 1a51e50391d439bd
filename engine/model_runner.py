"""Owns the parameters, the paged KV cache and the jitted step; turns a scheduled batch
into padded device arrays and back into sampled tokens.

Each step runs one program of the bucket plan (engine/bucket_plan.py: padded token count,
sequence count, block-table width, sampler variant), all compiled ahead of time into a table
(engine/step_programs.py). The cache is donated to the step, so it is updated in place.
A sequence with an output constraint (structured outputs) gets its row of the step's packed
token mask from its grammar's matcher when it samples; the sampler applies the mask.

``dispatch`` launches a step and returns without waiting; ``fetch`` waits for it. Each step
also leaves its sampled tokens on the device in a fixed-size buffer, which the next step reads
for rows whose input token the host has not seen yet (the overlap in llm_engine.py).

With a ``ModelSharding`` the step is jitted with explicit in/out shardings over its mesh; with
dp replicas every input is laid out as ``dp`` equal slices, slice ``r`` holding replica
``r``'s sequences with block ids local to its part of the pool (engine/data_parallel.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from engine.batch_rows import BatchRows
from engine.bucket_plan import BucketPlan, ProgramKey, fit
from engine.compilation import compilation_count
from engine.data_parallel import DataParallelBatch
from engine.executable_store import ExecutableStore, abstract_signature
from engine.input_builder import BuiltStep, build_step_input
from engine.sampler import Rows, gated_token_logprobs, pow2_at_least, sample
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence
from engine.step_input import PENDING_TOKEN, StepInput, empty_sampling, padding_input
from engine.step_programs import StepPrograms
from engine.structured_output import GrammarMatcher, bitmask_words, step_bitmask
from models.config import ModelConfig
from models.llama import CausalLM
from models.registry import build_model
from sharding.multihost import StepChannel

if TYPE_CHECKING:
    from ops.attention_metadata import AttentionMetadata
    from sharding.model_sharding import ModelSharding

logger = logging.getLogger(__name__)

KVCaches = list[tuple[jax.Array, jax.Array]]
CPU_DEFAULT_KV_BYTES = 512 * 1024**2


# One sequence's prompt logprobs from a step: its first scored position, then per position the
# logprob, rank, top-k logprobs and top-k ids.
PromptLogprobs = tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclasses.dataclass
class SampledLogprobs:
    logprob: np.ndarray  # [S] of the sampled token
    rank: np.ndarray  # [S] of the sampled token
    top_logprobs: np.ndarray  # [S, k]
    top_ids: np.ndarray  # [S, k]


@dataclasses.dataclass
class StepOutput:
    tokens: np.ndarray  # [S] sampled token per scheduled sequence (meaningful where it samples)
    samples: np.ndarray  # [S] bool: this step ended the sequence's known tokens, so it sampled
    logprobs: SampledLogprobs | None = None  # when some sequence asked for them
    prompt: dict[int, PromptLogprobs] = dataclasses.field(default_factory=dict)  # by row


@dataclasses.dataclass
class InFlightStep:
    built: BuiltStep
    out: dict[str, jax.Array]  # device arrays, possibly still being computed


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
        token_buckets: tuple[int, ...] | None = None,
        seq_buckets: tuple[int, ...] | None = None,
        precompiled: bool = True,
        token_masks: bool = False,
        executable_store: ExecutableStore | None = None,
    ) -> None:
        """``precompiled``: steps are folded onto the bucket plan's variants (all compiled ahead of
        time); False: each step compiles its own switches on first use (tests, --skip-warmup).
        ``token_masks``: the plan's sampling variants take a structured-output token mask.
        ``executable_store``: where compiled programs are loaded from and saved to (None: nowhere)."""
        self.config = config
        self.store = executable_store
        self.params = params
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.attention_backend = attention_backend
        if sharding is not None:
            sharding.check_attention_backend(attention_backend)
        self.model: CausalLM = build_model(config, attention_backend, sharding.head_sharding() if sharding else None)
        self.sharding = sharding
        self.dp = sharding.dp if sharding is not None else 1
        self.bytes_per_block = (
            config.num_layers * 2 * block_size * config.num_kv_heads * config.head_dim
            * jnp.dtype(config.jnp_dtype).itemsize
        )
        self.token_buffer_rows = pow2_at_least(max_num_seqs, 4)  # per replica: >= any padded sequence count
        self.batch_rows = BatchRows(2 * self.dp * self.token_buffer_rows, self.max_blocks_per_seq)
        self.plan = BucketPlan.build(
            max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
            block_size=block_size, attention_backend=attention_backend, platform=jax.default_backend(), dp=self.dp,
            token_buckets=token_buckets, seq_buckets=seq_buckets, fold=precompiled,
            mask_words=bitmask_words(config.vocab_size) if token_masks else 0)
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
        self._sampled_tokens = self._allocate_token_buffer()
        multi_process = sharding is not None and jax.process_count() > 1
        self.step_channel = StepChannel(self._dummy_inputs(1, 1, 1)) if multi_process else None

    def _jit_step(self) -> Any:
        """``step(params, kv_caches, inputs, sampled_tokens) -> (kv_caches, sampled_tokens, outputs)``.

        The caches are donated; the StepInput's meta fields are part of its pytree structure,
        so each (shapes, meta) is its own program with no static arguments.
        """
        if self.sharding is None:
            return jax.jit(self._step_impl, donate_argnums=(1,))
        params = jax.tree.map(lambda a: a.sharding, self.params)
        caches = [(self.sharding.kv_cache_sharding(),) * 2] * self.config.num_layers
        batch = self.sharding.batch_sharding()
        return jax.jit(self._step_impl, donate_argnums=(1,), in_shardings=(params, caches, batch, batch),
                       out_shardings=(caches, batch, self.sharding.replicated()))

    def _allocate_token_buffer(self) -> jax.Array:
        shape = (self.dp * self.token_buffer_rows,)
        out_sharding = self.sharding.batch_sharding() if self.sharding is not None else None
        return jax.jit(lambda: jnp.zeros(shape, jnp.int32), out_shardings=out_sharding)()

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
        sampled = jax.ShapeDtypeStruct((self.dp * self.token_buffer_rows,), jnp.int32)
        caches = [(cache, cache)] * self.config.num_layers
        compiled = self._stored(("activation", key), (caches, sampled, self._abstract_inputs(key)),
                                lambda: self._lower_program(key, caches, sampled).compile())
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
    def _step_impl(self, params: dict[str, Any], kv_caches: KVCaches, inputs: StepInput,
                   sampled_tokens: jax.Array) -> tuple[KVCaches, jax.Array, dict[str, jax.Array]]:
        forward = self._forward
        if self.sharding is not None:
            forward = self.sharding.per_replica(forward)
        kv_caches, sampled_tokens, out = forward(params, kv_caches, inputs, sampled_tokens)
        return kv_caches, sampled_tokens, out

    def _forward(self, params: dict[str, Any], kv_caches: KVCaches, inputs: StepInput,
                 prev_tokens: jax.Array) -> tuple[KVCaches, jax.Array, dict[str, jax.Array]]:
        """One replica's step. ``prev_tokens``: the previous step's sampled tokens, still on device."""
        input_ids = _take_previous(inputs.input_ids, inputs.prev_token_index, prev_tokens)
        hidden, kv_caches = self._decoder(params, input_ids, inputs.positions, kv_caches, inputs.attention())
        logits = self._logits(params, hidden[inputs.logits_indices])
        sampling = inputs.sampling
        if sampling.history.shape[1]:
            pending = _take_previous(sampling.history[:, 0], inputs.sample_prev_index, prev_tokens)
            sampling = dataclasses.replace(
                sampling, history=jnp.where(sampling.history == PENDING_TOKEN, pending[:, None], sampling.history))
        with jax.named_scope("sample"):
            tokens, logprobs = sample(logits, sampling, inputs.mode, inputs.token_bitmask)
        out = {"tokens": tokens}
        if logprobs is not None:
            out.update(zip(("logprob", "rank", "top_logprobs", "top_ids"), logprobs, strict=True))
        if inputs.prompt_k is not None:
            wanted = jnp.any(inputs.prompt_targets >= 0)
            with jax.named_scope("prompt_logprobs"):
                lp, rank, tv, ti = gated_token_logprobs(inputs.mode.gated, wanted, lambda: self._logits(params, hidden),
                                                        inputs.prompt_targets, inputs.prompt_k)
            out.update(prompt_logprob=lp, prompt_rank=rank, prompt_top_logprobs=tv, prompt_top_ids=ti)
        sampled = jnp.pad(tokens, (0, prev_tokens.shape[0] - tokens.shape[0]))  # a fixed-size buffer
        return kv_caches, sampled, out

    def _decoder(self, params: dict[str, Any], input_ids: jax.Array, positions: jax.Array, kv_caches: KVCaches,
                 md: AttentionMetadata) -> tuple[jax.Array, KVCaches]:
        """The hidden state of every token row, and the caches with this step's K/V written."""
        out = self.model.apply({"params": params}, input_ids, positions, kv_caches, md)
        return cast(tuple[jax.Array, KVCaches], out)  # apply returns the method's result (nothing mutable)

    def _logits(self, params: dict[str, Any], hidden: jax.Array) -> jax.Array:
        return cast(jax.Array, self.model.apply({"params": params}, hidden, method=CausalLM.logits))

    # ---- step programs ------------------------------------------------------------------------
    def precompile(self, workers: int | None = None, on_progress: Callable[[], None] | None = None) -> float:
        """Compiles (or loads from the persistent cache) every program of the bucket plan;
        ``on_progress`` runs after each one."""
        seconds = self.copy_programs.precompile(list(self.plan.copy_ladder), workers, show_progress=False,
                                                on_progress=on_progress)
        seconds += self.programs.precompile(self.plan.keys(), workers, on_progress=on_progress)
        if self.store is not None:
            logger.info("executable store %s: %d programs loaded, %d saved", self.store.directory,
                        self.store.loaded, self.store.saved)
        return seconds

    def compile_progress(self) -> tuple[int, int]:
        """(programs ready, programs planned) of the precompile, block copies included."""
        done = self.copy_programs.compiled + self.programs.compiled
        return done, len(self.plan.copy_ladder) + len(self.plan.keys())

    @property
    def late_compilations(self) -> int:
        return self.programs.late_compilations + self.copy_programs.late_compilations

    def _compile_program(self, key: ProgramKey) -> Any:
        return self._stored(("step", key), (self.kv_caches, self._sampled_tokens, self._abstract_inputs(key)),
                            lambda: self._lower_program(key, self.kv_caches, self._sampled_tokens).compile())

    def _lower_program(self, key: ProgramKey, kv_caches: Any, sampled_tokens: Any) -> Any:
        """The step lowered on padding inputs of ``key``'s shapes and switches."""
        return self._step.lower(self.params, kv_caches, self._abstract_inputs(key), sampled_tokens)

    def _abstract_inputs(self, key: ProgramKey) -> StepInput:
        inputs = self._dummy_inputs(key.tokens, key.seqs, key.width).replace(
            mode=key.mode, prompt_k=key.prompt_k, max_query_len=key.window,
            sampling=empty_sampling(self.dp * key.seqs, key.bias_width, key.history_width),
            token_bitmask=np.full((self.dp * key.seqs, key.mask_words), -1, np.int32))
        # Abstract leaves: a mesh over several processes refuses numpy inputs with shardings.
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype),
                            self.plan.normalize(inputs))

    def _compile_copy(self, width: int) -> Any:
        pairs = jax.ShapeDtypeStruct((2, width), np.int32)
        return self._stored(("copy", width), (self.kv_caches, pairs),
                            lambda: self._copy_blocks.lower(self.kv_caches, pairs).compile())

    def _stored(self, name: tuple[Any, ...], args: Any, compile_program: Callable[[], Any]) -> Any:
        """``compile_program()``, or its executable from the store when one with the same
        fingerprint (program, model, arguments, parameters' layout) was saved before."""
        if self.store is None:
            return compile_program()
        fingerprint = self.store.fingerprint(name, self._store_context, abstract_signature(args))
        return self.store.load_or_compile(fingerprint, compile_program)

    @functools.cached_property
    def _store_context(self) -> tuple[Any, ...]:
        """What every program of this runner shares: the model, the mesh and rules, the plan, the weights' layout."""
        return (repr(self.model), self.sharding.describe() if self.sharding else None,
                repr(getattr(self.sharding, "rules", None)), self.plan, abstract_signature(self.params))

    # ---- host-side batch preparation -------------------------------------------------------
    def _dummy_inputs(self, tokens: int, seqs: int, width: int) -> StepInput:
        """Padding-only step inputs with ``tokens`` and ``seqs`` rows per dp replica."""
        return padding_input(self.dp, tokens, seqs, width)

    def dispatch(self, batch: ScheduledBatch, eos_ids: frozenset[int]
                 ) -> tuple[ScheduledBatch, InFlightStep | None, list[tuple[Sequence, Exception]]]:
        """Builds the step's inputs and launches it (copy-on-write copies first); returns at once.

        A sequence whose row cannot be placed is left out and reported (it fails alone); the
        batch returned is the one launched, None when nothing was left to launch.
        """
        slots, failed = self.batch_rows.place(batch.seqs)
        if failed:
            batch, slots = _without_failed(batch, slots)
        if batch.copies:
            if self.step_channel is not None:
                self.step_channel.send_copies(batch.copies)
            self.copy_blocks(batch.copies)
        if not batch.seqs:
            return batch, None, failed
        built = build_step_input(batch, slots, self.batch_rows, self.plan.shapes, self.block_size, self.dp,
                                 self.token_buffer_rows, eos_ids)
        built.inputs = built.inputs.replace(token_bitmask=self._token_bitmask(batch, built))
        if self.step_channel is not None:
            self.step_channel.send_step(built.inputs)
        return batch, InFlightStep(built, self.run_step(built.inputs)), failed

    def _token_bitmask(self, batch: ScheduledBatch, built: BuiltStep) -> np.ndarray:
        """[S, words] allowed tokens of each sampling row whose sequence has an output constraint
        (all ones in the others), or [S, 0] when no row has one."""
        rows = np.shape(built.inputs.seq_lens)[0]
        matchers: list[GrammarMatcher | None] = [None] * rows
        for seq, row, samples in zip(batch.seqs, built.rows, built.samples, strict=True):
            if samples and seq.grammar is not None:
                matchers[int(row)] = seq.grammar.step_matcher()
        mask = step_bitmask(matchers, rows, self.config.vocab_size)
        return mask if mask is not None else built.inputs.token_bitmask

    def fetch(self, step: InFlightStep) -> StepOutput:
        """Waits for a dispatched step and brings its sampled tokens (and logprobs) to the host."""
        waited = time.perf_counter()
        host = jax.device_get(step.out)
        self.last_device_wait_s = time.perf_counter() - waited
        built = step.built
        rows = built.rows
        result = StepOutput(tokens=host["tokens"][rows], samples=built.samples)
        if built.inputs.mode.num_logprobs:
            result.logprobs = SampledLogprobs(host["logprob"][rows], host["rank"][rows], host["top_logprobs"][rows],
                                              host["top_ids"][rows])
        for row, (cursor, start, count) in built.prompt_rows.items():
            window = slice(cursor, cursor + count)
            result.prompt[row] = (start, host["prompt_logprob"][window], host["prompt_rank"][window],
                                  host["prompt_top_logprobs"][window], host["prompt_top_ids"][window])
        return result

    def run_step(self, inputs: StepInput) -> dict[str, jax.Array]:
        """Launches the step on prepared inputs: the one place a step program is called. Other
        processes of a multi-host mesh replay process 0's inputs through here (sharding/multihost.py)
        and keep their own copy of the sampled-token buffer, which is the same on every process."""
        inputs = self.plan.normalize(inputs)
        key = self.plan.key_of(inputs)
        if self.sharding is not None:
            inputs = self.sharding.put_batch(inputs)
        self.kv_caches, self._sampled_tokens, out = self.programs.run(key, self.params, self.kv_caches, inputs,
                                                                      self._sampled_tokens)
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


def _take_previous(values: Rows, index: jax.Array, prev_tokens: jax.Array) -> jax.Array:
    """``values`` where ``index`` < 0, else the previous step's sampled token at ``index``."""
    return jnp.where(index >= 0, prev_tokens[jnp.maximum(index, 0)], values)


def _without_failed(batch: ScheduledBatch, slots: np.ndarray) -> tuple[ScheduledBatch, np.ndarray]:
    """The batch without the sequences whose rows could not be placed (slot -1)."""
    keep = np.flatnonzero(slots >= 0)
    seqs, counts = [batch.seqs[i] for i in keep], [batch.num_new_tokens[i] for i in keep]
    if isinstance(batch, DataParallelBatch):
        ranks = [batch.dp_ranks[i] for i in keep]
        return dataclasses.replace(batch, seqs=seqs, num_new_tokens=counts, dp_ranks=ranks), slots[keep]
    return dataclasses.replace(batch, seqs=seqs, num_new_tokens=counts), slots[keep]
