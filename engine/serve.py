"""``python -m engine.serve [MODEL] [flags]``: the OpenAI-compatible API server.

Start-up logs the settings, the model and KV cache and the bucket plan, then the URL; the engine
thread then compiles (or loads from the persistent cache) every planned step program while /health
answers 503 "warming up: k of n programs" (``--skip-warmup``: compile on first use). SIGINT or
SIGTERM stops accepting connections, lets in-flight requests finish (up to
--graceful-shutdown-timeout, then aborts them), stops the engine and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Generator

import uvicorn

from engine.args import describe, engine_config, parse_args
from engine.llm_engine import LLMEngine
from server.app import build_app, tessera_version
from server.chat_template import load_chat_template
from server.sampling import load_generation_defaults
from server.state import ServerSettings
from sharding import multihost
from sharding.cli import init_distributed_from_args

logger = logging.getLogger("engine.serve")

STATS_INTERVAL_S = 10.0


class _Server(uvicorn.Server):
    """uvicorn, minus re-raising the caught signal after a graceful shutdown (so the exit code is 0)."""

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
            logger.info("Tessera API server ready on http://%s:%d (OpenAI base_url http://%s:%d/v1, docs at /docs)",
                        host, port, host, port)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s [%(name)s] %(message)s",
                        datefmt="%m-%d %H:%M:%S")
    for noisy in ("jax", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def serve(args: argparse.Namespace) -> None:
    logger.info("Tessera %s starting with %s", tessera_version(), describe(args))
    settings_without_names = dict(
        api_key=args.api_key,
        chat_template=load_chat_template(args.chat_template),
        generation_defaults=load_generation_defaults(args.generation_config, args.model),
        log_requests=not args.disable_log_requests,
        max_pending_requests=args.max_pending_requests,
    )
    init_distributed_from_args(args)
    started = time.perf_counter()
    config = engine_config(args)
    engine = LLMEngine(config, precompile=False)  # the engine thread precompiles while /health says so
    if not multihost.is_leader():  # the other hosts of a mesh replay process 0's steps
        if config.precompile:
            engine.precompile()
        multihost.follow(engine)
        return
    mc = engine.model_config
    logger.info("Loaded %s (%s, %d layers, dtype %s, max_model_len %d, %s) in %.1fs",
                engine.model_name, mc.architecture, mc.num_layers, mc.dtype, engine.max_model_len,
                "with tokenizer" if engine.tokenizer is not None else "no tokenizer: token-id prompts only",
                time.perf_counter() - started)
    settings = ServerSettings(served_model_names=args.served_model_name or [engine.model_name],
                              model_root=args.model or engine.model_name, **settings_without_names)
    if settings.api_key:
        logger.info("API key required on /v1 routes")
    app = build_app(engine, settings, log_stats_interval_s=None if args.disable_log_stats else STATS_INTERVAL_S,
                    warm_up=config.precompile)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, log_level=args.uvicorn_log_level,
                            timeout_graceful_shutdown=args.graceful_shutdown_timeout)
    _Server(config).run()
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
