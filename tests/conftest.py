"""Shared fixtures (helpers live in tests/support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    return tmp_path
