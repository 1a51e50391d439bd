"""The bucket plan: every step the scheduler can produce lands on a planned program."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.bucket_plan import BucketPlan, ProgramKey, doubling_ladder, fit
from engine.sampler import SamplerMode


def _plan(platform: str = "cpu", backend: str = "reference", **overrides: object) -> BucketPlan:
    fields: dict[str, object] = dict(max_num_batched_tokens=96, max_num_seqs=6, max_model_len=200, block_size=16,
                                     attention_backend=backend, platform=platform)
    fields.update(overrides)
    return BucketPlan.build(**fields)  # type: ignore[arg-type]


def test_ladders_double_and_close_at_the_limit() -> None:
    assert doubling_ladder(16, 96) == (16, 32, 64, 96)
    assert doubling_ladder(16, 64) == (16, 32, 64)
    assert doubling_ladder(4, 2) == (4,)
    assert fit((16, 32, 64, 96), 33) == 64
    with pytest.raises(ValueError):
        fit((16, 32), 33)


def test_configured_ladders_are_cut_and_closed_by_the_limits() -> None:
    plan = _plan(token_buckets=[256, 8, 32], seq_buckets=[2, 100])
    assert plan.token_ladder == (8, 32, 96)
    assert plan.seq_ladder == (2, 6)


@pytest.mark.parametrize("platform,backend", [("cpu", "reference"), ("gpu", "pallas_gpu"), ("cpu", "cpu"),
                                              ("cpu", "not_listed")])
def test_every_schedulable_step_has_a_planned_shape(platform: str, backend: str) -> None:
    plan = _plan(platform, backend)
    planned = {(k.tokens, k.seqs, k.width, k.window) for k in plan.keys()}  # noqa: SIM118 - a method, not a dict
    max_blocks = -(-200 // 16)
    for tokens, seqs, widest in itertools.product(range(1, 97), range(1, 7), range(1, max_blocks + 1)):
        if seqs > tokens:
            continue
        for decode in ([True, False] if tokens == seqs else [False]):
            t, s, w = plan.shapes(tokens, seqs, widest, decode)
            assert t >= tokens and s >= seqs and w >= widest
            assert (t, s, w, 1 if decode else t) in planned, (tokens, seqs, widest, decode)


def test_the_engine_plans_from_its_config_ladders() -> None:
    """EngineConfig's ladders (set, or the platform's defaults) are the plan's only source."""
    from tests.tiny_models import tiny_engine

    engine = tiny_engine(max_num_batched_tokens=128, max_num_seqs=16, token_bucket_ladder=(32, 64),
                         seq_bucket_ladder=(2,))
    assert engine.runner.plan.token_ladder == (32, 64, 128)
    assert engine.runner.plan.seq_ladder == (2, 16)


def test_cpu_attention_plans_one_block_table_width() -> None:
    cpu = _plan("cpu", "cpu")
    assert cpu.width_ladder == (13,)  # its loops stop at each sequence's own length (docs/cpu.md)
    # sequences follow tokens
    assert len([k for k in cpu.keys() if k.window > 1]) == len(cpu.token_ladder)  # noqa: SIM118 - a method, not a dict


def test_runtime_switch_platforms_plan_one_variant_per_shape() -> None:
    cpu = _plan("cpu")
    shapes = {(k.tokens, k.seqs, k.width, k.window) for k in cpu.keys()}  # noqa: SIM118 - a method, not a dict
    assert len(cpu.keys()) == len(shapes)
    assert all(k.mode.gated and k.prompt_k == 20 for k in cpu.keys())  # noqa: SIM118 - a method, not a dict


def test_gpu_plans_greedy_full_and_prompt_variants_over_few_shapes() -> None:
    gpu = _plan("gpu", "pallas_gpu")
    assert gpu.width_ladder == (13,)
    shapes = {(k.tokens, k.seqs, k.width, k.window) for k in gpu.keys()}  # noqa: SIM118 - a method, not a dict
    # decode: one per sequence rung; prefill: one per token rung (sequences follow tokens)
    assert len(shapes) == len(gpu.seq_ladder) + len(gpu.token_ladder)
    assert len(gpu.keys()) == 2 * len(gpu.seq_ladder) + 3 * len(gpu.token_ladder)  # decode: no prompt variant
    modes = {(k.mode, k.prompt_k) for k in gpu.keys()}  # noqa: SIM118 - a method, not a dict
    assert (SamplerMode(True, False, 0), None) in modes and not any(m.gated for m, _ in modes)


def test_gpu_mode_folding_keeps_greedy_only_steps_on_the_greedy_variant() -> None:
    gpu = _plan("gpu", "pallas_gpu")
    assert gpu.mode_for(SamplerMode(True, False, 0), extras=False).all_greedy
    for wanted, extras in [(SamplerMode(True, False, 0), True), (SamplerMode(True, False, 5), False),
                           (SamplerMode(False, False, 0), False), (SamplerMode(False, True, 1), False)]:
        mode = gpu.mode_for(wanted, extras)
        assert not mode.all_greedy and mode.use_filters and mode.num_logprobs == 20


def test_keys_are_ordered_small_first_and_describe_counts_them() -> None:
    plan = _plan()
    keys = plan.keys()
    assert keys[0].tokens * keys[0].width == min(k.tokens * k.width for k in keys)
    assert f"{len(keys)} step programs" in plan.describe()
    assert isinstance(keys[0], ProgramKey) and "decode" in keys[0].describe()


@pytest.mark.parametrize("platform,backend", [("cpu", "reference"), ("gpu", "pallas_gpu")])
def test_normalized_steps_land_on_planned_keys_and_keep_what_rows_asked(platform: str, backend: str) -> None:
    from engine.step_input import empty_sampling, padding_input

    plan = _plan(platform, backend)
    keys = set(plan.keys())
    t, s, w = plan.shapes(20, 3, 5, False)
    built = padding_input(1, t, s, w).replace(max_query_len=16)
    cases = [
        (SamplerMode(True, False, 0), None, empty_sampling(s)),
        (SamplerMode(True, False, 5), None, empty_sampling(s)),
        (SamplerMode(False, True, 0), 2, empty_sampling(s, bias_width=4, history_width=32)),
    ]
    for mode, prompt_k, sampling in cases:
        step = plan.normalize(built.replace(mode=mode, prompt_k=prompt_k, sampling=sampling))
        assert plan.key_of(step) in keys
        assert step.max_query_len == t
        assert bool(step.sampling.wants_logprobs.all()) == bool(mode.num_logprobs)
        assert (np.asarray(step.prompt_targets) == -1).all() == (prompt_k is None)
        assert plan.key_of(plan.normalize(step)) == plan.key_of(step)  # normalizing twice changes nothing
    decode = padding_input(1, 4, 4, w).replace(max_query_len=1, mode=SamplerMode(False, False, 1))
    assert plan.key_of(plan.normalize(decode)) in keys


@pytest.mark.parametrize("platform,backend", [("cpu", "cpu"), ("gpu", "pallas_gpu")])
def test_token_masks_ride_in_the_sampling_variants_and_add_no_program(platform: str, backend: str) -> None:
    """Every variant but static greedy takes the structured-output mask; a step with a constrained
    row lands on a planned key; an unconstrained step of such a variant gets an all-ones mask."""
    from engine.step_input import padding_input

    plain, plan = _plan(platform, backend), _plan(platform, backend, mask_words=7)
    planned = plan.keys()
    assert len(planned) == len(plain.keys())
    assert all(k.mask_words == (0 if k.mode.all_greedy else 7) for k in planned)
    keys = set(planned)
    for decode in (True, False):
        t, s, w = plan.shapes(3 if decode else 40, 3, 5, decode)
        greedy = padding_input(1, t, s, w).replace(max_query_len=1 if decode else 16)  # greedy, no mask
        masked = plan.normalize(greedy.replace(token_bitmask=np.zeros((s, 7), np.int32)))
        assert plan.key_of(masked) in keys and plan.key_of(masked).mask_words == 7
        assert not masked.mode.all_greedy  # a greedy constrained step leaves the static greedy variant
        free = plan.normalize(greedy)
        assert plan.key_of(free) in keys
        assert np.shape(free.token_bitmask) == (s, 0 if free.mode.all_greedy else 7)
        assert (np.asarray(free.token_bitmask) == -1).all()
        sampled = plan.normalize(greedy.replace(mode=SamplerMode(False, False, 0)))
        assert plan.key_of(sampled) in keys and (np.asarray(sampled.token_bitmask) == -1).all()
        with pytest.raises(ValueError, match="token mask of 5 words"):
            plan.normalize(greedy.replace(token_bitmask=np.zeros((s, 5), np.int32)))


def test_the_engine_plans_token_masks_only_with_a_tokenizer() -> None:
    from tests.tiny_models import tiny_engine

    engine = tiny_engine()  # token ids only: no grammar can be compiled
    planned = engine.runner.plan.keys()
    assert engine.runner.plan.mask_words == 0 and all(k.mask_words == 0 for k in planned)
