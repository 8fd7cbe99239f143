"""dataset_upload / dataset_list / dataset_get through a real RPC stream."""

from __future__ import annotations

import base64
import hashlib
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.base.errors import ErrorCode
from node.base.keys import Identity
from node.p2p.host import build_host, running_host
from node.p2p.jsonrpc import Dispatcher, Registry
from node.p2p.rpc import RPC_PROTOCOL, RpcCallError, RpcServer, open_rpc_client
from node.roles.storage import QuotaPolicy, register_storage_methods
from tests.services.test_storage_support import LOOPBACK, storage_nodes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def rpc_error(client, method: str, params: dict) -> RpcCallError:
    with pytest.raises(RpcCallError) as info:
        await client.call(method, params)
    return info.value


async def test_upload_list_get_and_tenant_isolation(tmp_path: Path):
    async with storage_nodes(tmp_path, 2, replicas=2, quotas=QuotaPolicy(default_bytes=200_000)) as (node, peer):
        node.service.storage_peers = lambda: [peer.peer_id]
        registry = Registry()
        uploads = register_storage_methods(registry, node.service)
        node.host.set_stream_handler(RPC_PROTOCOL, RpcServer(Dispatcher(registry)).handle_stream)
        alice_id, bob_id = Identity.from_label("alice"), Identity.from_label("bob")
        alice_host, bob_host = build_host(alice_id), build_host(bob_id)
        server_info = info_from_p2p_addr(node.host.get_addrs()[0])
        async with running_host(alice_host, [LOOPBACK]), running_host(bob_host, [LOOPBACK]):
            await alice_host.connect(server_info)
            await bob_host.connect(server_info)
            async with open_rpc_client(alice_host, server_info.peer_id) as alice, \
                    open_rpc_client(bob_host, server_info.peer_id) as bob:
                data = ("day,amount\n" + "".join(f"2024-01-{d:02d},{d * 10}\n" for d in range(1, 29))).encode()
                first = await alice.call("dataset_upload", {"name": "../../etc/passwd", "format": "csv", "chunk": b64(data[:50])})
                assert first["received"] == 50
                # Another tenant cannot add to (or learn about) alice's upload.
                err = await rpc_error(bob, "dataset_upload", {"upload": first["upload"], "chunk": b64(b"x")})
                assert err.code == ErrorCode.UPLOAD_NOT_FOUND
                done = await alice.call("dataset_upload", {"upload": first["upload"], "chunk": b64(data[50:]), "final": True})
                digest = hashlib.sha256(data).hexdigest()
                assert done["digest"] == digest and done["row_count"] == 28 and done["name"] == "../../etc/passwd"
                assert done["schema"] == [{"name": "day", "type": "DATE", "nulls": 0}, {"name": "amount", "type": "BIGINT", "nulls": 0}]
                assert done["deduplicated"] is False and done["skipped_rows"] == 0 and done["source_digest"] == digest
                assert done["tenant"] == alice_id.public_key.hex()
                assert done["nodes"] == sorted([node.peer_id, peer.peer_id]) and peer.store.has(bytes.fromhex(digest))
                assert done["receipt"] == {"content": "dataset", "size": len(data), "replicas": 2, "subject": digest,
                                           "tenant": alice_id.public_key.hex()}
                assert len(uploads) == 0

                listed = await alice.call("dataset_list")
                assert [d["digest"] for d in listed["datasets"]] == [digest]
                assert listed["usage_bytes"] == len(data) and listed["quota_bytes"] == 200_000
                assert (await alice.call("dataset_get", {"digest": digest}))["row_count"] == 28
                assert (await bob.call("dataset_list"))["datasets"] == []
                err = await rpc_error(bob, "dataset_get", {"digest": digest})
                assert err.code == ErrorCode.DATASET_NOT_FOUND and err.data["digest"] == digest

                # Clear errors, each naming what was wrong.
                err = await rpc_error(alice, "dataset_upload", {"chunk": b64(b"a")})
                assert err.code == ErrorCode.INVALID_DATASET and err.data["param"] == "name"
                err = await rpc_error(alice, "dataset_upload", {"name": "x", "format": "csv", "chunk": "not base64!"})
                assert err.code == ErrorCode.BAD_CHUNK and err.data["param"] == "chunk"
                err = await rpc_error(alice, "dataset_upload", {"name": "x", "format": "json", "chunk": ""})
                assert err.code == -32602 and err.data["param"] == "format"
                err = await rpc_error(alice, "dataset_upload", {"name": "bin", "format": "csv", "chunk": b64(bytes(range(256)) * 8), "final": True})
                assert err.code == ErrorCode.DATASET_UNREADABLE and err.message.startswith("not a text file")
                assert node.store.total_bytes() == len(data)  # unreadable content is not kept
                err = await rpc_error(alice, "dataset_upload", {"name": "big", "format": "csv", "chunk": b64(b"1\n" * 100_000)})
                assert err.code == ErrorCode.STORAGE_QUOTA_EXCEEDED
                assert err.data == {"reason": err.message, "used": len(data), "limit": 200_000, "requested": 200_000}
                assert len(uploads) == 0

                # Bounded concurrent uploads per peer; idle ones are swept.
                for _ in range(uploads.max_per_peer):
                    await alice.call("dataset_upload", {"name": "p", "format": "csv", "chunk": b64(b"a\n")})
                err = await rpc_error(alice, "dataset_upload", {"name": "p", "format": "csv", "chunk": b64(b"a\n")})
                assert err.code == ErrorCode.TOO_MANY_UPLOADS and err.data["limit"] == uploads.max_per_peer
                assert len(list((node.store.root / "incoming").iterdir())) == uploads.max_per_peer
                assert uploads.sweep(10**9) == uploads.max_per_peer
                assert list((node.store.root / "incoming").iterdir()) == []
                await alice.call("dataset_upload", {"name": "p", "format": "csv", "chunk": b64(b"a\n")})


# -- the upload protocol of issue 14: offsets, resume, dedup, validation -----------------

BAD_CSV = (b"day,region,units,price\n2024-01-01,north,3,1.5\n2024-01-02,south,x,2.5\n"
           b"2024-01-03,east,5\n2024-01-04,west,6,3.5,extra\n2024-01-05,north,7,4.5\n")


@asynccontextmanager
async def upload_server(tmp_path: Path, *, replicas: int = 2):
    """A storage node (and a replica peer) serving the dataset methods, with a
    receipt issuer that numbers its receipts; yields (node, peer, uploads,
    issued receipt ids, connect(identity) -> RPC client context)."""
    async with storage_nodes(tmp_path, 2, replicas=replicas) as (node, peer):
        node.service.storage_peers = lambda: [peer.peer_id]
        registry = Registry()
        issued: list[str] = []

        def on_stored(info, fields) -> str:
            issued.append(hashlib.sha256(b"receipt %d" % len(issued)).hexdigest())
            return issued[-1]

        uploads = register_storage_methods(registry, node.service, on_stored=on_stored)
        node.host.set_stream_handler(RPC_PROTOCOL, RpcServer(Dispatcher(registry)).handle_stream)
        server_info = info_from_p2p_addr(node.host.get_addrs()[0])
        async with AsyncExitStack() as stack:
            hosts: dict[str, object] = {}

            async def host_of(identity: Identity):
                if identity.peer_id not in hosts:
                    host = build_host(identity)
                    await stack.enter_async_context(running_host(host, [LOOPBACK]))
                    await host.connect(server_info)
                    hosts[identity.peer_id] = host
                return hosts[identity.peer_id]

            @asynccontextmanager
            async def connect(identity: Identity):
                async with open_rpc_client(await host_of(identity), server_info.peer_id) as client:
                    yield client

            yield node, peer, uploads, issued, connect


async def test_offsets_are_checked_and_an_upload_resumes_on_a_new_connection(tmp_path: Path):
    alice, bob = Identity.from_label("alice"), Identity.from_label("bob")
    data = ("day,amount\n" + "".join(f"2024-02-{d:02d},{d}\n" for d in range(1, 29))).encode()
    async with upload_server(tmp_path) as (node, _, uploads, _, connect):
        async with connect(alice) as rpc:
            err = await rpc_error(rpc, "dataset_upload", {"name": "s", "format": "csv", "offset": 5, "chunk": b64(data)})
            assert err.code == ErrorCode.UPLOAD_OFFSET_MISMATCH and err.data["received"] == 0
            first = await rpc.call("dataset_upload", {"name": "s", "format": "csv", "chunk": b64(data[:100])})
            upload = first["upload"]
            assert first["received"] == 100
            # A chunk sent twice (its answer was lost): refused, nothing appended.
            await rpc.call("dataset_upload", {"upload": upload, "offset": 100, "chunk": b64(data[100:150])})
            err = await rpc_error(rpc, "dataset_upload", {"upload": upload, "offset": 100, "chunk": b64(data[100:150])})
            assert err.code == ErrorCode.UPLOAD_OFFSET_MISMATCH and err.data["received"] == 150
            assert "150" in err.message
            for param in ("name", "format", "on_bad_rows"):
                value = {"name": "x", "format": "csv", "on_bad_rows": "skip"}[param]
                err = await rpc_error(rpc, "dataset_upload", {"upload": upload, "offset": 150, param: value, "chunk": ""})
                assert err.code == ErrorCode.INVALID_DATASET and err.data["param"] == param
        # The connection dropped; a new one (same key) asks where the upload stands.
        async with connect(bob) as other:
            err = await rpc_error(other, "dataset_upload_status", {"upload": upload})
            assert err.code == ErrorCode.UPLOAD_NOT_FOUND
        async with connect(alice) as rpc:
            status = await rpc.call("dataset_upload_status", {"upload": upload})
            assert status == {"upload": upload, "received": 150, "name": "s", "format": "csv", "on_bad_rows": "fail"}
            done = await rpc.call("dataset_upload", {"upload": upload, "offset": status["received"],
                                                     "chunk": b64(data[150:]), "final": True})
            assert done["digest"] == hashlib.sha256(data).hexdigest() and done["row_count"] == 28
            err = await rpc_error(rpc, "dataset_upload_status", {"upload": upload})
            assert err.code == ErrorCode.UPLOAD_NOT_FOUND
        assert len(uploads) == 0 and list((node.store.root / "incoming").iterdir()) == []


async def test_identical_bytes_answer_the_existing_row_with_a_fresh_receipt(tmp_path: Path):
    alice = Identity.from_label("alice")
    data = b"city,visits\nOslo,3\nRiga,4\nLima,\n"
    digest = hashlib.sha256(data).hexdigest()
    async with upload_server(tmp_path) as (node, _, _, issued, connect):
        async with connect(alice) as rpc:
            first = await rpc.call("dataset_upload", {"name": "visits", "format": "csv", "chunk": b64(data), "final": True})
            assert first["deduplicated"] is False and first["receipt"]["id"] == issued[0] == first["receipt_id"]
            assert first["schema"][1] == {"name": "visits", "type": "BIGINT", "nulls": 1}
            again = await rpc.call("dataset_upload", {"name": "visits-copy", "format": "csv", "chunk": b64(data), "final": True})
            assert again["deduplicated"] is True and again["digest"] == digest and again["name"] == "visits"
            assert again["created"] == first["created"] and again["receipt"]["id"] == issued[1] != issued[0]
            assert again["receipt"]["subject"] == digest and again["receipt_id"] == issued[1]
            got = await rpc.call("dataset_get", {"digest": digest})
            assert got["receipt_id"] == issued[1]  # the latest: an HTTP upload can be registered with it later
            listed = await rpc.call("dataset_list")
            assert [d["digest"] for d in listed["datasets"]] == [digest] and listed["usage_bytes"] == len(data)
            assert listed["datasets"][0]["receipt_id"] == issued[1]
        assert node.store.total_bytes() == len(data) and list((node.store.root / "incoming").iterdir()) == []


async def test_bad_rows_are_refused_with_lines_or_skipped_and_recorded(tmp_path: Path):
    alice = Identity.from_label("alice")
    source = hashlib.sha256(BAD_CSV).hexdigest()
    async with upload_server(tmp_path) as (node, peer, _, issued, connect):
        async with connect(alice) as rpc:
            err = await rpc_error(rpc, "dataset_upload", {"name": "sales", "format": "csv", "chunk": b64(BAD_CSV), "final": True})
            assert err.code == ErrorCode.DATASET_BAD_ROWS and err.data["count"] == 3
            assert [b["line"] for b in err.data["bad_rows"]] == [3, 4, 5]
            assert err.data["bad_rows"][0]["reason"] == "bad value in column 'units': \"x\" is not a BIGINT"
            assert err.data["bad_rows"][1]["reason"] == "short row: 3 fields, expected 4"
            assert err.data["bad_rows"][2]["reason"] == "long row: 5 fields, expected 4"
            assert "line 3" in err.message and node.store.total_bytes() == 0 and issued == []

            done = await rpc.call("dataset_upload", {"name": "sales", "format": "csv", "on_bad_rows": "skip",
                                                     "chunk": b64(BAD_CSV), "final": True})
            assert done["format"] == "parquet" and done["row_count"] == 2 and done["skipped_rows"] == 3
            assert done["source_digest"] == source != done["digest"]
            assert done["receipt"]["skipped_rows"] == 3 and done["receipt"]["subject"] == done["digest"]
            stored = node.store.open(bytes.fromhex(done["digest"]))
            assert stored[:4] == b"PAR1" and peer.store.open(bytes.fromhex(done["digest"])) == stored
            assert list(node.store.digests()) == [bytes.fromhex(done["digest"])]  # the bad upload is not kept
            # The same file again: with skip it is the stored dataset; with fail it is refused again.
            again = await rpc.call("dataset_upload", {"name": "sales", "format": "csv", "on_bad_rows": "skip",
                                                      "chunk": b64(BAD_CSV), "final": True})
            assert again["deduplicated"] is True and again["digest"] == done["digest"]
            err = await rpc_error(rpc, "dataset_upload", {"name": "sales", "format": "csv", "chunk": b64(BAD_CSV), "final": True})
            assert err.code == ErrorCode.DATASET_BAD_ROWS

            lines = b'{"id": 1, "tag": "a"}\n{"id": 2, "tag": null}\n'
            got = await rpc.call("dataset_upload", {"name": "events", "format": "jsonl", "chunk": b64(lines), "final": True})
            assert got["format"] == "jsonl" and got["row_count"] == 2
            assert got["schema"] == [{"name": "id", "type": "BIGINT", "nulls": 0}, {"name": "tag", "type": "VARCHAR", "nulls": 1}]
            err = await rpc_error(rpc, "dataset_upload", {"name": "e", "format": "jsonl", "chunk": b64(lines + b"[1]\n"), "final": True})
            assert err.code == ErrorCode.DATASET_BAD_ROWS and err.data["bad_rows"] == [{"line": 3, "reason": "not a JSON object but an array"}]
            err = await rpc_error(rpc, "dataset_upload", {"name": "e", "format": "csv", "chunk": "", "final": True})
            assert err.code == ErrorCode.DATASET_UNREADABLE and err.message == "the file is empty"
        assert list((node.store.root / "incoming").iterdir()) == []
