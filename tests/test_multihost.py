"""Two processes on 127.0.0.1 (jax.distributed, gloo CPU collectives) generate together.

Each process has 2 CPU devices; the meshes span both processes. Process 0 schedules and
broadcasts every step, process 1 follows (sharding/multihost.py). The tokens and logprobs
must match one process running the same model unsharded.

Run as a module, this file is the worker: ``python -m tests.test_multihost PID PORT OUT``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = ["tp=4", "dp=2,tp=2"]
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [100, 101], [42] * 20]


def _generate(engine: object) -> list[dict[str, list[float] | list[int]]]:
    from engine import SamplingParams
    from tests.tiny_models import run_to_completion

    for i, prompt in enumerate(PROMPTS):
        # n=2: the second sample shares the prompt's blocks, so a block copy is replayed too
        params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=1, n=2 if i == 0 else 1)
        engine.add_request(str(i), prompt, params)  # type: ignore[attr-defined]
    done = run_to_completion(engine)  # type: ignore[arg-type]
    results = []
    for i in range(len(PROMPTS)):
        for out in done[str(i)].outputs:
            results.append({"tokens": out.token_ids,
                            "logprobs": [lp[t].logprob for lp, t in zip(out.logprobs, out.token_ids, strict=True)]})
    return results


def worker(process_id: int, port: int, out_path: str) -> None:
    import jax

    from engine import EngineConfig, LLMEngine
    from models.loaders import LoadedModel
    from sharding import ModelSharding, multihost
    from tests.test_sharding import host_params
    from tests.tiny_models import tiny_config

    multihost.initialize(f"127.0.0.1:{port}", 2, process_id)
    config = tiny_config(num_heads=8, num_kv_heads=4, head_dim=8)
    engine_config = EngineConfig(num_gpu_blocks_override=32, max_num_seqs=4, compilation_cache_dir=None,
                                 precompile=False)
    results: dict[str, object] = {"devices": jax.device_count(), "local": jax.local_device_count()}
    for spec in SPECS:
        sharding = ModelSharding.from_spec(spec)
        sharding.check_model(config)
        engine = LLMEngine(engine_config, LoadedModel(config, host_params(config, sharding), None, "tiny", Path(".")),
                           sharding)
        if multihost.is_leader():
            results[spec] = _generate(engine)
            multihost.release(engine)
        else:
            multihost.follow(engine)
    if multihost.is_leader():
        # The reference: one device of this process, no mesh.
        local = LoadedModel(config, host_params(config), None, "tiny", Path("."))
        results["single"] = _generate(LLMEngine(engine_config, local))
        Path(out_path).write_text(json.dumps(results))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_match_one(tmp_path: Path) -> None:
    port = _free_port()
    out = tmp_path / "results.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.test_multihost", str(pid), str(port), str(out)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for pid in (0, 1)
    ]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-4000:]
    results = json.loads(out.read_text())
    assert (results["devices"], results["local"]) == (4, 2)
    for spec in SPECS:
        for got, want in zip(results[spec], results["single"], strict=True):
            assert got["tokens"] == want["tokens"], spec
            assert got["logprobs"] == pytest.approx(want["logprobs"], abs=1e-4), spec


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
