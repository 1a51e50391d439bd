"""Device operators: paged attention backends (``ops.attention``) and the KV-cache write.

Import what you need from its module: the package itself loads nothing.
"""
