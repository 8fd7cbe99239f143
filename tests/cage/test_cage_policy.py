"""Policy files: the shipped policies, and refusals that name the problem."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from node.base.errors import ConfigError
from node.cage.policy import (
    default_policy_path,
    load_policies,
    missing_layers,
    parse_policies,
    policy_from_value,
)

PROCESSING = {
    "enforcement_level": "maximum", "deterministic_execution": True, "network": "denied",
    "rng_seed_source": "deterministic", "clock_source": "logical",
    "deny": ["socket", "random", "fork"], "kill": ["exec"],
}


def parse(table: dict) -> None:
    parse_policies({"policies": {"p": table}}, source="test.toml")


def test_shipped_policies_load():
    policies = load_policies(default_policy_path())
    assert policies["gateway"].enforcement_level == "strict" and policies["gateway"].allows_network
    processing = policies["processing"]
    assert processing.enforcement_level == "maximum" and processing.deterministic_execution
    assert {"socket", "random", "fork"} <= set(processing.deny) and "exec" in processing.kill
    assert policy_from_value(processing.to_value()) == processing


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "test.toml: [policies.p] unknown key 'colour'; expected one of ['allow_network', 'clock_source',"),
    ({"limits": {"cpu": 3}}, "[policies.p.limits] unknown key 'cpu'; expected one of ['cpu_seconds',"),
    ({"filesystem": {"writable_inputs": True}}, "[policies.p.filesystem] unknown key 'writable_inputs'"),
    ({"enforcement_level": "paranoid"}, "[policies.p] enforcement_level: expected one of ['permissive', 'strict', 'maximum'], got 'paranoid'"),
    ({"limits": {"cpu_seconds": True}}, "[policies.p.limits] cpu_seconds: expected an integer, got bool True"),
    ({"limits": {"memory_mb": 0}}, "[policies.p.limits] memory_mb: expected a positive integer, got 0"),
    ({"limits": {"memory_mb": 64}}, "memory_mb = 64 is below the 256 MB"),
    ({"deny": ["socket", "random", "fork", "teleport"]}, "[policies.p] deny: 'teleport' is neither a syscall group"),
    ({"kill": ["exec", "socket"]}, "'socket' is in both deny and kill"),
    ({"network": "allowed"}, "network = 'allowed' contradicts denying 'socket'"),
    ({"clock_source": "host"}, "deterministic_execution needs clock_source = 'logical'"),
    ({"deterministic_execution": False}, "'maximum' needs deterministic_execution = true"),
    ({"enable_witness_recording": False}, "'maximum' needs enable_witness_recording = true"),
    ({"rng_seed_source": "none"}, "'maximum' needs rng_seed_source = 'deterministic'"),
    ({"deny": ["socket", "fork"]}, "'maximum' needs 'random' in deny"),
    ({"kill": []}, "'maximum' needs 'exec' in deny or kill"),
    ({"filesystem": {"read_only_inputs": False}}, "needs filesystem.read_only_inputs = true"),
])
def test_bad_policies_are_refused_naming_the_key(change: dict, message: str):
    table = copy.deepcopy(PROCESSING)
    table.update(change)
    with pytest.raises(ConfigError) as info:
        parse(table)
    assert message in str(info.value)


def test_raw_syscall_names_are_accepted():
    parse({"enforcement_level": "strict", "deny": ["chmod", "socket"], "kill": ["execve"]})


def test_unknown_top_level_and_bad_toml(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"x: unknown section \[policy\]; expected one of \['policies'\]"):
        parse_policies({"policy": {}}, source="x")
    bad = tmp_path / "p.toml"
    bad.write_text("[policies.p\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policies(bad)
    with pytest.raises(ConfigError, match="no such policy file"):
        load_policies(tmp_path / "missing.toml")


def test_levels_require_layers():
    policies = load_policies(default_policy_path())
    everything = {"rlimits", "user+net namespace", "landlock", "seccomp"}
    assert missing_layers(policies["processing"], everything) == []
    assert missing_layers(policies["processing"], everything - {"landlock"}) == ["landlock"]
    assert missing_layers(policies["gateway"], everything - {"user+net namespace"}, for_service=True) == []
    permissive = parse_policies({"policies": {"p": {"enforcement_level": "permissive"}}})["p"]
    assert missing_layers(permissive, set()) == []


def test_policy_digest_changes_with_any_field():
    policy = load_policies(default_policy_path())["processing"]
    table = policy.to_value()
    table.pop("name")
    table["limits"] = dict(table["limits"], cpu_seconds=31)
    changed = parse_policies({"policies": {"processing": table}})["processing"]
    assert changed.digest != policy.digest
