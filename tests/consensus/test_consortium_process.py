"""A consortium that changes while it works (issue 15's done-when), with five real daemons.

Four validators and one more node start under ``by-vote`` node admission
with the fifth node left out. Under a steady load of transactions:

1. the fifth node may not register as a processing node, so it gets no
   assignments; the validators vote it in (``metanode members``), it
   registers and a job is assigned to it;
2. the validators vote it in as a validator (``metanode validators``): the
   set becomes five and it seals blocks;
3. they vote an original validator out and it is stopped: the other four go on.

A receipt sealed before the first change, one between and one after the
second verify offline against the original genesis file, and no two nodes
ever disagree on a block.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import trio

from node.base.keys import Identity
from node.consensus.genesis import Admission, Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import call_node, connect_to_node
from node.p2p.rpc_client import RpcCallError
from node.receipts.bundle import decode_bundle
from node.testnet import layout, processes
from tests.support import run_cli, upload_and_register, wait_until

pytestmark = pytest.mark.timeout(900)

CHAIN = "metanode-testnet"
CSV = b"day,product,units\n2026-01-01,apples,3\n2026-01-02,pears,5\n2026-01-03,apples,4\n"


def rpc(address: str, method: str, params: dict | None = None, timeout: float = 20):
    return trio.run(lambda: call_node(address, method, params, timeout=timeout))


def height(address: str) -> int:
    return rpc(address, "chain_head")["height"]


def cli(*args: str) -> str:
    done = run_cli(*args, timeout=180)
    assert done.returncode == 0, f"metanode {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


class Load:
    """Noop transactions from one sender, spread over the given nodes, until stopped."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = list(addresses)
        self.sender = Identity.from_label("consortium-load")
        self.committed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        nonce = 0
        while not self._stop.is_set():
            address = self.addresses[nonce % len(self.addresses)]
            tx = sign_tx(self.sender, chain_id=CHAIN, nonce=nonce, tx_type="noop", payload={"n": nonce})
            try:
                answer = rpc(address, "tx_submit", {"tx": tx.encoded.hex(), "mode": "commit", "timeout": 60}, timeout=90)
            except Exception as exc:  # a node being stopped: try the next one with the same nonce
                self.errors.append(str(exc)[:200])
                self.addresses = self.addresses[1:] + self.addresses[:1]
                time.sleep(0.5)
                continue
            if answer.get("status") == "committed":
                self.committed += 1
                nonce += 1
            time.sleep(0.05)


def upload(address: str, tenant: Identity, nonce: int, name: str) -> dict:
    """Upload and register a dataset; return its catalog row (with its data.store receipt)."""

    async def go():
        async with connect_to_node(address, identity=tenant, timeout=30) as client:
            for attempt in range(5):
                # Distinct bytes: a new data.store receipt. A store refused for lack of a
                # second replica (1207: right after a storage node was killed, its peers may
                # still pick it) is retried with other bytes; it changes nothing on chain.
                data = CSV + f"2026-02-01,{name},{nonce + 1}\n2026-02-02,{name},{attempt}\n".encode()
                try:
                    return await upload_and_register(client, tenant, chain_id=CHAIN, nonce=nonce, data=data, name=name)
                except RpcCallError as exc:
                    if exc.code != 1207 or attempt == 4:
                        raise
                    await trio.sleep(2)

    return trio.run(go)


def run_job(address: str, tenant: Identity, nonce: int, digest: str, replication: int) -> dict:
    """Submit an sql job over ``digest`` on ``replication`` nodes; return its status once final."""
    job = sign_tx(tenant, chain_id=CHAIN, nonce=nonce, tx_type="job.submit", payload={
        "type": "sql", "inputs": {"sales": bytes.fromhex(digest)},
        "params": {"query": "SELECT product, sum(units) AS units FROM sales GROUP BY product ORDER BY product"},
        "replication": replication, "deadline_blocks": 200})

    async def go():
        async with connect_to_node(address, identity=tenant, timeout=30) as client:
            submitted = await client.call("analytics_submit", {"tx": job.encoded.hex()})
            with trio.fail_after(180):
                while True:
                    try:
                        status = await client.call("analytics_status", {"job_id": submitted["job_id"]})
                    except RpcCallError as exc:  # not committed yet
                        if exc.code != 1404:
                            raise
                        await trio.sleep(0.3)
                        continue
                    if status["state"] in ("verified", "disputed", "failed", "cancelled"):
                        return status
                    await trio.sleep(0.5)

    return trio.run(go)


def assigned_peers(status: dict) -> set[str]:
    return {a["peer_id"] for a in status["assignments"]}


def verify_offline(tmp_path, address: str, receipt_id: str, genesis_path) -> dict:
    answer = rpc(address, "receipt_bundle", {"id": receipt_id})
    path = tmp_path / f"{receipt_id[:12]}.bundle"
    path.write_bytes(bytes.fromhex(answer["bundle"]))
    done = run_cli("receipt", "verify", "--bundle", str(path), "--genesis", str(genesis_path), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return answer


def test_consortium_admits_grows_and_shrinks_under_load(tmp_path):
    directory = tmp_path / "net"
    plans = layout.plan_testnet(4, non_validators=1, seed="consortium-process")
    base = layout.testnet_genesis(plans)
    originals = [p for p in plans if "validator" in p.roles]
    genesis = Genesis(
        chain_id=base.chain_id, genesis_time_ms=base.genesis_time_ms, validators=base.validators,
        block_period_ms=base.block_period_ms, round_timeout_base_ms=base.round_timeout_base_ms,
        round_timeout_cap_ms=base.round_timeout_cap_ms,
        admission=Admission(nodes="by-vote", admitted_nodes=tuple(p.identity.public_key for p in originals)),
    )
    layout.write_testnet(directory, plans, genesis)
    genesis_path = directory / layout.GENESIS
    addr = {p.name: p.address for p in plans}
    key = {p.name: str(directory / f"{p.name}.key") for p in plans}
    newcomer = next(p for p in plans if "validator" not in p.roles)
    tenant = Identity.from_label("consortium-tenant")
    processes.up(directory)
    load = Load([addr["node1"], addr["node2"], addr["node3"]])
    try:
        wait_until(lambda: all(height(a) >= 2 for a in addr.values()), 120, what="the chain to start")
        load.start()

        # Before any change: a receipt, and the newcomer is not a processing node.
        before = upload(addr["node1"], tenant, 0, "before")
        health = rpc(addr["node1"], "analytics_health")
        assert health["processing_nodes"] == 4, health
        everyone = run_job(addr["node1"], tenant, 1, before["digest"], replication=4)
        assert everyone["state"] == "verified", everyone
        assert newcomer.identity.peer_id not in assigned_peers(everyone)

        # 1. Admission by vote: proposer's vote + 2 more of 4 (> 2/3).
        proposal = json.loads(cli("members", "propose", "--admit-node", newcomer.identity.peer_id,
                                  "--node", addr["node0"], "--key", key["node0"], "--json"))["proposal_id"]
        for name in ("node1", "node2"):
            cli("members", "vote", proposal, "--node", addr[name], "--key", key[name])
        wait_until(lambda: rpc(addr["node1"], "analytics_health")["processing_nodes"] == 5, 90,
                   what="the admitted node to register as a processing node")
        everyone = run_job(addr["node1"], tenant, 2, before["digest"], replication=5)
        assert everyone["state"] == "verified", everyone
        assert newcomer.identity.peer_id in assigned_peers(everyone)

        # 2. The newcomer becomes a validator.
        proposal = json.loads(cli("validators", "propose", "--add", newcomer.identity.peer_id,
                                  "--node", addr["node0"], "--key", key["node0"], "--json"))["proposal_id"]
        for name in ("node1", "node2"):
            cli("validators", "vote", proposal, "--node", addr[name], "--key", key[name])
        wait_until(lambda: len(json.loads(cli("validators", "list", "--node", addr["node3"], "--json"))["validators"]) == 5,
                   60, what="the set to become five")
        wait_until(lambda: rpc(addr[newcomer.name], "consensus_state")["validator"], 60, what="the newcomer to be a validator")

        def sealed_by_newcomer() -> bool:
            top = height(addr["node1"])
            block = rpc(addr["node1"], "chain_block", {"height": top})
            return newcomer.identity.public_key.hex() in [seal["validator"] for seal in block["seals"]]

        wait_until(sealed_by_newcomer, 90, what="the newcomer to seal a block")
        between = upload(addr["node2"], tenant, 3, "between")

        # 3. node0 is voted out (4 of 5 needed) and stopped; the rest go on.
        proposal = json.loads(cli("validators", "propose", "--remove", plans[0].identity.peer_id,
                                  "--node", addr["node1"], "--key", key["node1"], "--json"))["proposal_id"]
        for name in ("node2", "node3", newcomer.name):
            cli("validators", "vote", proposal, "--node", addr[name], "--key", key[name])
        wait_until(lambda: plans[0].identity.peer_id not in
                   [v["peer_id"] for v in json.loads(cli("validators", "list", "--node", addr["node1"], "--json"))["validators"]],
                   60, what="node0 to leave the set")
        removed_at = height(addr["node1"])
        pid = processes.running_pid(directory, "node0")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        live = [addr[n] for n in ("node1", "node2", "node3", newcomer.name)]
        wait_until(lambda: min(height(a) for a in live) >= removed_at + 5, 120, what="four validators to go on finalising")
        after = upload(addr["node3"], tenant, 4, "after")
        committed_before_stop = load.committed
        wait_until(lambda: load.committed > committed_before_stop, 60, what="the load to keep committing")
        load.stop()

        # Every receipt verifies offline from the original genesis file alone.
        bundles = [verify_offline(tmp_path, addr["node2"], r, genesis_path)
                   for r in (before["receipt"]["id"], between["receipt"]["id"], after["receipt"]["id"])]
        assert bundles[0]["height"] < bundles[1]["height"] < removed_at <= bundles[2]["height"]
        # ...the later ones carrying the set's transitions, each proven by a sealed header.
        chains = [decode_bundle(bytes.fromhex(b["bundle"])).validator_sets for b in bundles]
        assert [len(c) for c in chains] == [1, 2, 3]
        assert [len(link.validators) for link in chains[2]] == [4, 5, 4]

        top = min(height(a) for a in live)
        for h in range(1, top + 1):
            hashes = {rpc(a, "chain_block", {"height": h})["hash"] for a in live}
            assert len(hashes) == 1, f"fork at height {h}: {hashes}"
    finally:
        load.stop()
        processes.down(directory)
