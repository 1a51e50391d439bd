"""Engine settings, with vLLM's names and defaults where they exist.

Some defaults depend on the platform: a field left ``None`` takes its platform's value from
``PLATFORM_DEFAULTS`` when the engine starts (``with_platform_defaults``), so ``make serve`` on
a laptop CPU gets CPU-sized steps without any flag. docs/cpu.md says how the CPU values were
chosen.
"""

from __future__ import annotations

import dataclasses

from engine.compilation import default_cache_dir


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
# ladder (a decode's matmuls cost nearly the same at 8 or 32 rows: weight reads dominate).
CPU_DEFAULTS = PlatformDefaults(
    max_num_batched_tokens=512,
    token_bucket_ladder=(64, 128, 256),
    seq_bucket_ladder=(8, 32, 64, 128),
)
PLATFORM_DEFAULTS = {"cpu": CPU_DEFAULTS}


@dataclasses.dataclass
class EngineConfig:
    model: str | None = None
    tokenizer: str | None = None
    dtype: str = "auto"
    load_format: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None
    num_gpu_blocks_override: int | None = None
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    attention_backend: str | None = None
    mesh: str | None = None  # e.g. "tp=4", "dp=2,tp=2" (sharding/mesh.py)
    tensor_parallel_size: int | None = None  # vLLM's spelling of mesh "tp=N"; must agree with mesh
    data_parallel_size: int | None = None  # vLLM's spelling of mesh "dp=N"
    sharding_rules: str = "default"  # a rule set name or a JSON/YAML file (sharding/rules.py)
    # JAX's persistent compilation cache; None or "" turns it off (docs/compilation.md)
    compilation_cache_dir: str | None = dataclasses.field(default_factory=default_cache_dir)
    precompile: bool = True  # compile every planned step program before the first step
    compile_workers: int | None = None  # threads compiling at start-up; default: min(8, cores)
    use_checkpoint_cache: bool = True
    async_scheduling: bool = True  # overlap: launch step N+1 before step N's tokens reach the host
    # The bucket plan's ladders (engine/bucket_plan.py): padded token counts of steps with a prefill
    # chunk, padded sequence counts; unset: the platform's (PlatformDefaults), else the plan's doubling
    # ladders (tokens from 16, sequences from 4). The limits close each ladder.
    token_bucket_ladder: tuple[int, ...] | None = None
    seq_bucket_ladder: tuple[int, ...] | None = None
    # The text that ends a reasoning model's thinking ("</think>"; --reasoning-parser sets it): an output
    # constraint applies only to what follows it (docs/structured_outputs.md). It must be one token.
    reasoning_end: str | None = None

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
        from sharding.mesh import combine_mesh_flags

        return combine_mesh_flags(self.mesh, self.tensor_parallel_size, self.data_parallel_size)

    def validate(self) -> None:
        self.mesh_spec()
        if self.block_size not in (8, 16, 32, 64, 128):
            raise ValueError(f"block_size must be one of 8, 16, 32, 64, 128, got {self.block_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        for name in ("token_bucket_ladder", "seq_bucket_ladder"):
            ladder = getattr(self, name)
            if ladder is not None and any(int(r) < 1 for r in ladder):
                raise ValueError(f"{name} must be positive sizes, got {ladder}")
        if self.compile_workers is not None and self.compile_workers < 1:
            raise ValueError(f"compile_workers must be >= 1, got {self.compile_workers}")
        if self.reasoning_end is not None and (not isinstance(self.reasoning_end, str) or not self.reasoning_end):
            raise ValueError(f"reasoning_end must be a non-empty string, got {self.reasoning_end!r}")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ValueError(f"num_gpu_blocks_override must be >= 1, got {self.num_gpu_blocks_override}")
