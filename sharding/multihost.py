"""Multi-host serving on JAX's own multi-controller runtime.

Every process runs the same program over one global mesh (``jax.distributed``). Process 0
owns the HTTP server and the scheduler; before each step it broadcasts the step's host
``StepInput`` (``StepChannel.send_step``; likewise copy-on-write block copies), and every
other process replays it (``follow``), so all processes launch the same jitted programs with
the same inputs in the same order, as SPMD requires. Broadcasts use
``multihost_utils.broadcast_one_to_all``: first a fixed-size header (every leaf's shape and the
size of the pickled meta fields), then the meta bytes and the leaves. Every process keeps its
own buffer of the last step's sampled tokens, identical everywhere, so the overlap's on-device
token feed needs nothing more.

The engine's types stay in the engine: a step is anything shaped like ``engine.step_input.StepInput``
(``StepPayload``), and ``follow``/``release`` take anything with a runner that replays steps
(``ReplayingEngine``: ``LLMEngine``).
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from typing import Any, Protocol, Self

import jax
import numpy as np
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

_STOP, _STEP, _COPY = 0, 1, 2
_HEADER = 2  # command, then the byte length of the pickled meta fields (steps) or the copy count


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
class Copies:
    pairs: list[tuple[int, int]]  # copy-on-write (source block, destination block)


class StepPayload(Protocol):
    """A step's inputs: a pytree whose leaves are arrays, plus static meta fields."""

    def meta(self) -> dict[str, Any]: ...

    def replace(self, **changes: Any) -> Self: ...


class StepChannel[StepT: StepPayload]:
    """Carries each device-side action (a step, a batch of block copies) from process 0.

    A step is a ``StepInput``: its leaves' count, ranks and dtypes are fixed, so followers
    rebuild it from a template, a header (command, meta size, every leaf's shape) and the
    pickled meta fields (static switches such as the sampler mode), whatever fields it has.
    """

    def __init__(self, template: StepT) -> None:
        leaves, self._treedef = jax.tree.flatten(template)
        self._dtypes = [np.asarray(leaf).dtype for leaf in leaves]
        self._ranks = [np.ndim(leaf) for leaf in leaves]
        self._header_size = _HEADER + sum(self._ranks)

    def _header(self, command: int) -> np.ndarray:
        header = np.full(self._header_size, -1, np.int64)
        header[0] = command
        return header

    def send_step(self, inputs: StepT) -> None:
        leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(inputs)]
        meta = np.frombuffer(pickle.dumps(inputs.meta()), np.uint8)
        header = self._header(_STEP)
        header[1] = meta.size
        header[_HEADER:] = [d for leaf in leaves for d in leaf.shape]
        multihost_utils.broadcast_one_to_all(header)
        multihost_utils.broadcast_one_to_all([meta, *leaves])

    def send_copies(self, pairs: list[tuple[int, int]]) -> None:
        header = self._header(_COPY)
        header[1] = len(pairs)
        multihost_utils.broadcast_one_to_all(header)
        multihost_utils.broadcast_one_to_all(np.asarray(pairs, np.int32).reshape(len(pairs), 2))

    def close(self) -> None:
        """Tells the followers there is nothing more to do."""
        multihost_utils.broadcast_one_to_all(self._header(_STOP))

    def receive(self) -> StepT | Copies | None:
        """The next action, or None once process 0 has closed the channel."""
        header = multihost_utils.broadcast_one_to_all(self._header(_STOP))
        command = int(header[0])
        if command == _STOP:
            return None
        if command == _COPY:
            pairs = multihost_utils.broadcast_one_to_all(np.zeros((int(header[1]), 2), np.int32))
            return Copies([(int(src), int(dst)) for src, dst in pairs])
        dims = iter(int(d) for d in header[_HEADER:])
        zeros = [np.zeros(int(header[1]), np.uint8)]
        zeros += [np.zeros(tuple(next(dims) for _ in range(rank)), dtype)
                  for rank, dtype in zip(self._ranks, self._dtypes, strict=True)]
        # the broadcast sums over processes, which widens bools and small ints: cast back
        meta, *leaves = [np.asarray(x).astype(z.dtype) for x, z in
                         zip(multihost_utils.broadcast_one_to_all(zeros), zeros, strict=True)]
        inputs: StepT = jax.tree.unflatten(self._treedef, leaves)
        return inputs.replace(**pickle.loads(meta.tobytes()))


class StepReplayer(Protocol):
    """A model runner: launches steps and block copies, and holds the channel when multi-process."""

    @property
    def step_channel(self) -> StepChannel[Any] | None: ...

    def run_step(self, inputs: Any) -> object: ...

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None: ...


class ReplayingEngine(Protocol):
    @property
    def runner(self) -> StepReplayer: ...


def follow(engine: ReplayingEngine) -> None:
    """The loop of every process but 0: replay process 0's actions until it calls ``release``."""
    runner = engine.runner
    if runner.step_channel is None:
        raise RuntimeError("follow() needs a multi-process engine (jax.process_count() > 1)")
    while (message := runner.step_channel.receive()) is not None:
        if isinstance(message, Copies):
            runner.copy_blocks(message.pairs)
        else:
            runner.run_step(message)
    logger.info("process %d: leader closed the step channel", jax.process_index())


def release(engine: ReplayingEngine) -> None:
    """Process 0, when it is done serving: lets the followers' ``follow`` return."""
    if engine.runner.step_channel is not None:
        engine.runner.step_channel.close()
