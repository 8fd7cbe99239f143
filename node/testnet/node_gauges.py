"""Gauges that read a node from outside: /proc for its process, JSON-RPC for its chain.

The adversary test and bench (tests/test_adversary.py, bench/adversary.py)
watch the attacked node with these: descriptors, resident memory and
threads must stay bounded, the height must go on, honest calls must answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trio

from node.p2p.client import call_node


@dataclass(frozen=True)
class ProcessSample:
    """One look at a node's process from outside (/proc)."""

    pid: int
    alive: bool
    fds: int = 0
    rss_kb: int = 0
    threads: int = 0


def sample_process(pid: int) -> ProcessSample:
    """Descriptors, resident memory and threads of ``pid``; ``alive`` False
    (and zeros) when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        if status.get("State", "").strip().startswith("Z"):
            return ProcessSample(pid, False)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return ProcessSample(pid, False)
    return ProcessSample(pid, True, fds=fds, rss_kb=int(status["VmRSS"].split()[0]),
                         threads=int(status["Threads"].strip()))


async def chain_height(address: str, *, timeout: float = 5.0) -> int:
    """The node's committed height, over JSON-RPC."""
    head = await call_node(address, "chain_head", timeout=timeout)
    return int(head["height"])


async def timed_call(address: str, method: str = "node_status", *, timeout: float = 2.0) -> float:
    """One honest call on a fresh connection, as ``metanode rpc`` makes it;
    returns its latency in seconds (raises what the call raised)."""
    started = trio.current_time()
    await call_node(address, method, timeout=timeout)
    return trio.current_time() - started
