"""Tessera against HF transformers + PyTorch on this CPU, alternating, in one run (issue 16).

The machine is shared and drifts, so the two sides take turns: for each round and scenario,
Tessera runs it, then the HF peer (benchmarks/peer_hf_cpu.py, a worker in its own Python
3.11 environment) runs the same token ids. Both sides warm up first (Tessera runs each
scenario with 16 new tokens, which compiles the same programs; HF one long prompt). Prints,
per scenario, both sides' median seconds and the ratio, plus decode ms/token at 1,800 tokens:
(time of 1,800 in + 64 out - time of 1,800 in + 1 out) / 63.

    bash scripts/golden_env.sh /work/peer-venv          # once, for the peer
    python -m benchmarks.cpu_vs_hf --rounds 3 --output-json cpu_vs_hf.json
    python -m benchmarks.cpu_vs_hf --scenario batch64 --no-peer   # Tessera alone

Engine settings are the CPU defaults (engine/config.py) with max_model_len 8k, no prefix
cache and a 1 GiB KV cache (--kv-cache-memory); every engine flag of ``python -m engine.serve``
changes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.peer_hf_cpu import MAX_MODEL_LEN, SCENARIOS, prompt_ids, summarize
from engine import LLMEngine, SamplingParams
from engine.config import add_engine_flags, checked_engine_config
from engine.environment import configure_process

PEER_SCRIPT = Path(__file__).with_name("peer_hf_cpu.py")
DEFAULT_PEER_PYTHON = "/work/peer-venv/bin/python"
# A 1 GiB KV cache holds the 64 x 192 tokens of batch64 at once.
ENGINE_DEFAULTS = {"max_model_len": MAX_MODEL_LEN, "enable_prefix_caching": False, "kv_cache_memory_bytes": 1 << 30}


def run_tessera(engine: LLMEngine, scenario: str, seed: int, output_len: int | None = None) -> dict[str, float]:
    output_len = output_len or SCENARIOS[scenario][2]
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    started = time.perf_counter()
    for i, ids in enumerate(prompt_ids(scenario, seed)):
        engine.add_request(f"{scenario}-{seed}-{i}-{time.monotonic_ns()}", ids, params)
    while engine.has_unfinished_requests():
        engine.step(final_only=True)
    return summarize(scenario, time.perf_counter() - started, output_len)


class PeerWorker:
    """The HF side as a long-lived subprocess, so its model loads once."""

    def __init__(self, python: str, threads: int | None) -> None:
        cmd = [python, str(PEER_SCRIPT), "--worker"] + ([f"--threads={threads}"] if threads else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None  # the PIPEs above
        self._to_peer, self._from_peer = self.proc.stdin, self.proc.stdout
        self._read()

    def _read(self) -> dict:
        line = self._from_peer.readline()
        if not line:
            raise RuntimeError(f"the HF peer exited (code {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def run(self, scenario: str, seed: int, output_len: int | None = None) -> dict[str, float]:
        self._to_peer.write(json.dumps({"scenario": scenario, "seed": seed, "output_len": output_len}) + "\n")
        self._to_peer.flush()
        return self._read()

    def close(self) -> None:
        self._to_peer.close()
        self.proc.wait()


def medians(runs: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(times) for name, times in runs.items() if times}


def report(ours: dict[str, float], peer: dict[str, float]) -> dict[str, dict[str, float]]:
    rows = {}
    for name, seconds in ours.items():
        row = {"tessera_s": seconds, **summarize(name, seconds)}
        if name in peer:
            row.update(hf_s=peer[name], time_ratio_vs_hf=seconds / peer[name])
        rows[name] = row
    for side, times in (("tessera", ours), ("hf", peer)):
        if "long1800" in times and "long1800_first" in times:
            steps = SCENARIOS["long1800"][2] - 1
            decode_ms = 1e3 * (times["long1800"] - times["long1800_first"]) / steps
            rows.setdefault("decode_ms_per_token_at_1800", {})[f"{side}_ms"] = decode_ms
    return rows


def main() -> None:
    configure_process()  # a benchmark is an engine start: settings before any device use
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=list(SCENARIOS), action="append", help="default: all")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each side per scenario")
    parser.add_argument("--no-peer", action="store_true", help="time Tessera only")
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--peer-threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--output-json", default=None)
    add_engine_flags(parser, defaults=ENGINE_DEFAULTS)
    args = parser.parse_args()

    scenarios = args.scenario or list(SCENARIOS)
    engine = LLMEngine(checked_engine_config(parser, args))
    peer = None if args.no_peer else PeerWorker(args.peer_python, args.peer_threads)
    ours: dict[str, list[float]] = {s: [] for s in scenarios}
    theirs: dict[str, list[float]] = {s: [] for s in scenarios}
    # Warm-up: 16 new tokens compile the same programs (prefill chunks, mixed steps, decodes).
    for scenario in scenarios:
        run_tessera(engine, scenario, 0, output_len=16)
    if peer:
        peer.run("long1800_first", 0)
    compiled_before = engine.stats().num_compilations
    for seed in range(1, args.rounds + 1):
        for scenario in scenarios:
            ours[scenario].append(run_tessera(engine, scenario, seed)["seconds"])
            if peer:
                theirs[scenario].append(peer.run(scenario, seed)["seconds"])
            print(f"round {seed} {scenario}: tessera {ours[scenario][-1]:.2f} s"
                  + (f", hf {theirs[scenario][-1]:.2f} s" if peer else ""), file=sys.stderr, flush=True)
    if peer:
        peer.close()
    rows = report(medians(ours), medians(theirs))
    for name, row in rows.items():
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    result = {"backend": engine.runner.attention_backend, "dtype": engine.model_config.dtype,
              "max_num_batched_tokens": engine.max_num_batched_tokens, "rounds": args.rounds,
              "figures": rows, "tessera_runs_s": ours, "hf_runs_s": theirs,
              "compilations_in_timed_rounds": engine.stats().num_compilations - compiled_before}
    print(json.dumps(result))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
