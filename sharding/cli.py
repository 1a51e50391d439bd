"""The sharding and multi-host flags, for any entry point that builds an engine.

    parser = argparse.ArgumentParser(); add_sharding_args(parser); args = parser.parse_args()
    init_distributed_from_args(args)           # first: before anything touches a device
    engine = LLMEngine(EngineConfig(..., **sharding_config(args)))
    if not multihost.is_leader():
        multihost.follow(engine); return     # processes 1..N-1 replay process 0's steps
    ...serve...; multihost.release(engine)   # process 0, when done
"""

from __future__ import annotations

import argparse
from typing import Any

from sharding import multihost
from sharding.mesh import combine_mesh_flags, parse_mesh_spec
from sharding.rules import RULE_SETS, load_rules


def _mesh_arg(text: str) -> str:
    try:
        parse_mesh_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text.replace(" ", "")


def _rules_arg(text: str) -> str:
    try:
        load_rules(text)
    except (ValueError, OSError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_sharding_args(parser: argparse.ArgumentParser) -> None:
    """All of them: the mesh flags and the multi-host flags."""
    add_mesh_args(parser)
    add_multihost_args(parser)


def add_mesh_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sharding")
    group.add_argument("--mesh", type=_mesh_arg, metavar="SPEC",
                       help="device mesh over all devices, e.g. 'tp=4' or 'dp=2,tp=4' (default: one device)")
    add_parallel_size_args(group)
    group.add_argument("--sharding-rules", type=_rules_arg, default="default", metavar="NAME|FILE",
                       help=f"logical-axis-to-mesh rules: one of {', '.join(RULE_SETS)}, or a JSON/YAML file "
                            "(default: %(default)s)")


def add_parallel_size_args(group: argparse._ActionsContainer) -> None:
    """vLLM's spellings of the mesh sizes; ``resolve_parallel_sizes`` folds them into ``--mesh``."""
    group.add_argument("--tensor-parallel-size", "-tp", type=int, metavar="N",
                       help="as --mesh tp=N (must agree with --mesh when both are given)")
    group.add_argument("--data-parallel-size", "-dp", type=int, metavar="N",
                       help="as --mesh dp=N (must agree with --mesh when both are given)")


def resolve_parallel_sizes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Sets ``args.mesh`` from --mesh, -tp and -dp together; a parser error when they disagree."""
    try:
        args.mesh = combine_mesh_flags(args.mesh, args.tensor_parallel_size, args.data_parallel_size)
    except ValueError as err:
        parser.error(str(err))


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


def sharding_config(args: argparse.Namespace) -> dict[str, Any]:
    """The EngineConfig fields these flags set."""
    mesh = combine_mesh_flags(args.mesh, getattr(args, "tensor_parallel_size", None),
                              getattr(args, "data_parallel_size", None))
    return {"mesh": mesh, "sharding_rules": args.sharding_rules}
