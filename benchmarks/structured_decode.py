"""Structured outputs end to end on a real model, for the targets of issue #15: validity of
constrained JSON, the decode throughput a constraint costs, and the first-token latency a new
schema adds. benchmarks/structured_output.py measures the host parts alone (index, compile, masks).

  python -m benchmarks.structured_decode                       # default model, CPU or GPU
  python -m benchmarks.structured_decode --model <dir> --batch 64 --output-len 256 --skip-validity

validity: the 50 (prompt, schema) cases of benchmarks/structured_cases.py through ``LLM.chat`` with
``structured_outputs``, greedy and at temperature 1; prints how many outputs parse and validate
(jsonschema) and how many hit max_tokens first.
throughput: ``--batch`` requests decoding ``--output-len`` tokens each, once unconstrained
(ignore_eos) and once under a JSON schema that cannot finish within that length (so both runs
produce the same number of tokens); prints output tokens/s of both and their ratio. Both run the
same precompiled programs (the token mask rides in them); constrained steps are not overlapped.
compile: one request for a schema never seen before (a ~30-property schema, its property names
made unique) against the same request again (cached grammar): the difference is what compiling
adds to the first token; plus the compile alone, for another new schema.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Any

import jsonschema

from benchmarks.structured_cases import cases
from benchmarks.structured_output import thirty_property_schema
from engine import LLM, SamplingParams
from engine.environment import configure_process
from engine.structured_output import StructuredOutputSpec

LONG_ARRAY_SCHEMA = {"type": "array", "minItems": 1000, "items": {
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 16}, "value": {"type": "integer"}},
    "required": ["name", "value"], "additionalProperties": False}}
_fresh = itertools.count()


def validity(llm: LLM, temperature: float, max_tokens: int, num_cases: int) -> dict[str, Any]:
    pairs = cases()[:num_cases]
    conversations = [[{"role": "system", "content": "Answer with a JSON object that matches this schema: "
                       + json.dumps(schema)}, {"role": "user", "content": prompt}] for prompt, schema in pairs]
    params = [SamplingParams(temperature=temperature, seed=i, max_tokens=max_tokens,
                             structured_outputs=StructuredOutputSpec.json_schema(schema))
              for i, (_, schema) in enumerate(pairs)]
    outputs = llm.chat(conversations, params, use_tqdm=False)
    valid = truncated = 0
    for out, (_, schema) in zip(outputs, pairs, strict=True):
        choice = out.outputs[0]
        truncated += choice.finish_reason == "length"
        try:
            jsonschema.validate(json.loads(choice.text), schema)
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    return {"part": "validity", "temperature": temperature, "valid": valid, "total": len(pairs),
            "finished_by_length": truncated}


def throughput(llm: LLM, batch: int, output_len: int) -> dict[str, Any]:
    prompts = [f"Write a list of {batch + i} named values as JSON." for i in range(batch)]
    plain = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    constrained = SamplingParams(temperature=0.0, max_tokens=output_len,
                                 structured_outputs=StructuredOutputSpec.json_schema(LONG_ARRAY_SCHEMA))
    llm.generate(prompts[:2], [plain, constrained], use_tqdm=False)  # builds the vocabulary index
    figures = {}
    for name, params in (("none", plain), ("json_schema", constrained)):
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        figures[name] = {"output_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
    ratio = figures["json_schema"]["tokens_per_s"] / figures["none"]["tokens_per_s"]
    return {"part": "throughput", "batch": batch, "output_len": output_len, **figures, "ratio": ratio,
            "late_compilations": llm.engine.stats().num_late_compilations}


def compile_latency(llm: LLM, repeats: int) -> dict[str, Any]:
    """Median first-token time of a request whose schema is new, and of the same request again."""
    warm_up = SamplingParams(temperature=0.0, max_tokens=1, structured_outputs=_new_schema())
    llm.generate("Describe one record as JSON.", warm_up, use_tqdm=False)  # the vocabulary index, the programs
    # seconds: a request with a new schema, the same request again, compiling a new schema alone
    first: list[float] = []
    again: list[float] = []
    alone: list[float] = []
    for _ in range(repeats):
        spec = _new_schema()
        params = SamplingParams(temperature=0.0, max_tokens=1, structured_outputs=spec)
        for times in (first, again):
            started = time.perf_counter()
            llm.generate("Describe one record as JSON.", params, use_tqdm=False)
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        llm.engine.check_constraint(_new_schema())
        alone.append(time.perf_counter() - started)
    first_ms, again_ms = _median_ms(first), _median_ms(again)
    return {"part": "compile", "repeats": repeats, "new_schema_first_token_ms": first_ms,
            "cached_schema_first_token_ms": again_ms, "added_ms": first_ms - again_ms,
            "compile_alone_ms": _median_ms(alone)}


def _new_schema() -> StructuredOutputSpec:
    schema = thirty_property_schema()
    suffix = f"_{next(_fresh)}"
    schema["properties"] = {name + suffix: prop for name, prop in schema["properties"].items()}
    schema["required"] = [name + suffix for name in schema.get("required", [])]
    return StructuredOutputSpec.json_schema(schema)


def _median_ms(seconds: list[float]) -> float:
    return sorted(seconds)[len(seconds) // 2] * 1000


def main() -> None:
    configure_process()  # a benchmark is an engine start: settings before any device use
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--load-format", default="auto", help="'dummy': random weights of the model's shape")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--validity-max-tokens", type=int, default=384)
    parser.add_argument("--num-cases", type=int, default=50, help="how many of the 50 validity cases to run")
    parser.add_argument("--compile-repeats", type=int, default=5)
    parser.add_argument("--skip-validity", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    llm = LLM(args.model, max_num_seqs=max(args.batch, 64), load_format=args.load_format, dtype=args.dtype)
    if not args.skip_validity:
        for temperature in (0.0, 1.0):
            print(json.dumps(validity(llm, temperature, args.validity_max_tokens, args.num_cases)))
    if not args.skip_throughput:
        print(json.dumps(throughput(llm, args.batch, args.output_len)))
    if not args.skip_compile:
        print(json.dumps(compile_latency(llm, args.compile_repeats)))


if __name__ == "__main__":
    main()
