"""The client library against a real two-node testnet (daemon processes).

Uploads larger than one chunk, registered once however often they are
uploaded; new bytes under a name make its next version; an upload survives
its connection being cut (a real TCP proxy that closes it mid-file); the
planning document's example and the README's run twice in a row as scripts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

from node.base.keys import Identity
from node.sdk.client import Client
from node.testnet import layout, processes
from tests.support import free_port, wait_until

pytestmark = pytest.mark.timeout(900)
REPO = Path(__file__).resolve().parents[2]
SALES = REPO / "node" / "data" / "sales.csv"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    """One validator and one more node, both gateway, processing and storage."""
    directory = tmp_path_factory.mktemp("sdk-net")
    plans = layout.plan_testnet(1, non_validators=1, seed="sdk-client")
    layout.write_testnet(directory, plans)
    config = directory / "node1.toml"  # node1 also serves the HTTP API
    http = f"127.0.0.1:{free_port()}"
    config.write_text(config.read_text().replace("[services]\n", f'[services]\nhttp_listen = "{http}"\n'))
    processes.up(directory)
    try:
        probe = Client(plans[0].address, Identity.from_label("sdk-probe"))
        wait_until(lambda: probe.health()["processing_nodes"] >= 2, 180, interval=1, what="two processing nodes registered")
        yield directory, plans, f"http://{http}"
    finally:
        processes.down(directory)


def tenant(tmp_path: Path, label: str) -> Path:
    key = tmp_path / f"{label}.key"
    Identity.from_label(f"sdk-client/{label}").write(key)
    return key


def write_csv(path: Path, size: int, seed: int = 0) -> Path:
    """A CSV of at least ``size`` bytes (day, product, units), written in pieces."""
    with path.open("w") as out:
        out.write("day,product,units\n")
        written, i = 0, 0
        while written < size:
            line = f"2025-{1 + i % 12:02d}-{1 + i % 28:02d},p{(i * 7 + seed) % 13},{(i * 31 + seed) % 1000}\n"
            out.write(line)
            written += len(line)
            i += 1
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_uploads_register_once_and_names_have_versions(testnet, tmp_path):
    _, plans, _ = testnet
    client = Client(plans[0].address, tenant(tmp_path, "versions"))
    big = write_csv(tmp_path / "events.csv", int(3.5 * MiB))  # four chunks
    seen: list[tuple[int, int]] = []
    first = client.upload_dataset(big, progress=lambda done, total: seen.append((done, total)))
    assert first["digest"] == sha256(big) and first["name"] == "events" and first["version"] == 1
    assert first["registered"]["digest"] == first["digest"] and first["row_count"] > 100_000
    assert len(seen) >= 4 and seen[-1] == (big.stat().st_size, big.stat().st_size)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)

    # The same file again: the same dataset, nothing sent, no second registration on chain.
    seen.clear()
    again = client.upload_dataset(big, progress=lambda done, total: seen.append((done, total)))
    assert (again["digest"], again["version"], again["deduplicated"]) == (first["digest"], 1, True)
    assert seen == [(big.stat().st_size, big.stat().st_size)]
    assert again["registered"]["tx"] == first["registered"]["tx"]
    assert [(r["name"], r["version"]) for r in client.registrations("events")] == [("events", 1)]

    # New bytes under the same name: version 2; the name means the latest.
    other = write_csv(tmp_path / "events-2.csv", 200_000, seed=5)
    second = client.upload_dataset(other, name="events")
    assert second["version"] == 2 and second["digest"] == sha256(other)
    assert client.find_dataset("events")["digest"] == second["digest"]
    found_first = client.find_dataset("events@1")
    assert found_first["digest"] == first["digest"] and found_first["version"] == 1
    assert client.find_dataset(first["digest"])["name"] == "events"
    assert [(r["version"], r["latest"]) for r in client.registrations("events")] == [(1, False), (2, True)]


def test_an_http_upload_is_registered_when_a_job_names_it(testnet, tmp_path):
    """A dataset stored without registering (as a curl upload leaves it) is
    registered with its own data.store receipt the first time the client resolves it."""
    from node.base.keys import Identity as Id

    directory, plans, _ = testnet
    key = tenant(tmp_path, "curl")
    import base64

    import trio

    from node.p2p.client import connect_to_node

    data = b"day,product,units\n2025-01-01,apples,3\n2025-01-02,pears,5\n"

    async def store_only() -> dict:
        async with connect_to_node(plans[0].address, identity=Id.load(key)) as rpc:
            return await rpc.call("dataset_upload", {"name": "raw", "format": "csv", "final": True,
                                                     "chunk": base64.b64encode(data).decode()})

    stored = trio.run(store_only)
    client = Client(plans[0].address, key)
    assert client.registrations() == []
    found = client.find_dataset(stored["digest"])
    assert found["name"] == "raw" and found["version"] == 1 and found["digest"] == hashlib.sha256(data).hexdigest()
    job_id = client.submit_job(job_type="sql", data_source={"raw": "raw"}, parameters={"query": "SELECT count(*) AS n FROM raw"})
    result = client.wait_for_completion(job_id, timeout=240)
    assert result.state == "verified" and result.rows == [[2]], result


class CuttingProxy:
    """A TCP proxy to a node that closes its first connection once the client
    has sent ``cut_after`` bytes through it (later connections pass untouched)."""

    def __init__(self, port: int, cut_after: int) -> None:
        self.target, self.cut_after = port, cut_after
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            limit = self.cut_after if self.connections == 1 else None
            pair = (downstream, upstream)
            threading.Thread(target=self._pump, args=(downstream, upstream, limit, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, None, pair), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, limit: int | None, pair: tuple[socket.socket, ...]) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                sent += len(data)
                if limit is not None and sent >= limit:
                    break
        except OSError:
            pass
        for sock in pair:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.server.close()


def test_an_upload_resumes_after_its_connection_is_cut(testnet, tmp_path):
    _, plans, _ = testnet
    node = plans[1]
    proxy = CuttingProxy(node.port, cut_after=4 * MiB)  # about three chunks of base64 in
    try:
        client = Client(f"/ip4/127.0.0.1/tcp/{proxy.port}/p2p/{node.identity.peer_id}", tenant(tmp_path, "resume"))
        data = write_csv(tmp_path / "cut.csv", int(6.5 * MiB), seed=3)
        seen: list[int] = []
        uploaded = client.upload_dataset(data, progress=lambda done, total: seen.append(done))
    finally:
        proxy.close()
    assert proxy.connections == 2  # cut once, resumed on a second connection
    assert uploaded["digest"] == sha256(data) and uploaded["version"] == 1
    assert 0 not in seen  # it never started over: after the cut it went on from what the node held
    assert len(seen) < 12 and seen[-1] == data.stat().st_size


def test_memory_stays_flat_in_the_file_size(testnet, tmp_path):
    _, plans, _ = testnet
    client = Client(plans[0].address, tenant(tmp_path, "memory"))
    data = write_csv(tmp_path / "flat.csv", 24 * MiB, seed=9)
    tracemalloc.start()
    try:
        uploaded = client.upload_dataset(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert uploaded["digest"] == sha256(data)
    assert peak < 12 * MiB, f"peak {peak / MiB:.1f} MiB while uploading {data.stat().st_size / MiB:.0f} MiB"


PLANNING_EXAMPLE = '''
from node.sdk.client import Client
client = Client()

# Submit analytics job
job_id = client.submit_job(
    job_type="trend_analysis",
    data_source="sales_data.csv",
    parameters={"window": "30d"}
)

# Wait for completion
result = client.wait_for_completion(job_id)

# Verify receipt
receipt_valid = client.verify_receipt(result.receipt_hash)

import json
print(json.dumps({"state": result.state, "receipt_valid": receipt_valid, "columns": result.columns,
                  "rows": len(result.rows), "params": client.status(job_id)["params"],
                  "inputs": client.status(job_id)["inputs"]}))
'''


def run_script(code: str, cwd: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_planning_documents_example_runs_twice(testnet, tmp_path):
    directory, plans, _ = testnet
    shutil.copy(SALES, tmp_path / "sales_data.csv")
    env = {"METANODE_NODE": plans[0].address, "METANODE_KEY": str(tenant(tmp_path, "planning")),
           "METANODE_GENESIS": str(directory / "genesis.toml")}
    runs = [run_script(PLANNING_EXAMPLE, tmp_path, env) for _ in range(2)]
    for run in runs:
        assert run["state"] == "verified" and run["receipt_valid"] is True, run
        assert run["params"] == {"input": "sales_data", "time_column": "day", "value_column": "units",
                                 "group_by": "product", "window": "30d"}
        assert run["rows"] > 0
    assert runs[0]["inputs"] == runs[1]["inputs"]  # the second run found the file already registered
    client = Client(plans[0].address, Path(env["METANODE_KEY"]))
    assert [(r["name"], r["version"]) for r in client.registrations()] == [("sales_data", 1)]


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    [block] = [b for b in blocks if "Client(\"/ip4/" in b]
    return block


def test_the_readme_example_runs_twice(testnet, tmp_path):
    directory, plans, _ = testnet
    shutil.copy(SALES, tmp_path / "sales.csv")
    shutil.copy(directory / "genesis.toml", tmp_path / "genesis.toml")
    tenant(tmp_path, "readme").rename(tmp_path / "tenant.key")
    code = readme_example().replace("/ip4/127.0.0.1/tcp/7102/p2p/12D3KooW...", plans[1].address)
    code += "\nimport json; print(json.dumps({'state': status['state'], 'rows': status['result']['rows']}))\n"
    runs = [run_script(code, tmp_path, {}) for _ in range(2)]
    assert runs[0] == runs[1] and runs[0]["state"] == "verified", runs


def test_http_and_p2p_uploads_end_in_the_same_registered_state(testnet, tmp_path):
    from node.sdk.http_client import HttpClient

    _, plans, http = testnet
    key = tenant(tmp_path, "http")
    data = write_csv(tmp_path / "both.csv", 300_000, seed=11)
    over_http = HttpClient(http, key)
    first = over_http.upload_dataset(data)
    again = over_http.upload_dataset(data)
    assert (first["name"], first["version"]) == (again["name"], again["version"]) == ("both", 1)
    over_p2p = Client(plans[1].address, key).upload_dataset(data)
    assert (over_p2p["digest"], over_p2p["version"]) == (first["digest"], 1)
    assert [(r["name"], r["version"]) for r in Client(plans[1].address, key).registrations()] == [("both", 1)]
    # Stored over HTTP without registering: registered when the client first names it.
    raw = write_csv(tmp_path / "later.csv", 10_000, seed=12)
    stored = over_http.upload_dataset(raw, register=False)
    assert over_http.registration("later") is None
    assert over_http.ensure_registered(over_http.dataset(stored["digest"]))["version"] == 1
