"""The signing gate (node/consensus/gate.py): when a validator without its
safety state may sign again."""

from __future__ import annotations

import pytest

from node.consensus.gate import AWAIT_SYNC, OPEN, WATCHING, SigningGate


def gate(**overrides):
    fields = {"check_heights": 2, "has_safety_state": False, "unsafe_sign_immediately": False, **overrides}
    return SigningGate.at_start(**fields)


def test_a_safety_state_or_the_explicit_flag_signs_at_once():
    assert gate(has_safety_state=True).open
    flagged = gate(unsafe_sign_immediately=True)
    assert flagged.open and "unsafe-sign-immediately" in flagged.reason


def test_without_safety_state_it_waits_for_a_peer_then_watches_the_check_heights():
    g = gate(check_heights=2)
    assert g.state == AWAIT_SYNC
    assert not g.synced(40, peer_answered=False, alone=False)  # our own store is not the network's head
    assert g.state == AWAIT_SYNC
    assert not g.synced(41, peer_answered=True, alone=False)
    assert g.state == WATCHING and g.status()["signs_from_height"] == 44 and g.status()["synced_head"] == 41
    assert "41" in g.reason and "double_sign_check_height = 2" in g.reason
    assert not g.finalized(42)
    assert g.finalized(43) and g.state == OPEN
    assert not g.finalized(44)  # opens once


def test_a_chain_at_its_genesis_has_nothing_to_double_sign():
    g = gate()
    assert g.synced(0, peer_answered=True, alone=False) and g.open
    alone = gate()
    assert alone.synced(0, peer_answered=False, alone=True) and alone.open  # a one-validator chain is its own head


def test_zero_check_heights_signs_once_synced_and_negative_is_refused():
    g = gate(check_heights=0)
    assert g.synced(7, peer_answered=True, alone=False) and g.open
    with pytest.raises(ValueError):
        gate(check_heights=-1)


def test_a_key_that_sealed_none_of_the_recent_blocks_signs_once_synced():
    """CometBFT's double_sign_check_height: a validator whose key is in none of the last
    check-height blocks' seals was not taking part (it joined late, or is new): it signs
    after syncing instead of watching, or a chain that needs its vote would stall for good."""
    g = SigningGate.at_start(check_heights=2, has_safety_state=False, unsafe_sign_immediately=False)
    assert g.synced(7, peer_answered=True, alone=False, sealed_recently=False) and g.open
    assert "sealed none" in g.status()["reason"]
    watched = SigningGate.at_start(check_heights=2, has_safety_state=False, unsafe_sign_immediately=False)
    assert not watched.synced(7, peer_answered=True, alone=False, sealed_recently=True)
    assert watched.status()["signs_from_height"] == 10
