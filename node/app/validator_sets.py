"""Validator set changes in the chain state: which set decides which block.

The genesis validators decide blocks until a vote changes the set. A
governance proposal ``add_validator`` or ``remove_validator`` (``key``: a
32-byte Ed25519 public key; :mod:`node.app.governance`) that is executed
while block ``H`` is applied fixes the set that decides blocks from
``H + ACTIVATION_DELAY`` on. That is CometBFT's rule: the state after block
``h`` fixes the set of ``h + 2``, so the header of ``h + 1`` can commit to the
set of the block after it (``next_validators_hash``) without speculative
execution, and the set of every height up to (last applied) + 2 is known.

Stored in ``state_validator_sets``: one row per height from which a new set
decides (``from_height``, the sorted keys as a CBOR list, the height that
executed the change and its proposal id); the genesis set has no row. Two
changes executed in one block leave one row: the later one builds on the
set the earlier one made.

A change is refused (the proposal, or a vote that would execute it) when it
would change nothing or break the set:

* ``add_validator`` of a key that is a validator, or that a change already
  executed makes one (from a later height);
* ``remove_validator`` of a key that is not a validator, or that a change
  already executed removes;
* a removal that would leave no validator;
* an addition beyond ``MAX_VALIDATORS`` (256, the genesis bound).

Validator changes always go by vote, whatever the admission policies.

:class:`ValidatorHistory` keeps the whole history in memory (a few entries):
the consensus core asks for the set of every height, so the answer must not
cost a query. The state machine reloads it after each block that executed a
change, and after a reset.
"""

from __future__ import annotations

import bisect
from typing import Any

import duckdb

from node.base.codec import decode, encode, to_hex
from node.base.keys import peer_id_from_public_key
from node.consensus.genesis_schema import MAX_VALIDATORS
from node.consensus.validators import ACTIVATION_DELAY

ADD_VALIDATOR = "add_validator"
REMOVE_VALIDATOR = "remove_validator"
# validator change kind -> whether the key is a validator after execution
VALIDATOR_CHANGES: dict[str, bool] = {ADD_VALIDATOR: True, REMOVE_VALIDATOR: False}

Keys = tuple[bytes, ...]


def activation_height(executed_height: int) -> int:
    """The first block a set changed while applying block ``executed_height`` decides."""
    return executed_height + ACTIVATION_DELAY


class ValidatorHistory:
    """Every validator set of the chain with the height it decides from, oldest first.

    The first entry is ``(0, genesis keys)``. Deterministic: it is read from
    the state tables only (:meth:`load`)."""

    def __init__(self, genesis_keys: Keys) -> None:
        self.genesis_keys: Keys = tuple(sorted(genesis_keys))
        self._entries: list[tuple[int, Keys]] = [(0, self.genesis_keys)]
        self._starts: list[int] = [0]

    def load(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Re-read the stored changes (after a block that executed one, or a reset)."""
        entries = [(0, self.genesis_keys)]
        for from_height, keys in conn.execute(
            "SELECT from_height, keys FROM state_validator_sets ORDER BY from_height"
        ).fetchall():
            entries.append((int(from_height), _decode_keys(keys)))
        self._entries = entries
        self._starts = [start for start, _ in entries]

    def keys_at(self, height: int) -> Keys:
        """The sorted keys of the set that decides block ``height``.

        Exact for every height up to the last applied one + ``ACTIVATION_DELAY``;
        beyond that it is the last set known, which later blocks may still change."""
        if type(height) is not int or height < 0:
            raise ValueError(f"height must be a non-negative integer, got {height!r}")
        return self._entries[bisect.bisect_right(self._starts, height) - 1][1]

    def entries(self) -> list[tuple[int, Keys]]:
        """``(from_height, sorted keys)`` of every set, oldest first; the first is ``(0, genesis keys)``."""
        return list(self._entries)


def _decode_keys(blob: Any) -> Keys:
    return tuple(bytes(key) for key in decode(bytes(blob)))


def _sets_after(conn: duckdb.DuckDBPyConnection, height: int) -> list[tuple[int, Keys]]:
    """The stored sets that start after ``height`` (changes executed, not in force yet), oldest first."""
    return [(int(start), _decode_keys(keys)) for start, keys in conn.execute(
        "SELECT from_height, keys FROM state_validator_sets WHERE from_height > ? ORDER BY from_height", [height]
    ).fetchall()]


def _latest_keys(conn: duckdb.DuckDBPyConnection, genesis_keys: Keys) -> Keys:
    row = conn.execute("SELECT keys FROM state_validator_sets ORDER BY from_height DESC LIMIT 1").fetchone()
    return genesis_keys if row is None else _decode_keys(row[0])


def change_problem(conn: duckdb.DuckDBPyConnection, current: Keys, height: int, kind: str, key: bytes) -> str | None:
    """Why executing the validator change ``kind`` of ``key`` at block ``height`` is refused, or None.

    ``current`` is the set deciding block ``height``; changes executed
    earlier (in force from a later height, this block's included) count too."""
    future = _sets_after(conn, height)
    latest = future[-1][1] if future else current
    name = peer_id_from_public_key(key)
    adding = VALIDATOR_CHANGES[kind]
    if (key in latest) == adding:
        if (key in current) == adding:
            return f"action.key: {name} {'is already' if adding else 'is not'} a validator"
        verb = "becomes a validator" if adding else "stops being a validator"
        return f"action.key: {name} {verb} at height {_settled_from(future, key, adding)} (a change already executed)"
    if not adding and len(latest) == 1:
        return f"action.key: removing {name} would leave no validator"
    if adding and len(latest) >= MAX_VALIDATORS:
        return (f"action.kind: {kind}: the validator set is full ({MAX_VALIDATORS} validators, "
                "the most a set may have)")
    return None


def _settled_from(future: list[tuple[int, Keys]], key: bytes, member: bool) -> int:
    """The first future height from which ``key``'s membership is ``member`` for good."""
    start = future[-1][0]
    for from_height, keys in reversed(future[:-1]):
        if (key in keys) != member:
            break
        start = from_height
    return start


def record_change(conn: duckdb.DuckDBPyConnection, genesis_keys: Keys, executed_height: int,
                  proposal_id: bytes, kind: str, key: bytes) -> int:
    """Write the set that an executed change makes (on top of every earlier
    change); return the height it decides from."""
    keys = set(_latest_keys(conn, genesis_keys))
    if VALIDATOR_CHANGES[kind]:
        keys.add(key)
    else:
        keys.discard(key)
    start = activation_height(executed_height)
    conn.execute(
        "INSERT OR REPLACE INTO state_validator_sets VALUES (?, ?, ?, ?)",
        [start, encode(sorted(keys)), executed_height, proposal_id],
    )
    return start


def validator_json(key: bytes) -> dict[str, Any]:
    return {"key": to_hex(key), "peer_id": peer_id_from_public_key(key)}


def changes_view(conn: duckdb.DuckDBPyConnection, genesis_keys: Keys) -> list[dict[str, Any]]:
    """Every executed change, oldest first: the height it decides from, the
    block that executed it, its proposal, the keys it added and removed."""
    changes = []
    previous = set(genesis_keys)
    for from_height, keys, executed, proposal_id in conn.execute(
        "SELECT from_height, keys, executed_height, proposal_id FROM state_validator_sets ORDER BY from_height"
    ).fetchall():
        now = set(_decode_keys(keys))
        changes.append({
            "from_height": int(from_height), "executed_height": int(executed), "proposal_id": to_hex(bytes(proposal_id)),
            "added": [validator_json(k) for k in sorted(now - previous)],
            "removed": [validator_json(k) for k in sorted(previous - now)],
        })
        previous = now
    return changes
