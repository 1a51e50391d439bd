"""One request's position in its grammar: advance on accepted tokens, roll back, fill mask rows.

The engine calls ``fill_bitmask`` for the row a request occupies in the next step, then
``accept_token`` with the token the step sampled (always an allowed one, since the mask was
applied). ``rollback`` undoes the last tokens (speculative drafts, a token sampled one step late
for a request that had already finished). ``is_terminated`` says the grammar is complete: only
the end-of-sequence token is allowed from there. ``fill_bitmasks`` computes the rows of a whole
batch on llguidance's thread pool, without the GIL, so it can run while the device steps.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import llguidance
import llguidance.numpy
import numpy as np

from engine.structured_output.bitmask import allocate_bitmask, bitmask_words, unpack_bitmask


class GrammarMatcher:
    """Wraps one llguidance ``LLMatcher``. Never raises on a bad token: it enters an error state
    (``error`` is then set) that the engine turns into a failed request."""

    def __init__(self, ll_matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = ll_matcher
        self.vocab_size = vocab_size
        self.num_accepted = 0

    def accept_token(self, token_id: int) -> bool:
        """Advances past ``token_id``; False (and ``error`` set) if the grammar does not allow it."""
        ok = self._matcher.consume_token(int(token_id))
        self.num_accepted += int(ok)
        return ok

    def accept_tokens(self, token_ids: Sequence[int]) -> bool:
        """Advances past each token in turn; stops at the first disallowed one (returns False)."""
        return all(self.accept_token(t) for t in token_ids)

    def rollback(self, num_tokens: int) -> None:
        """Undoes the last ``num_tokens`` accepted tokens."""
        if not 0 <= num_tokens <= self.num_accepted:
            raise ValueError(f"cannot roll back {num_tokens} tokens; {self.num_accepted} were accepted")
        if num_tokens and not self._matcher.rollback(num_tokens):
            raise RuntimeError(f"grammar rollback failed: {self._matcher.get_error()}")
        self.num_accepted -= num_tokens

    def reset(self) -> None:
        """Back to the start of the output (e.g. after a preemption that discards the output)."""
        self._matcher.reset()
        self.num_accepted = 0

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete (or in error): only end-of-sequence may follow."""
        return self._matcher.is_stopped()

    @property
    def is_accepting(self) -> bool:
        """The output so far is a complete match (it may still be extendable)."""
        return self._matcher.is_accepting()

    @property
    def error(self) -> str | None:
        if not self._matcher.is_error():
            return None
        return self._matcher.get_error() or "grammar matcher error"

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Writes the allowed next tokens into ``bitmask[row]`` ([rows, words] int32, C order)."""
        _check_bitmask(bitmask, self.vocab_size)
        llguidance.numpy.fill_next_token_bitmask(self._matcher, bitmask, row)

    def allowed_token_ids(self) -> np.ndarray:
        """The allowed next token ids (for tests and debugging; the engine uses ``fill_bitmask``)."""
        row = np.zeros((1, bitmask_words(self.vocab_size)), dtype=np.int32)
        self.fill_bitmask(row, 0)
        return np.flatnonzero(unpack_bitmask(row, self.vocab_size)[0])


_executor: llguidance.LLExecutor | None = None
_executor_lock = threading.Lock()


def _shared_executor() -> llguidance.LLExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = llguidance.LLExecutor()
        return _executor


def fill_bitmasks(bitmask: np.ndarray, rows: Sequence[tuple[GrammarMatcher, int]]) -> None:
    """Fills ``bitmask[row]`` for each (matcher, row) in parallel; other rows are left as they are."""
    if not rows:
        return
    _check_bitmask(bitmask, rows[0][0].vocab_size)
    if len({row for _, row in rows}) != len(rows) or any(not 0 <= row < bitmask.shape[0] for _, row in rows):
        raise ValueError("each matcher needs its own row inside the bitmask")
    llguidance.numpy.fill_next_token_bitmask_par(
        _shared_executor(), [(m._matcher, row) for m, row in rows], bitmask)


def step_bitmask(matchers: Sequence[GrammarMatcher | None], rows: int, vocab_size: int) -> np.ndarray | None:
    """The [rows, words] mask of a step whose first rows hold these sequences (None: no
    constraint; padding rows after them), or None when no row is constrained, so the step can
    take its variant without a mask."""
    constrained = [(m, row) for row, m in enumerate(matchers) if m is not None]
    if not constrained:
        return None
    if len(matchers) > rows:
        raise ValueError(f"{len(matchers)} sequences do not fit in {rows} rows")
    bitmask = allocate_bitmask(rows, vocab_size)
    fill_bitmasks(bitmask, constrained)
    return bitmask


def _check_bitmask(bitmask: np.ndarray, vocab_size: int) -> None:
    if bitmask.dtype != np.int32 or bitmask.ndim != 2 or not bitmask.flags["C_CONTIGUOUS"]:
        raise ValueError("the bitmask must be a C-contiguous [rows, words] int32 array")
    if bitmask.shape[1] != bitmask_words(vocab_size):
        raise ValueError(f"bitmask rows have {bitmask.shape[1]} words; the vocabulary needs "
                         f"{bitmask_words(vocab_size)}")
