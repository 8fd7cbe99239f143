"""A receipt's claimed height is checked against the block that carries it: a
receipt names the height its issuer had finalised, so it is below its block.
The block's log leaves out the receipts of a transaction that breaks this, and
the state refuses that transaction with the reason, so log and state agree."""

from __future__ import annotations

import duckdb

from node.app.chain_app import ChainApplication
from node.app.policy import Governance
from node.consensus.store import ChainStore
from node.receipts.envelope import build_receipt
from tests.services.test_state_support import ALICE, STORAGE, Chain, content_digest

GOV = Governance(validators=(STORAGE.public_key,))


def data_store(height: int, name: str, prev: bytes | None = None):
    return build_receipt(STORAGE, "data.store", height=height, subject=content_digest(name), prev=prev,
                         fields={"content": "dataset", "tenant": ALICE.public_key, "size": 1, "replicas": 1})


def test_a_receipt_claiming_its_own_block_or_later_is_neither_logged_nor_applied():
    conn = duckdb.connect(":memory:")
    app = ChainApplication(conn, ChainStore(conn, first_height=1, first_parent=b"\0" * 32), governance=GOV)
    chain = Chain(conn, machine=app.state)
    chain.block(chain.register_node(STORAGE, capacity=0, roles=["storage"]))
    chain.empty_blocks(2)
    height = app.state.next_height()  # the block the batches go into
    honest = chain.tx(STORAGE, "receipts.batch", {"receipts": [data_store(height - 1, "honest").envelope]})
    future = chain.tx(STORAGE, "receipts.batch", {"receipts": [data_store(height, "future").envelope]})
    far = chain.tx(STORAGE, "receipts.batch", {"receipts": [data_store(height + 100, "far").envelope]})

    logged = app.receipts_in([honest.encoded, future.encoded, far.encoded], height)
    assert [r.height for r in logged] == [height - 1]
    # The same transactions one block later: the first claim is now in the past.
    assert [r.height for r in app.receipts_in([future.encoded], height + 1)] == [height]

    effects = chain.block(honest, future, far)
    reasons = {r.tx_hash: r.reason for r in effects.rejected}
    assert honest.hash not in reasons
    assert reasons[future.hash] == (f"receipt {data_store(height, 'future').id.hex()} claims height {height}, but the "
                                    f"block carrying it is {height}: a receipt names a height its issuer had already finalised")
    assert f"claims height {height + 100}" in reasons[far.hash]
