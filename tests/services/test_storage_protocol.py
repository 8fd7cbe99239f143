"""The blob protocol and replication between real in-process libp2p hosts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio
from libp2p.peer.id import ID

from node.base.codec import encode
from node.p2p.framing import FramedStream
from node.roles.storage.errors import BlobTransferError, QuotaExceeded, ReplicationFailed
from node.roles.storage.protocol import BLOB_PROTOCOL, MAX_FRAME, parse_header
from tests.services.test_storage_support import storage_nodes

TENANT = b"t" * 32


def csv_bytes(rows: int) -> bytes:
    return ("id,name\n" + "".join(f"{i},n{i}\n" for i in range(rows))).encode()


async def test_fetch_and_push_between_two_hosts(tmp_path: Path):
    async with storage_nodes(tmp_path, 2) as (a, b):
        data = os.urandom(900_000)  # several 256 KiB frames
        digest = a.store.put(data)
        size = await b.service.client.fetch(a.peer_id, digest, b.store)
        assert size == len(data) and b.store.open(digest) == data
        other = b.store.put(b"pushed content" * 10_000)
        await b.service.client.push(a.peer_id, other, b.store)
        assert a.store.open(other) == b"pushed content" * 10_000
        await b.service.client.push(a.peer_id, other, b.store)  # already held: no-op
        a.service.server.accept_push = lambda peer, request: peer != b.peer_id
        refused = b.store.put(b"unwanted")
        with pytest.raises(BlobTransferError, match="refused"):
            await b.service.client.push(a.peer_id, refused, b.store)
        assert not a.store.has(refused)
        missing = hashlib.sha256(b"nobody has this").digest()
        with pytest.raises(BlobTransferError, match="not_found"):
            await b.service.client.fetch(a.peer_id, missing, b.store)


async def test_corrupt_peer_is_detected_and_another_peer_is_used(tmp_path: Path):
    async with storage_nodes(tmp_path, 3) as (a, bad, good):
        data = os.urandom(600_000)
        digest = bad.store.put(data)
        good.store.put(data)
        path = bad.store.path(digest)
        raw = bytearray(path.read_bytes())
        raw[-10] ^= 0xFF
        path.write_bytes(bytes(raw))
        with pytest.raises(BlobTransferError):
            await a.service.client.fetch(bad.peer_id, digest, a.store)
        assert not a.store.has(digest)
        assert not bad.store.has(digest)  # the server quarantined its bad copy
        await a.service.ensure_local(digest, [bad.peer_id, good.peer_id])
        assert a.store.open(digest) == data


async def test_peer_serving_wrong_bytes_is_caught_by_the_fetcher(tmp_path: Path):
    async with storage_nodes(tmp_path, 3) as (a, liar, good):
        data = os.urandom(300_000)
        digest = good.store.put(data)

        async def serve_lies(stream):  # claims the blob, streams other bytes, ends cleanly
            framed = FramedStream(stream, MAX_FRAME)
            await framed.read_frame()
            await framed.write_frame(encode({"ok": True, "size": len(data)}))
            await framed.write_frame(os.urandom(len(data) // 2))
            await framed.write_frame(os.urandom(len(data) - len(data) // 2))
            await framed.write_frame(b"")
            await framed.close()

        liar.host.set_stream_handler(BLOB_PROTOCOL, serve_lies)
        with pytest.raises(BlobTransferError, match="digest_mismatch|hashes to"):
            await a.service.client.fetch(liar.peer_id, digest, a.store)
        assert not a.store.has(digest) and a.store.total_bytes() == 0
        assert await a.service.client.fetch_any([liar.peer_id, good.peer_id], digest, a.store) == good.peer_id
        assert a.store.open(digest) == data


async def test_peer_lying_about_content_on_push_is_refused(tmp_path: Path):
    async with storage_nodes(tmp_path, 2) as (a, b):
        claimed = hashlib.sha256(b"what I claim").digest()
        stream = await b.host.new_stream(ID.from_base58(a.peer_id), [BLOB_PROTOCOL])
        framed = FramedStream(stream, MAX_FRAME)
        await framed.write_frame(encode({"op": "put", "digest": claimed, "size": 12}))
        assert parse_header(await framed.read_frame())["stored"] is False
        await framed.write_frame(b"what I sent!")
        await framed.write_frame(b"")
        answer = parse_header(await framed.read_frame())
        assert answer == {"ok": False, "error": "digest_mismatch", "detail": answer["detail"]}
        assert not a.store.has(claimed) and a.store.total_bytes() == 0


async def test_garbage_frames_reset_only_that_stream(tmp_path: Path):
    async with storage_nodes(tmp_path, 2) as (a, b):
        digest = a.store.put(b"still served")
        garbage = [
            b"\xff\xff\xff\xff\xff\xff",  # varint prefix too long
            b"\x05abc",  # truncated frame, then end of stream
            b"\x03\xa1\x61\x78",  # a valid frame holding an unknown request
            b"\x01\x00",  # one CBOR integer instead of a map
        ]
        for junk in garbage:
            stream = await b.host.new_stream(ID.from_base58(a.peer_id), [BLOB_PROTOCOL])
            await stream.write(junk)
            if junk == b"\x05abc":
                await stream.close()
            with trio.fail_after(10):
                try:
                    got = await stream.read(100)
                except Exception:
                    got = b""
            assert got == b""  # reset, no answer
        bad_op = await b.host.new_stream(ID.from_base58(a.peer_id), [BLOB_PROTOCOL])
        framed = FramedStream(bad_op, MAX_FRAME)
        await framed.write_frame(encode({"op": "get", "digest": digest, "offset": -1}))
        with pytest.raises(Exception):
            with trio.fail_after(10):
                if await framed.read_frame() is None:
                    raise EOFError
        assert a.service.server.violations == len(garbage) + 1
        # The connection lives on: the same peer fetches over it.
        assert await b.service.client.fetch(a.peer_id, digest, b.store) == len(b"still served")
        assert len(b.host.get_network().get_connections(ID.from_base58(a.peer_id))) == 1


async def test_store_dataset_replicates_to_two_nodes(tmp_path: Path):
    async with storage_nodes(tmp_path, 3, replicas=3) as (a, b, c):
        data = csv_bytes(5000)
        info = await a.service.store_dataset(TENANT, "people", "csv", [data[:1000], data[1000:]],
                                             peers=[b.peer_id, c.peer_id], created=7)
        assert info.digest == hashlib.sha256(data).digest() and info.row_count == 5000 and info.created == 7
        assert info.schema == [{"name": "id", "type": "BIGINT", "nulls": 0}, {"name": "name", "type": "VARCHAR", "nulls": 0}]
        assert info.nodes == sorted([a.peer_id, b.peer_id, c.peer_id])
        assert b.store.open(info.digest) == data and c.store.open(info.digest) == data
        assert a.service.catalog.require(TENANT, info.digest) == info
        assert a.service.receipt_fields(info) == {"content": "dataset", "tenant": TENANT, "size": len(data), "replicas": 3}


async def test_replication_skips_failing_peer_and_fails_when_too_few(tmp_path: Path):
    async with storage_nodes(tmp_path, 3, replicas=2) as (a, b, c):
        unreachable = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"
        data = csv_bytes(10)
        info = await a.service.store_dataset(TENANT, "d", "csv", [data], peers=[unreachable, c.peer_id])
        assert info.nodes == sorted([a.peer_id, c.peer_id])
        with pytest.raises(ReplicationFailed) as exc:
            await b.service.store_dataset(TENANT, "d2", "csv", [csv_bytes(11)], peers=[unreachable])
        assert exc.value.data["held_by"] == [b.peer_id] and exc.value.data["required"] == 2
        assert b.service.catalog.list(TENANT) == [] and b.store.total_bytes() == 0


async def test_store_dataset_enforces_quota_while_receiving(tmp_path: Path):
    from node.roles.storage import QuotaPolicy

    async with storage_nodes(tmp_path, 1, replicas=1, quotas=QuotaPolicy(default_bytes=10_000)) as (a,):
        await a.service.store_dataset(TENANT, "small", "csv", [csv_bytes(100)])
        used = a.service.catalog.usage(TENANT)

        def endless():
            while True:
                yield b"1,x\n" * 256

        with pytest.raises(QuotaExceeded) as exc:
            await a.service.store_dataset(TENANT, "big", "csv", endless())
        assert exc.value.data["used"] == used and exc.value.data["limit"] == 10_000
        assert a.store.total_bytes() == used
