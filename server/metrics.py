"""Prometheus metrics under vLLM's names, so vLLM's dashboards and alerts work unchanged.

Every series is exported once per prefix in ``prefixes`` (default ``vllm:`` and ``tessera:``;
``--metric-prefixes`` chooses). Gauges and counters are read from the engine loop's latest stats
at scrape time; histograms are observed by the engine loop as requests move through their phases:
queued (arrival to first scheduled), prefill (scheduled to first token), decode (first to last
token), inference (scheduled to last token) and end to end (arrival to last token).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.stats import EngineStats

DEFAULT_PREFIXES = ("vllm:", "tessera:")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
PHASE_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                 240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


def _gauges(s: EngineStats) -> tuple[tuple[str, str, float], ...]:
    return (
        ("num_requests_running", "Requests in the running batch.", s.num_running),
        ("num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting),
        ("kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = 100%).", s.kv_cache_usage),
        ("gpu_cache_usage_perc", "Fraction of KV cache blocks in use (vLLM's older name).", s.kv_cache_usage),
        ("num_kv_blocks_free", "Free KV cache blocks.", s.num_free_blocks),
        ("num_kv_blocks_total", "KV cache blocks in all.", s.num_blocks),
    )


def _counters(s: EngineStats) -> tuple[tuple[str, str, float], ...]:
    return (
        ("prompt_tokens", "Prefill tokens processed.", s.prompt_tokens_total),
        ("generation_tokens", "Tokens generated.", s.generation_tokens_total),
        ("num_preemptions", "Sequences preempted for lack of KV blocks.", s.num_preemptions),
        ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries),
        ("prefix_cache_hits", "Prompt tokens whose KV the prefix cache supplied.", s.prefix_cache_hits),
        ("num_compilations", "XLA programs lowered by the engine core (compiled or loaded from the cache).",
         s.num_compilations),
        ("num_compilations_after_ready", "Step programs compiled after the bucket plan was ready "
         "(a shape the plan missed: should stay 0).", s.num_late_compilations),
    )


class _EngineStatsCollector(Collector):
    def __init__(self, model_name: str, read: Callable[[], EngineStats], prefixes: Sequence[str]) -> None:
        self._model = model_name
        self._read = read
        self._prefixes = tuple(prefixes)

    def collect(self) -> Iterator[Metric]:
        s = self._read()
        for prefix in self._prefixes:
            for name, doc, value in _gauges(s):
                gauge = GaugeMetricFamily(prefix + name, doc, labels=["model_name"])
                gauge.add_metric([self._model], value)
                yield gauge
            for name, doc, value in _counters(s):
                counter = CounterMetricFamily(prefix + name, doc, labels=["model_name"])
                counter.add_metric([self._model], value)
                yield counter


class _Fanout:
    """One observation recorded in the same histogram under every prefix."""

    def __init__(self, children: list[Histogram]) -> None:
        self._children = children

    def observe(self, value: float) -> None:
        for child in self._children:
            child.observe(value)


class ServerMetrics:
    """One registry per server, so several servers (tests) can live in one process."""

    def __init__(self, model_name: str, read_stats: Callable[[], EngineStats],
                 prefixes: Sequence[str] = DEFAULT_PREFIXES) -> None:
        if not prefixes:
            raise ValueError("metric prefixes must not be empty")
        self.registry = CollectorRegistry()
        self.registry.register(_EngineStatsCollector(model_name, read_stats, prefixes))
        self._model = model_name

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> _Fanout:
            return _Fanout([Histogram(p + name, doc, ["model_name"], buckets=buckets, registry=self.registry)
                            .labels(model_name=model_name) for p in prefixes])

        self.time_to_first_token = histogram("time_to_first_token_seconds", "Arrival to first generated token.",
                                             TTFT_BUCKETS)
        self.inter_token_latency = histogram("inter_token_latency_seconds",
                                             "Time between successive output steps of a request.", ITL_BUCKETS)
        self.e2e_request_latency = histogram("e2e_request_latency_seconds", "Arrival to last token.", PHASE_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds", "Arrival to first scheduled.", PHASE_BUCKETS)
        self.prefill_time = histogram("request_prefill_time_seconds", "First scheduled to first token.",
                                      PHASE_BUCKETS)
        self.decode_time = histogram("request_decode_time_seconds", "First token to last token.", PHASE_BUCKETS)
        self.inference_time = histogram("request_inference_time_seconds", "First scheduled to last token.",
                                        PHASE_BUCKETS)
        self.request_prompt_tokens = histogram("request_prompt_tokens", "Prompt length of finished requests.",
                                               TOKEN_BUCKETS)
        self.request_generation_tokens = histogram("request_generation_tokens",
                                                   "Generated tokens of finished requests.", TOKEN_BUCKETS)
        self._finished = [Counter(p + "request_success", "Finished requests by finish reason.",
                                  ["model_name", "finished_reason"], registry=self.registry) for p in prefixes]

    def request_finished(self, reason: str, e2e_s: float, prompt_tokens: int, generation_tokens: int) -> None:
        self._count_finished(reason)
        self.e2e_request_latency.observe(e2e_s)
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(generation_tokens)

    def request_aborted(self) -> None:
        self._count_finished("abort")

    def _count_finished(self, reason: str) -> None:
        for counter in self._finished:
            counter.labels(model_name=self._model, finished_reason=reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
