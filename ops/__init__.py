"""Device operators: paged attention and KV-cache writes.

Import what you need from its module (``ops.attention``): the package itself loads nothing.
"""
