"""Transaction checks: everything but chain state (:func:`check_tx`), and a
proposed block's transactions in order, nonces included (:func:`check_block_txs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from node.base.codec import to_hex
from node.consensus.tx import Transaction, TxError, TxErrorCode, TxTypeRegistry, decode_tx, verify_signature
from node.consensus.tx_caches import DecodedTxCache, SignatureCache


def check_tx(
    tx: Transaction,
    *,
    chain_id: str,
    registry: TxTypeRegistry,
    signatures: SignatureCache | None = None,
) -> None:
    """Everything about a transaction that does not depend on chain state.

    Checks the chain id, the type, the signature, then the payload hook
    (cheapest first); raises TxError with the matching code.
    """
    if tx.chain_id != chain_id:
        raise TxError(
            TxErrorCode.WRONG_CHAIN, f"transaction is for chain {tx.chain_id!r}, not {chain_id!r}"
        )
    if tx.type not in registry:
        raise TxError(TxErrorCode.UNKNOWN_TYPE, f"transaction type {tx.type!r} is not registered")
    valid = signatures.verify(tx) if signatures is not None else verify_signature(tx)
    if not valid:
        raise TxError(
            TxErrorCode.BAD_SIGNATURE,
            f"signature does not verify for sender {to_hex(tx.sender)}",
        )
    registry.check(tx)


def check_block_txs(
    txs: Sequence[bytes],
    *,
    chain_id: str,
    registry: TxTypeRegistry,
    committed_nonce: Callable[[bytes], int],
    signatures: SignatureCache | None = None,
    tx_cache: DecodedTxCache | None = None,
) -> list[Transaction]:
    """Validate the transactions of a proposed block, in order.

    Every transaction must decode, pass :func:`check_tx`, and carry exactly
    its sender's next nonce (``committed_nonce(sender)`` before the block,
    plus the sender's earlier transactions in this block). This is the rule
    :meth:`ChainStore.append_block` enforces too, so a block passing it can
    always be stored. Raises TxError with ``index`` set to the offending tx.
    With ``tx_cache``, transactions are decoded through it, and each one that
    passes :func:`check_tx` is kept there for the store and the application.
    """
    decoded: list[Transaction] = []
    expected: dict[bytes, int] = {}
    for index, raw in enumerate(txs):
        try:
            tx = tx_cache.decode(raw, keep=False) if tx_cache is not None else decode_tx(raw)
            check_tx(tx, chain_id=chain_id, registry=registry, signatures=signatures)
            if tx_cache is not None:
                tx_cache.add(tx)
        except TxError as exc:
            raise TxError(exc.code, f"tx {index}: {exc.message}", index=index) from None
        want = expected.get(tx.sender)
        if want is None:
            want = committed_nonce(tx.sender)
        if tx.nonce != want:
            raise TxError(
                TxErrorCode.BAD_NONCE,
                f"tx {index}: nonce {tx.nonce} of sender {to_hex(tx.sender)} "
                f"is not the next nonce {want}",
                index=index,
            )
        expected[tx.sender] = want + 1
        decoded.append(tx)
    return decoded


def next_nonces_after(txs: Iterable[Transaction]) -> dict[bytes, int]:
    """Each sender's next nonce once ``txs`` (already validated, in order) are committed."""
    result: dict[bytes, int] = {}
    for tx in txs:
        result[tx.sender] = max(result.get(tx.sender, 0), tx.nonce + 1)
    return result
