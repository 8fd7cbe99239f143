"""A dev chain whose validator set changes twice, with receipts sealed
before, between and after the changes (shared by the bundle tests).

Genesis: 4 validators. A newcomer is voted in (executed in block 2, the set
of 5 decides from block 4), then the first genesis validator in key order
is voted out (executed in block 5, the set of 4 decides from block 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
from receipt_samples import VALID_FIELDS

from node.base.keys import Identity
from node.receipts.chain import ReceiptIssuer
from node.receipts.devchain import DevChain, dev_genesis, dev_identities
from node.receipts.envelope import Receipt

VALIDATORS = dev_identities(4)
GENESIS = dev_genesis(VALIDATORS)
NEWCOMER = dev_identities(1, "set-change-newcomer")[0]
GROWN = [*VALIDATORS, NEWCOMER]
# The one voted out: the lowest genesis key, so the canonical quorums differ before and after.
LEAVER = min(VALIDATORS, key=lambda v: v.public_key)
SHRUNK = [v for v in GROWN if v is not LEAVER]


@dataclass
class ChangingChain:
    chain: DevChain
    first_change: int  # the height the set of 5 decides from
    second_change: int  # the height the shrunk set decides from
    before: Receipt  # sealed in block 1 by the genesis set
    between: Receipt  # sealed in block first_change by the set of 5
    after: Receipt  # sealed in block second_change by the shrunk set
    newcomer_before: Receipt  # by the newcomer, sealed before it was a validator
    newcomer_after: Receipt  # by the newcomer, sealed when it was one
    leaver_after: Receipt  # by the leaver, sealed after it left


def _receipt(issuer: ReceiptIssuer, height: int) -> Receipt:
    subject, fields = VALID_FIELDS["data.store"]
    return issuer.issue("data.store", height=height, subject=subject, fields=fields)


def grow_changing_chain(
    conn: duckdb.DuckDBPyConnection | None = None, *, seal_with_everyone: bool = False
) -> ChangingChain:
    """The chain above. ``seal_with_everyone``: every block sealed by its
    whole validator set (a node that gathered every seal) instead of the
    first quorum in key order."""
    chain = DevChain(GENESIS, list(VALIDATORS), conn if conn is not None else duckdb.connect())
    gateway = ReceiptIssuer(dev_identities(1, "set-change-gateway")[0])
    newcomer, leaver = ReceiptIssuer(NEWCOMER), ReceiptIssuer(LEAVER)
    by_key = {v.public_key: v for v in GROWN}

    def add(*receipts: Receipt) -> None:
        height = chain.tip.height + 1
        signers = None
        if seal_with_everyone:
            signers = [by_key[key] for key in chain.validator_set_at(height).keys]
        chain.add_block(list(receipts), signers=signers)

    before, newcomer_before = _receipt(gateway, 1), _receipt(newcomer, 1)
    add(before, newcomer_before)  # block 1
    first = chain.change_validators(GROWN)  # "executed" in block 2
    while chain.tip.height < first - 1:
        add()
    between, newcomer_after = _receipt(gateway, first), _receipt(newcomer, first)
    add(between, newcomer_after)  # block `first`, sealed by the set of 5
    second = chain.change_validators(SHRUNK)
    while chain.tip.height < second - 1:
        add()
    after, leaver_after = _receipt(gateway, second), _receipt(leaver, second)
    add(after, leaver_after)
    return ChangingChain(chain, first, second, before, between, after, newcomer_before, newcomer_after, leaver_after)


def identities_by_key() -> dict[bytes, Identity]:
    return {v.public_key: v for v in GROWN}
