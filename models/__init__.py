"""Pure Flax decoder-only language models and their weight loaders.

Import what you need from its module (``models.config``, ``models.registry``, ``models.loaders``):
the package itself loads nothing.
"""
