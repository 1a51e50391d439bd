"""The ``tessera`` console script: ``tessera serve [MODEL] [flags]`` (flags as ``python -m engine.serve``)."""

from __future__ import annotations

import argparse
import sys

SUBCOMMANDS = {"serve": "Start the OpenAI-compatible API server (see `tessera serve --help`)"}


def _version() -> str:
    from server.app import tessera_version

    return tessera_version()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        from engine.serve import main as serve_main

        return serve_main(argv[1:], prog="tessera serve")
    parser = argparse.ArgumentParser(prog="tessera", description="Tessera: JAX LLM inference and serving.")
    parser.add_argument("-v", "--version", action="version", version=f"tessera {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="{serve}", required=True)
    for name, help_text in SUBCOMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
