"""Every module imports on its own, and the packages depend on each other in one direction.

A cycle between modules shows only when one of them is imported first ("partially initialized
module"), so each module is the first Tessera import of its own fresh interpreter (run a few at a
time: each costs up to a JAX import). Importing must also leave the process as it was: no
environment defaults, no package logging (engine/environment.py applies those when an engine or
server starts), and no transformers from the start points (it reads its settings when first
imported). The layering is read from the source: ``ops`` <- ``models`` <- ``sharding`` <-
``engine`` <- ``server``, a module importing only from its own layer or below, with the launch
entry points (``engine/serve.py``, ``engine/cli.py``) the one allowed top.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engine.environment import ENVIRONMENT_DEFAULTS
from engine.log import PACKAGES

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("ops", "models", "sharding", "engine", "server")
ENTRY_POINTS = {"engine.serve", "engine.cli"}  # they start the server, so they import it
IMPORT_TIMEOUT_S = 120

# Run in each fresh interpreter: import the module first, then check that nothing changed.
PROBE = """
import importlib, logging, os, sys
importlib.import_module(sys.argv[1])
changed = sorted(set(sys.argv[2].split(",")) & set(os.environ))
configured = [p for p in sys.argv[3].split(",") if logging.getLogger(p).handlers]
if changed or configured:
    sys.exit(f"importing {sys.argv[1]} set {changed} and configured logging of {configured}")
"""

# The modules an engine or server process starts from, and a probe that fails if they load transformers.
START_POINTS = ["engine.serve", "engine.cli", "engine.llm", "engine.core.process", "server.api_server"]
TRANSFORMERS_PROBE = """
import importlib, sys
for module in sys.argv[1:]:
    importlib.import_module(module)
sys.exit("transformers" in sys.modules)
"""


def module_files() -> dict[str, Path]:
    """Every module of the five packages, by name: ``engine`` is engine/__init__.py."""
    modules = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _import_alone(module: str) -> str | None:
    """None if ``module`` imports cleanly as the first Tessera import of a fresh interpreter, else why not."""
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_DEFAULTS}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", PROBE, module, ",".join(ENVIRONMENT_DEFAULTS), ",".join(PACKAGES)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=IMPORT_TIMEOUT_S)
    return None if done.returncode == 0 else f"{module}:\n{done.stderr[-2000:]}"


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failures = [f for f in pool.map(_import_alone, module_files()) if f is not None]
    assert not failures, "\n\n".join(failures)


def test_start_points_do_not_import_transformers() -> None:
    """transformers reads TRANSFORMERS_VERBOSITY once, when first imported: only building a tokenizer
    (after ``configure_process``) may import it, never loading the modules an engine or server runs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", TRANSFORMERS_PROBE, *START_POINTS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=IMPORT_TIMEOUT_S)
    assert done.returncode == 0, f"importing {START_POINTS} imported transformers\n{done.stderr[-2000:]}"


def test_lazily_exported_names_resolve() -> None:
    """A package's ``__all__`` names are imported on first use (``engine.LLM``): each one exists."""
    for module, path in module_files().items():
        if path.name != "__init__.py":
            continue
        package = importlib.import_module(module)
        for name in getattr(package, "__all__", ()):
            assert getattr(package, name) is not None, f"{module}.{name}"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, in functions and TYPE_CHECKING blocks too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def layering_violations() -> list[str]:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    violations = []
    for module, path in module_files().items():
        if module in ENTRY_POINTS:
            continue
        own = rank[module.split(".")[0]]
        for line, imported in _imported_modules(path):
            layer = imported.split(".")[0]
            if layer in rank and rank[layer] > own:
                violations.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    return violations


def test_packages_depend_one_way() -> None:
    violations = layering_violations()
    assert not violations, "a layer imports one above it:\n" + "\n".join(violations)
