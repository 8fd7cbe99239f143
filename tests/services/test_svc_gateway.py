"""The gateway's service methods against a real in-process node, over JSON-RPC
and over the HTTP gateway: deploy, list, status, result (the latest verified
run, from a holder that is named), a new dataset version making a new run,
scale, stop; tenant isolation (another tenant's service is "not found"),
parameters checked by name, and a signed transaction posted to another
service's URL refused."""

from __future__ import annotations

import http.client
import json
import time

import pytest
import trio

from node.app.services import service_id
from node.base.http_auth import sign_request
from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from node.p2p.rpc import RpcCallError
from tests.support import running_daemon, upload_and_register, write_node_config

CHAIN = "svc-gateway-test"
CSV = b"product,units\napples,3\npears,5\napples,4\n"
CSV2 = b"product,units\napples,3\npears,5\napples,4\nplums,9\n"
QUERY = "SELECT product, sum(units) AS units FROM sales GROUP BY product ORDER BY product"
ALICE, BOB = Identity.from_label("svc-gw-alice"), Identity.from_label("svc-gw-bob")

pytestmark = pytest.mark.timeout(600)


def node_config(node_dir, chain_id: str = CHAIN, label: str = "svc-gw"):
    identity = Identity.from_label(f"test-node-{label}")
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id=chain_id, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=200, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    return write_node_config(node_dir, label, identity=identity, genesis=genesis,
                             roles=["validator", "scheduler", "gateway", "processing", "storage"],
                             extra='\n[services]\nstorage_replicas = 1\nhttp_listen = "127.0.0.1:0"\n')


def deploy_payload(name: str, policy: str = "processing", **extra) -> dict:
    return {"name": name, "type": "sql", "inputs": {"sales": "sales"}, "params": {"query": QUERY}, "replicas": 1,
            "policy": policy, "trigger": {"on_new_version": True}, "deadline_blocks": 40, **extra}


async def wait_for(predicate, seconds=120):
    with trio.fail_after(seconds):
        while not (value := await predicate()):
            await trio.sleep(0.2)
    return value


async def rpc_error(client, method: str, params: dict) -> RpcCallError:
    with pytest.raises(RpcCallError) as info:
        await client.call(method, params)
    return info.value


async def verified_run(client, name: str, run: int):
    try:
        result = await client.call("service_result", {"name": name})
    except RpcCallError as exc:
        if exc.code in (1404, 1405):  # not in a block yet, or no run verified yet
            return None
        raise
    return result if result["run"] >= run else None


def http_call(listen: str, method: str, target: str, body: dict | None = None, identity: Identity = ALICE):
    data = json.dumps(body).encode() if body is not None else b""
    host, port = listen.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, target, body=data, headers={"Authorization": sign_request(identity, method, target, data)})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


async def test_services_over_json_rpc_and_http(node_dir):
    async with running_daemon(node_config(node_dir)) as daemon:
        addr = daemon.listen_addrs()[0]
        async with connect_to_node(addr, identity=ALICE) as alice, connect_to_node(addr, identity=BOB) as bob:
            await upload_and_register(alice, ALICE, chain_id=CHAIN, nonce=0, data=CSV)
            deploy = sign_tx(ALICE, chain_id=CHAIN, nonce=1, tx_type="service.deploy", payload=deploy_payload("totals"))
            # Bob cannot send Alice's signed deploy as his own; a job.submit is not a deploy.
            assert (await rpc_error(bob, "service_deploy", {"tx": deploy.encoded.hex()})).code == 1303
            assert (await rpc_error(alice, "service_scale", {"tx": deploy.encoded.hex()})).code == 1303
            # Refused by the state before the mempool: Bob has no dataset "sales".
            theft = sign_tx(BOB, chain_id=CHAIN, nonce=0, tx_type="service.deploy", payload=deploy_payload("totals"))
            assert (await rpc_error(bob, "service_deploy", {"tx": theft.encoded.hex()})).code == 1304
            answer = await alice.call("service_deploy", {"tx": deploy.encoded.hex()})
            sid = service_id(ALICE.public_key, "totals").hex()
            assert answer["service_id"] == sid and answer["name"] == "totals" and answer["tx"] == deploy.hash.hex()
            assert len(answer["receipt_id"]) == 64

            # Bad parameters are named.
            bad = await rpc_error(alice, "service_status", {"name": "Not A Name"})
            assert bad.code == -32602 and bad.data["param"] == "name"
            assert (await rpc_error(alice, "service_result", {})).data["param"] == "name"
            assert (await rpc_error(alice, "service_list", {"x": 1})).data["param"] == "x"

            first = await wait_for(lambda: verified_run(alice, "totals", 1))
            assert first["name"] == "totals" and first["service_id"] == sid and first["state"] == "verified"
            assert first["rows"] == [["apples", 7], ["pears", 5]]
            assert first["served_by"] == daemon.identity.peer_id and first["computed_by"] == [daemon.identity.peer_id]
            assert len(first["receipts"]) == 1 and len(first["receipt_id"]) == 64
            job = await alice.call("analytics_status", {"job_id": first["job_id"]})
            assert job["service"] == "totals" and job["run"] == first["run"] and job["state"] == "verified"

            [summary] = (await alice.call("service_list"))["services"]
            assert summary["name"] == "totals" and summary["state"] == "active" and summary["service_id"] == sid
            status = await alice.call("service_status", {"name": "totals"})
            assert status["policy"] == "processing" and status["inputs"] == {"sales": "sales"}
            assert [p["peer_id"] for p in status["placements"]] == [daemon.identity.peer_id]
            # Bob sees none of it: another tenant's service is "not found", like a missing one.
            assert (await bob.call("service_list"))["services"] == []
            for who, name in ((bob, "totals"), (alice, "nosuch")):
                for method in ("service_status", "service_result"):
                    assert (await rpc_error(who, method, {"name": name})).code == 1404

            # A new version of the input: a new run, whose result becomes the service's.
            await upload_and_register(alice, ALICE, chain_id=CHAIN, nonce=2, data=CSV2)
            second = await wait_for(lambda: verified_run(alice, "totals", first["run"] + 1))
            assert ["plums", 9] in second["rows"] and second["job_id"] != first["job_id"]

            # A service whose policy no node has: never verified; the answer says the latest run's state.
            stuck = sign_tx(ALICE, chain_id=CHAIN, nonce=3, tx_type="service.deploy",
                            payload=deploy_payload("stuck", policy="no-such-policy"))
            await alice.call("service_deploy", {"tx": stuck.encoded.hex()})
            await wait_for(lambda: _status(alice, "stuck"))
            unavailable = await rpc_error(alice, "service_result", {"name": "stuck"})
            assert unavailable.code == 1405 and unavailable.data["name"] == "stuck"
            assert "state" in unavailable.data and unavailable.data["run"] in (None, 1)

            listen = (await alice.call("node_status"))["services"]["http"]["listen"]
            await _over_http(listen, alice, sid)


async def _status(client, name):
    try:
        return await client.call("service_status", {"name": name})
    except RpcCallError as exc:
        if exc.code == 1404:
            return None
        raise


async def _over_http(listen: str, alice, sid: str) -> None:
    def get(target: str, identity: Identity = ALICE):
        return http_call(listen, "GET", target, identity=identity)

    status, listing = await trio.to_thread.run_sync(get, "/v1/services")
    assert status == 200 and [s["name"] for s in listing["services"]] == ["stuck", "totals"]
    status, one = await trio.to_thread.run_sync(get, "/v1/services/totals")
    assert status == 200 and one["service_id"] == sid
    status, result = await trio.to_thread.run_sync(get, "/v1/services/totals/result")
    assert status == 200 and result["state"] == "verified" and result["served_by"]
    status, missing = await trio.to_thread.run_sync(lambda: get("/v1/services/totals", BOB))
    assert status == 404 and missing["error"]["code"] == 1404
    status, pending = await trio.to_thread.run_sync(get, "/v1/services/stuck/result")
    assert status == 409 and pending["error"]["code"] == 1405

    # Writes: signed transactions in {"tx": HEX}; on /v1/services/{name}/... the transaction must be about that name.
    scale = sign_tx(ALICE, chain_id=CHAIN, nonce=4, tx_type="service.scale", payload={"name": "totals", "replicas": 2})
    status, wrong = await trio.to_thread.run_sync(
        lambda: http_call(listen, "POST", "/v1/services/stuck/scale", {"tx": scale.encoded.hex()}))
    assert status == 400 and wrong["error"]["data"]["param"] == "name"
    status, bad = await trio.to_thread.run_sync(lambda: http_call(listen, "POST", "/v1/services/totals/scale", {"tx": 5}))
    assert status == 400 and bad["error"]["data"]["param"] == "tx"
    status, scaled = await trio.to_thread.run_sync(
        lambda: http_call(listen, "POST", "/v1/services/totals/scale", {"tx": scale.encoded.hex()}))
    assert status == 200 and scaled["service_id"] == sid and scaled["tx"] == scale.hash.hex()
    await wait_for(lambda: _has(alice, "totals", "replicas", 2))

    stop = sign_tx(ALICE, chain_id=CHAIN, nonce=5, tx_type="service.stop", payload={"name": "totals"})
    status, stopped = await trio.to_thread.run_sync(
        lambda: http_call(listen, "POST", "/v1/services/totals/stop", {"tx": stop.encoded.hex()}))
    assert status == 200 and stopped["name"] == "totals"
    final = await wait_for(lambda: _has(alice, "totals", "state", "stopped"))
    assert final["placements"] == []
    # A stopped service keeps its latest verified result.
    status, result = await trio.to_thread.run_sync(get, "/v1/services/totals/result")
    assert status == 200 and result["state"] == "verified"

    deploy = sign_tx(ALICE, chain_id=CHAIN, nonce=6, tx_type="service.deploy", payload=deploy_payload("again"))
    status, deployed = await trio.to_thread.run_sync(
        lambda: http_call(listen, "POST", "/v1/services", {"tx": deploy.encoded.hex()}))
    assert status == 201 and deployed["service_id"] == service_id(ALICE.public_key, "again").hex()
    status, refused = await trio.to_thread.run_sync(
        lambda: http_call(listen, "POST", "/v1/services", {"tx": deploy.encoded.hex(), "extra": 1}))
    assert status == 400 and refused["error"]["data"]["param"] == "extra"


async def _has(client, name: str, key: str, value):
    status = await _status(client, name)
    return status if status is not None and status[key] == value else None
