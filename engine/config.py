"""Engine settings, with vLLM's names and defaults where they exist.

Some defaults depend on the platform: a field left ``None`` takes its platform's value from
``PLATFORM_DEFAULTS`` when the engine starts (``with_platform_defaults``), so ``make serve`` on
a laptop CPU gets CPU-sized steps without any flag. docs/cpu.md says how the CPU values were
chosen.

Every field is also a command-line flag, declared here once with its help text
(engine/config_flags.py makes the flags): ``python -m engine.serve`` and every benchmark that
builds an engine add them with ``add_engine_flags`` and read them back with ``engine_config``,
so a flag has one spelling, one parser and one check everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

from engine import config_flags as flags
from engine.compilation import CACHE_DIR_ENV, default_cache_dir
from engine.config_flags import Switch, flag_field
from sharding.mesh import combine_mesh_flags
from sharding.rules import RULE_SETS, load_rules

DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
BLOCK_SIZES = (8, 16, 32, 64, 128)
# Fields that count something (None where unset): validate() holds each to at least 1.
COUNT_FIELDS = ("max_num_seqs", "max_model_len", "max_num_batched_tokens", "compile_workers",
                "num_gpu_blocks_override")


@dataclasses.dataclass(frozen=True)
class PlatformDefaults:
    """What unset fields become on one platform (``None``: the engine's generic default)."""

    max_num_batched_tokens: int | None = None  # applied with chunked prefill only
    # Padded sizes a step may take below the limits (max_num_batched_tokens, max_num_seqs),
    # which the bucket plan adds itself. None: the plan's own ladder.
    token_bucket_ladder: tuple[int, ...] | None = None
    seq_bucket_ladder: tuple[int, ...] | None = None


# On a CPU a program's cost is its padded work (compute-bound matmuls), compiling one takes
# seconds, and steps are long, so: chunks of 512 tokens (a 2,048-token step pads up to 2x
# more and stalls decodes for seconds), a doubling token ladder from 64, a coarse sequence
# ladder (a decode's matmuls cost nearly the same at 8 or 32 rows: weight reads dominate), with
# one rung for a lone sequence, the laptop case (padded to 8 rows it decoded at 70.7 ms/token,
# alone at 57.5, default model, quiet 2-core machine, 2026-11-30).
CPU_DEFAULTS = PlatformDefaults(
    max_num_batched_tokens=512,
    token_bucket_ladder=(64, 128, 256),
    seq_bucket_ladder=(1, 8, 32, 64, 128),
)
PLATFORM_DEFAULTS = {"cpu": CPU_DEFAULTS}


@dataclasses.dataclass
class EngineConfig:
    """Every engine setting. Each field is a command-line flag of every entry point that builds an
    engine (``add_engine_flags``); the metadata says how the flag reads."""

    model: str | None = flag_field(
        group="model", metavar="PATH", default_text="the embedded model",
        help="HF model directory (safetensors) or .gguf file")
    tokenizer: str | None = flag_field(
        group="model", metavar="PATH", default_text="the model's own", help="tokenizer directory or .gguf file")
    dtype: str = flag_field(
        "auto", group="model", choices=DTYPES, help="weight and activation dtype; auto keeps the checkpoint's")
    load_format: str = flag_field(
        "auto", group="model", metavar="FORMAT",
        help="auto, safetensors, gguf or dummy (random weights of the model's shape)")
    seed: int = flag_field(0, group="model", metavar="N", help="engine random seed")
    max_model_len: int | None = flag_field(
        parse=flags.human_int, metavar="TOKENS", default_text="the model's",
        help="context length; accepts 32k (32000) or 32K (32768)")
    max_num_seqs: int = flag_field(256, metavar="N", help="most sequences in one batch")
    max_num_batched_tokens: int | None = flag_field(
        parse=flags.human_int, metavar="TOKENS", default_text="with chunked prefill: 512 on CPU, 2048 elsewhere",
        help="most tokens in one step")
    block_size: int = flag_field(16, choices=BLOCK_SIZES, help="tokens per KV cache block")
    gpu_memory_utilization: float = flag_field(
        0.9, metavar="FRACTION", help="fraction of accelerator memory for weights, activations and KV cache")
    kv_cache_memory_bytes: int | None = flag_field(
        parse=flags.human_int, aliases=("--kv-cache-memory",), metavar="BYTES",
        help="KV cache size in bytes (e.g. 4G); overrides --gpu-memory-utilization")
    num_gpu_blocks_override: int | None = flag_field(metavar="N", help="KV cache blocks, ignoring memory sizing")
    enable_chunked_prefill: bool = flag_field(True, help="split long prompts across steps")
    enable_prefix_caching: bool = flag_field(True, help="reuse the KV blocks of a shared prompt prefix")
    attention_backend: str | None = flag_field(
        metavar="NAME", default_text="the best for the device", help="attention implementation")
    mesh: str | None = flag_field(  # sharding/mesh.py
        group="sharding", parse=flags.mesh_spec, metavar="SPEC", default_text="one device",
        help="device mesh over all devices, e.g. 'tp=4' or 'dp=2,tp=2'")
    tensor_parallel_size: int | None = flag_field(
        group="sharding", aliases=("-tp",), metavar="N",
        help="vLLM's spelling of --mesh tp=N (must agree with --mesh when both are given)")
    data_parallel_size: int | None = flag_field(
        group="sharding", aliases=("-dp",), metavar="N",
        help="vLLM's spelling of --mesh dp=N (must agree with --mesh when both are given)")
    sharding_rules: str = flag_field(  # sharding/rules.py
        "default", group="sharding", parse=flags.rules_spec, metavar="NAME_OR_FILE",
        help=f"how model axes map onto the mesh: one of {', '.join(RULE_SETS)}, or a JSON/YAML file")
    compilation_cache_dir: str | None = flag_field(  # docs/compilation.md
        factory=default_cache_dir, group="compilation", metavar="DIR",
        default_text=f"${CACHE_DIR_ENV} or %(default)s", help="JAX persistent compilation cache",
        switches=(Switch("--no-compilation-cache", None, "compile every program from scratch, store nothing"),))
    precompile: bool = flag_field(
        True, group="compilation", help="compile every planned step program before the first step",
        switches=(Switch("--skip-warmup", False, "development: as --no-precompile; shapes compile when first used"),))
    compile_workers: int | None = flag_field(
        group="compilation", metavar="N", default_text="min(8, cores)",
        help="threads compiling the bucket plan at start-up")
    use_checkpoint_cache: bool = flag_field(
        True, group="model", help="keep the converted parameters in $TESSERA_CACHE_DIR/params (else "
                                  "~/.cache/tessera/params) so the next start skips converting the checkpoint")
    async_scheduling: bool = flag_field(
        True, help="overlap: launch the next step before the last one's tokens reach the host; "
                   "off: wait for every step")
    # The bucket plan's ladders (engine/bucket_plan.py); unset: the platform's (PlatformDefaults), else
    # the plan's doubling ladders. The limits close each ladder.
    token_bucket_ladder: tuple[int, ...] | None = flag_field(
        group="compilation", parse=flags.size_list, aliases=("--token-buckets",), metavar="N,N,...",
        default_text="64,128,256 on CPU, else 16, 32, ...",
        help="padded token counts of steps with a prefill chunk, closed by --max-num-batched-tokens")
    seq_bucket_ladder: tuple[int, ...] | None = flag_field(
        group="compilation", parse=flags.size_list, aliases=("--seq-buckets",), metavar="N,N,...",
        default_text="8,32,64,128 on CPU, else 4, 8, ...",
        help="padded sequence counts per step, closed by --max-num-seqs")
    # docs/structured_outputs.md: an output constraint applies only to what follows this text
    reasoning_end: str | None = flag_field(
        metavar="TEXT", default_text="</think> with --reasoning-parser, else none",
        help="the text that ends a reasoning model's thinking (one token): output constraints start after it")

    def with_platform_defaults(self, platform: str) -> EngineConfig:
        """A copy whose unset fields take ``platform``'s defaults (``jax.default_backend()``)."""
        defaults = PLATFORM_DEFAULTS.get(platform)
        if defaults is None:
            return dataclasses.replace(self)
        unset = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)
                 if getattr(self, f.name) is None}
        if not self.enable_chunked_prefill:  # then a step must hold a whole prompt
            unset.pop("max_num_batched_tokens", None)
        return dataclasses.replace(self, **unset)

    def mesh_spec(self) -> str | None:
        """The mesh to build: ``mesh`` and the vLLM-style sizes combined (an error if they disagree)."""
        return combine_mesh_flags(self.mesh, self.tensor_parallel_size, self.data_parallel_size)

    def validate(self) -> None:
        self.mesh_spec()
        load_rules(self.sharding_rules)
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {', '.join(map(str, BLOCK_SIZES))}, got {self.block_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name in COUNT_FIELDS:
            count = getattr(self, name)
            if count is not None and count < 1:
                raise ValueError(f"{name} must be >= 1, got {count}")
        for name in ("token_bucket_ladder", "seq_bucket_ladder"):
            ladder = getattr(self, name)
            if ladder is not None and any(int(r) < 1 for r in ladder):
                raise ValueError(f"{name} must be positive sizes, got {ladder}")
        if self.reasoning_end is not None and (not isinstance(self.reasoning_end, str) or not self.reasoning_end):
            raise ValueError(f"reasoning_end must be a non-empty string, got {self.reasoning_end!r}")


def add_engine_flags(parser: argparse.ArgumentParser, *, defaults: Mapping[str, Any] | None = None,
                     skip: Collection[str] = (), only: Collection[str] | None = None,
                     ) -> dict[str, argparse._ArgumentGroup]:
    """EngineConfig's flags, for any entry point that builds an engine: ``defaults`` (by field
    name) for its own defaults, ``skip``/``only`` for the fields it sets itself. Returns the help
    groups by title ("model", "engine", "sharding", "compilation")."""
    return flags.add_config_flags(parser, EngineConfig, defaults=defaults or {}, skip=skip, only=only)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The EngineConfig of parsed engine flags, -tp and -dp folded into ``mesh`` (so ``-tp 2`` and
    ``--mesh tp=2`` give equal configs); a ValueError when they disagree."""
    config = EngineConfig(**flags.config_values(EngineConfig, args))
    return dataclasses.replace(config, mesh=config.mesh_spec(), tensor_parallel_size=None, data_parallel_size=None)


def checked_engine_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> EngineConfig:
    """``engine_config``, validated: settings that do not fit together are a usage error (exit 2)
    naming the flags. Sets ``args.mesh`` to the mesh -tp/-dp spell."""
    try:
        config = engine_config(args)
        config.validate()
    except ValueError as err:
        parser.error(str(err))
    args.mesh = config.mesh
    return config
