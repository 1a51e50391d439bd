"""The executable store: a saved program loads in a new store without tracing, and anything
wrong with an entry (torn file, other arguments, other program) means compiling, never a crash."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.compilation import compilation_count, install_counter
from engine.executable_store import ExecutableStore, abstract_signature


def _scaled(x: jax.Array, y: jax.Array) -> jax.Array:
    return x * 3 + y


def _compile(args: tuple[jax.Array, ...]) -> jax.stages.Compiled:
    return jax.jit(_scaled).lower(*args).compile()


def _fingerprint(store: ExecutableStore, args: tuple[jax.Array, ...]) -> str:
    return store.fingerprint("scaled", abstract_signature(args))


def test_a_saved_program_loads_in_a_new_store_without_tracing(tmp_path: Path) -> None:
    install_counter()
    args = (jnp.arange(6.0).reshape(2, 3), jnp.ones((2, 3)))
    first = ExecutableStore(tmp_path)
    compiled = first.load_or_compile(_fingerprint(first, args), lambda: _compile(args))
    assert (first.loaded, first.saved) == (0, 1)

    lowered = compilation_count()
    second = ExecutableStore(tmp_path)
    loaded = second.load_or_compile(_fingerprint(second, args), lambda: pytest.fail("compiled a stored program"))
    assert second.loaded == 1 and compilation_count() == lowered
    np.testing.assert_array_equal(loaded(*args), compiled(*args))


def test_other_arguments_are_another_entry(tmp_path: Path) -> None:
    store = ExecutableStore(tmp_path)
    small = (jnp.ones((2, 3)), jnp.ones((2, 3)))
    wide = (jnp.ones((2, 4)), jnp.ones((2, 4)))
    bf16 = (jnp.ones((2, 3), jnp.bfloat16), jnp.ones((2, 3), jnp.bfloat16))
    prints = {_fingerprint(store, small), _fingerprint(store, wide), _fingerprint(store, bf16),
              store.fingerprint("other program", abstract_signature(small))}
    assert len(prints) == 4
    store.load_or_compile(_fingerprint(store, small), lambda: _compile(small))
    out = store.load_or_compile(_fingerprint(store, wide), lambda: _compile(wide))
    assert out(*wide).shape == (2, 4) and store.loaded == 0 and store.saved == 2


def test_a_torn_entry_is_compiled_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = (jnp.ones((2, 3)), jnp.zeros((2, 3)))
    store = ExecutableStore(tmp_path)
    print_ = _fingerprint(store, args)
    store.load_or_compile(print_, lambda: _compile(args))
    entry = store.directory / f"{print_}.bin"
    entry.write_bytes(entry.read_bytes()[:100])  # a write cut short
    with caplog.at_level(logging.WARNING, logger="engine.executable_store"):
        out = ExecutableStore(tmp_path).load_or_compile(print_, lambda: _compile(args))
    assert "could not load" in caplog.text
    np.testing.assert_array_equal(out(*args), np.full((2, 3), 3.0))
    rewritten = ExecutableStore(tmp_path).load_or_compile(print_, lambda: pytest.fail("not rewritten"))
    assert rewritten(*args).shape == (2, 3)
