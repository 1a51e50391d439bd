"""``python -m engine.serve [MODEL] [flags]``: the OpenAI-compatible API server.

Start-up logs the settings, the model and KV cache, warm-up compilation, then the URL. SIGINT or
SIGTERM stops accepting connections and lets in-flight requests finish; past
--graceful-shutdown-timeout each one still running is ended by the engine loop (a stream gets an
error event and ``data: [DONE]``, a plain request a 503), so nothing is cut mid-body or cancelled
with a traceback; then the engine stops and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Generator

import uvicorn

from engine.args import describe, engine_config, parse_args
from engine.llm_engine import LLMEngine
from server.app import build_app, tessera_version
from server.root_path import under_root_path
from server.chat_template import load_chat_template
from server.sampling import load_generation_defaults
from server.state import ServerSettings
from server.warmup import warm_up
from sharding import multihost
from sharding.cli import init_distributed_from_args

logger = logging.getLogger("engine.serve")

STATS_INTERVAL_S = 10.0
# uvicorn's own deadline comes this long after ours, so ended streams can send their last event.
STREAM_CLOSE_MARGIN_S = 5.0
SHUTDOWN_MESSAGE = "The server is shutting down: this request was ended after the graceful shutdown timeout."


class _Server(uvicorn.Server):
    """uvicorn, minus re-raising the caught signal after a graceful shutdown (so the exit code is 0),
    plus ending the requests still running once the grace time is over."""

    def __init__(self, config: uvicorn.Config, grace_s: float, end_requests: Callable[[], None]) -> None:
        super().__init__(config)
        self._grace_s = grace_s
        self._end_requests = end_requests

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(self._grace_s, self._end_requests)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            scheme = "https" if self.config.ssl_keyfile else "http"
            base = f"{scheme}://{host}:{port}{self.config.root_path}"
            logger.info("Tessera API server ready on %s (OpenAI base_url %s/v1, docs at %s/docs)", base, base, base)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s [%(name)s] %(message)s",
                        datefmt="%m-%d %H:%M:%S")
    for noisy in ("jax", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def serve(args: argparse.Namespace) -> None:
    logger.info("Tessera %s starting with %s", tessera_version(), describe(args))
    settings_without_names = dict(
        api_keys=args.api_key or [],
        trust_request_chat_template=args.trust_request_chat_template,
        allowed_origins=args.allowed_origins,
        allowed_methods=args.allowed_methods,
        allowed_headers=args.allowed_headers,
        allow_credentials=args.allow_credentials,
        root_path=args.root_path,
        metric_prefixes=tuple(args.metric_prefixes),
        chat_template=load_chat_template(args.chat_template),
        generation_defaults=load_generation_defaults(args.generation_config, args.model),
        log_requests=not args.disable_log_requests,
        max_pending_requests=args.max_pending_requests,
    )
    init_distributed_from_args(args)
    started = time.perf_counter()
    engine = LLMEngine(engine_config(args))
    if not multihost.is_leader():  # the other hosts of a mesh replay process 0's steps
        multihost.follow(engine)
        return
    mc = engine.model_config
    logger.info("Loaded %s (%s, %d layers, dtype %s, max_model_len %d, %s) in %.1fs",
                engine.model_name, mc.architecture, mc.num_layers, mc.dtype, engine.max_model_len,
                "with tokenizer" if engine.tokenizer is not None else "no tokenizer: token-id prompts only",
                time.perf_counter() - started)
    if not args.skip_warmup:
        warm_up(engine)
    settings = ServerSettings(served_model_names=args.served_model_name or [engine.model_name],
                              model_root=args.model or engine.model_name, **settings_without_names)
    if settings.api_keys:
        logger.info("API key required on /v1 routes (%d key(s) accepted)", len(settings.api_keys))
    app = build_app(engine, settings, log_stats_interval_s=None if args.disable_log_stats else STATS_INTERVAL_S)
    engine_loop = app.state.server.engine_loop
    config = uvicorn.Config(under_root_path(app, args.root_path), host=args.host, port=args.port, log_config=None,
                            log_level=args.uvicorn_log_level, root_path=args.root_path,
                            ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile, ssl_ca_certs=args.ssl_ca_certs,
                            timeout_graceful_shutdown=args.graceful_shutdown_timeout + STREAM_CLOSE_MARGIN_S)
    _Server(config, args.graceful_shutdown_timeout, lambda: engine_loop.end_all(SHUTDOWN_MESSAGE)).run()
    multihost.release(engine)
    logger.info("Server stopped")


def main(argv: list[str] | None = None, prog: str = "python -m engine.serve") -> int:
    args = parse_args(argv, prog)
    configure_logging()
    try:
        serve(args)
    except (ValueError, FileNotFoundError) as err:
        logger.error("Cannot start: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
