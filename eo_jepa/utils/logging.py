"""Logging set-up shared by the CLI and library code.

Library modules log through ``logging.getLogger(__name__)``; only the CLI (or a user)
configures handlers. Under torch.distributed only rank 0 logs below WARNING.
"""

from __future__ import annotations

import logging
import os
import sys


def configure_logging(verbosity: int = 0) -> None:
    """verbosity: -1 quiet (warnings only), 0 info, 1+ debug."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        level = max(level, logging.WARNING)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbosity > 0 else "%(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger("eo_jepa")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def progress_disabled() -> bool:
    """Progress bars are off on non-zero ranks, when EO_JEPA_NO_PROGRESS=1, or when logging is quiet."""
    if os.environ.get("EO_JEPA_NO_PROGRESS") == "1" or int(os.environ.get("RANK", "0")) != 0:
        return True
    return logging.getLogger("eo_jepa").getEffectiveLevel() > logging.INFO
