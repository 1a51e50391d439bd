"""Offline throughput and latency over a grid of mesh shapes, sharding rule sets and attention backends.

For every (mesh, rules, backend) one engine is built on the first ``product(mesh)`` devices
with dummy weights placed by those rules, then: the throughput workload of
benchmarks/throughput.py (warm-up pass, then a timed pass) and a batch-1 decode (one request
alone). Writes a CSV, a JSON and a PNG (throughput and batch-1 time per token per layout, with
the one-device layout as a reference line; ``pip install -e .[bench]`` for matplotlib) and
prints the table. Every other engine flag of ``python -m engine.serve`` applies to each engine
(here ``--load-format`` defaults to dummy and the compilation cache is off).

  # CPU, 8 fake devices, a tiny model:
  python -m benchmarks.sweep --cpu-devices 8 --meshes tp=1 tp=2 tp=4 dp=2,tp=2 \\
      --rules default replicated-embed fsdp-like --out benchmarks/results/sweep_cpu
  # 2 GPUs, the 8B shape: tp=2 against tp=1
  python -m benchmarks.sweep --model benchmarks/configs/llama-3-8b --dtype bfloat16 \\
      --meshes tp=1 tp=2 --rules default --num-prompts 128 --input-len 256 --output-len 128 \\
      --out benchmarks/results/sweep_8b_tp2
  # kernel against reference attention under tp=2
  python -m benchmarks.sweep --model benchmarks/configs/llama-3-8b --dtype bfloat16 \
      --meshes tp=1 tp=2 --attention-backends pallas_gpu reference --out benchmarks/results/sweep_8b_attn
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import itertools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from engine.config import add_engine_flags, checked_engine_config, engine_config
from engine.config_flags import mesh_spec, rules_spec
from engine.environment import configure_process

# The grid's own flags set these per layout (--meshes, --rules, --attention-backends).
SWEPT_FIELDS = ("mesh", "tensor_parallel_size", "data_parallel_size", "sharding_rules", "attention_backend")
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 16,
    "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "torch_dtype": "float32",
}
CPU_KV_BLOCKS = 1024  # the CPU has no memory statistics to size the cache from
COLUMNS = ["mesh", "rules", "backend", "devices", "output_tokens_per_s", "total_tokens_per_s", "ms_per_step",
           "batch1_ms_per_token", "steps", "compilations_after_warmup", "kv_blocks", "error"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    grid = parser.add_argument_group("the grid")
    grid.add_argument("--meshes", nargs="+", type=mesh_spec, default=["tp=1", "tp=2"], metavar="SPEC")
    grid.add_argument("--rules", nargs="+", type=rules_spec, default=["default"], metavar="NAME|FILE")
    grid.add_argument("--attention-backends", "--attention-backend", nargs="+", default=[None],
                      metavar="NAME", help="attention backends to sweep (default: the platform's)")
    run = parser.add_argument_group("the run")
    run.add_argument("--num-prompts", type=int, default=32)
    run.add_argument("--input-len", type=int, default=64)
    run.add_argument("--output-len", type=int, default=32)
    run.add_argument("--cpu-devices", type=int, default=None,
                     help="run on the CPU with this many fake devices (sets XLA_FLAGS)")
    run.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep"),
                     help="output prefix: writes OUT.csv, OUT.json and OUT.png")
    run.add_argument("--no-plot", action="store_true", help="skip the PNG")
    # --model: an HF config directory (weights are dummies); none: a tiny built-in config.
    add_engine_flags(parser, defaults={"model": None, "load_format": "dummy", "compilation_cache_dir": None},
                     skip=SWEPT_FIELDS)
    args = parser.parse_args(argv)
    checked_engine_config(parser, args)
    return args


def _engine(args: argparse.Namespace, model_dir: str, mesh: str, rules: str, backend: str | None) -> Any:
    import jax

    from engine import LLMEngine
    from sharding import ModelSharding, parse_mesh_spec

    size = math.prod(parse_mesh_spec(mesh).values())
    if size > jax.device_count():
        raise ValueError(f"needs {size} devices, {jax.device_count()} available")
    sharding = ModelSharding.from_spec(mesh, rules, devices=jax.devices()[:size])
    config = dataclasses.replace(engine_config(args), model=model_dir, attention_backend=backend)
    return LLMEngine(config, sharding=sharding)


def measure(args: argparse.Namespace, model_dir: str, mesh: str, rules: str, backend: str | None) -> dict[str, Any]:
    import numpy as np

    from benchmarks.throughput import run_workload

    engine = _engine(args, model_dir, mesh, rules, backend)
    rng = np.random.default_rng(0)
    vocab = engine.model_config.vocab_size

    def prompts(n: int) -> list[list[int]]:  # fresh random prompts each pass: no prefix-cache hits
        return [[int(t) for t in rng.integers(1, vocab, size=args.input_len)] for _ in range(n)]

    run_workload(engine, prompts(args.num_prompts), args.output_len)
    compiled = engine.stats().num_compilations
    timed = run_workload(engine, prompts(args.num_prompts), args.output_len)
    recompiled = engine.stats().num_compilations - compiled
    run_workload(engine, prompts(1), args.output_len)
    alone = run_workload(engine, prompts(1), args.output_len)
    seconds = timed["seconds"]
    return {
        "devices": engine.sharding.mesh.size, "backend": engine.runner.attention_backend,
        "output_tokens_per_s": args.num_prompts * args.output_len / seconds,
        "total_tokens_per_s": args.num_prompts * (args.input_len + args.output_len) / seconds,
        "ms_per_step": 1e3 * seconds / timed["steps"], "steps": timed["steps"],
        "batch1_ms_per_token": 1e3 * alone["seconds"] / args.output_len,
        "compilations_after_warmup": recompiled,
        "kv_blocks": engine.runner.num_blocks,
    }


def sweep(args: argparse.Namespace, model_dir: str) -> list[dict[str, Any]]:
    import jax

    rows = []
    for mesh, rules, backend in itertools.product(args.meshes, args.rules, args.attention_backends):
        row: dict[str, Any] = {"mesh": mesh, "rules": rules, "backend": backend or "default", "error": ""}
        try:
            row.update(measure(args, model_dir, mesh, rules, backend))
        except (ValueError, RuntimeError) as err:  # a layout that does not fit this model or machine
            row["error"] = str(err).splitlines()[0]
        rows.append(row)
        print(_format_row(row), flush=True)
        gc.collect()  # free this layout's weights and KV cache before the next one sizes its own
        jax.clear_caches()
    return rows


def _format_row(row: dict[str, Any]) -> str:
    if row["error"]:
        return f"{row['mesh']:>12} {row['rules']:>18} {row['backend']:>10}  skipped: {row['error']}"
    return (f"{row['mesh']:>12} {row['rules']:>18} {row['backend']:>10} {row['devices']:>3} dev"
            f"  {row['output_tokens_per_s']:10.1f} out tok/s"
            f"  {row['total_tokens_per_s']:10.1f} tok/s  {row['ms_per_step']:8.2f} ms/step"
            f"  batch-1 {row['batch1_ms_per_token']:8.2f} ms/token")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(f"matplotlib is not installed, so no plot was drawn ({path}); "
                         "`pip install matplotlib`, or pass --no-plot. The CSV and JSON are written.") from None
    done = [r for r in rows if not r["error"]]
    backends = {r["backend"] for r in done}
    labels = [f"{r['mesh']}\n{r['rules']}" + (f"\n{r['backend']}" if len(backends) > 1 else "") for r in done]
    one_device = next((r for r in done if r["devices"] == 1), None)
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(9, 1.5 * len(done) + 4), 4.8))
    x = list(range(len(done)))
    for axis, key, color, label, heading in (
        (left, "output_tokens_per_s", "tab:blue", "output tokens / s", "offline throughput"),
        (right, "batch1_ms_per_token", "tab:orange", "ms per output token", "batch-1 decode latency"),
    ):
        values = [r[key] for r in done]
        bars = axis.bar(x, values, color=color)
        axis.bar_label(bars, fmt="%.3g", fontsize=8)
        axis.set_ylim(0, 1.25 * max(values, default=1))  # room for the labels and the legend
        axis.set_ylabel(label)
        axis.set_title(heading)
    if one_device is not None:
        for axis, key in ((left, "output_tokens_per_s"), (right, "batch1_ms_per_token")):
            axis.axhline(one_device[key], color="black", linestyle="--", linewidth=1,
                         label=f"one device ({one_device['mesh']}, {one_device['rules']})")
            axis.legend(fontsize=8, loc="upper left")
    for axis in (left, right):
        axis.set_xticks(x, labels)
        axis.tick_params(axis="x", labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    configure_process()  # a benchmark is an engine start: settings before any device use
    args = parse_args(argv)
    import jax

    if args.cpu_devices:
        args.num_gpu_blocks_override = args.num_gpu_blocks_override or CPU_KV_BLOCKS
        # Read when JAX creates its backends, which importing it (for the flags) does not do.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.cpu_devices}")
        jax.config.update("jax_platforms", "cpu")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = tmp
            (Path(tmp) / "config.json").write_text(json.dumps(TINY_CONFIG))
        rows = sweep(args, model_dir)
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    title = (f"{Path(args.model).name if args.model else 'tiny'} on {device}: {args.num_prompts} prompts, "
             f"{args.input_len} in / {args.output_len} out")
    write_csv(rows, args.out.with_suffix(".csv"))
    args.out.with_suffix(".json").write_text(json.dumps({"title": title, "rows": rows}, indent=2))
    print(f"\n{title}")
    print("\n".join(_format_row(r) for r in rows))
    print(f"wrote {args.out.with_suffix('.csv')} and {args.out.with_suffix('.json')}")
    if not args.no_plot:
        plot(rows, args.out.with_suffix(".png"), title)
        print(f"wrote {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
