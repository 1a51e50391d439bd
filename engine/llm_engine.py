"""The engine: requests in, one scheduled step at a time, RequestOutputs out.

Single-threaded by design: the engine-core process drives it and hands it new and aborted
requests between steps (engine/core/engine_core.py); offline ``LLM`` drives it in-process.

A request with an output constraint (structured outputs) enters the scheduler once its grammar has
compiled (engine/constrained.py); ``on_admission`` hears when that happens, or that it could not.
While a constrained sequence runs, a step is read back before the next one is launched: the next
step's token mask needs the token the previous step sampled.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

from engine.block_manager import BlockManager
from engine.compilation import compilation_count, enable_persistent_cache, install_counter
from engine.config import EngineConfig
from engine.constrained import ConstrainedRequests, grammar_finish
from engine.data_parallel import DataParallelScheduler
from engine.environment import configure_process
from engine.executable_store import store_for
from engine.model_runner import InFlightStep, ModelRunner, PromptLogprobs, StepOutput
from engine.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestOutput
from engine.request_errors import RequestValidationError
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledBatch, Scheduler
from engine.scheduler_protocols import BatchScheduler, BlockPool
from engine.sequence import Sequence
from engine.stats import EngineStats
from engine.stop_checker import StopChecker
from engine.structured_output import StructuredOutputSpec
from engine.tokenizer import load_tokenizer
from models.loaders.load import LoadedModel, load_model
from ops.attention import default_backend, validate_backend

if TYPE_CHECKING:
    from sharding.model_sharding import ModelSharding

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_TOKENS = 2048
GRAMMAR_WAIT_S = 0.05  # an engine with nothing to run but compiling grammars waits this long per step


class RequestState:
    def __init__(self, request_id: str, prompt: str | None, prompt_ids: list[int], seqs: list[Sequence],
                 checkers: list[StopChecker]) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_ids
        self.seqs = seqs
        self.checkers = checkers

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)


class LLMEngine:
    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None,
                 sharding: ModelSharding | None = None, precompile: bool | None = None) -> None:
        """``precompile`` (default: ``config.precompile``): compile the bucket plan now; the engine
        core passes False and calls ``precompile()`` itself, reporting progress to its API servers."""
        configure_process()  # before the first JAX device use below
        config = config.with_platform_defaults(jax.default_backend())
        config.validate()
        install_counter()
        enable_persistent_cache(config.compilation_cache_dir)
        self.config = config
        if sharding is None and (mesh_spec := config.mesh_spec()):
            from sharding.model_sharding import ModelSharding

            sharding = ModelSharding.from_spec(mesh_spec, config.sharding_rules)
        self.sharding = sharding
        if loaded is None:
            loaded = load_model(
                config.model, tokenizer=config.tokenizer, dtype=config.dtype, load_format=config.load_format,
                seed=config.seed, use_checkpoint_cache=config.use_checkpoint_cache,
                sharding_for=sharding.param_sharding if sharding else None, make_tokenizer=load_tokenizer,
            )
        self.model_config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.model_name = loaded.name
        params, run_config = loaded.params, loaded.config
        if sharding is not None:
            run_config = sharding.check_model(self.model_config)  # heads padded to split evenly
            params = sharding.shard_params(params)
            logger.info(sharding.describe())
        self.max_model_len = min(config.max_model_len or loaded.config.max_position_embeddings,
                                 loaded.config.max_position_embeddings)
        if config.max_model_len and config.max_model_len > loaded.config.max_position_embeddings:
            raise ValueError(
                f"max_model_len {config.max_model_len} exceeds the model's maximum context "
                f"length {loaded.config.max_position_embeddings}"
            )
        if config.max_num_batched_tokens:
            batched = config.max_num_batched_tokens
        else:
            batched = DEFAULT_CHUNK_TOKENS if config.enable_chunked_prefill else self.max_model_len
        if not config.enable_chunked_prefill and batched < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({batched}) is smaller than max_model_len ({self.max_model_len}) "
                "with chunked prefill disabled: long prompts could never be scheduled"
            )
        self.max_num_batched_tokens = max(batched, config.max_num_seqs)
        backend = validate_backend(config.attention_backend) if config.attention_backend else default_backend()
        self.eos_token_ids = frozenset(loaded.config.eos_token_ids) | (
            self.tokenizer.eos_token_ids if self.tokenizer is not None else frozenset()
        )
        self.runner = ModelRunner(
            run_config, params, block_size=config.block_size, max_model_len=self.max_model_len,
            max_num_seqs=config.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
            attention_backend=backend, num_blocks=config.num_gpu_blocks_override,
            kv_cache_memory_bytes=config.kv_cache_memory_bytes,
            gpu_memory_utilization=config.gpu_memory_utilization,
            sharding=sharding, token_buckets=config.token_bucket_ladder, seq_buckets=config.seq_bucket_ladder,
            precompiled=config.precompile, token_masks=self.tokenizer is not None,
            executable_store=store_for(config.compilation_cache_dir),
        )
        logger.info(self.runner.kv_cache_summary())
        self.scheduler, self.block_manager = self._make_scheduler(sharding)
        self.requests: dict[str, RequestState] = {}
        # False: token ids only, no text and no stop strings (the engine core; its API servers make the text)
        self.detokenize = True
        self._rng = random.Random(config.seed)
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.last_step_total_s = 0.0
        self.last_step_device_wait_s = 0.0
        self._in_flight: tuple[ScheduledBatch, InFlightStep] | None = None  # launched, not yet read back
        self.constraints = ConstrainedRequests(self.tokenizer, loaded.config.vocab_size, config.reasoning_end)
        # Told when a request that waited for its grammar is scheduled (error None) or refused (why).
        self.on_admission: Callable[[str, str | None], None] | None = None
        if config.precompile if precompile is None else precompile:
            self.precompile()

    def _make_scheduler(self, sharding: ModelSharding | None) -> tuple[BatchScheduler, BlockPool]:
        """One scheduler over one block pool, or with dp replicas one of each per replica."""
        config = self.config
        if sharding is not None and sharding.dp > 1:
            replicas = DataParallelScheduler(
                sharding.dp, self.runner.num_blocks // sharding.dp, config.block_size, config.max_num_seqs,
                self.max_num_batched_tokens, config.enable_chunked_prefill, config.enable_prefix_caching,
            )
            return replicas, replicas.block_manager
        block_manager = BlockManager(self.runner.num_blocks, config.block_size, config.enable_prefix_caching)
        scheduler = Scheduler(block_manager, config.max_num_seqs, self.max_num_batched_tokens,
                              config.enable_chunked_prefill)
        return scheduler, block_manager

    def precompile(self, on_progress: Callable[[], None] | None = None) -> None:
        """Compiles (or loads from the persistent cache) every step program of the bucket plan;
        ``on_progress`` runs after each program (``compile_progress()`` then says how far)."""
        self.runner.precompile(self.config.compile_workers, on_progress)

    def compile_progress(self) -> tuple[int, int]:
        """(programs ready, programs planned) of the precompile under way (or done)."""
        return self.runner.compile_progress()

    # ---- requests -------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestValidationError("this model was loaded without a tokenizer: pass prompt token ids",
                                             "prompt")
            ids = self.tokenizer.encode(prompt)
            text: str | None = prompt
        else:
            ids = [int(t) for t in prompt]
            text = None
        if not ids:
            raise RequestValidationError("the prompt is empty", "prompt")
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise RequestValidationError(f"prompt token id {bad[0]} is out of range for a vocabulary of {vocab}",
                                         "prompt")
        return text, ids

    def check_length(self, num_prompt_tokens: int, params: SamplingParams) -> int:
        """The max_tokens the request will get; a RequestValidationError when it cannot fit."""
        if num_prompt_tokens >= self.max_model_len:
            raise RequestValidationError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your "
                f"request has {num_prompt_tokens} input tokens. Please reduce the length of the input."
            )
        if params.max_tokens is None:
            return self.max_model_len - num_prompt_tokens
        if num_prompt_tokens + params.max_tokens > self.max_model_len:
            raise RequestValidationError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                f"requested {num_prompt_tokens + params.max_tokens} tokens ({num_prompt_tokens} in the "
                f"input, {params.max_tokens} in the completion). Please reduce the length of the input "
                "or the completion."
            )
        return params.max_tokens

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    arrival_time: float | None = None) -> bool:
        """Queues a request; a ValueError when it cannot run. False: it waits for its output
        constraint to compile (``on_admission`` tells when it is scheduled or refused)."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        params.validate(self.model_config.vocab_size, num_eos_ids=len(self.eos_token_ids))
        text, ids = self.encode_prompt(prompt)
        max_tokens = self.check_length(len(ids), params)
        base_seed = params.seed if params.seed is not None else self._rng.getrandbits(32)
        seqs = [Sequence(request_id, i, ids, params, base_seed + i, max_tokens, arrival_time)
                for i in range(params.n)]
        tokenizer = self.tokenizer if self.detokenize else None
        checkers = [StopChecker(tokenizer, ids, params, self.eos_token_ids) for _ in seqs]
        for child in seqs[1:]:  # the other samples share sample 0's prompt blocks once computed
            child.awaiting_fork = True
        seqs[0].forks = seqs[1:]
        spec = params.structured_outputs
        compiled = spec is None or self.constraints.attach(request_id, seqs, spec)
        self.requests[request_id] = RequestState(request_id, text, ids, seqs, checkers)
        if compiled:
            for seq in seqs:
                self.scheduler.add(seq)
        return compiled

    def check_constraint(self, spec: StructuredOutputSpec) -> None:
        """Compiles an output constraint now (cached for the request that uses it); raises
        ``StructuredOutputError`` (a ValueError) naming the problem."""
        self.constraints.check(spec)

    def abort_request(self, request_id: str) -> bool:
        state = self.requests.pop(request_id, None)
        if state is None:
            return False
        self.constraints.forget(request_id)
        for seq in state.seqs:
            if not seq.is_finished:
                seq.finish_reason = "abort"
                self.scheduler.finish(seq)
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or self._in_flight is not None or len(self.constraints) > 0

    # ---- the step -------------------------------------------------------------------------
    def step(self, final_only: bool = False) -> list[RequestOutput]:
        """Runs one scheduled step; returns outputs of requests that got tokens (``final_only``:
        of requests that finished, which spares offline batches a per-token output object).

        With ``async_scheduling`` (the overlap) the step scheduled here is launched before the
        previous step's tokens are read back, and the outputs returned are the previous step's:
        the host's work for step N runs while the device computes step N+1.
        """
        started = time.perf_counter()
        self.runner.last_device_wait_s = 0.0  # a step that reads nothing back waits for nothing
        outputs = self._admit_compiled()
        if self._in_flight is not None and _constrained(self._in_flight[0]):
            outputs += self._process(self._in_flight, final_only)  # the next mask needs its tokens
            self._in_flight = None
        batch = self.scheduler.schedule()
        launched = self._launch(batch, outputs) if batch else None
        if launched is None and self._in_flight is None:
            self.constraints.wait(GRAMMAR_WAIT_S)  # nothing runs until a grammar compiles
        if self.config.async_scheduling:
            previous, self._in_flight = self._in_flight, None
            if previous is not None:
                outputs += self._process(previous, final_only)
            if launched is not None:
                self._complete(launched)
                self._in_flight = launched
        elif launched is not None:
            self._complete(launched)
            outputs += self._process(launched, final_only)
        self.last_step_total_s = time.perf_counter() - started
        self.last_step_device_wait_s = self.runner.last_device_wait_s
        return outputs

    def _admit_compiled(self) -> list[RequestOutput]:
        """Schedules the requests whose grammar has compiled; one that could not compile ends
        alone, with finish reason "error"."""
        outputs: list[RequestOutput] = []
        for request_id, error in self.constraints.take_compiled():
            state = self.requests.get(request_id)
            if state is None:
                continue
            if self.on_admission is not None:
                self.on_admission(request_id, error)
            if error is not None:
                outputs += self._fail_request(request_id, ValueError(error))
                continue
            for seq in state.seqs:
                self.scheduler.add(seq)
        return outputs

    def _launch(self, batch: ScheduledBatch, outputs: list[RequestOutput]
                ) -> tuple[ScheduledBatch, InFlightStep] | None:
        """Dispatches the batch; a request whose row could not be placed ends with an error output."""
        batch, in_flight, failed = self.runner.dispatch(batch, self.eos_token_ids)
        for seq, error in failed:
            outputs.extend(self._fail_request(seq.request_id, error))
        if in_flight is None:
            return None
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            self.prompt_tokens_total += max(0, min(n, seq.num_prompt_tokens - seq.num_computed_tokens))
        return batch, in_flight

    def _fail_request(self, request_id: str, error: Exception) -> list[RequestOutput]:
        """Ends every sample of one request with finish_reason "error"; the others go on."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return []
        logger.warning("request %s failed: %r", request_id, error)
        for seq in state.seqs:
            if not seq.is_finished:
                seq.finish_reason = "error"
                self.scheduler.finish(seq)
        return [self._request_output(state)]

    def _complete(self, launched: tuple[ScheduledBatch, InFlightStep]) -> None:
        """Counts the launched step's tokens as computed; its samples become pending tokens.

        Runs once every token it fed is known on the host (registration hashes them), and
        skips sequences that ended meanwhile (their blocks are already free).
        """
        batch, in_flight = launched
        self.scheduler.complete(batch)
        built = in_flight.built
        for seq, takes, row in zip(batch.seqs, built.samples, built.token_rows, strict=True):
            if takes and not seq.is_finished:
                seq.mark_pending(int(row))

    def _process(self, launched: tuple[ScheduledBatch, InFlightStep], final_only: bool) -> list[RequestOutput]:
        """Reads a step's results back: appends tokens, checks stops, makes outputs. A token
        sampled for a sequence that ended meanwhile (found one step late, or aborted) is dropped."""
        batch, in_flight = launched
        out = self.runner.fetch(in_flight)
        touched: dict[str, RequestState] = {}
        for row, seq in enumerate(batch.seqs):
            state = self.requests.get(seq.request_id)
            if state is None or seq.is_finished:
                continue
            if row in out.prompt:
                self._record_prompt_logprobs(seq, out.prompt[row])
            if out.samples[row]:
                self._append_token(state, seq, row, out)
                touched[seq.request_id] = state
        outputs = []
        for state in touched.values():
            finished = state.finished
            if finished or not final_only:
                outputs.append(self._request_output(state))
            if finished:
                del self.requests[state.request_id]
        return outputs

    def _append_token(self, state: RequestState, seq: Sequence, row: int, out: StepOutput) -> None:
        token = int(out.tokens[row])
        seq.resolve_pending(token)
        self.generation_tokens_total += 1
        if seq.first_token_time is None:
            seq.first_token_time = time.monotonic()
        if out.logprobs is not None and seq.params.logprobs is not None:
            lp = out.logprobs
            seq.cumulative_logprob += float(lp.logprob[row])
            seq.logprobs.append(self._position_logprobs(
                token, lp.logprob[row], lp.rank[row], lp.top_logprobs[row], lp.top_ids[row], seq.params.logprobs))
        checker = state.checkers[seq.index]
        reason = checker.on_token(seq, token)
        if reason is None and seq.grammar is not None:
            reason = grammar_finish(seq, token)
        if reason is not None:
            seq.finish_reason, seq.stop_reason = reason
            self.scheduler.finish(seq)

    def _position_logprobs(self, token: int, logprob: Any, rank: Any, top_values: Any, top_ids: Any,
                           k: int) -> PositionLogprobs:
        """The chosen token's logprob and rank, then the top-k alternatives by rank (their texts
        decoded in one call)."""
        ids = [token, *(int(t) for t in top_ids[:k])]
        texts = self.tokenizer.decode_each(ids) if self.tokenizer is not None and self.detokenize else [None] * len(ids)
        entry: PositionLogprobs = {token: Logprob(float(logprob), int(rank), texts[0])}
        for r, (value, tid, text) in enumerate(zip(top_values[:k], ids[1:], texts[1:], strict=True), start=1):
            entry.setdefault(tid, Logprob(float(value), r, text))
        return entry

    def _record_prompt_logprobs(self, seq: Sequence, data: PromptLogprobs) -> None:
        start, lps, ranks, top_values, top_ids = data
        if not seq.prompt_logprobs:
            seq.prompt_logprobs.append(None)  # the first prompt token has no logprob
        for i in range(len(lps)):
            if len(seq.prompt_logprobs) >= seq.num_prompt_tokens:
                break
            seq.prompt_logprobs.append(self._position_logprobs(
                seq.token_ids[start + 1 + i], lps[i], ranks[i], top_values[i], top_ids[i],
                seq.params.prompt_logprobs or 0))

    def _request_output(self, state: RequestState) -> RequestOutput:
        outputs = []
        for seq, checker in zip(state.seqs, state.checkers, strict=True):
            outputs.append(CompletionOutput(
                index=seq.index, text=checker.visible_text(seq.is_finished), token_ids=seq.output_token_ids,
                cumulative_logprob=seq.cumulative_logprob if seq.params.logprobs is not None else None,
                logprobs=seq.logprobs if seq.params.logprobs is not None else None,
                finish_reason=seq.finish_reason, stop_reason=seq.stop_reason,
            ))
        first = state.seqs[0]
        return RequestOutput(
            request_id=state.request_id, prompt=state.prompt, prompt_token_ids=state.prompt_token_ids,
            prompt_logprobs=first.prompt_logprobs if first.params.prompt_logprobs is not None else None,
            outputs=outputs, finished=state.finished, num_cached_tokens=first.num_cached_tokens,
        )

    # ---- introspection --------------------------------------------------------------------
    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=self.block_manager.usage(), num_free_blocks=self.block_manager.num_free_blocks,
            num_blocks=self.block_manager.num_blocks, prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            num_preemptions=self.scheduler.num_preemptions, num_compilations=compilation_count(),
            num_late_compilations=self.runner.late_compilations,
            prefix_cache_queries=self.block_manager.prefix_queries, prefix_cache_hits=self.block_manager.prefix_hits,
        )


def _constrained(batch: ScheduledBatch) -> bool:
    return any(seq.grammar is not None and not seq.is_finished for seq in batch.seqs)
