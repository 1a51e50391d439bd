"""Tensor/data parallelism on an N-GPU machine, in one run: issue #14's measurements.

Everything runs with dummy weights in bf16, each measurement in its own process (so each
starts with the whole memory of its GPUs, made visible with CUDA_VISIBLE_DEVICES):

1. ceilings: copy bandwidth of every GPU (``jnp.copy``, bytes read + written) and the
   all-reduce bandwidth over the N GPUs (bf16 ``psum``; algorithm and bus bandwidth);
2. the 70B shape (benchmarks/configs/llama-3-70b) at each ``--tp``: batch-1 decode
   (128 in / 512 out), offline 1000 x (256 in / 256 out), and the serving benchmark
   (``python -m engine.serve --mesh tp=N`` in its own process, ``benchmarks.serve`` as the
   client in another: ShareGPT-like prompts, rate inf);
3. the 8B sweep (benchmarks/sweep.py) over ``--sweep-meshes``, with its CSV and PNG.

Batch-1 decode is held against the roofline: weight bytes / (tp x copy bandwidth per GPU).
Writes OUT/summary.json (every figure) and prints a table.

  python -m benchmarks.multi_gpu --tp 4 8 --out benchmarks/results/h200x8          # 8 x H200
  python -m benchmarks.multi_gpu --cpu-devices 8 --tp 2 4 --model TINY --smoke ...   # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.config import add_engine_flags
from engine.config_flags import mesh_spec
from sharding.mesh import parse_mesh_spec

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs"
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 16,
    "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "torch_dtype": "float32",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The engine flags every run gets (--model: the big model's config directory; the sweep has its own).
    add_engine_flags(p, only=("model", "dtype", "max_model_len"),
                     defaults={"model": str(CONFIGS / "llama-3-70b"), "dtype": "bfloat16", "max_model_len": 2048})
    p.add_argument("--sweep-model", default=str(CONFIGS / "llama-3-8b"))
    p.add_argument("--tp", type=int, nargs="+", default=[4, 8], help="tensor-parallel sizes for the big model")
    p.add_argument("--sweep-meshes", nargs="+", type=mesh_spec, default=["tp=4", "dp=4", "dp=2,tp=2"])
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--batch1-input-len", type=int, default=128)
    p.add_argument("--batch1-output-len", type=int, default=512)
    p.add_argument("--skip", nargs="*", default=[], choices=["ceilings", "batch1", "offline", "serve", "sweep"])
    p.add_argument("--cpu-devices", type=int, help="dry run on the CPU with this many fake devices")
    p.add_argument("--smoke", action="store_true", help="tiny model and workloads (with --cpu-devices)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/multi_gpu"))
    p.add_argument("--ceilings-only", action="store_true", help=argparse.SUPPRESS)  # the child process mode
    return p.parse_args(argv)


# ---- ceilings (child process) ------------------------------------------------------------
def measure_ceilings(cpu: bool) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from benchmarks.roofline import _best_time

    num_bytes = (64 if cpu else 2048) * 2**20
    copies = []
    for device in jax.devices():
        x = jax.device_put(jnp.ones((num_bytes // 2,), jnp.bfloat16), device)
        copies.append(2 * num_bytes / _best_time(jax.jit(jnp.copy), x))
        del x
    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("x",))
    per_device = (16 if cpu else 512) * 2**20
    x = jax.device_put(jnp.ones((n, per_device // 2), jnp.bfloat16), NamedSharding(mesh, PartitionSpec("x")))
    reduce = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a, "x"), mesh=mesh, in_specs=PartitionSpec("x"),
                                   out_specs=PartitionSpec("x")))
    seconds = _best_time(reduce, x)
    algorithm = per_device / seconds
    return {"devices": n, "device_kind": jax.devices()[0].device_kind, "copy_bytes_per_s": copies,
            "all_reduce_bytes": per_device, "all_reduce_algbw": algorithm,
            "all_reduce_busbw": algorithm * 2 * (n - 1) / n if n > 1 else algorithm}


# ---- runs in their own processes ----------------------------------------------------------
def _env(args: argparse.Namespace, devices: int) -> dict[str, str]:
    cache = os.environ.get("TESSERA_COMPILATION_CACHE", "")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TESSERA_COMPILATION_CACHE=cache)
    if args.cpu_devices:
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(devices)))
    return env


def _run(cmd: list[str], env: dict[str, str], log: Path, timeout: float | None = None) -> int:
    print("$", " ".join(cmd), flush=True)
    with open(log, "w") as f:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode


def _engine_flags(args: argparse.Namespace, tp: int) -> list[str]:
    flags = ["--model", args.model, "--load-format", "dummy", "--dtype", args.dtype, "--mesh", f"tp={tp}",
             "--max-model-len", str(args.max_model_len)]
    return flags + (["--num-gpu-blocks-override", "512"] if args.cpu_devices else [])


def throughput(args: argparse.Namespace, tp: int, prompts: int, inp: int, out: int, name: str) -> dict[str, Any]:
    result = args.out / f"{name}.json"
    cmd = [sys.executable, "-m", "benchmarks.throughput", *_engine_flags(args, tp), "--num-prompts", str(prompts),
           "--input-len", str(inp), "--output-len", str(out), "--output-json", str(result)]
    code = _run(cmd, _env(args, tp), args.out / f"{name}.log")
    return json.loads(result.read_text()) if code == 0 and result.exists() else {"error": f"exit {code}"}


def serve(args: argparse.Namespace, tp: int, name: str) -> dict[str, Any]:
    """The server in one process, the benchmark client in another."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server_cmd = [sys.executable, "-m", "engine.serve", *_engine_flags(args, tp), "--host", "127.0.0.1",
                  "--port", str(port), "--disable-log-requests"]
    if args.model == str(CONFIGS / "llama-3-70b") or args.smoke:
        server_cmd += ["--tokenizer", _tokenizer_dir(args)]
    print("$", " ".join(server_cmd), flush=True)
    with open(args.out / f"{name}-server.log", "w") as log:
        server = subprocess.Popen(server_cmd, cwd=ROOT, env=_env(args, tp), stdout=log, stderr=subprocess.STDOUT)
        try:
            result = args.out / f"{name}.json"
            client = [sys.executable, "-m", "benchmarks.serve", "--base-url", f"http://127.0.0.1:{port}",
                      "--dataset", "sharegpt", "--num-prompts", str(args.num_prompts), "--request-rate", "inf",
                      "--sharegpt-max-input-len", str(args.max_model_len // 2),
                      "--sharegpt-max-output-len", str(args.max_model_len // 4), "--result-json", str(result),
                      "--vocab-size", str(json.loads((Path(args.model) / "config.json").read_text())["vocab_size"])]
            _wait_healthy(port, server)
            code = _run(client, dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
                        args.out / f"{name}-client.log")
            return json.loads(result.read_text()) if code == 0 and result.exists() else {"error": f"exit {code}"}
        except (TimeoutError, RuntimeError) as err:
            return {"error": str(err)}
        finally:
            server.terminate()
            server.wait(timeout=120)


def _wait_healthy(port: int, server: subprocess.Popen, timeout: float = 3600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode} before it was healthy")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError("server not healthy in time")


def _tokenizer_dir(args: argparse.Namespace) -> str:
    """A tokenizer for the dummy model's server: SmolLM2's, from the embedded GGUF (ids past its
    vocabulary are fine: the client sends token ids)."""
    target = args.out / "tokenizer"
    if not (target / "tokenizer.json").exists():
        from engine.tokenizer import Tokenizer
        from models.loaders.gguf_loader import read_gguf
        from models.loaders.load import default_model_path

        Tokenizer.from_gguf(read_gguf(default_model_path())).hf.save_pretrained(target)
    return str(target)


def sweep(args: argparse.Namespace, devices: int) -> dict[str, Any]:
    prefix = args.out / "sweep_8b"
    cmd = [sys.executable, "-m", "benchmarks.sweep", "--model", args.sweep_model, "--dtype", args.dtype,
           "--meshes", *args.sweep_meshes, "--num-prompts", str(args.num_prompts), "--input-len", str(args.input_len),
           "--output-len", str(args.output_len), "--max-model-len", str(args.max_model_len), "--out", str(prefix)]
    if args.cpu_devices:
        cmd += ["--cpu-devices", str(devices)]
    code = _run(cmd, _env(args, devices), args.out / "sweep_8b.log")
    path = prefix.with_suffix(".json")
    return json.loads(path.read_text()) if code == 0 and path.exists() else {"error": f"exit {code}"}


def weight_bytes(model_dir: str, dtype: str) -> int:
    from models.config import ModelConfig
    from models.loaders.safetensors_loader import read_hf_config
    from models.weights import param_shapes

    config = ModelConfig.from_hf(read_hf_config(Path(model_dir))).with_dtype(dtype)
    return sum(int(s.size) * s.dtype.itemsize for s in param_shapes(config).values())


def roofline_rows(summary: dict[str, Any], args: argparse.Namespace) -> None:
    """Batch-1 decode against weights / (tp x mean copy bandwidth per GPU); tp ratios."""
    copies = summary.get("ceilings", {}).get("copy_bytes_per_s")
    if not copies:
        return
    per_gpu = sum(copies) / len(copies)
    weights = weight_bytes(args.model, args.dtype)
    for tp in args.tp:
        run = summary["big"].get(f"tp={tp}", {}).get("batch1", {})
        if "output_tokens_per_s" not in run:
            continue
        ideal = weights / (tp * per_gpu)
        run["roofline_s_per_token"] = ideal
        run["roofline_fraction"] = ideal * run["output_tokens_per_s"]
    first, *rest = args.tp
    base = summary["big"].get(f"tp={first}", {}).get("batch1", {}).get("output_tokens_per_s")
    for tp in rest:
        got = summary["big"].get(f"tp={tp}", {}).get("batch1", {}).get("output_tokens_per_s")
        if base and got:
            summary["big"][f"tp={tp}"]["batch1_vs_tp{first}"] = got / base


def print_summary(summary: dict[str, Any]) -> None:
    ceil = summary.get("ceilings", {})
    if "copy_bytes_per_s" in ceil:
        copies = ", ".join(f"{c / 1e12:.2f}" for c in ceil["copy_bytes_per_s"])
        print(f"copy bandwidth per device (TB/s): {copies}; all-reduce of {ceil['all_reduce_bytes'] / 2**20:.0f} MiB "
              f"over {ceil['devices']}: algbw {ceil['all_reduce_algbw'] / 1e9:.1f} GB/s, "
              f"busbw {ceil['all_reduce_busbw'] / 1e9:.1f} GB/s")
    for mesh, runs in summary.get("big", {}).items():
        print(f"{summary['model']} {mesh}:{_runs_line(runs)}")
    for row in summary.get("sweep", {}).get("rows", []):
        if row.get("error"):
            print(f"sweep {row['mesh']}: skipped ({row['error']})")
        else:
            print(f"sweep {row['mesh']} {row['rules']}: {row['total_tokens_per_s']:.0f} tok/s, "
                  f"batch-1 {row['batch1_ms_per_token']:.2f} ms/token")


def _runs_line(runs: dict[str, Any]) -> str:
    """One mesh's batch-1, offline and serving figures, and which of them failed."""
    b1, off, srv = runs.get("batch1", {}), runs.get("offline", {}), runs.get("serve", {})
    line = ""
    if "output_tokens_per_s" in b1:
        line += f" batch-1 {b1['output_tokens_per_s']:.1f} tok/s"
        if "roofline_fraction" in b1:
            line += f" ({b1['roofline_fraction']:.0%} of roofline)"
    if "total_tokens_per_s" in off:
        line += f"; offline {off['total_tokens_per_s']:.0f} tok/s (in+out)"
    if "output_throughput" in srv:
        line += f"; serving {srv['output_throughput']:.0f} output tok/s"
    for key in ("batch1", "offline", "serve"):
        if "error" in runs.get(key, {}):
            line += f"; {key} failed ({runs[key]['error']}, see its log)"
    return line


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.ceilings_only:
        print(json.dumps(measure_ceilings(cpu=bool(args.cpu_devices))))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        tiny = args.out / "tiny-config"
        tiny.mkdir(exist_ok=True)
        (tiny / "config.json").write_text(json.dumps(TINY_CONFIG))
        args.model = args.sweep_model = str(tiny)
        args.dtype = "float32"
    devices = max([*args.tp, *(_mesh_size(m) for m in args.sweep_meshes)])
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    summary: dict[str, Any] = {"model": Path(args.model).name, "date": date, "commit": _commit(), "big": {}}
    if "ceilings" not in args.skip:
        cmd = [sys.executable, "-m", "benchmarks.multi_gpu", "--ceilings-only"]
        cmd += ["--cpu-devices", str(devices)] if args.cpu_devices else []
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(args, devices), capture_output=True, text=True)
        summary["ceilings"] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
            "error": proc.stderr[-2000:]}
    for tp in args.tp:
        runs: dict[str, Any] = {}
        if "batch1" not in args.skip:
            runs["batch1"] = throughput(args, tp, 1, args.batch1_input_len, args.batch1_output_len, f"tp{tp}-batch1")
        if "offline" not in args.skip:
            runs["offline"] = throughput(args, tp, args.num_prompts, args.input_len, args.output_len, f"tp{tp}-offline")
        if "serve" not in args.skip:
            runs["serve"] = serve(args, tp, f"tp{tp}-serve")
        summary["big"][f"tp={tp}"] = runs
    if "sweep" not in args.skip:
        summary["sweep"] = sweep(args, devices)
    roofline_rows(summary, args)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print_summary(summary)
    print(f"wrote {args.out / 'summary.json'}")


def _mesh_size(spec: str) -> int:
    return math.prod(parse_mesh_spec(spec).values())


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip()


if __name__ == "__main__":
    main()
