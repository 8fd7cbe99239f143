"""The gateway checks a job before it goes on chain (node/roles/submit_check.py):
malformed or forbidden SQL, a table that is not an input, a column the input's
schema lacks and a bad parameter are refused at once with the reason in words,
and nothing reaches the mempool, the chain or the receipt log; a valid job goes
through. Against a real in-process node that takes the upload (so its catalog
holds the schema)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from node.app.jobtypes import infer_trend_params
from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from node.p2p.rpc import RpcCallError
from node.receipts.envelope import decode_receipt
from tests.support import running_daemon, upload_and_register, write_node_config

CHAIN = "submit-checks"
SAMPLE = (Path(__file__).resolve().parents[2] / "node" / "data" / "sales.csv").read_bytes()
TREND = {"input": "sales", "time_column": "day", "value_column": "units", "window": "30d"}
SQL_REFUSED, JOB_PARAMS_REFUSED, STATE_REFUSED, NOT_FOUND = 1305, 1306, 1304, 1404

REFUSED = [
    ("sql", {"query": "SELEC day, units FROM sales"}, SQL_REFUSED, 'syntax error at or near "SELEC"'),
    ("sql", {"query": "SELECT * FROM orders"}, SQL_REFUSED, "table 'orders' is not one of the inputs (sales)"),
    ("sql", {"query": "SELECT * FROM read_csv('/etc/passwd')"}, SQL_REFUSED, "read_csv() reads files by path"),
    ("sql", {"query": "SELECT day, nosuch FROM sales"}, SQL_REFUSED, 'Referenced column "nosuch" not found'),
    ("sql", {"query": "SELECT day, sum(units) FROM sales GROUP BY product"}, SQL_REFUSED,
     'column "day" must appear in the GROUP BY clause'),
    ("trend-analysis", {**TREND, "time_column": "date"}, JOB_PARAMS_REFUSED,
     "params.time_column: no column 'date' in input sales (columns: day, product, units, price_cents)"),
    ("trend-analysis", {**TREND, "window": "30 days"}, STATE_REFUSED,
     "params.window: expected <n>d, <n>w or <n>m with n in 1..9999, got '30 days'"),
    ("trend-analysis", {"input": "sales", "value_column": "units", "window": "30d"}, STATE_REFUSED,
     "params.time_column: is missing; it is the DATE or TIMESTAMP column"),
]


def node_config(node_dir):
    identity = Identity.from_label("test-node-checks")
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=100, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    # A gateway keeps a store and takes uploads: its catalog has the schema of what it took.
    return write_node_config(node_dir, "checks", roles=["validator", "gateway"], genesis=genesis)


@pytest.mark.timeout(180)
async def test_jobs_are_checked_at_submit(node_dir):
    tenant = Identity.from_label("tenant-submit-checks")
    async with running_daemon(node_config(node_dir)) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0], identity=tenant, timeout=30) as rpc:
            uploaded = await upload_and_register(rpc, tenant, chain_id=CHAIN, nonce=0, data=SAMPLE)
            digest = bytes.fromhex(uploaded["digest"])
            assert [c["name"] for c in uploaded["schema"]] == ["day", "product", "units", "price_cents"]

            def job(nonce, job_type, params):
                return sign_tx(tenant, chain_id=CHAIN, nonce=nonce, tx_type="job.submit", payload={
                    "type": job_type, "inputs": {"sales": digest}, "params": params, "replication": 1,
                    "deadline_blocks": 50})

            for job_type, params, code, words in REFUSED:
                tx = job(1, job_type, params)
                with pytest.raises(RpcCallError) as info:
                    await rpc.call("analytics_submit", {"tx": tx.encoded.hex()})
                assert info.value.code == code, (params, info.value)
                assert words in info.value.data["reason"], (params, info.value.data)
                # Not pending, not committed: the transaction never reached the mempool.
                with pytest.raises(RpcCallError) as missing:
                    await rpc.call("tx_get", {"hash": tx.hash.hex()})
                assert missing.value.code == NOT_FOUND
            assert (await rpc.call("chain_nonce", {"sender": tenant.public_key.hex()}))["pending_next"] == 1

            # Valid jobs go through, the first with the nonce every refused one used.
            accepted = []
            query = "SELECT product, sum(units) AS units FROM sales GROUP BY product ORDER BY product"
            accepted.append(await rpc.call("analytics_submit", {"tx": job(1, "sql", {"query": query}).encoded.hex()}))
            inferred, _notes = infer_trend_params(uploaded["schema"], {}, input_name="sales")
            accepted.append(await rpc.call("analytics_submit", {"tx": job(2, "trend-analysis", inferred).encoded.hex()}))
            for answer in accepted:
                assert (await rpc.call("tx_get", {"hash": answer["job_id"]}))["status"] in ("pending", "committed")

            # The log holds an api.call receipt for each accepted submission, none for the refused ones.
            with trio.fail_after(60):
                for answer in accepted:
                    while True:
                        try:
                            await rpc.call("receipt_get", {"id": answer["receipt_id"]})
                            break
                        except RpcCallError as exc:
                            assert exc.code == NOT_FOUND
                        await trio.sleep(0.1)
            leaves = (await rpc.call("audit_leaves", {"start": 0, "limit": 1000}))["leaves"]
            api_calls = [r for r in (decode_receipt(bytes.fromhex(envelope)) for _, envelope in leaves)
                         if r.kind == "api.call"]
            assert sorted(r.id.hex() for r in api_calls) == sorted(a["receipt_id"] for a in accepted)
