"""Command-line flags of ``python -m engine.serve`` / ``tessera serve``, with vLLM's names.

Precedence: command line, then ``--config FILE.yaml`` (long flag names as keys), then defaults.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from engine.compilation import CACHE_DIR_ENV, default_cache_dir
from engine.config import EngineConfig
from sharding.cli import add_multihost_args, add_parallel_size_args, resolve_parallel_sizes

API_KEY_ENV = "TESSERA_API_KEY"
_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}
_MESH_AXIS = re.compile(r"^([a-z]+)=(\d+)$")


def human_int(text: str) -> int:
    """vLLM's human-readable sizes: ``32k`` = 32,000, ``32K`` = 32,768, ``1.5M`` = 1,572,864."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgKMG]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4096, 32k = 32000, 32K = 32768)")
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of tokens")
    return int(value)


def mesh_spec(text: str) -> str:
    """``tp=4`` or ``dp=2,tp=2``: comma-separated ``axis=size``, each axis once, sizes >= 1."""
    seen = set()
    for item in text.split(","):
        match = _MESH_AXIS.match(item.strip())
        if not match or int(match.group(2)) < 1:
            raise argparse.ArgumentTypeError(f"mesh {text!r}: expected axis=size items like 'tp=4' or 'dp=2,tp=2'")
        if match.group(1) in seen:
            raise argparse.ArgumentTypeError(f"mesh {text!r}: axis {match.group(1)!r} given twice")
        seen.add(match.group(1))
    return text.replace(" ", "")


def size_list(text: str) -> tuple[int, ...]:
    """``16,64,256``: positive whole numbers, comma-separated."""
    try:
        values = [human_int(item) for item in text.split(",") if item.strip()]
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of sizes such as 16,64,256")
    return tuple(values)


def build_parser(prog: str = "python -m engine.serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a model with Tessera's OpenAI-compatible API (/v1/completions, /v1/chat/completions).",
        epilog="With no model, serves the embedded default, SmolLM2-135M-Instruct.",
    )
    parser.add_argument("model_tag", nargs="?", metavar="MODEL", help="model directory or .gguf file (as --model)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", metavar="PATH",
                       help="HF model directory (safetensors) or .gguf file; default: the embedded model")
    model.add_argument("--tokenizer", metavar="PATH",
                       help="tokenizer directory or .gguf file; default: the model's own")
    model.add_argument("--served-model-name", nargs="+", metavar="NAME",
                       help="name(s) clients use in 'model'; the first is reported; default: the model's name")
    model.add_argument("--dtype", default="auto",
                       choices=["auto", "half", "float16", "bfloat16", "float", "float32"],
                       help="weight and activation dtype; auto keeps the checkpoint's (default: %(default)s)")
    model.add_argument("--load-format", default="auto", metavar="FORMAT",
                       help="auto, safetensors, gguf or dummy (random weights of the model's shape) "
                            "(default: %(default)s)")
    model.add_argument("--seed", type=int, default=0, metavar="N", help="engine random seed (default: %(default)s)")
    model.add_argument("--chat-template", metavar="FILE_OR_TEMPLATE",
                       help="Jinja chat template, as a file or the template itself")
    model.add_argument("--generation-config", default="auto", metavar="SOURCE",
                       help="default sampling values: 'auto' (the model folder's generation_config.json), "
                            "'vllm' (none), or a folder (default: %(default)s)")

    engine = parser.add_argument_group("engine")
    engine.add_argument("--max-model-len", type=human_int, metavar="TOKENS",
                        help="context length; accepts 32k (32000) or 32K (32768); default: the model's")
    engine.add_argument("--max-num-seqs", type=int, default=256, metavar="N",
                        help="most sequences in one batch (default: %(default)s)")
    engine.add_argument("--max-num-batched-tokens", type=human_int, metavar="TOKENS",
                        help="most tokens in one step (default with chunked prefill: 512 on CPU, 2048 elsewhere)")
    engine.add_argument("--gpu-memory-utilization", type=float, default=0.9, metavar="FRACTION",
                        help="fraction of accelerator memory for weights, activations and KV cache "
                             "(default: %(default)s)")
    engine.add_argument("--kv-cache-memory", type=human_int, metavar="BYTES",
                        help="KV cache size in bytes (e.g. 4G); overrides --gpu-memory-utilization")
    engine.add_argument("--num-gpu-blocks-override", type=int, metavar="N",
                        help="KV cache blocks, ignoring memory sizing")
    engine.add_argument("--block-size", type=int, default=16, choices=[8, 16, 32, 64, 128],
                        help="tokens per KV cache block (default: %(default)s)")
    engine.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True,
                        help="split long prompts across steps (default: on)")
    engine.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                        help="reuse the KV blocks of a shared prompt prefix (default: on)")
    engine.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=True,
                        help="overlap: launch the next step before the last one's tokens reach the host "
                             "(default: on; --no-async-scheduling waits for every step)")
    engine.add_argument("--attention-backend", metavar="NAME",
                        help="attention implementation; default: the best for the device")
    engine.add_argument("--mesh", type=mesh_spec, metavar="SPEC", help="device mesh, e.g. 'tp=4' or 'dp=2,tp=2'")
    add_parallel_size_args(engine)
    engine.add_argument("--sharding-rules", default="default", metavar="NAME_OR_FILE",
                        help="how model axes map onto the mesh: a rule set name or a JSON/YAML file "
                             "(default: %(default)s)")
    engine.add_argument("--skip-warmup", action="store_true",
                        help="development: do not precompile the bucket plan; shapes compile when first used")

    compile_group = parser.add_argument_group("compilation")
    compile_group.add_argument("--compilation-cache-dir", default=default_cache_dir(), metavar="DIR",
                               help=f"JAX persistent compilation cache (default: ${CACHE_DIR_ENV} or %(default)s)")
    compile_group.add_argument("--no-compilation-cache", dest="compilation_cache_dir", action="store_const",
                               const=None, help="compile every program from scratch, store nothing")
    compile_group.add_argument("--compile-workers", type=int, metavar="N",
                               help="threads compiling the bucket plan at start-up (default: min(8, cores))")
    compile_group.add_argument("--token-buckets", type=size_list, metavar="N,N,...",
                               help="padded token counts of steps with a prefill chunk, closed by "
                                    "--max-num-batched-tokens (default: 64,128,256 on CPU, else 16, 32, ...)")
    compile_group.add_argument("--seq-buckets", type=size_list, metavar="N,N,...",
                               help="padded sequence counts per step, closed by --max-num-seqs "
                                    "(default: 8,32,64,128 on CPU, else 4, 8, ...)")

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
    resolve_parallel_sizes(parser, args)
    if args.api_key is None and os.environ.get(API_KEY_ENV):
        args.api_key = [os.environ[API_KEY_ENV]]
    if bool(args.ssl_keyfile) != bool(args.ssl_certfile):
        parser.error("--ssl-keyfile and --ssl-certfile go together")
    if args.root_path and not args.root_path.startswith("/"):
        parser.error(f"--root-path must start with '/', got {args.root_path!r}")
    return args


def _config_file_args(parser: argparse.ArgumentParser, path: Path) -> list[str]:
    """The config file as command-line tokens, placed before the real ones so those win."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        parser.error(f"--config {path}: {err}")
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    tokens: list[str] = []
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        action = actions.get(dest)
        if action is None or dest == "config":
            parser.error(f"--config {path}: unknown option {key!r}")
        flag = next(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse.BooleanOptionalAction):
            tokens.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs == 0:  # store_true
            if value:
                tokens.append(flag)
        elif isinstance(value, list):
            tokens += [flag, *map(str, value)]
        elif value is not None:
            tokens += [flag, str(value)]
    return tokens


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model, tokenizer=args.tokenizer, dtype=args.dtype, load_format=args.load_format, seed=args.seed,
        max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, block_size=args.block_size,
        gpu_memory_utilization=args.gpu_memory_utilization, kv_cache_memory_bytes=args.kv_cache_memory,
        num_gpu_blocks_override=args.num_gpu_blocks_override, enable_chunked_prefill=args.enable_chunked_prefill,
        enable_prefix_caching=args.enable_prefix_caching, async_scheduling=args.async_scheduling,
        attention_backend=args.attention_backend, mesh=args.mesh, sharding_rules=args.sharding_rules,
        compilation_cache_dir=args.compilation_cache_dir, precompile=not args.skip_warmup,
        compile_workers=args.compile_workers,
        token_bucket_ladder=args.token_buckets, seq_bucket_ladder=args.seq_buckets,
    )


def describe(args: argparse.Namespace) -> dict[str, Any]:
    """The settings worth a start-up log line."""
    keys = ("model", "tokenizer", "dtype", "load_format", "max_model_len", "max_num_seqs",
            "max_num_batched_tokens", "block_size", "gpu_memory_utilization", "mesh", "seed")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
