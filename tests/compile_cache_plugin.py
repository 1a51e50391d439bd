"""A pytest plugin (``-p tests.compile_cache_plugin`` in pyproject.toml): one persistent JAX
compilation cache for the whole test run.

Many tests compile the same tiny-model programs, in this process and in the server and worker
subprocesses they start (which inherit the environment). JAX reads these variables when it is
first imported, so the plugin, which pytest loads before any conftest or test module, sets them.
The directory is new per run and removed at exit: no run reads another run's programs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE_DIR = tempfile.mkdtemp(prefix="tessera-test-jax-cache-")
    atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
