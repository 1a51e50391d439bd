"""Process-wide settings Tessera needs, applied when an engine or a server starts, never on import.

Importing a Tessera module changes nothing outside it. ``configure_process`` runs at each start
point (``LLMEngine``, ``python -m engine.serve``, the engine-core and API server processes) before
anything touches a JAX device or imports transformers, and is idempotent:

- ``XLA_PYTHON_CLIENT_MEM_FRACTION``: the engine sizes the KV cache from the device's memory itself
  (``gpu_memory_utilization``) instead of XLA's default 75% preallocation. JAX reads it when it
  creates a GPU backend, so it must be set before then.
- ``TRANSFORMERS_VERBOSITY``: transformers is only our tokenizer library; its "PyTorch was not
  found" notice is noise. It is read when transformers is first imported.
- package logging (engine/log.py).

Each is a default: a value already in the environment wins.
"""

from __future__ import annotations

import os

from engine import log

ENVIRONMENT_DEFAULTS = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95", "TRANSFORMERS_VERBOSITY": "error"}


def configure_process() -> None:
    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    log.configure()
