"""Package logging on by default (INFO to stderr), as vLLM users expect; TESSERA_LOGGING_LEVEL
changes the level and TESSERA_CONFIGURE_LOGGING=0 leaves logging to the application."""

from __future__ import annotations

import logging
import os

PACKAGES = ("engine", "models", "ops", "server", "sharding")


def configure() -> None:
    if os.environ.get("TESSERA_CONFIGURE_LOGGING", "1") == "0":
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(module)s] %(message)s", "%m-%d %H:%M:%S"))
    level = os.environ.get("TESSERA_LOGGING_LEVEL", "INFO").upper()
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = False
