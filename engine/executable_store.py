"""Compiled programs kept whole on disk, so a warm start loads them without tracing anything.

JAX's persistent cache (engine/compilation.py) spares XLA's compile, but finding an entry means
tracing and lowering the program first: on an 8B model that was most of a warm start (152 s of
173 s on an H200, benchmarks/RESULTS.md). This store is keyed by what decides a program before
any tracing: the program's own key, its abstract arguments (tree structure, shapes, dtypes,
shardings), the jax/jaxlib versions, the devices, the XLA flags and a hash of the source of
every package that builds programs. A hit deserializes the executable (jax's
``serialize_executable``, the same bytes the persistent cache keeps) in milliseconds.

An entry that cannot be read, or a program that cannot be serialized, is a miss: the program
is compiled the usual way (through the persistent cache). The directory is the per-user
compilation cache's, and loading an entry runs what it holds, exactly as the persistent cache
does: it must not be shared with untrusted users.

GPU only (``store_for``): on the CPU, an executable loaded in a process other than the one that
compiled it failed at run time ("Function select_bitcast_fusion not found": XLA:CPU resolves a
loaded program's kernels by name in its process), while in the compiling process it ran, so only
a two-process check catches it. On an H200 loaded programs served 1000 ShareGPT-like requests
and a 55,000-request soak (benchmarks/RESULTS.md). The CPU keeps JAX's persistent cache.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jaxlib
from jax.experimental import serialize_executable

logger = logging.getLogger(__name__)

# The packages whose code shapes a program: a change to any of them makes every entry a miss.
_SOURCE_PACKAGES = ("engine", "models", "ops", "sharding")
_SUBDIRECTORY = "executables"


@functools.cache
def source_digest() -> str:
    """A hash of every .py file of the program-building packages."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in _SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def environment() -> tuple[Any, ...]:
    """What outside the program decides its executable: versions, devices, flags."""
    devices = jax.devices()
    client = devices[0].client
    return (jax.__version__, jaxlib.__version__, client.platform, client.platform_version,
            tuple((d.id, d.device_kind, d.process_index) for d in devices), jax.process_count(),
            os.environ.get("XLA_FLAGS", ""), jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision,
            source_digest())


def abstract_signature(args: Any) -> tuple[str, tuple[Any, ...]]:
    """The tree structure and each leaf's (shape, dtype, sharding) of a program's arguments."""
    leaves, tree = jax.tree.flatten(args)
    return str(tree), tuple((tuple(getattr(a, "shape", ())), str(getattr(a, "dtype", type(a).__name__)),
                             str(getattr(a, "sharding", None))) for a in leaves)


STORE_PLATFORMS = ("gpu",)


def store_for(directory: str | None) -> ExecutableStore | None:
    """The store under ``directory`` on a platform where loaded executables are known to run."""
    if not directory or jax.default_backend() not in STORE_PLATFORMS:
        return None
    return ExecutableStore(directory)


class ExecutableStore:
    """Serialized executables under ``directory``, one file per fingerprint."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory) / _SUBDIRECTORY
        self.directory.mkdir(parents=True, exist_ok=True)
        self._environment = environment()
        self._lock = threading.Lock()
        self.loaded = 0  # programs this process took from the store
        self.saved = 0

    def fingerprint(self, *parts: Any) -> str:
        return hashlib.sha256(repr((self._environment, parts)).encode()).hexdigest()

    def load_or_compile(self, fingerprint: str, compile_program: Callable[[], Any]) -> Any:
        """The stored executable of ``fingerprint``, else ``compile_program()`` (then stored)."""
        path = self.directory / f"{fingerprint}.bin"
        program = self._load(path)
        if program is not None:
            with self._lock:
                self.loaded += 1
            return program
        program = compile_program()
        self._save(path, program)
        return program

    def _load(self, path: Path) -> Any:
        if not path.exists():
            return None
        try:
            payload, in_tree, out_tree = pickle.loads(path.read_bytes())
            return serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
        except Exception as error:  # a torn or stale entry: compile instead
            logger.warning("executable store: could not load %s (%s); compiling instead", path.name, error)
            return None

    def _save(self, path: Path, program: Any) -> None:
        try:
            blob = pickle.dumps(serialize_executable.serialize(program))
        except Exception as error:  # e.g. a program with constants serialize_executable refuses
            logger.debug("executable store: %s not stored (%s)", path.name, error)
            return
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            partial.write_bytes(blob)
            partial.replace(path)  # atomic: a reader sees the old file, the new one or none
        except OSError as error:
            logger.warning("executable store: could not write %s (%s)", path.name, error)
            partial.unlink(missing_ok=True)
            return
        with self._lock:
            self.saved += 1
