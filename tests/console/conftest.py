"""Fixtures the browser verifier's test modules share: one Chromium page per
module, and the dev chain whose blocks hold a receipt of every kind."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "receipts"))  # the receipts tests' shared builders

from verifier_browser import open_verifier_page  # noqa: E402
from verifier_bundles import build_kinds_chain  # noqa: E402

from node.receipts.devchain import DevChain  # noqa: E402


@pytest.fixture(scope="module")
def verifier_page() -> Iterator[Any]:
    """One Chromium page for the module (verifier_browser.open_verifier_page)."""
    with open_verifier_page() as page:
        yield page


@pytest.fixture(scope="module")
def kinds_chain() -> DevChain:
    """Three blocks, each with a receipt of every kind, the job.exec last (leaves 5, 11, 17)."""
    return build_kinds_chain()
