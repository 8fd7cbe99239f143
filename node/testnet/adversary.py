"""A bounded attacker for one node: every attack, at the sizes issue 13 asks for.

Issue 13 asks for a node that treats every stranger as hostile. These
modules are the stranger: each attack opens a bounded number of connections
or streams against one node address, holds them for a given time (or until
``stop`` is set), closes everything it opened, and returns an
:class:`~node.testnet.attack_kit.AttackReport` of what it saw (accepted,
refused, closed by the node, answers by error code). The process-level test
(tests/test_adversary.py) and the benchmark (bench/adversary.py) share
them, so the attack measured is the attack tested:

- node/testnet/attack_kit.py: the report, the target, the hold, the attacker's source addresses;
- node/testnet/attack_hosts.py: libp2p attackers, one fresh identity per connection;
- node/testnet/attack_connections.py: silent TCP and authenticated connections (cases 1, 2);
- node/testnet/attack_streams.py: idle and slowloris streams (cases 3, 4);
- node/testnet/attack_rpc.py: garbage frames, batch floods, vanishing subscribers (cases 5 to 7);
- node/testnet/node_gauges.py: the node read from outside (/proc, JSON-RPC).

This module is their registry: :func:`attacks` gives every attack at a
:class:`Scale`, under one name each.

Loopback only, by construction of its callers: every attack takes the
address of a node of a local testnet. Nothing here patches the node; the
attacks are bytes on real sockets, as a hostile client would send them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from node.p2p.framing import DEFAULT_MAX_FRAME
from node.testnet.attack_connections import authenticated_connections, silent_tcp
from node.testnet.attack_kit import AttackReport
from node.testnet.attack_rpc import batch_flood, garbage_frames, vanishing_subscribers
from node.testnet.attack_streams import idle_streams, slowloris

AttackFn = Callable[[str, trio.Event], Awaitable[AttackReport]]


@dataclass(frozen=True)
class Scale:
    """How hard each attack pushes. :data:`ISSUE_SCALE` is issue 13's
    acceptance load; benches shrink it for smoke runs."""

    silent_tcp: int = 2000
    authenticated: int = 300
    idle_streams: int = 3000
    idle_per_connection: int = 1000
    slowloris: int = 300
    slowloris_per_connection: int = 100
    garbage: int = 60
    batch_frames: int = 40
    subscribers: int = 40
    max_frame: int = DEFAULT_MAX_FRAME


ISSUE_SCALE = Scale()


def attacks(scale: Scale, hold_s: float) -> dict[str, AttackFn]:
    """Every attack at ``scale``, each held ``hold_s`` (or until its stop event)."""
    return {
        "silent_tcp": lambda a, s: silent_tcp(a, scale.silent_tcp, hold_s=hold_s, stop=s),
        "authenticated": lambda a, s: authenticated_connections(a, scale.authenticated, hold_s=hold_s, stop=s),
        "idle_streams": lambda a, s: idle_streams(a, scale.idle_streams, per_connection=scale.idle_per_connection,
                                                  hold_s=hold_s, stop=s),
        "slowloris": lambda a, s: slowloris(a, scale.slowloris, per_connection=scale.slowloris_per_connection,
                                            hold_s=hold_s, stop=s),
        "garbage": lambda a, s: garbage_frames(a, scale.garbage, max_frame=scale.max_frame, stop=s),
        "batch_flood": lambda a, s: batch_flood(a, scale.batch_frames, stop=s),
        "vanishing_subscribers": lambda a, s: vanishing_subscribers(a, scale.subscribers, stop=s),
    }
