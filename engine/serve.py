"""``python -m engine.serve [MODEL] [flags]``: the OpenAI-compatible API server.

Three kinds of process (docs/architecture.md): this one, which starts the others and runs API server
0; the engine core (scheduler, KV blocks, model runner: nothing but steps; engine/core/); and
``--api-server-count - 1`` more API servers on the same port. Start-up logs the settings, waits
for the core to load the model, then serves; meanwhile the core compiles (or loads from the
persistent cache) every program of its bucket plan and /health answers 503 "warming up: k of n
programs" until it is ready (``--skip-warmup``: programs compile when first used).
SIGINT or SIGTERM drains every API server (past --graceful-shutdown-timeout each request still
running ends with an error event and ``data: [DONE]``, or a 503), then stops the core, and exits 0.
If the core dies, every API server answers 503 and exits 1, and so does this process. Children die
with this process, whatever kills it.
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import os
import sys

from engine.args import describe, parse_args
from engine.core.process import CoreProcess, CoreSpec, CoreStartError
from engine.core.served_model import ServedModel
from engine.core.transport import CoreAddresses
from engine.environment import configure_process
from engine.launch import build_engine, configure_logging, follow, is_follower, release_followers
from server.api_server import ApiServerSpec, api_server_main, listening_socket, raise_open_file_limit, run_api_server
from server.app import tessera_version
from server.chat_template import load_chat_template
from server.sampling import load_generation_defaults
from server.state import ServerSettings, check_parser_names

logger = logging.getLogger("engine.serve")

STOP_GRACE_S = 10.0


def serve(args: argparse.Namespace) -> int:
    logger.info("Tessera %s starting with %s", tessera_version(), describe(args))
    raise_open_file_limit()
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
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
        reasoning_parser=args.reasoning_parser,
        max_pending_requests=_per_server(args.max_pending_requests, args.api_server_count),
    )
    check_parser_names(args.tool_call_parser, args.reasoning_parser)
    if is_follower(args):  # the other hosts of a mesh replay process 0's steps, in this process
        follow(args)
        return 0
    core = CoreProcess(CoreSpec(
        build=functools.partial(build_engine, args), addresses=CoreAddresses.in_new_directory(args.api_server_count),
        setup_logging=configure_logging, finish=release_followers,
    ))
    try:
        model = core.wait_for_model()
    except CoreStartError as err:
        core.stop()
        raise ValueError(str(err)) from None
    settings = ServerSettings(served_model_names=args.served_model_name or [model.name],
                              model_root=args.model or model.name, **settings_without_names)
    if settings.api_keys:
        logger.info("API key required on /v1 routes (%d key(s) accepted)", len(settings.api_keys))
    try:
        return _serve_http(args, core, model, settings)
    finally:
        core.stop(STOP_GRACE_S)
        logger.info("Server stopped")


def _serve_http(args: argparse.Namespace, core: CoreProcess, model: ServedModel, settings: ServerSettings) -> int:
    many = args.api_server_count > 1
    sock = listening_socket(args.host, args.port, reuse_port=many)
    specs = [ApiServerSpec(index=i, addresses=core.addresses, model=model, settings=settings,
                           host=args.host, port=sock.getsockname()[1],
                           graceful_shutdown_timeout=args.graceful_shutdown_timeout,
                           ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile, ssl_ca_certs=args.ssl_ca_certs,
                           uvicorn_log_level=args.uvicorn_log_level, log_stats=i == 0 and not args.disable_log_stats,
                           setup_logging=configure_logging)
             for i in range(args.api_server_count)]
    context = multiprocessing.get_context("spawn")
    others = [context.Process(target=api_server_main, args=(spec, core.pid, os.getpid()),
                              name=f"api-server-{spec.index}") for spec in specs[1:]]
    for process in others:
        process.start()

    terminated = False

    def drain_others() -> None:
        """SIGTERM, once: each drains its own requests. A second one could reach a server that has
        drained and put back the default handler, and kill it (exit code -15)."""
        nonlocal terminated
        if terminated:
            return
        terminated = True
        for process in others:
            if process.is_alive():
                process.terminate()

    code = run_api_server(specs[0], sock, core.is_alive, on_signal=drain_others)
    drain_others()  # when this server stopped without a signal (its core died)
    for process in others:
        process.join(args.graceful_shutdown_timeout + STOP_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join()
        if process.exitcode:
            logger.error("%s exited with code %s", process.name, process.exitcode)
            code = 1
    if code:
        logger.error("Exiting with code %d", code)
    return code


def _per_server(max_pending: int, count: int) -> int:
    """--max-pending-requests is for the whole server: each API server takes its share."""
    return max(1, -(-max_pending // count)) if max_pending > 0 else max_pending


def main(argv: list[str] | None = None, prog: str = "python -m engine.serve") -> int:
    configure_process()  # before anything loads transformers or touches a JAX device
    args = parse_args(argv, prog)
    configure_logging()
    try:
        return serve(args)
    except (ValueError, FileNotFoundError) as err:
        logger.error("Cannot start: %s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
