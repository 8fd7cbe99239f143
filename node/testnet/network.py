"""Which network a testnet run gets: the kernel bridge with netem, else the userspace TUN switch."""

from __future__ import annotations

from pathlib import Path

from node.testnet.netbase import netem_unavailable_reason
from node.testnet.netns import NetnsNetwork
from node.testnet.tunswitch import TunNetwork, tun_unavailable_reason


def link_emulation_unavailable_reason() -> str | None:
    """None when delay/loss can be emulated here (netem, else :mod:`node.testnet.tunswitch`); otherwise why not."""
    if (netem := netem_unavailable_reason()) is None:
        return None
    if (tun := tun_unavailable_reason()) is None:
        return None
    return f"{netem}; and the userspace switch cannot run either: {tun}"


def create_network(directory: Path, nodes: list[str], *, emulate_links: bool) -> NetnsNetwork | TunNetwork:
    """The veth bridge when no delay/loss is wanted or netem works here; else the TUN switch."""
    if not emulate_links or netem_unavailable_reason() is None:
        return NetnsNetwork.create(directory, nodes)
    return TunNetwork.create(directory, nodes)
