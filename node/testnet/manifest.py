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

Parsing is pure; the file is declared in :data:`MANIFEST` (node/base/schema.py), and every
error names the file, the table and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.base.schema import OPTIONAL, REQUIRED, ArrayOfTables, Invalid, Key, Schema, Table, read_toml

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


def _non_validators_fit(values: dict[str, Any]) -> None:
    t = values["testnet"]
    if t["non_validators"] < 0 or t["validators"] + t["non_validators"] > 64:
        raise Invalid(("testnet", "non_validators"), f"expected 0..{64 - t['validators']}, got {t['non_validators']}")


def _perturbations_fit_the_run(values: dict[str, Any]) -> None:
    """Each perturbation names a node of this testnet, lies within the load, and
    has the settings its action needs (and only those)."""
    testnet, load = _testnet(values), _load(values)
    for i, p in enumerate(values["perturbation"]):
        problem = _perturbation_problem(p, testnet, load)
        if problem:
            raise Invalid(("perturbation", i, problem[0]), problem[1])


def _perturbation_problem(p: dict[str, Any], testnet: TestnetSpec, load: LoadSpec) -> tuple[str, str] | None:
    """The key of one validated [[perturbation]] table that does not fit the run, and why."""
    action, at_s, duration_s = p["action"], p["at_s"], p["duration_s"]
    if p["node"] not in testnet.node_names:
        return "node", f"expected one of {testnet.node_names}, got {p['node']!r}"
    if at_s < 0 or at_s >= load.duration_s:
        return "at_s", f"expected 0 <= at_s < [load] duration_s ({load.duration_s:g}), got {at_s}"
    if duration_s < 0 or at_s + duration_s > load.duration_s:
        return "duration_s", f"must be >= 0 and end within [load] duration_s ({load.duration_s:g}), got {duration_s}"
    if action in ("pause", "disconnect", "delay", "loss") and duration_s <= 0:
        return "duration_s", f"action {action!r} needs a positive duration_s"
    if action in NETWORK_ACTIONS and not testnet.netns:
        return "action", f"{action!r} needs network namespaces; set [testnet] netns = true (root and iproute2 required)"
    for key in ("delay_ms", "loss_pct"):
        if action not in ("delay", "loss") and key in p:
            return key, f"only for actions 'delay' and 'loss', not {action!r}"
    if action == "delay" and p.get("delay_ms", 0) <= 0:
        return "delay_ms", "action 'delay' needs delay_ms > 0"
    if action == "loss" and p.get("loss_pct", 0) <= 0:
        return "loss_pct", "action 'loss' needs loss_pct > 0"
    return None


def _perturbations_do_not_overlap(values: dict[str, Any]) -> None:
    """Two perturbations of one node at once would undo each other (a restart
    of a paused node, a netem change mid-disconnect): refuse them."""
    by_node: dict[str, list[tuple[int, Perturbation]]] = {}
    for i, p in enumerate(_perturbations(values)):
        by_node.setdefault(p.node, []).append((i, p))
    for items in by_node.values():
        items.sort(key=lambda ip: ip[1].at_s)
        for (i, a), (j, b) in zip(items, items[1:]):
            if b.at_s < a.at_s + a.duration_s + _settle(a):
                raise Invalid(("perturbation", j, "at_s"),
                              f"overlaps #{i + 1} on {a.node} (which lasts until {a.at_s + a.duration_s + _settle(a):g} s)")


MANIFEST = Schema(
    Table({
        "testnet": Table({
            "validators": Key(int, TestnetSpec.validators, ge=1, le=64),
            "non_validators": Key(int, TestnetSpec.non_validators),
            "netns": Key(bool, TestnetSpec.netns, "one network namespace per node (needs root and iproute2)"),
            "block_period_ms": Key(int, TestnetSpec.block_period_ms, ge=50, le=60_000),
        }),
        "load": Table({
            "tx_rate": Key(float, LoadSpec.tx_rate, ge=0, le=1000, unit="transactions per second"),
            "duration_s": Key(float, LoadSpec.duration_s, "how long the load runs", gt=0, le=86_400),
            "job_rate": Key(float, LoadSpec.job_rate, ge=0, le=MAX_JOB_RATE, unit="jobs per second"),
        }),
        "perturbation": ArrayOfTables(Table({
            "at_s": Key(float, REQUIRED, "seconds after the load starts"),
            "node": Key(str, REQUIRED, "a node name such as node3"),
            "action": Key(str, REQUIRED, choices=ACTIONS),
            "duration_s": Key(float, Perturbation.duration_s),
            "delay_ms": Key(int, OPTIONAL, "delay and loss only", ge=0, le=10_000),
            "loss_pct": Key(float, OPTIONAL, "delay and loss only", ge=0, le=100),
        })),
    }),
    checks=[_non_validators_fit, _perturbations_fit_the_run, _perturbations_do_not_overlap],
)


def parse_manifest(doc: dict[str, Any], source: str = "<manifest>") -> Manifest:
    """Validate a decoded manifest; ConfigError names the key that is wrong."""
    values = MANIFEST.validate(doc, source)
    perturbations = sorted(_perturbations(values), key=lambda p: p.at_s)
    return Manifest(_testnet(values), _load(values), tuple(perturbations), source)


def _testnet(values: dict[str, Any]) -> TestnetSpec:
    return TestnetSpec(**values["testnet"])


def _load(values: dict[str, Any]) -> LoadSpec:
    load = values["load"]
    return LoadSpec(tx_rate=float(load["tx_rate"]), duration_s=float(load["duration_s"]), job_rate=float(load["job_rate"]))


def _perturbations(values: dict[str, Any]) -> list[Perturbation]:
    """In file order (the order messages number them in)."""
    return [Perturbation(float(p["at_s"]), p["node"], p["action"], float(p["duration_s"]), p.get("delay_ms", 0),
                         float(p.get("loss_pct", 0.0))) for p in values["perturbation"]]


def _settle(p: Perturbation) -> float:
    # A restarted process needs a moment before it can be perturbed again.
    return 2.0 if p.action in ("kill", "restart") else 0.0


def load_manifest(path: str | Path) -> Manifest:
    return parse_manifest(read_toml(path, "manifest"), str(path))
