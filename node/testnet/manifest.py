"""Testnet manifests: a TOML file describing a local testnet, a load, and timed
perturbations (in the manner of CometBFT's end-to-end runner).

    [testnet]
    validators = 4          # 1..64
    non_validators = 0
    netns = false           # true: one network namespace per node (needs root + iproute2)
    block_period_ms = 500

    [load]
    tx_rate = 4.0           # transactions per second (0 = no load)
    duration_s = 40         # how long the load runs; perturbations are timed from its start
    job_rate = 0.5          # analytics jobs per second (0 = none; node/testnet/jobload.py):
                            # sql and trend-analysis, replication 2, each checked final with
                            # every receipt verifying offline against the genesis file

    [[perturbation]]
    at_s = 10               # seconds after the load starts
    node = "node3"
    action = "kill"         # kill | pause | restart | disconnect | delay | loss
    duration_s = 3          # how long the node stays down / paused / cut / degraded
    delay_ms = 50           # delay and loss only
    loss_pct = 5.0          # delay and loss only

Parsing is pure; every error names the file, the table and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.base.errors import ConfigError

PROCESS_ACTIONS = ("kill", "pause", "restart")
NETWORK_ACTIONS = ("disconnect", "delay", "loss")
ACTIONS = PROCESS_ACTIONS + NETWORK_ACTIONS
MAX_JOB_RATE = 20.0  # each job runs in the cage on 2 nodes; more would measure the host, not the network


@dataclass(frozen=True)
class TestnetSpec:
    validators: int = 4
    non_validators: int = 0
    netns: bool = False
    block_period_ms: int = 500

    @property
    def node_names(self) -> list[str]:
        return [f"node{i}" for i in range(self.validators + self.non_validators)]


@dataclass(frozen=True)
class LoadSpec:
    tx_rate: float = 2.0
    duration_s: float = 30.0
    job_rate: float = 0.0  # analytics jobs per second (0: no jobs)


@dataclass(frozen=True)
class Perturbation:
    at_s: float
    node: str
    action: str
    duration_s: float = 0.0
    delay_ms: int = 0
    loss_pct: float = 0.0

    def describe(self) -> str:
        extra = ""
        if self.action in ("delay", "loss"):
            extra = f" delay={self.delay_ms}ms loss={self.loss_pct:g}%"
        return f"{self.action} {self.node} for {self.duration_s:g}s{extra}"


@dataclass(frozen=True)
class Manifest:
    testnet: TestnetSpec
    load: LoadSpec
    perturbations: tuple[Perturbation, ...]
    source: str = "<manifest>"


# key -> (accepted types, default or None when required)
_TESTNET_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "validators": ((int,), 4),
    "non_validators": ((int,), 0),
    "netns": ((bool,), False),
    "block_period_ms": ((int,), 500),
}
_LOAD_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "tx_rate": ((int, float), 2.0),
    "duration_s": ((int, float), 30.0),
    "job_rate": ((int, float), 0.0),
}
_PERTURBATION_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "at_s": ((int, float), None),
    "node": ((str,), None),
    "action": ((str,), None),
    "duration_s": ((int, float), 0.0),
    "delay_ms": ((int,), 0),
    "loss_pct": ((int, float), 0.0),
}


def _typed(table: dict[str, Any], keys: dict[str, tuple[tuple[type, ...], Any]], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in table:
        if key not in keys:
            raise ConfigError(f"{where} unknown key {key!r}; expected one of {sorted(keys)}")
    for key, (types, default) in keys.items():
        if key not in table:
            if default is None:
                raise ConfigError(f"{where} {key} is required")
            out[key] = default
            continue
        value = table[key]
        # bool is an int subclass in Python; a number key must not accept true/false.
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join("number" if t is float else t.__name__.replace("str", "string").replace("bool", "boolean").replace("int", "integer") for t in types)
            raise ConfigError(f"{where} {key}: expected {names}, got {value!r}")
        out[key] = value
    return out


def parse_manifest(doc: dict[str, Any], source: str = "<manifest>") -> Manifest:
    """Validate a decoded manifest; ConfigError names the key that is wrong."""
    for section in doc:
        if section not in ("testnet", "load", "perturbation"):
            raise ConfigError(f"{source}: unknown section [{section}]; expected [testnet], [load], [[perturbation]]")
    for section in ("testnet", "load"):
        if section in doc and not isinstance(doc[section], dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
    t = _typed(doc.get("testnet", {}), _TESTNET_KEYS, f"{source}: [testnet]")
    if not 1 <= t["validators"] <= 64:
        raise ConfigError(f"{source}: [testnet] validators: expected 1..64, got {t['validators']}")
    if t["non_validators"] < 0 or t["validators"] + t["non_validators"] > 64:
        raise ConfigError(f"{source}: [testnet] non_validators: expected 0..{64 - t['validators']}, got {t['non_validators']}")
    if not 50 <= t["block_period_ms"] <= 60_000:
        raise ConfigError(f"{source}: [testnet] block_period_ms: expected 50..60000, got {t['block_period_ms']}")
    testnet = TestnetSpec(**t)

    load_table = _typed(doc.get("load", {}), _LOAD_KEYS, f"{source}: [load]")
    if not 0 <= load_table["tx_rate"] <= 1000:
        raise ConfigError(f"{source}: [load] tx_rate: expected 0..1000 transactions per second, got {load_table['tx_rate']}")
    if not 0 < load_table["duration_s"] <= 86_400:
        raise ConfigError(f"{source}: [load] duration_s: expected more than 0 and at most 86400, got {load_table['duration_s']}")
    if not 0 <= load_table["job_rate"] <= MAX_JOB_RATE:
        raise ConfigError(f"{source}: [load] job_rate: expected 0..{MAX_JOB_RATE:g} jobs per second, got {load_table['job_rate']}")
    load = LoadSpec(tx_rate=float(load_table["tx_rate"]), duration_s=float(load_table["duration_s"]), job_rate=float(load_table["job_rate"]))

    raw = doc.get("perturbation", [])
    if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
        raise ConfigError(f"{source}: perturbation must be an array of tables ([[perturbation]])")
    perturbations = [_perturbation(p, i, testnet, load, source) for i, p in enumerate(raw, 1)]
    _check_overlaps(perturbations, source)
    return Manifest(testnet, load, tuple(sorted(perturbations, key=lambda p: p.at_s)), source)


def _perturbation(table: dict[str, Any], index: int, testnet: TestnetSpec, load: LoadSpec, source: str) -> Perturbation:
    where = f"{source}: [[perturbation]] #{index}"
    p = _typed(table, _PERTURBATION_KEYS, where)
    if p["action"] not in ACTIONS:
        raise ConfigError(f"{where} action: expected one of {list(ACTIONS)}, got {p['action']!r}")
    if p["node"] not in testnet.node_names:
        raise ConfigError(f"{where} node: expected one of {testnet.node_names}, got {p['node']!r}")
    if p["at_s"] < 0 or p["at_s"] >= load.duration_s:
        raise ConfigError(f"{where} at_s: expected 0 <= at_s < [load] duration_s ({load.duration_s:g}), got {p['at_s']}")
    if p["duration_s"] < 0 or p["at_s"] + p["duration_s"] > load.duration_s:
        raise ConfigError(f"{where} duration_s: must be >= 0 and end within [load] duration_s ({load.duration_s:g}), got {p['duration_s']}")
    if p["action"] in ("pause", "disconnect", "delay", "loss") and p["duration_s"] <= 0:
        raise ConfigError(f"{where} duration_s: action {p['action']!r} needs a positive duration_s")
    if p["action"] in NETWORK_ACTIONS and not testnet.netns:
        raise ConfigError(f"{where} action: {p['action']!r} needs network namespaces; set [testnet] netns = true (root and iproute2 required)")
    if not 0 <= p["delay_ms"] <= 10_000:
        raise ConfigError(f"{where} delay_ms: expected 0..10000, got {p['delay_ms']}")
    if not 0 <= p["loss_pct"] <= 100:
        raise ConfigError(f"{where} loss_pct: expected 0..100, got {p['loss_pct']}")
    if p["action"] not in ("delay", "loss") and ("delay_ms" in table or "loss_pct" in table):
        raise ConfigError(f"{where} delay_ms/loss_pct: only for actions 'delay' and 'loss', not {p['action']!r}")
    if p["action"] == "delay" and p["delay_ms"] <= 0:
        raise ConfigError(f"{where} delay_ms: action 'delay' needs delay_ms > 0")
    if p["action"] == "loss" and p["loss_pct"] <= 0:
        raise ConfigError(f"{where} loss_pct: action 'loss' needs loss_pct > 0")
    return Perturbation(float(p["at_s"]), p["node"], p["action"], float(p["duration_s"]), p["delay_ms"], float(p["loss_pct"]))


def _check_overlaps(perturbations: list[Perturbation], source: str) -> None:
    """Two perturbations of one node at once would undo each other (a restart
    of a paused node, a netem change mid-disconnect): refuse them."""
    by_node: dict[str, list[tuple[int, Perturbation]]] = {}
    for i, p in enumerate(perturbations, 1):
        by_node.setdefault(p.node, []).append((i, p))
    for items in by_node.values():
        items.sort(key=lambda ip: ip[1].at_s)
        for (i, a), (j, b) in zip(items, items[1:]):
            if b.at_s < a.at_s + a.duration_s + _settle(a):
                raise ConfigError(f"{source}: [[perturbation]] #{j} at_s: overlaps #{i} on {a.node} (which lasts until {a.at_s + a.duration_s + _settle(a):g} s)")


def _settle(p: Perturbation) -> float:
    # A restarted process needs a moment before it can be perturbed again.
    return 2.0 if p.action in ("kill", "restart") else 0.0


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such manifest") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read manifest: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None
    return parse_manifest(doc, str(path))
