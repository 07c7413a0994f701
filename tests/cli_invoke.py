"""Run the ``fedmarket`` console entry point in-process, as a user's shell would."""

from __future__ import annotations

import sys

import pytest

from fedmarket.cli.main import run


def invoke(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run ``fedmarket ARGS`` and return its exit code."""
    monkeypatch.setattr(sys, "argv", ["fedmarket", *args])
    try:
        run()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0
