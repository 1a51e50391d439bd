"""A cheap bound on how far a regex's counted repetitions expand, checked before compiling.

llguidance expands ``x{m,n}`` into its lexer; nested counts multiply (``(a{1000}){1000}`` is a
million states) and the first mask then takes seconds, with no limit of its own that stops it.
``repetition_size`` walks the pattern once and bounds the expanded size: every atom counts 1,
a group counts the sum of its contents, a ``{m,n}`` multiplies what it follows by ``max(m, n)``
(unbounded ``*``, ``+``, ``{m,}`` by the lower count, as the lexer loops rather than unrolls).
"""

from __future__ import annotations

import re

MAX_REPETITION_SIZE = 100_000
_COUNT = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def repetition_size(pattern: str) -> int:
    """An upper bound of the pattern's size once counted repetitions are unrolled."""
    stack: list[int] = [0]  # running size of each open group
    last = 0  # size of the atom or group just closed (what a quantifier applies to)
    i = 0
    while i < len(pattern):
        c = pattern[i]
        count = _COUNT.match(pattern, i) if c == "{" else None
        if count is not None:
            low, high = int(count.group(1)), count.group(2)
            times = max(low, int(high)) if high else max(low, 1)
            stack[-1] += last * (times - 1)
            last *= times
            i = count.end()
            continue
        if c in "*+?|":
            pass  # loops and alternation add no states of their own
        elif c == "(":
            stack.append(0)
        elif c == ")" and len(stack) > 1:
            last = stack.pop()
            stack[-1] += last
        else:
            last = 1
            i = _atom_end(pattern, i)
            stack[-1] += 1
            continue
        i += 1
    return sum(stack)


def _atom_end(pattern: str, i: int) -> int:
    """Index past the atom at ``i``: an escape, a character class, or one character."""
    if pattern[i] == "\\":
        return i + 2
    if pattern[i] == "[":
        j = i + 1
        if j < len(pattern) and pattern[j] == "^":
            j += 1
        if j < len(pattern) and pattern[j] == "]":
            j += 1
        while j < len(pattern) and pattern[j] != "]":
            j += 2 if pattern[j] == "\\" else 1
        return j + 1
    return i + 1
