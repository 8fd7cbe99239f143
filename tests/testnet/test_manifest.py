"""Manifest validation: good manifests parse; every bad key is named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.base.errors import ConfigError
from node.testnet.manifest import load_manifest, parse_manifest
from tests.support import run_cli

MANIFESTS = Path(__file__).resolve().parents[2] / "testnet" / "manifests"


def good() -> dict:
    return {
        "testnet": {"validators": 4, "non_validators": 1, "netns": True, "block_period_ms": 500},
        "load": {"tx_rate": 2, "duration_s": 60},
        "perturbation": [
            {"at_s": 20, "node": "node1", "action": "pause", "duration_s": 3},
            {"at_s": 5, "node": "node3", "action": "kill", "duration_s": 2},
            {"at_s": 30, "node": "node4", "action": "loss", "duration_s": 10, "loss_pct": 5, "delay_ms": 50},
        ],
    }


def test_good_manifest_parses_sorted_by_time():
    m = parse_manifest(good(), "m.toml")
    assert (m.testnet.validators, m.testnet.non_validators, m.testnet.netns) == (4, 1, True)
    assert m.load.tx_rate == 2.0 and m.load.duration_s == 60.0
    assert [(p.at_s, p.node, p.action) for p in m.perturbations] == [(5, "node3", "kill"), (20, "node1", "pause"), (30, "node4", "loss")]
    assert m.perturbations[2].delay_ms == 50 and m.perturbations[2].loss_pct == 5.0


@pytest.mark.parametrize("path", sorted(MANIFESTS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_manifests_are_valid(path):
    m = load_manifest(path)
    if path.name == "ci-short.toml":
        assert not m.testnet.netns and {p.action for p in m.perturbations} == {"kill", "pause", "restart"}
    if path.name == "soak-netem.toml":
        assert m.testnet.netns and m.load.duration_s >= 600
        assert {"kill", "pause", "disconnect"} <= {p.action for p in m.perturbations}
        assert any(p.loss_pct == 5 and p.delay_ms == 50 for p in m.perturbations)


def mutate(change) -> dict:
    doc = good()
    change(doc)
    return doc


BAD = {
    "unknown section": (lambda d: d.update(extra={}), "unknown section [extra]"),
    "unknown testnet key": (lambda d: d["testnet"].update(validator=3), "[testnet] unknown key 'validator'"),
    "validators type": (lambda d: d["testnet"].update(validators="4"), "[testnet] validators: expected an integer, got str '4'"),
    "validators range": (lambda d: d["testnet"].update(validators=0), "[testnet] validators: expected 1..64"),
    "non_validators range": (lambda d: d["testnet"].update(non_validators=64), "[testnet] non_validators"),
    "netns type": (lambda d: d["testnet"].update(netns="yes"), "[testnet] netns: expected true or false, got str 'yes'"),
    "block period": (lambda d: d["testnet"].update(block_period_ms=10), "[testnet] block_period_ms"),
    "tx_rate bool": (lambda d: d["load"].update(tx_rate=True), "[load] tx_rate: expected"),
    "tx_rate negative": (lambda d: d["load"].update(tx_rate=-1), "[load] tx_rate"),
    "duration zero": (lambda d: d["load"].update(duration_s=0), "[load] duration_s"),
    "unknown load key": (lambda d: d["load"].update(rate=1), "[load] unknown key 'rate'"),
    "perturbation not a table list": (lambda d: d.update(perturbation={"at_s": 1}), "array of tables"),
    "missing at_s": (lambda d: d["perturbation"][0].pop("at_s"), "#1 at_s is required"),
    "missing node": (lambda d: d["perturbation"][1].pop("node"), "#2 node is required"),
    "missing action": (lambda d: d["perturbation"][0].pop("action"), "#1 action is required"),
    "bad action": (lambda d: d["perturbation"][0].update(action="explode"), "#1 action: expected one of"),
    "unknown node": (lambda d: d["perturbation"][0].update(node="node9"), "#1 node: expected one of"),
    "at_s past the load": (lambda d: d["perturbation"][0].update(at_s=60), "#1 at_s"),
    "ends after the load": (lambda d: d["perturbation"][0].update(duration_s=45), "#1 duration_s"),
    "pause without duration": (lambda d: d["perturbation"][0].update(duration_s=0), "#1 duration_s: action 'pause' needs"),
    "delay_ms on a kill": (lambda d: d["perturbation"][1].update(delay_ms=5), "[[perturbation]] #2 delay_ms: only for actions 'delay' and 'loss', not 'kill'"),
    "loss without loss_pct": (lambda d: d["perturbation"][2].update(loss_pct=0), "#3 loss_pct: action 'loss' needs"),
    "loss over 100": (lambda d: d["perturbation"][2].update(loss_pct=101), "#3 loss_pct: expected 0..100"),
    "delay_ms float": (lambda d: d["perturbation"][2].update(delay_ms=1.5), "[[perturbation]] #3 delay_ms: expected an integer, got float 1.5"),
    "delay without delay_ms": (lambda d: d["perturbation"][2].update(action="delay", delay_ms=0), "#3 delay_ms: action 'delay' needs"),
    "unknown perturbation key": (lambda d: d["perturbation"][1].update(signal=9), "#2 unknown key 'signal'"),
    "overlap on one node": (lambda d: d["perturbation"].append({"at_s": 21, "node": "node1", "action": "kill"}), "#4 at_s: overlaps #1 on node1"),
    "network action on loopback": (lambda d: d["testnet"].update(netns=False), "#3 action: 'loss' needs network namespaces"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_manifest_names_the_key(name):
    change, expected = BAD[name]
    with pytest.raises(ConfigError) as info:
        parse_manifest(mutate(change), "m.toml")
    assert expected in str(info.value)
    assert str(info.value).startswith("m.toml: ")


def test_load_manifest_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such manifest"):
        load_manifest(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[testnet\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_manifest(bad)


def test_validate_command(tmp_path):
    ok = run_cli("testnet", "validate", str(MANIFESTS / "ci-short.toml"))
    assert ok.returncode == 0, ok.stderr
    assert "4 validators" in ok.stdout and "kill node3" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[testnet]\nvalidators = 4\n[[perturbation]]\nat_s = 1\nnode = "node1"\naction = "disconnect"\nduration_s = 2\n')
    result = run_cli("testnet", "validate", str(bad))
    assert result.returncode == 2
    assert "'disconnect' needs network namespaces" in result.stderr and "Traceback" not in result.stderr
