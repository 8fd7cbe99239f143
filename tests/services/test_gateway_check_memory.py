"""The gateway remembers jobs whose submit checks passed: the same query on the
same inputs is not checked again, and a job that differs is checked (a bad one is
still refused), against a real in-process node."""

from __future__ import annotations

import hashlib

import pytest

from node.base.keys import Identity
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from node.p2p.rpc import RpcCallError
from node.roles.submit_check import SubmitChecks
from tests.services.test_gateway import CHAIN, _health_with_nodes, node_config, wait_for
from tests.support import running_daemon, upload_and_register


async def test_a_passed_check_is_remembered_and_a_different_job_is_checked(node_dir, monkeypatch):
    checked: list[str] = []
    real_check = SubmitChecks.check

    def counting_check(self, payload, schemas):  # the real check, counted
        checked.append(payload.params["query"])
        return real_check(self, payload, schemas)

    monkeypatch.setattr(SubmitChecks, "check", counting_check)
    alice = Identity.from_label("tenant-check-memory")
    data = b"product,units\napples,3\npears,5\n"
    digest = hashlib.sha256(data).digest()

    def job(nonce: int, query: str) -> str:
        return sign_tx(alice, chain_id=CHAIN, nonce=nonce, tx_type="job.submit", payload={
            "type": "sql", "inputs": {"sales": digest}, "params": {"query": query},
            "replication": 1, "deadline_blocks": 50}).encoded.hex()

    good, bad = "SELECT product, units FROM sales ORDER BY product", "SELECT nosuch FROM sales"
    async with running_daemon(node_config(node_dir)) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0], identity=alice) as rpc:
            await wait_for(lambda: _health_with_nodes(rpc))
            await upload_and_register(rpc, alice, chain_id=CHAIN, nonce=0, data=data)
            await rpc.call("analytics_submit", {"tx": job(1, good)})
            await rpc.call("analytics_submit", {"tx": job(2, good)})  # the same job again: not checked again
            assert checked == [good]
            with pytest.raises(RpcCallError) as info:
                await rpc.call("analytics_submit", {"tx": job(3, bad)})
            assert info.value.code == 1305 and checked == [good, bad]  # the query is refused
            with pytest.raises(RpcCallError):  # a refused job is not remembered
                await rpc.call("analytics_submit", {"tx": job(3, bad)})
            assert checked == [good, bad, bad]
            await rpc.call("analytics_submit", {"tx": job(3, good)})
            assert checked == [good, bad, bad]
