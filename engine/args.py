"""Command-line flags of ``python -m engine.serve`` / ``tessera serve``, with vLLM's names.

The engine's flags come from EngineConfig (engine/config.py, one per field); this module adds the
server's own (HTTP, CORS, TLS, chat template, ...), the multi-host flags, and ``--config``.
Precedence: command line, then ``--config FILE.yaml`` (long flag names as keys), then defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from engine.config import add_engine_flags, checked_engine_config
from engine.config_flags import human_int
from sharding.cli import add_multihost_args

API_KEY_ENV = "TESSERA_API_KEY"
REASONING_END = "</think>"  # where the thinking of every --reasoning-parser's models ends


def build_parser(prog: str = "python -m engine.serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a model with Tessera's OpenAI-compatible API (/v1/completions, /v1/chat/completions).",
        epilog="With no model, serves the embedded default, SmolLM2-135M-Instruct.",
    )
    parser.add_argument("model_tag", nargs="?", metavar="MODEL", help="model directory or .gguf file (as --model)")

    model = add_engine_flags(parser)["model"]
    model.add_argument("--served-model-name", nargs="+", metavar="NAME",
                       help="name(s) clients use in 'model'; the first is reported; default: the model's name")
    model.add_argument("--chat-template", metavar="FILE_OR_TEMPLATE",
                       help="Jinja chat template, as a file or the template itself")
    model.add_argument("--generation-config", default="auto", metavar="SOURCE",
                       help="default sampling values: 'auto' (the model folder's generation_config.json), "
                            "'vllm' (none), or a folder (default: %(default)s)")
    add_multihost_args(parser)

    server = parser.add_argument_group("server")
    server.add_argument("--host", default="0.0.0.0", metavar="ADDR", help="address to listen on (default: %(default)s)")
    server.add_argument("--port", type=int, default=8000, metavar="N", help="port to listen on (default: %(default)s)")
    server.add_argument("--api-server-count", type=human_int, default=1, metavar="N",
                        help="HTTP server processes sharing the port (SO_REUSEPORT), all talking to the one "
                             "engine-core process (default: %(default)s)")
    server.add_argument("--api-key", action="extend", nargs="+", metavar="KEY",
                        help=f"require 'Authorization: Bearer KEY' on /v1 and tokenizer routes; several keys "
                             f"are all accepted (default: ${API_KEY_ENV})")
    server.add_argument("--allowed-origins", nargs="+", default=[], metavar="ORIGIN",
                        help="CORS: origins allowed to call the API from a browser, or '*' (default: no CORS)")
    server.add_argument("--allowed-methods", nargs="+", default=["*"], metavar="METHOD",
                        help="CORS: allowed methods (default: *)")
    server.add_argument("--allowed-headers", nargs="+", default=["*"], metavar="HEADER",
                        help="CORS: allowed request headers (default: *)")
    server.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials")
    server.add_argument("--ssl-keyfile", metavar="FILE", help="serve HTTPS with this private key")
    server.add_argument("--ssl-certfile", metavar="FILE", help="serve HTTPS with this certificate")
    server.add_argument("--ssl-ca-certs", metavar="FILE", help="CA certificates to verify client certificates")
    server.add_argument("--root-path", default="", metavar="PATH",
                        help="the path prefix a reverse proxy serves this server under, e.g. /tessera")
    server.add_argument("--trust-request-chat-template", action="store_true",
                        help="accept 'chat_template' in chat requests (rendered in a sandboxed child process "
                             "with a time limit); refused by default")
    server.add_argument("--metric-prefixes", nargs="+", default=["vllm:", "tessera:"], metavar="PREFIX",
                        help="export each /metrics series under these name prefixes (default: vllm: tessera:)")
    server.add_argument("--max-pending-requests", type=int, default=4096, metavar="N",
                        help="answer 503 past this many unfinished requests (default: %(default)s)")
    server.add_argument("--graceful-shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="on SIGINT/SIGTERM, wait this long for in-flight requests before aborting them "
                             "(default: %(default)s)")
    server.add_argument("--enable-auto-tool-choice", action="store_true",
                        help='let the model decide to call tools (tool_choice "auto"); needs --tool-call-parser')
    server.add_argument("--tool-call-parser", metavar="NAME",
                        help="how tool calls are read from the model's text: hermes, llama3_json or mistral")
    server.add_argument("--reasoning-parser", metavar="NAME",
                        help="split <think>...</think> into reasoning_content: deepseek_r1 or qwen3")
    server.add_argument("--disable-log-requests", action="store_true", help="do not log each request")
    server.add_argument("--disable-log-stats", action="store_true", help="do not log the periodic stats line")
    server.add_argument("--uvicorn-log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug", "trace"],
                        help="uvicorn's log level (default: %(default)s)")
    parser.add_argument("--config", type=Path, metavar="FILE.yaml",
                        help="YAML file of flags (long names as keys, e.g. max-model-len: 4096); "
                             "the command line wins")
    return parser


def parse_args(argv: list[str] | None = None, prog: str = "python -m engine.serve") -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.config is not None:
        args = parser.parse_args(_config_file_args(parser, args.config) + argv)
    args.model = args.model_tag or args.model
    if args.reasoning_parser and args.reasoning_end is None:
        args.reasoning_end = REASONING_END
    checked_engine_config(parser, args)
    if args.api_key is None and os.environ.get(API_KEY_ENV):
        args.api_key = [os.environ[API_KEY_ENV]]
    if bool(args.ssl_keyfile) != bool(args.ssl_certfile):
        parser.error("--ssl-keyfile and --ssl-certfile go together")
    if args.root_path and not args.root_path.startswith("/"):
        parser.error(f"--root-path must start with '/', got {args.root_path!r}")
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        parser.error("--enable-auto-tool-choice needs --tool-call-parser")
    return args


def _config_file_args(parser: argparse.ArgumentParser, path: Path) -> list[str]:
    """The config file as command-line tokens, placed before the real ones so those win."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        parser.error(f"--config {path}: {err}")
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a mapping of flag names to values")
    options = _long_options(parser)
    tokens: list[str] = []
    for key, value in data.items():
        flag = "--" + str(key).replace("_", "-")
        action = options.get(flag)
        if action is None or flag == "--config":
            parser.error(f"--config {path}: unknown option {key!r}")
        tokens += _flag_tokens(flag, action, value)
    return tokens


def _long_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every ``--spelling`` of every flag, except the ``--no-x`` halves of ``--x/--no-x``."""
    options = {}
    for action in parser._actions:
        negations = ({"--no-" + s[2:] for s in action.option_strings}
                     if isinstance(action, argparse.BooleanOptionalAction) else set())
        options.update({s: action for s in action.option_strings if s.startswith("--") and s not in negations})
    return options


def _flag_tokens(flag: str, action: argparse.Action, value: Any) -> list[str]:
    if isinstance(action, argparse.BooleanOptionalAction):
        return [flag if value else f"--no-{flag[2:]}"]
    if action.nargs == 0:  # store_true, store_const
        return [flag] if value else []
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [] if value is None else [flag, str(value)]


def describe(args: argparse.Namespace) -> dict[str, Any]:
    """The settings worth a start-up log line."""
    keys = ("model", "tokenizer", "dtype", "load_format", "max_model_len", "max_num_seqs",
            "max_num_batched_tokens", "block_size", "gpu_memory_utilization", "mesh", "seed")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
