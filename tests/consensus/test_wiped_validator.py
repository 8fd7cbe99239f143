"""Double-sign protection survives a wiped data directory (issue 13, case 11).

Four real validators. With one of them (node2) stopped, so that the victim's
seal is in every block, the victim is stopped, its data directory deleted,
and it is restarted with its old key (the chain stalls meanwhile, so the
check window holds its seals however slow the restart): it syncs, finds its
seals, and once node2 is back does not sign (its commit seals are in no
node's copy of the blocks) until ``double_sign_check_height`` heights have
been finalised without it, and then signs again. (The seal check's use of
every peer's copy is tested deterministically in test_gate_peer_copies.py.)
Restarted the same way with ``--unsafe-sign-immediately`` it signs at once. (A brand-new
testnet starting at all shows that a chain at height 0 needs no flag.)
"""

from __future__ import annotations

import os
import shutil
import signal
import sys

import pytest
import trio

from node.p2p.client import call_node
from node.testnet import layout, processes
from tests.support import wait_until

pytestmark = pytest.mark.timeout(420)
CHECK_HEIGHTS = 20  # the heights it watches (the chain stalls during its restart: its seals stay in the window)


def rpc(address: str, method: str, params: dict | None = None):
    return trio.run(lambda: call_node(address, method, params, timeout=10))


def height(address: str) -> int:
    return rpc(address, "chain_head")["height"]


def signing(address: str) -> dict:
    return rpc(address, "node_status")["services"]["consensus"]["signing"]


def sealed_by(addresses: list[str], h: int, key: str) -> bool:
    """Whether ``key``'s commit seal is in any node's copy of block ``h``."""
    return any(key in {s["validator"] for s in rpc(a, "chain_block", {"height": h})["seals"]} for a in addresses)


def took_part(addresses: list[str], h: int, key: str) -> bool:
    """Whether ``key`` proposed block ``h`` or sealed it in one of these nodes' copies."""
    return rpc(addresses[0], "chain_block", {"height": h})["proposer"] == key or sealed_by(addresses, h, key)


def took_part_lately(addresses: list[str], key: str) -> bool:
    """Whether ``key`` took part (see :func:`took_part`) in one of the last 4 blocks."""
    head = height(addresses[0])
    return any(took_part(addresses, h, key) for h in range(max(1, head - 3), head + 1))


def stop(directory, name: str) -> None:
    pid = processes.running_pid(directory, name)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: processes.running_pid(directory, name) is None, 20, what=f"{name} to stop")
    processes.pid_file(directory, name).unlink(missing_ok=True)


def stop_and_wipe(directory, name: str) -> None:
    stop(directory, name)
    shutil.rmtree(directory / f"{name}-data")  # the safety file goes with it


def test_a_wiped_validator_signs_only_after_the_check_heights_unless_told_otherwise(tmp_path):
    directory = tmp_path / "net"
    plans = layout.plan_testnet(4, seed="wiped-validator")
    layout.write_testnet(directory, plans)
    config = directory / "node3.toml"
    config.write_text(config.read_text().replace("[consensus]\n", f"[consensus]\ndouble_sign_check_height = {CHECK_HEIGHTS}\n"))
    addresses = [p.address for p in plans]
    victim, key = plans[3].address, plans[3].identity.public_key.hex()
    processes.up(directory)
    try:
        # A new chain at height 0 starts without any flag: every validator started without safety state.
        # (One that learnt the head only after the others had finalised a block sealed none of them: it signs too.)
        wait_until(lambda: all(height(a) >= 3 for a in addresses), 90, what="four validators finalising")
        wait_until(lambda: all(signing(a)["state"] == "open" for a in addresses), 60, what="all four signing")
        # With node2 stopped every quorum needs the victim, so its seal is in every copy of
        # the blocks from then on (a copy holds the first quorum its node collected, which
        # may otherwise lack it); with the victim stopped too the chain stalls, so the
        # check window still holds those blocks however long the restart takes under load.
        stop(directory, "node2")
        without_node2 = height(addresses[0])
        wait_until(lambda: height(addresses[0]) >= without_node2 + 2, 60, what="blocks sealed by the victim")
        assert took_part_lately(addresses[:2], key)
        stop_and_wipe(directory, "node3")
        processes.start_node(directory, "node3", "node3.toml")
        status = wait_until(lambda: signing(victim).get("synced_head"), 60, what="the wiped validator to sync")
        synced = signing(victim)["synced_head"]
        assert status and synced >= 3 and signing(victim)["state"] == "watching", signing(victim)
        processes.start_node(directory, "node2", "node2.toml")  # with its safety state: signs at once
        wait_until(lambda: signing(victim)["state"] == "open", 120, what="the check heights to pass")
        wait_until(lambda: min(height(a) for a in addresses) >= synced + CHECK_HEIGHTS + 12, 90, what="more blocks")
        for h in range(synced + 1, synced + CHECK_HEIGHTS + 1):
            assert not sealed_by(addresses, h, key), f"the wiped validator signed height {h} while watching"
        later = range(synced + CHECK_HEIGHTS + 1, synced + CHECK_HEIGHTS + 13)
        assert any(sealed_by(addresses, h, key) for h in later), "it never signed again"

        # Wiped again, with the explicit flag: it signs right after catching up.
        stop_and_wipe(directory, "node3")
        flagged = [sys.executable, "-m", "node", "daemon", "start", "--unsafe-sign-immediately", "--config"]
        processes.start_node(directory, "node3", "node3.toml", command=flagged)
        wait_until(lambda: "unsafe" in signing(victim)["reason"], 60, what="the flagged validator to start")
        caught_up = wait_until(lambda: height(victim) >= height(addresses[0]) - 1 and height(victim), 60, what="catch-up")
        wait_until(lambda: min(height(a) for a in addresses) >= caught_up + CHECK_HEIGHTS, 60, what="more blocks")
        assert any(sealed_by(addresses, h, key) for h in range(caught_up + 1, caught_up + CHECK_HEIGHTS + 1))
    finally:
        processes.down(directory)
