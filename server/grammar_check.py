"""Compiling a request's constraint in the API server, so a grammar that cannot compile is a 400
before anything reaches the engine (which may be in another process and compiles it again, from
its own cache).

The vocabulary index (about a second or two) is built on a background thread on first use;
compiles also run off the event loop. Both are cached, so a schema that is used again costs
nothing here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from engine.structured_output import GrammarCompiler, StructuredOutputSpec


class GrammarCheck:
    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._compiler: concurrent.futures.Future[GrammarCompiler] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="grammar-check")

    async def check(self, spec: StructuredOutputSpec) -> None:
        """Returns once ``spec`` compiled; raises ``StructuredOutputError`` naming the problem."""
        if self._compiler is None:
            self._compiler = self._pool.submit(GrammarCompiler.from_tokenizer, self._tokenizer, self._vocab_size)
        compiler = await asyncio.wrap_future(self._compiler)
        await asyncio.wrap_future(compiler.compile_async(spec))
