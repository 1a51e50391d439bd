"""Engine settings, with vLLM's names and defaults where they exist."""

from __future__ import annotations

import dataclasses

from engine.compilation import default_cache_dir


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
    sharding_rules: str = "default"  # a rule set name or a JSON/YAML file (sharding/rules.py)
    # JAX's persistent compilation cache; None or "" turns it off (docs/compilation.md)
    compilation_cache_dir: str | None = dataclasses.field(default_factory=default_cache_dir)
    precompile: bool = True  # compile every planned step program before the first step
    compile_workers: int | None = None  # threads compiling at start-up; default: min(8, cores)
    token_buckets: list[int] | None = None  # padded token counts of prefill steps; default: doubling from 16
    seq_buckets: list[int] | None = None  # padded sequence counts; default: doubling from 4
    use_checkpoint_cache: bool = True
    async_scheduling: bool = True  # overlap: launch step N+1 before step N's tokens reach the host

    def validate(self) -> None:
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
        for name in ("token_buckets", "seq_buckets"):
            ladder = getattr(self, name)
            if ladder is not None and any(int(r) < 1 for r in ladder):
                raise ValueError(f"{name} must be positive sizes, got {ladder}")
        if self.compile_workers is not None and self.compile_workers < 1:
            raise ValueError(f"compile_workers must be >= 1, got {self.compile_workers}")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ValueError(f"num_gpu_blocks_override must be >= 1, got {self.num_gpu_blocks_override}")
