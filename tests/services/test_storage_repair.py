"""Storage repairs itself: a replica that went bad or missing is fetched again from a
verified peer, and nodes report the replicas they should hold and do not have.

In-process (real loopback libp2p hosts, real files): the repair loop's scrub finds
a flipped byte, quarantines the copy and fetches a good one; a replica no peer can
give is listed as under-replicated and repaired once a good copy exists again;
inputs for processing are re-hashed before use and a node-local fault is told apart
from an input no peer can give. Process-level: the same on a four-node testnet,
seen through ``metanode mesh status``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import trio

from node.roles.processing import CouldNotRun, storage_resolver
from node.roles.storage import RepairLoop, RepairSettings
from node.sdk.client import Client
from node.testnet import layout, processes
from tests.services.test_storage_support import StorageNode, storage_nodes
from tests.support import run_cli, wait_until

TENANT = b"t" * 32
FAST = RepairSettings(interval_s=0.2, concurrency=2, bytes_per_s=8 * 1024 * 1024, scrub_bytes_per_s=8 * 1024 * 1024)


def csv_bytes(rows: int) -> bytes:
    return ("id,name\n" + "".join(f"{i},n{i}\n" for i in range(rows))).encode()


def flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def fast_repair(node: StorageNode, peers: list[StorageNode]) -> RepairLoop:
    node.service.repair = RepairLoop(node.service, FAST, peers=lambda: [p.peer_id for p in peers])
    return node.service.repair


async def until(predicate, what: str, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


def quarantined(node: StorageNode) -> list[str]:
    return sorted(p.name for p in (node.store.root / "quarantine").iterdir())


async def test_a_corrupt_replica_is_quarantined_and_fetched_again(tmp_path: Path):
    async with storage_nodes(tmp_path, 3) as (a, b, c):
        info = await a.service.store_dataset(TENANT, "sales", "csv", [csv_bytes(20_000)], peers=[b.peer_id])
        digest = info.digest
        assert info.nodes == sorted([a.peer_id, b.peer_id])
        # Both took it as a replica: the uploader, and the node it was pushed to.
        assert [d for d, _ in a.service.holdings.all()] == [digest] == [d for d, _ in b.service.holdings.all()]
        assert c.service.holdings.all() == []
        flip_a_byte(b.store.path(digest))
        repair = fast_repair(b, [a, c])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(repair.run)
            await until(lambda: repair.repaired == 1, "b repairs its replica")
            nursery.cancel_scope.cancel()
        assert b.store.verify(digest) == info.size  # a verified copy again
        assert [name.split(".")[0] for name in quarantined(b)] == [digest.hex()]  # the bad one kept aside
        assert repair.under_replicated() == {"count": 0, "datasets": []}


async def test_a_replica_no_peer_can_give_is_listed_until_a_good_copy_exists(tmp_path: Path):
    async with storage_nodes(tmp_path, 2) as (a, b):
        data = csv_bytes(5_000)
        info = await a.service.store_dataset(TENANT, "sales", "csv", [data], peers=[b.peer_id])
        digest = info.digest
        os.unlink(a.store.path(digest))  # gone here
        flip_a_byte(b.store.path(digest))  # and bad at the only other holder
        repair = fast_repair(a, [b])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(repair.run)
            await until(lambda: repair.under_replicated()["datasets"]
                        and repair.under_replicated()["datasets"][0]["attempts"] >= 2, "two failed repairs")
            report = repair.under_replicated()
            assert report["count"] == 1
            listed = report["datasets"][0]
            assert listed["digest"] == digest.hex() and listed["size"] == len(data)
            assert "no peer gave a verified copy" in listed["last_error"]
            assert not b.store.has(digest)  # b quarantined its bad copy when asked for it
            b.store.put(data)  # a good copy exists again somewhere
            await until(lambda: repair.repaired == 1, "a repairs from b", timeout=30)
            nursery.cancel_scope.cancel()
        assert a.store.read(digest) == data
        assert repair.under_replicated()["count"] == 0


async def test_a_quarantine_outside_the_scrub_starts_a_repair_at_once(tmp_path: Path):
    async with storage_nodes(tmp_path, 2) as (a, b):
        info = await a.service.store_dataset(TENANT, "sales", "csv", [csv_bytes(3_000)], peers=[b.peer_id])
        # A scrub budget of one blob per hour: only the quarantine hook can find this in time.
        a.service.repair = repair = RepairLoop(a.service, RepairSettings(interval_s=3600, scrub_bytes_per_s=1 << 16),
                                               peers=lambda: [b.peer_id])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(repair.run)
            await trio.sleep(0.3)  # the first pass is done; the next tick is an hour away
            flip_a_byte(a.store.path(info.digest))
            with pytest.raises(Exception, match="quarantined"):
                await trio.to_thread.run_sync(a.store.read, info.digest)  # a reader finds the bad copy
            await until(lambda: repair.repaired == 1, "a repairs after the quarantine")
            nursery.cancel_scope.cancel()
        assert a.store.verify(info.digest) == info.size


async def test_a_data_directory_from_before_holdings_adopts_its_catalogued_replicas(tmp_path: Path):
    async with storage_nodes(tmp_path, 2) as (a, b):
        info = await a.service.store_dataset(TENANT, "sales", "csv", [csv_bytes(100)], peers=[b.peer_id])
        a.service.holdings.release(info.digest)  # as a store written before holdings were recorded
        assert a.service.holdings.all() == []
        assert a.service.holdings.adopt_catalog(a.peer_id, since=7) == 1
        assert a.service.holdings.all() == [(info.digest, info.size)]
        assert b.service.holdings.adopt_catalog(b.peer_id, since=7) == 0  # b has no catalog row: it was pushed


async def test_processing_inputs_are_verified_and_faults_are_told_apart(tmp_path: Path):
    async with storage_nodes(tmp_path, 3) as (a, b, c):
        data = csv_bytes(4_000)
        digest = hashlib.sha256(data).digest()
        a.store.put(data)
        b.store.put(data)
        # A corrupt local copy is not used: quarantined, a good one fetched.
        flip_a_byte(a.store.path(digest))
        resolve = storage_resolver(a.service, lambda: [b.peer_id])
        path = await resolve(digest.hex())
        assert path.read_bytes() == data and len(quarantined(a)) == 1
        # This node's own fault: its blob path is a directory, so no copy can be put there.
        os.unlink(c.store.path(digest)) if c.store.has(digest) else None
        c.store.path(digest).mkdir(parents=True)
        with pytest.raises(CouldNotRun) as local:
            await storage_resolver(c.service, lambda: [b.peer_id])(digest.hex())
        assert local.value.reason == "local_fault" and "IsADirectoryError" in local.value.detail
        # Every copy corrupt: the input is unavailable (not this node's fault).
        flip_a_byte(a.store.path(digest))
        flip_a_byte(b.store.path(digest))
        with pytest.raises(CouldNotRun) as unavailable:
            await storage_resolver(a.service, lambda: [b.peer_id])(digest.hex())
        assert unavailable.value.reason == "input_unavailable"
        assert "no peer gave a verified copy" in unavailable.value.detail
        assert not a.store.has(digest) and not b.store.has(digest)


# -- process level -----------------------------------------------------------------------

@pytest.mark.timeout(600)
def test_a_testnet_repairs_replicas_and_mesh_status_lists_the_missing(tmp_path):
    directory = tmp_path / "net"
    plans = layout.plan_testnet(4, seed="storage-repair")
    layout.write_testnet(directory, plans)
    for plan in plans:  # check every second (a quarantine triggers a check at once anyway)
        config = directory / f"{plan.name}.toml"
        config.write_text(config.read_text().replace("[services]\n", "[services]\nstorage_repair_interval_s = 1.0\n"))
    key = tmp_path / "tenant.key"
    assert run_cli("keys", "init", "--out", str(key)).returncode == 0
    data = csv_bytes(2_000)
    (tmp_path / "sales.csv").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    gateway = plans[0].address
    processes.up(directory)
    try:
        from tests.services.test_job_faults import assert_alive, wait_registered

        wait_registered(gateway, key, 4)
        uploaded = Client(gateway, key).upload_dataset(tmp_path / "sales.csv", name="sales")
        assert uploaded["digest"] == digest
        holders = uploaded["nodes"]
        assert len(holders) == 2, uploaded
        by_id = {p.identity.peer_id: p for p in plans}
        first, other = (by_id[h] for h in holders)

        def blob(plan) -> Path:  # type: ignore[no-untyped-def]
            return directory / f"{plan.name}-data" / "blobs" / digest[:2] / digest[2:]

        def verified(plan) -> bool:  # type: ignore[no-untyped-def]
            path = blob(plan)
            return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest

        def mesh() -> dict:  # type: ignore[type-arg]
            done = run_cli("mesh", "status", "--node", gateway, "--json", timeout=120)
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        # 1. A flipped byte in one replica: found by the scrub, quarantined, fetched again.
        flip_a_byte(blob(other))
        wait_until(lambda: verified(other) and any((blob(other).parents[1] / "quarantine").iterdir()), 60,
                   interval=0.5, what="the corrupt replica quarantined and fetched again")

        # 2. One replica gone and the other corrupt: nobody can repair; mesh status says so.
        os.unlink(blob(other))
        flip_a_byte(blob(first))

        def listed() -> dict | None:  # type: ignore[type-arg]
            report = mesh()
            missing = {m["peer_id"] for d in report["under_replicated"] if d["digest"] == digest for m in d["missing_on"]}
            return report if missing == {first.identity.peer_id, other.identity.peer_id} else None

        report = wait_until(listed, 90, interval=1, what="both holders listed as missing the dataset")
        rows = {n["peer_id"]: n for n in report["nodes"]}
        assert rows[first.identity.peer_id]["under_replicated"] == 1 == rows[other.identity.peer_id]["under_replicated"]
        table = run_cli("mesh", "status", "--node", gateway, timeout=120).stdout
        assert "under-replicated datasets (1):" in table and digest in table, table

        # 3. A good copy back at one holder: the other repairs from it, and the list empties.
        blob(first).write_bytes(data)
        wait_until(lambda: verified(other) and verified(first), 90, interval=0.5, what="both replicas whole again")
        wait_until(lambda: mesh()["under_replicated"] == [], 60, interval=1, what="no under-replicated dataset")
        assert "no under-replicated datasets" in run_cli("mesh", "status", "--node", gateway, timeout=120).stdout
        assert_alive(directory, [p.name for p in plans])
    finally:
        processes.down(directory)
