"""Prometheus metrics, named like vLLM's with a ``tessera:`` prefix.

Gauges and counters are read from the engine loop's latest stats at scrape time; latency
histograms are observed by the engine loop as outputs leave the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.llm_engine import EngineStats

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


class _EngineStatsCollector(Collector):
    def __init__(self, model_name: str, read: Callable[[], EngineStats]) -> None:
        self._model = model_name
        self._read = read

    def collect(self) -> Iterator[Metric]:
        s = self._read()
        labels = ["model_name"]
        gauges = (
            ("tessera:num_requests_running", "Requests in the running batch.", s.num_running),
            ("tessera:num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting),
            ("tessera:kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = 100%).", s.kv_cache_usage),
            ("tessera:num_kv_blocks_free", "Free KV cache blocks.", s.num_free_blocks),
            ("tessera:num_kv_blocks_total", "KV cache blocks in all.", s.num_blocks),
        )
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=labels)
            gauge.add_metric([self._model], value)
            yield gauge
        counters = (
            ("tessera:prompt_tokens", "Prefill tokens processed.", s.prompt_tokens_total),
            ("tessera:generation_tokens", "Tokens generated.", s.generation_tokens_total),
            ("tessera:num_preemptions", "Sequences preempted for lack of KV blocks.", s.num_preemptions),
            ("tessera:num_compilations", "XLA programs compiled by this process.", s.num_compilations),
            ("tessera:num_compilations_after_ready", "Step programs compiled after the bucket plan was ready "
             "(a shape the plan missed: should stay 0).", s.num_late_compilations),
        )
        for name, doc, value in counters:
            counter = CounterMetricFamily(name, doc, labels=labels)
            counter.add_metric([self._model], value)
            yield counter


class ServerMetrics:
    """One registry per server, so several servers (tests) can live in one process."""

    def __init__(self, model_name: str, read_stats: Callable[[], EngineStats]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineStatsCollector(model_name, read_stats))
        labels = {"model_name": model_name}

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ["model_name"], buckets=buckets, registry=self.registry).labels(**labels)

        self.time_to_first_token = histogram(
            "tessera:time_to_first_token_seconds", "Arrival to first generated token.", TTFT_BUCKETS)
        self.inter_token_latency = histogram(
            "tessera:inter_token_latency_seconds", "Time between successive output steps of a request.",
            ITL_BUCKETS)
        self.e2e_request_latency = histogram(
            "tessera:e2e_request_latency_seconds", "Arrival to last token.", E2E_BUCKETS)
        self.request_prompt_tokens = histogram(
            "tessera:request_prompt_tokens", "Prompt length of finished requests.", TOKEN_BUCKETS)
        self.request_generation_tokens = histogram(
            "tessera:request_generation_tokens", "Generated tokens of finished requests.", TOKEN_BUCKETS)
        self._finished = Counter("tessera:request_success", "Finished requests by finish reason.",
                                 ["model_name", "finished_reason"], registry=self.registry)
        self._model = model_name

    def request_finished(self, reason: str, e2e_s: float, prompt_tokens: int, generation_tokens: int) -> None:
        self._finished.labels(model_name=self._model, finished_reason=reason).inc()
        self.e2e_request_latency.observe(e2e_s)
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(generation_tokens)

    def request_aborted(self) -> None:
        self._finished.labels(model_name=self._model, finished_reason="abort").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
