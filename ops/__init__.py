"""Device operators: paged attention and KV-cache writes."""

from ops.attention import AttentionMetadata, paged_attention, write_kv

__all__ = ["AttentionMetadata", "paged_attention", "write_kv"]
