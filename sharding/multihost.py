"""Multi-host serving on JAX's own multi-controller runtime.

Every process runs the same program over one global mesh (``jax.distributed``). Process 0
owns the HTTP server and the scheduler; before each step it broadcasts the step's host
arrays and static switches (``StepChannel.send_step``; likewise copy-on-write block copies),
and every other process replays them (``follow``), so all processes launch the same jitted
programs with the same inputs in the same order, as SPMD requires. Broadcasts use
``multihost_utils.broadcast_one_to_all``: first a fixed-size header (the switches and every
array's shape), then the arrays.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from engine.sampler import SamplerMode
from ops.attention import AttentionMetadata

if TYPE_CHECKING:
    from engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)

_STOP, _STEP, _COPY = 0, 1, 2
_STATIC = 6  # command, max_query_len, all_greedy, use_filters, num_logprobs, prompt_k (-1: none)
_MAX_NDIM = 2


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
    """``jax.distributed.initialize``; with no arguments jax reads its cluster environment
    (SLURM, TPU pods, ...). Must run before anything touches a JAX device."""
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    logger.info("process %d of %d; %d local and %d global devices", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())


def is_leader() -> bool:
    return jax.process_index() == 0


@dataclasses.dataclass
class Step:
    inputs: tuple[Any, ...]
    mode: SamplerMode
    prompt_k: int | None


@dataclasses.dataclass
class Copies:
    pairs: list[tuple[int, int]]  # copy-on-write (source block, destination block)


class StepChannel:
    """Carries each device-side action (a step, a batch of block copies) from process 0.

    A step's ``inputs`` is the runner's tuple of step inputs: its structure and leaf dtypes
    are fixed, so followers rebuild it from a template and the header; the one static field
    inside it, the attention metadata's ``max_query_len``, travels in the header.
    """

    def __init__(self, template: tuple[Any, ...]) -> None:
        leaves, self._treedef = jax.tree.flatten(template)
        self._dtypes = [np.asarray(leaf).dtype for leaf in leaves]
        self._header_size = _STATIC + _MAX_NDIM * len(leaves)

    def _header(self, command: int) -> np.ndarray:
        header = np.full(self._header_size, -1, np.int64)
        header[0] = command
        return header

    def send_step(self, inputs: tuple[Any, ...], mode: SamplerMode, prompt_k: int | None) -> None:
        leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(inputs)]
        max_query_len = next(x.max_query_len for x in inputs if isinstance(x, AttentionMetadata))
        header = self._header(_STEP)
        header[1:_STATIC] = (max_query_len, mode.all_greedy, mode.use_filters, mode.num_logprobs,
                             -1 if prompt_k is None else prompt_k)
        for i, leaf in enumerate(leaves):
            if leaf.ndim > _MAX_NDIM:
                raise ValueError(f"step input of rank {leaf.ndim}; the channel carries rank <= {_MAX_NDIM}")
            header[_STATIC + _MAX_NDIM * i : _STATIC + _MAX_NDIM * i + leaf.ndim] = leaf.shape
        multihost_utils.broadcast_one_to_all(header)
        multihost_utils.broadcast_one_to_all(leaves)

    def send_copies(self, pairs: list[tuple[int, int]]) -> None:
        header = self._header(_COPY)
        header[1] = len(pairs)
        multihost_utils.broadcast_one_to_all(header)
        multihost_utils.broadcast_one_to_all(np.asarray(pairs, np.int32).reshape(len(pairs), 2))

    def close(self) -> None:
        """Tells the followers there is nothing more to do."""
        multihost_utils.broadcast_one_to_all(self._header(_STOP))

    def receive(self) -> Step | Copies | None:
        """The next action, or None once process 0 has closed the channel."""
        header = multihost_utils.broadcast_one_to_all(self._header(_STOP))
        command = int(header[0])
        if command == _STOP:
            return None
        if command == _COPY:
            pairs = multihost_utils.broadcast_one_to_all(np.zeros((int(header[1]), 2), np.int32))
            return Copies([(int(src), int(dst)) for src, dst in pairs])
        max_query_len, greedy, filters, num_logprobs, prompt_k = (int(v) for v in header[1:_STATIC])
        shapes = header[_STATIC:].reshape(len(self._dtypes), _MAX_NDIM)
        zeros = [np.zeros(tuple(int(d) for d in shape if d >= 0), dtype)
                 for shape, dtype in zip(shapes, self._dtypes)]
        # the broadcast sums over processes, which widens bools and small ints: cast back
        leaves = [np.asarray(leaf).astype(dtype)
                  for leaf, dtype in zip(multihost_utils.broadcast_one_to_all(zeros), self._dtypes)]
        inputs = tuple(
            x.replace(max_query_len=max_query_len) if isinstance(x, AttentionMetadata) else x
            for x in jax.tree.unflatten(self._treedef, leaves)
        )
        return Step(inputs, SamplerMode(bool(greedy), bool(filters), num_logprobs),
                    None if prompt_k < 0 else prompt_k)


def follow(engine: LLMEngine) -> None:
    """The loop of every process but 0: replay process 0's actions until it calls ``release``."""
    runner = engine.runner
    if runner.step_channel is None:
        raise RuntimeError("follow() needs a multi-process engine (jax.process_count() > 1)")
    while (message := runner.step_channel.receive()) is not None:
        if isinstance(message, Copies):
            runner.copy_blocks(message.pairs)
        else:
            runner.run_step(message.inputs, message.mode, message.prompt_k)
    logger.info("process %d: leader closed the step channel", jax.process_index())


def release(engine: LLMEngine) -> None:
    """Process 0, when it is done serving: lets the followers' ``follow`` return."""
    if engine.runner.step_channel is not None:
        engine.runner.step_channel.close()
