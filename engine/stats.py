"""The engine's counters and gauges, one ``EngineStats`` per step.

A module of its own so that API server processes, which receive the core's stats with every step
(/metrics, the periodic stats log), read them without loading the engine and JAX.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_free_blocks: int
    num_blocks: int
    prompt_tokens_total: int
    generation_tokens_total: int
    num_preemptions: int
    num_compilations: int
    num_late_compilations: int  # step programs compiled after the bucket plan was ready (should be 0)
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of those, tokens whose KV was reused
