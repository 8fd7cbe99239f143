"""Receipts enter the log through transactions, every header seals the log's
size and root, and a bundle fetched from a running node verifies offline."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import trio

from node.base.keys import Identity
from node.base.merkle import EMPTY_ROOT
from node.consensus.genesis import Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from node.receipts.envelope import build_receipt
from tests.support import running_daemon, write_node_config

CHAIN = "receipts-on-chain"


def api_call_receipt(issuer: Identity, n: int, prev: bytes | None):
    return build_receipt(
        issuer, "api.call", height=0, subject=hashlib.sha256(b"request %d" % n).digest(), prev=prev,
        fields={"method": "analytics_submit", "tenant": issuer.public_key, "outcome": "accepted", "code": 0,
                "response": hashlib.sha256(b"response %d" % n).digest()},
    )


def metanode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=120)


async def test_receipt_sealed_into_a_block_verifies_offline(node_dir):
    validator = Identity.from_label("test-node-v")
    genesis_path = node_dir / "genesis.toml"
    Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(validator.public_key,),
            block_period_ms=100, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis_path)
    cfg = write_node_config(node_dir, "v", roles=["validator"], genesis=genesis_path)
    gateway = Identity.from_label("gateway-issuer")
    first = api_call_receipt(gateway, 1, None)
    second = api_call_receipt(gateway, 2, first.id)
    batch = sign_tx(gateway, chain_id=CHAIN, nonce=0, tx_type="receipts.batch",
                    payload={"receipts": [first.envelope, second.envelope]})
    async with running_daemon(cfg) as daemon:
        address = daemon.listen_addrs()[0]
        async with connect_to_node(address) as rpc:
            with trio.fail_after(10):
                while (await rpc.call("chain_head"))["height"] < 1:
                    await trio.sleep(0.05)
            before = await rpc.call("chain_block", {"height": 1})
            assert (before["receipts_size"], before["receipts_root"]) == (0, EMPTY_ROOT.hex())
            done = await rpc.call("tx_submit", {"tx": batch.encoded.hex(), "mode": "commit", "timeout": 20})
            sealed = await rpc.call("chain_block", {"height": done["height"]})
            assert sealed["receipts_size"] == 2 and sealed["receipts_root"] != EMPTY_ROOT.hex()
            got = await rpc.call("receipt_get", {"id": second.id.hex()})
            assert got["index"] == 1 and got["envelope"] == second.envelope.hex()
            with trio.fail_after(10):
                while (await rpc.call("chain_head"))["height"] <= done["height"]:
                    await trio.sleep(0.05)
            after = await rpc.call("chain_block", {"height": done["height"] + 1})
            assert (after["receipts_size"], after["receipts_root"]) == (2, sealed["receipts_root"])  # carried forward
            consistency = await rpc.call("receipt_consistency", {"size1": 1, "size2": 2})
            assert consistency["proof"]
        # The CLI, as a user would: fetch a bundle over p2p, verify it with no network.
        out = node_dir / "second.bundle"
        fetched = await trio.to_thread.run_sync(lambda: metanode("receipt", "bundle", second.id.hex(), "--node", address, "--out", str(out)))
        assert fetched.returncode == 0, fetched.stderr
    verified = metanode("receipt", "verify", "--bundle", str(out), "--genesis", str(genesis_path))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    tampered = bytearray(out.read_bytes())
    tampered[len(tampered) // 2] ^= 0x01
    bad = node_dir / "tampered.bundle"
    bad.write_bytes(bytes(tampered))
    refused = metanode("receipt", "verify", "--bundle", str(bad), "--genesis", str(genesis_path))
    assert refused.returncode >= 10
    assert (refused.stdout + refused.stderr).startswith("invalid:")
    other_genesis = node_dir / "other.toml"
    Genesis(chain_id="another-chain", genesis_time_ms=0, validators=(validator.public_key,)).write(other_genesis)
    wrong_chain = metanode("receipt", "verify", "--bundle", str(out), "--genesis", str(other_genesis))
    assert wrong_chain.returncode == 14
