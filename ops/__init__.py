"""Device operators: paged attention backends (``ops.attention``) and the KV-cache write."""
