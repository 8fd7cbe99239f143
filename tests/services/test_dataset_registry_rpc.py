"""The gateway's dataset registry methods: ``analytics_datasets`` lists the
caller's registrations by name and version, ``analytics_dataset`` resolves
``sales``, ``sales@1`` or a digest, and says in words what is wrong otherwise.

First through the daemon's JSON-RPC dispatcher over a state machine fed with
real signed blocks, then end to end on a real node over p2p and HTTP."""

from __future__ import annotations

import hashlib
import time
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from node.base.keys import Identity, public_key_from_peer_id
from node.consensus.genesis import Genesis
from node.p2p.client import connect_to_node
from node.p2p.jsonrpc import CallContext, Dispatcher, Registry
from node.p2p.rpc import RpcCallError
from node.roles.datasets_rpc import register_dataset_rpcs
from node.sdk.http_client import HttpClient
from node.sdk.http_client import HttpError as ClientHttpError
from tests.services.test_state_support import ALICE, BOB, Chain, content_digest
from tests.support import running_daemon, upload_and_register, write_node_config

V1, V2 = content_digest("rpc-sales-1"), content_digest("rpc-sales-2")


def tenant_of(ctx: CallContext) -> bytes:
    return public_key_from_peer_id(ctx.peer_id)


@pytest.fixture
def dispatcher():
    chain = Chain()
    chain.block(chain.register_dataset(ALICE, V1, "sales"), chain.register_dataset(ALICE, V1, "archive"))
    chain.block(chain.register_dataset(ALICE, V2, "sales"))
    registry = Registry()
    register_dataset_rpcs(registry, SimpleNamespace(state=chain.machine), tenant_of)
    return Dispatcher(registry)


async def call(dispatcher: Dispatcher, method: str, params: Any, who: Identity = ALICE) -> dict[str, Any]:
    answer = await dispatcher.handle_one({"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                                         CallContext(peer_id=who.peer_id))
    assert answer is not None
    return answer


async def test_list_by_name_then_version_and_resolve_each_kind_of_ref(dispatcher):
    listed = (await call(dispatcher, "analytics_datasets", {}))["result"]["datasets"]
    assert [(d["name"], d["version"], d["latest"]) for d in listed] == [
        ("archive", 1, True), ("sales", 1, False), ("sales", 2, True)]
    only = (await call(dispatcher, "analytics_datasets", {"name": "sales", "limit": 1, "offset": 1}))["result"]
    assert [(d["name"], d["version"]) for d in only["datasets"]] == [("sales", 2)]

    latest = (await call(dispatcher, "analytics_dataset", {"ref": "sales"}))["result"]
    assert (latest["version"], latest["digest"], latest["latest"]) == (2, V2.hex(), True)
    first = (await call(dispatcher, "analytics_dataset", {"ref": "sales@1"}))["result"]
    assert (first["version"], first["digest"], first["latest"]) == (1, V1.hex(), False)
    by_digest = (await call(dispatcher, "analytics_dataset", {"ref": V2.hex()}))["result"]
    assert (by_digest["name"], by_digest["version"]) == ("sales", 2)
    # V1 is sales@1 and archive@1, registered in one block: the first name answers.
    assert (await call(dispatcher, "analytics_dataset", {"ref": V1.hex()}))["result"]["name"] == "archive"


async def test_unknown_refs_answer_not_found_with_the_callers_names(dispatcher):
    error = (await call(dispatcher, "analytics_dataset", {"ref": "costs"}))["error"]
    assert error["code"] == 1404
    assert error["message"] == "no dataset named 'costs' is registered by you; your datasets: archive, sales"
    assert error["data"]["names"] == ["archive", "sales"]
    error = (await call(dispatcher, "analytics_dataset", {"ref": "sales@7"}))["error"]
    assert error["message"] == "'sales' has no version 7 registered by you; its latest is sales@2"
    missing = hashlib.sha256(b"nothing").hexdigest()
    error = (await call(dispatcher, "analytics_dataset", {"ref": missing}))["error"]
    assert error["message"].startswith(f"no dataset with digest {missing} is registered by you")
    # Bob sees none of Alice's registrations, by name or by digest.
    error = (await call(dispatcher, "analytics_dataset", {"ref": V1.hex()}, who=BOB))["error"]
    assert error["code"] == 1404 and error["message"].endswith("you have registered no datasets yet")
    assert (await call(dispatcher, "analytics_datasets", {}, who=BOB))["result"] == {"datasets": []}


@pytest.mark.parametrize("ref", ["", "sales@0", "x" * 140])
async def test_a_malformed_ref_is_named_in_words(dispatcher, ref):
    error = (await call(dispatcher, "analytics_dataset", {"ref": ref}))["error"]
    assert error["code"] == -32602
    assert error["message"] == "ref: expected a name, name@version or 64 hex characters"
    assert error["data"]["param"] == "ref"


@pytest.mark.parametrize(("params", "param"), [
    ({"limit": 1001}, "limit"), ({"offset": -1}, "offset"), ({"name": ""}, "name"), ({"digest": "x"}, "digest")])
async def test_list_parameters_are_checked_by_their_schema(dispatcher, params, param):
    error = (await call(dispatcher, "analytics_datasets", params))["error"]
    assert error["code"] == -32602 and error["data"]["param"] == param


# -- a real node --------------------------------------------------------------------------

CHAIN = "dataset-registry-test"


async def test_versions_on_a_real_node_over_p2p_and_http(node_dir):
    identity = Identity.from_label("test-node-registry")
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=100, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    config = write_node_config(node_dir, "registry", identity=identity, roles=["validator", "gateway", "storage"],
                               genesis=genesis, extra='\n[services]\nstorage_replicas = 1\nhttp_listen = "127.0.0.1:0"\n')
    tenant = Identity.from_label("tenant-registry")
    first, second = b"day,units\n2024-01-01,3\n", b"day,units\n2024-01-01,3\n2024-01-02,5\n"
    async with running_daemon(config) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0], identity=tenant) as rpc:
            await upload_and_register(rpc, tenant, chain_id=CHAIN, nonce=0, data=first)
            await upload_and_register(rpc, tenant, chain_id=CHAIN, nonce=1, data=second)
            await upload_and_register(rpc, tenant, chain_id=CHAIN, nonce=2, data=first, name="q1 sales/eu")
            latest = await rpc.call("analytics_dataset", {"ref": "sales"})
            assert (latest["version"], latest["digest"]) == (2, hashlib.sha256(second).hexdigest())
            listed = await rpc.call("analytics_datasets", {"name": "sales"})
            assert [d["version"] for d in listed["datasets"]] == [1, 2]
            with pytest.raises(RpcCallError) as info:
                await rpc.call("analytics_dataset", {"ref": "costs"})
            assert info.value.code == 1404 and "your datasets: q1 sales/eu, sales" in str(info.value)
            listen = (await rpc.call("node_status"))["services"]["http"]["listen"]
        client = HttpClient(f"http://{listen}", tenant)
        one = await trio.to_thread.run_sync(client.get, "/v1/registry/sales@1")
        assert (one["version"], one["digest"]) == (1, hashlib.sha256(first).hexdigest())
        both = await trio.to_thread.run_sync(lambda: client.get("/v1/registry", name="sales"))
        assert [d["version"] for d in both["datasets"]] == [1, 2]
        spaced = await trio.to_thread.run_sync(client.get, "/v1/registry/q1%20sales%2Feu")  # path segments are percent-decoded
        assert (spaced["name"], spaced["version"], spaced["digest"]) == ("q1 sales/eu", 1, hashlib.sha256(first).hexdigest())
        with pytest.raises(ClientHttpError) as http_info:
            await trio.to_thread.run_sync(client.get, "/v1/registry/costs")
        assert http_info.value.status == 404
