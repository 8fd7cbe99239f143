"""dataset_upload / dataset_list / dataset_get through a real RPC stream."""

from __future__ import annotations

import base64
import hashlib
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
                assert done["schema"] == [{"name": "day", "type": "DATE"}, {"name": "amount", "type": "BIGINT"}]
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
                assert err.code == ErrorCode.DATASET_UNREADABLE and "csv" in err.message
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
