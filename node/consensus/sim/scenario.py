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
* ``set-change``: in about half of the runs, one to three validator-set
  changes (add a spare, remove a validator, re-add a removed one), each a
  transaction the world submits at a seeded time before the heal; the chain
  decides when it executes and it decides blocks from ``ACTIVATION_DELAY``
  heights later. Spares (one or two processes outside the genesis set) follow
  the chain from the start. A removed correct validator keeps following, or
  stops once the chain has passed its last height; a removed Byzantine one
  keeps voting: it signs a PREPARE and a COMMIT (with a real seal) for every
  block it sees proposed or voted for at heights it no longer decides. Every set the plan passes through
  keeps ``n >= 3b + 1`` for the run's b Byzantine validators.

All faults end by ``heal_ms``; the liveness claim starts there (and, with set
changes, lasts until the chain finalises with the last set).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from node.consensus.sim.network import WanModel

NETWORK_FAULTS = ("delay", "drop", "dup", "partition", "crash")
BYZANTINE_FAULTS = ("silent", "equivocate", "shared-key", "refuser")
SET_CHANGE = "set-change"
ALL_FAULTS = NETWORK_FAULTS + BYZANTINE_FAULTS + (SET_CHANGE,)
SET_CHANGE_SHARE = 0.5  # of the runs whose faults include set-change, when other faults are drawn too
MAX_SPARES = 2


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
class SetChange:
    """One validator-set change the world submits as a transaction at ``at_ms``.

    ``member`` is an identity index: below n a genesis validator, from n on a
    spare. ``stop``: the removed member's processes stop once their own chain
    is past its last height as a validator (a correct one; a Byzantine one
    keeps voting instead)."""

    at_ms: int
    action: str  # "add" | "remove"
    member: int
    stop: bool = False


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
    spares: int = 0  # processes outside the genesis set, identities n .. n+spares-1
    changes: list[SetChange] = field(default_factory=list)  # in submission order
    wan: WanModel | None = None  # a wide-area link and CPU model (network.py) instead of max_delay_ms

    @property
    def twin_of(self) -> int | None:
        """The validator index whose key a second process shares, if any."""
        for index, kind in self.byzantine.items():
            if kind == "shared-key":
                return index
        return None

    @property
    def processes(self) -> int:
        return self.n + (1 if self.twin_of is not None else 0) + self.spares

    @property
    def members(self) -> int:
        """Identities that are, or may become, validators: genesis ones and spares."""
        return self.n + self.spares

    def pids_of(self, member: int) -> list[int]:
        """The processes that run ``member``'s key: genesis validator i is
        process i (and its twin, process n, under shared-key); spares follow."""
        if member < self.n:
            return [member] + ([self.n] if member == self.twin_of else [])
        return [member + (1 if self.twin_of is not None else 0)]

    def planned_sets(self) -> list[frozenset[int]]:
        """The member sets the plan passes through, genesis first: each change
        applied in submission order (the chain keeps that order, so every
        height's set is one of these)."""
        current = frozenset(range(self.n))
        sets = [current]
        for change in self.changes:
            current = current | {change.member} if change.action == "add" else current - {change.member}
            sets.append(current)
        return sets

    def describe(self) -> str:
        parts = [f"heal={self.heal_ms}ms", self.wan.describe() if self.wan else f"delay<={self.max_delay_ms}ms"]
        if self.drop_rate:
            parts.append(f"drop={self.drop_rate:.2f}")
        if self.dup_rate:
            parts.append(f"dup={self.dup_rate:.2f}")
        parts += [f"{kind}=v{i}" for i, kind in sorted(self.byzantine.items())]
        parts += [f"crash=v{c.node}@{c.at_ms}-{c.restart_ms}{'(torn)' if c.torn else ''}" for c in self.crashes]
        parts += [f"partition={sorted(p.side)}@{p.start_ms}-{p.end_ms}" for p in self.partitions]
        if self.spares:
            parts.append(f"spares=v{self.n}..v{self.n + self.spares - 1}")
        parts += [f"{c.action}=v{c.member}@{c.at_ms}{'(stop)' if c.stop else ''}" for c in self.changes]
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
    if "partition" in faults and scenario.processes > 1:  # one process alone has no one to be cut from
        processes = n + (1 if scenario.twin_of is not None else 0)
        for _ in range(rng.randint(0, 2)):
            start = rng.randint(0, max(1, fault_end - 500))
            end = rng.randint(start + 200, max(start + 300, fault_end))
            side = frozenset(rng.sample(range(processes), rng.randint(1, processes - 1)))
            scenario.partitions.append(Partition(start, min(end, fault_end), side))
    processes = n + (1 if scenario.twin_of is not None else 0)
    scenario.skew_ms = [rng.randint(-200, 200) for _ in range(processes)]
    if SET_CHANGE in faults:
        _plan_set_changes(scenario, random.Random(f"metanode-sim-set-changes/{seed}/{n}/{','.join(faults)}"))
    return scenario


def _plan_set_changes(scenario: Scenario, rng: random.Random) -> None:
    """Draw spares and one to three changes that keep every set the plan
    passes through at ``3b + 1`` members or more (b: the run's Byzantine
    validators, counted as if none ever left), from a random stream of their
    own (so they never shift the draws of the other faults)."""
    if len(scenario.faults) > 1 and rng.random() >= SET_CHANGE_SHARE:
        return
    needed = 3 * len(scenario.byzantine) + 1
    scenario.spares = rng.randint(1, MAX_SPARES)
    scenario.skew_ms += [rng.randint(-200, 200) for _ in range(scenario.spares)]
    current = set(range(scenario.n))
    latest = max(scenario.heal_ms, 1_500)
    times = sorted(rng.randint(200, latest) for _ in range(rng.randint(1, 3)))
    for at_ms in times:
        addable = [i for i in range(scenario.members) if i not in current]
        removable = sorted(current) if len(current) - 1 >= needed else []
        if not addable and not removable:
            break
        if addable and (not removable or rng.random() < 0.5):
            member = rng.choice(addable)
            current.add(member)
            scenario.changes.append(SetChange(at_ms, "add", member))
        else:
            member = rng.choice(removable)
            current.discard(member)
            scenario.changes.append(SetChange(at_ms, "remove", member))
    for i, change in enumerate(scenario.changes):
        readded = any(c.member == change.member and c.action == "add" for c in scenario.changes[i + 1:])
        correct = change.member not in scenario.byzantine
        if change.action == "remove" and correct and not readded and rng.random() < 0.5:
            change.stop = True
