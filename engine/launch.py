"""What ``engine.serve``'s child processes run first: the process settings and the logging set-up
and, in the engine core, building the engine from the command line (module-level, so the ``spawn``
start method can pickle them); and a multi-host follower's whole life."""

from __future__ import annotations

import argparse
import logging
import time

from engine.config import engine_config
from engine.environment import configure_process
from engine.llm_engine import LLMEngine
from sharding import multihost
from sharding.cli import init_distributed_from_args

logger = logging.getLogger("engine.serve")


def configure_logging() -> None:
    """The start of every process ``engine.serve`` runs: process settings, then log format."""
    configure_process()
    logging.basicConfig(level=logging.INFO, datefmt="%m-%d %H:%M:%S",
                        format="%(levelname)s %(asctime)s %(processName)s [%(name)s] %(message)s")
    for noisy in ("jax", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_engine(args: argparse.Namespace) -> LLMEngine:
    """Joins the multi-host cluster when asked (before anything touches a device), then loads the
    model. The bucket plan is not compiled yet: the engine core does that while reporting progress
    (engine/core/process.py), a multi-host follower before it follows (``follow``)."""
    init_distributed_from_args(args)
    started = time.perf_counter()
    engine = LLMEngine(engine_config(args), precompile=False)
    mc = engine.model_config
    logger.info("Loaded %s (%s, %d layers, dtype %s, max_model_len %d, %s) in %.1fs",
                engine.model_name, mc.architecture, mc.num_layers, mc.dtype, engine.max_model_len,
                "with tokenizer" if engine.tokenizer is not None else "no tokenizer: token-id prompts only",
                time.perf_counter() - started)
    return engine


def is_follower(args: argparse.Namespace) -> bool:
    """A multi-host process other than 0: it replays process 0's steps and serves no HTTP."""
    return args.process_id is not None and args.process_id != 0


def follow(args: argparse.Namespace) -> None:
    """A multi-host follower: builds the engine, compiles the same plan as process 0, replays its steps."""
    engine = build_engine(args)
    if engine.config.precompile:
        engine.precompile()
    multihost.follow(engine)


def release_followers(engine: LLMEngine) -> None:
    multihost.release(engine)
