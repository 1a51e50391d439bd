"""The multi-host flags, for any entry point that builds an engine over several processes.

The mesh flags (``--mesh``, ``-tp``, ``-dp``, ``--sharding-rules``) are EngineConfig fields, so
they come with the engine's flags (engine/config.py ``add_engine_flags``); these three are not
engine settings but how this process joins the others, before anything touches a device:

    parser = argparse.ArgumentParser(); add_engine_flags(parser); add_multihost_args(parser)
    args = parser.parse_args(); config = checked_engine_config(parser, args)
    init_distributed_from_args(args)           # first: before anything touches a device
    engine = LLMEngine(config)
    if not multihost.is_leader():
        multihost.follow(engine); return     # processes 1..N-1 replay process 0's steps
    ...serve...; multihost.release(engine)   # process 0, when done
"""

from __future__ import annotations

import argparse

from sharding import multihost


def add_multihost_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-host")
    group.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help="multi-host: process 0's address for jax.distributed.initialize")
    group.add_argument("--num-processes", type=int, metavar="N", help="multi-host: how many processes in all")
    group.add_argument("--process-id", type=int, metavar="I", help="multi-host: this process's index (0 serves)")


def init_distributed_from_args(args: argparse.Namespace) -> None:
    """Joins the multi-host job when the flags ask for one; a no-op otherwise."""
    if args.coordinator_address is None and args.num_processes in (None, 1):
        if args.process_id is not None:
            raise ValueError("--process-id needs --coordinator-address and --num-processes")
        return
    if args.num_processes is not None and args.process_id is not None and not 0 <= args.process_id < args.num_processes:
        raise ValueError(f"--process-id {args.process_id} is not in [0, {args.num_processes})")
    multihost.initialize(args.coordinator_address, args.num_processes, args.process_id)
