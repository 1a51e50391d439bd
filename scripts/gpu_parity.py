"""GPU correctness: our engine (Pallas attention on GPU) against HF transformers, live, on the
same random weights of a Llama-shaped model. Needs torch + transformers (the GPU image has them).

  python3 scripts/gpu_parity.py --out /tmp/parity_result.json
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf_config = LlamaConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
        num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False, torch_dtype="float32",
    )  # type: ignore[call-arg]  # legacy kwargs transformers still takes at run time; kept as the GPU image runs it
    hf = LlamaForCausalLM(hf_config).eval()
    for module in hf.modules():  # wider init than HF's default so logits are not near-uniform
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.05)
    model_dir = tempfile.mkdtemp(prefix="tessera-parity-")
    hf.save_pretrained(model_dir, safe_serialization=True)
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(3, 32000, size=n)] for n in (7, 33, 100, 250)]
    hf = hf.to("cuda")
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt], device="cuda")
            out = hf.generate(ids, max_new_tokens=args.new_tokens, do_sample=False, min_new_tokens=args.new_tokens)
            expected.append(out[0, len(prompt):].tolist())
    del hf
    torch.cuda.empty_cache()

    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    from engine import LLM, SamplingParams
    from ops.attention import default_backend

    llm = LLM(model=model_dir, dtype="float32", max_model_len=1024, max_num_seqs=8, max_num_batched_tokens=128,
              gpu_memory_utilization=0.3)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True), use_tqdm=False)
    got = [o.outputs[0].token_ids for o in outs]
    matching = [next((i for i, (a, b) in enumerate(zip(g, e, strict=False)) if a != b), len(e))  # up to the shorter
                for g, e in zip(got, expected, strict=True)]
    result = {"backend": default_backend(), "device": str(jax.devices()[0].device_kind),
              "prompt_lens": [len(p) for p in prompts], "tokens_matching_before_first_difference": matching,
              "all_equal": got == expected}
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
