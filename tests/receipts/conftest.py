from __future__ import annotations

import pytest
from receipt_samples import VALID_FIELDS


@pytest.fixture(params=sorted(VALID_FIELDS))
def kind(request: pytest.FixtureRequest) -> str:
    """Each receipt kind in turn."""
    return request.param
