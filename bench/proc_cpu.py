"""CPU seconds of processes and their descendants, from Linux /proc.

Shared by the testnet benchmarks (consensus, jobs): each daemon's own user +
system time, and separately what its descendants used (cage fork servers and
the jobs they forked and reaped), so CPU can be charged to each node and role
and divided by the work done (committed transactions, verified jobs).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcCpu:
    ppid: int
    own: float  # utime + stime of the process itself
    reaped: float  # cutime + cstime: children it has waited for


def snapshot() -> dict[int, ProcCpu]:
    """Every process now: pid -> its parent and CPU seconds."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
        except OSError:  # it exited while we listed
            continue
        out[int(entry)] = ProcCpu(int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK,
                                  (int(fields[13]) + int(fields[14])) / TICK)
    return out


def split(snap: Mapping[int, ProcCpu], root: int) -> tuple[float, float]:
    """(own, below) seconds of ``root``: below is every live descendant's CPU plus
    what the root and they have reaped. A process that exits moves from a live
    descendant to its parent's reaped time, so the sum stays continuous."""
    if root not in snap:
        return 0.0, 0.0
    children: dict[int, list[int]] = {}
    for pid, p in snap.items():
        children.setdefault(p.ppid, []).append(pid)
    below, todo = snap[root].reaped, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        below += snap[pid].own + snap[pid].reaped
        todo.extend(children.get(pid, []))
    return snap[root].own, below


def machine() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of this machine since boot (steal: the hypervisor ran someone else)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4] - v[7]) / TICK, v[7] / TICK, sum(v) / TICK


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Window:
    """CPU used by named daemons (and their descendants) between construction and :meth:`stop`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.wall0, self.machine0, self.client0 = time.time(), machine(), self_cpu()
        snap = snapshot()
        self.start = {name: split(snap, pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, Any]:
        """Seconds per daemon ({name: {"own", "below"}}) and machine-wide cores over the window."""
        snap, wall = snapshot(), time.time() - self.wall0
        (busy0, steal0, total0), (busy, steal, total) = self.machine0, machine()
        nodes = {}
        for name, pid in self.pids.items():
            own, below = split(snap, pid)
            nodes[name] = {"own": own - self.start[name][0], "below": below - self.start[name][1]}
        own = sum(n["own"] for n in nodes.values())
        below = sum(n["below"] for n in nodes.values())
        client, busy = self_cpu() - self.client0, busy - busy0
        return {"wall_s": wall, "nodes": nodes, "cores": (total - total0) / wall, "machine": busy / wall,
                "daemons": own / wall, "cages": below / wall, "bench_client": client / wall,
                "other": max(0.0, busy - own - below - client) / wall, "steal": (steal - steal0) / wall}


def per_unit(usage: Mapping[str, Any], roles: Mapping[str, Sequence[str]], units: float,
             idle: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """CPU seconds per unit of work (a committed tx, a verified job) for each daemon and
    for each set of roles the daemons hold (mean per daemon): the daemon itself, and its
    descendants (cage workers) apart, so that the cost of each role can be scaled to N machines.
    ``idle``: a window of the same daemons with no load; then each daemon's idle floor (cores)
    and its marginal CPU per unit (the window's CPU less the floor over its length) are given too."""
    n = units or float("nan")
    nodes: dict[str, dict[str, Any]] = {}
    for name, u in usage["nodes"].items():
        node = {"roles": list(roles[name]), "daemon_s": u["own"] / n, "children_s": u["below"] / n}
        if idle is not None:
            floor = (idle["nodes"][name]["own"] + idle["nodes"][name]["below"]) / idle["wall_s"]
            node["idle_cores"] = floor
            node["marginal_s"] = (u["own"] + u["below"] - floor * usage["wall_s"]) / n
        nodes[name] = node
    groups: dict[str, list[dict[str, Any]]] = {}
    for node in nodes.values():
        groups.setdefault("+".join(node["roles"]), []).append(node)
    by_roles = {key: {"daemons": len(members),
                      **{k: sum(m[k] for m in members) / len(members)
                         for k in ("daemon_s", "children_s", "idle_cores", "marginal_s") if k in members[0]}}
                for key, members in sorted(groups.items())}
    total = sum(m["daemon_s"] + m["children_s"] for m in nodes.values())
    out = {"units": units, "wall_s": usage["wall_s"], "total_s": total, "nodes": nodes, "by_roles": by_roles}
    if idle is not None:
        out["marginal_s"] = sum(m["marginal_s"] for m in nodes.values())
        out["idle_cores"] = sum(m["idle_cores"] for m in nodes.values())
    return out
