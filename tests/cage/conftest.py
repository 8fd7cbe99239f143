"""Shared fixtures: a cage pool with the shipped policies, test policies
(short limits, a fork-allowing one) and the hostile test functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cage.policy import default_policy_path, load_policies, parse_policies
from node.cage.pool import CagePool

HERE = Path(__file__).resolve().parent
MAXIMUM = {
    "enforcement_level": "maximum", "deterministic_execution": True, "network": "denied",
    "rng_seed_source": "deterministic", "clock_source": "logical",
    "deny": ["socket", "random", "fork", "ptrace"], "kill": ["exec", "mount", "namespace"],
}
TEST_POLICIES = {
    "policies": {
        "tight": {**MAXIMUM, "limits": {"cpu_seconds": 1, "memory_mb": 384, "wall_clock_seconds": 20}},
        "short": {**MAXIMUM, "limits": {"wall_clock_seconds": 1}},
        # Lets the job fork, so it can try to leave a process behind.
        "forking": {
            "enforcement_level": "strict", "deny": ["socket"], "kill": ["exec"],
            "limits": {"wall_clock_seconds": 1},
        },
        "unseeded": {"enforcement_level": "strict", "rng_seed_source": "none", "deny": ["socket"]},
    }
}


def all_policies():
    policies = load_policies(default_policy_path())
    policies.update(parse_policies(TEST_POLICIES, source="tests/cage/conftest.py"))
    return policies


@pytest.fixture(scope="session")
def pool():
    with CagePool(all_policies(), python_path=[str(HERE)],
                  function_modules=["cage_hostile_functions"]) as cage_pool:
        yield cage_pool


@pytest.fixture
def csv_input(tmp_path: Path) -> Path:
    """inputs/sales.csv beside a sibling directory holding a secret."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = inputs / "sales.csv"
    path.write_text("region,amount\nnorth,1.5\nsouth,2.25\nnorth,3.0\n", encoding="utf-8")
    secret = tmp_path / "sibling"
    secret.mkdir()
    (secret / "key").write_text("secret", encoding="utf-8")
    return path


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out
