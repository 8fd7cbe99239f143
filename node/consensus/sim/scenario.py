"""A simulation scenario: everything a seed decides before the run starts.

Faults (``--faults`` takes ``all``, ``none`` or a comma list of these):

* ``delay``: message delays up to 300 ms (so messages reorder);
* ``drop``: each message lost with probability up to 0.3 until the heal time;
* ``dup``: each message delivered twice with probability up to 0.2;
* ``partition``: up to two network partitions, each healing;
* ``crash``: up to two correct validators crash (sometimes in the middle of
  carrying out a batch of outputs) and restart from what they persisted;
* ``silent``, ``equivocate``, ``shared-key``, ``refuser``: Byzantine validators
  (a silent one, a proposer/voter that sends conflicting messages, two
  processes running one validator key, and one that follows the protocol but
  whose application refuses about half of all valid blocks, as a validator
  with diverged or lagging state would). At most f of these per run: they
  count toward f.

All faults end by ``heal_ms``; the liveness claim starts there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

NETWORK_FAULTS = ("delay", "drop", "dup", "partition", "crash")
BYZANTINE_FAULTS = ("silent", "equivocate", "shared-key", "refuser")
ALL_FAULTS = NETWORK_FAULTS + BYZANTINE_FAULTS


def parse_faults(text: str) -> tuple[str, ...]:
    """``all`` | ``none`` | comma list of fault names -> tuple of names."""
    text = text.strip()
    if text == "all":
        return ALL_FAULTS
    if text in ("none", ""):
        return ()
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ALL_FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; choose from {list(ALL_FAULTS)}, 'all' or 'none'")
    return names


@dataclass
class Crash:
    node: int
    at_ms: int
    restart_ms: int
    torn: bool  # crash part-way through carrying out a batch of outputs


@dataclass
class Partition:
    start_ms: int
    end_ms: int
    side: frozenset[int]  # node ids on one side; everyone else on the other


@dataclass
class Scenario:
    seed: int
    n: int
    faults: tuple[str, ...]
    heal_ms: int = 0
    max_delay_ms: int = 20
    drop_rate: float = 0.0
    dup_rate: float = 0.0
    byzantine: dict[int, str] = field(default_factory=dict)  # validator index -> behaviour
    crashes: list[Crash] = field(default_factory=list)
    partitions: list[Partition] = field(default_factory=list)
    skew_ms: list[int] = field(default_factory=list)  # per process, local clock offset

    @property
    def twin_of(self) -> int | None:
        """The validator index whose key a second process shares, if any."""
        for index, kind in self.byzantine.items():
            if kind == "shared-key":
                return index
        return None

    @property
    def processes(self) -> int:
        return self.n + (1 if self.twin_of is not None else 0)

    def describe(self) -> str:
        parts = [f"heal={self.heal_ms}ms", f"delay<={self.max_delay_ms}ms"]
        if self.drop_rate:
            parts.append(f"drop={self.drop_rate:.2f}")
        if self.dup_rate:
            parts.append(f"dup={self.dup_rate:.2f}")
        parts += [f"{kind}=v{i}" for i, kind in sorted(self.byzantine.items())]
        parts += [f"crash=v{c.node}@{c.at_ms}-{c.restart_ms}{'(torn)' if c.torn else ''}" for c in self.crashes]
        parts += [f"partition={sorted(p.side)}@{p.start_ms}-{p.end_ms}" for p in self.partitions]
        return " ".join(parts)


def make_scenario(seed: int, n: int, faults: tuple[str, ...]) -> Scenario:
    """Draw a scenario from ``seed``: the same arguments give the same scenario."""
    rng = random.Random(f"metanode-sim-scenario/{seed}/{n}/{','.join(faults)}")
    f = (n - 1) // 3
    scenario = Scenario(seed=seed, n=n, faults=faults)
    fault_end = rng.randint(3_000, 12_000) if faults else 0
    scenario.heal_ms = fault_end
    if "delay" in faults:
        scenario.max_delay_ms = rng.choice((20, 100, 300))
    if "drop" in faults and rng.random() < 0.7:
        scenario.drop_rate = rng.choice((0.05, 0.15, 0.3))
    if "dup" in faults and rng.random() < 0.7:
        scenario.dup_rate = rng.choice((0.05, 0.2))
    byzantine_kinds = [k for k in BYZANTINE_FAULTS if k in faults]
    if byzantine_kinds and f:
        count = rng.randint(0, f) if len(faults) > 1 else f
        for index in rng.sample(range(n), count):
            scenario.byzantine[index] = rng.choice(byzantine_kinds)
        twins = [i for i, k in scenario.byzantine.items() if k == "shared-key"]
        for extra in twins[1:]:  # one shared-key pair at most
            scenario.byzantine[extra] = "silent" if "silent" in faults else "equivocate"
            if scenario.byzantine[extra] not in faults:
                del scenario.byzantine[extra]
    if "crash" in faults:
        correct = [i for i in range(n) if i not in scenario.byzantine]
        for node in rng.sample(correct, rng.randint(0, min(2, len(correct)))):
            at = rng.randint(200, max(300, fault_end - 600))
            restart = rng.randint(at + 100, max(at + 200, fault_end))
            scenario.crashes.append(Crash(node, at, min(restart, fault_end), rng.random() < 0.5))
    if "partition" in faults:
        processes = n + (1 if scenario.twin_of is not None else 0)
        for _ in range(rng.randint(0, 2)):
            start = rng.randint(0, max(1, fault_end - 500))
            end = rng.randint(start + 200, max(start + 300, fault_end))
            side = frozenset(rng.sample(range(processes), rng.randint(1, processes - 1)))
            scenario.partitions.append(Partition(start, min(end, fault_end), side))
    processes = n + (1 if scenario.twin_of is not None else 0)
    scenario.skew_ms = [rng.randint(-200, 200) for _ in range(processes)]
    return scenario
