"""Where fedmarket keeps its state."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "FEDMARKET_HOME"


def fedmarket_home() -> Path:
    """Return the data directory: ``$FEDMARKET_HOME`` or ``~/.fedmarket``."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".fedmarket"
