"""NodeMetrics: scraped over real HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import os
import socket
import threading

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from node.base.errors import ConfigError
from node.roles.metrics import MAX_RPC_METHOD_LABELS, NodeMetrics


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_scrape_matches_updates():
    m = NodeMetrics()
    m.on_block(7, 0, 0.8)
    m.on_block(8, 2, 3.0)
    m.set_mempool(5, 1234)
    m.set_peers(3)
    m.on_rpc("chain_head", True)
    m.on_rpc("chain_head", True)
    m.on_rpc("tx_submit", False)
    m.set_jobs({"pending": 2, "verified": 4})
    m.set_jobs({"verified": 5, "disputed": 1})  # pending gone: drops to 0
    m.on_cage_run(0.3, "ok")
    m.on_cage_run(1.7, "failed")
    m.set_storage_bytes(4096)
    m.on_checkpoint(0.08, 16 << 20)
    m.on_checkpoint(1.5, 17 << 20)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(m.serve, "127.0.0.1", 0)
        status, headers, body = await http_get(port, "/metrics")
        nursery.cancel_scope.cancel()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    s = samples(body.decode())
    assert s[("metanode_height", ())] == 8
    assert s[("metanode_round", ())] == 2
    assert s[("metanode_rounds_per_height_count", ())] == 2 and s[("metanode_rounds_per_height_sum", ())] == 1 + 3
    assert s[("metanode_rounds_per_height_bucket", (("le", "1.0"),))] == 1
    assert s[("metanode_time_to_finality_seconds_sum", ())] == pytest.approx(3.8)
    assert s[("metanode_time_to_finality_seconds_bucket", (("le", "1.0"),))] == 1
    assert s[("metanode_mempool_transactions", ())] == 5 and s[("metanode_mempool_bytes", ())] == 1234
    assert s[("metanode_peers", ())] == 3
    assert s[("metanode_rpc_calls_total", (("method", "chain_head"),))] == 2
    assert s[("metanode_rpc_calls_total", (("method", "tx_submit"),))] == 1
    assert s[("metanode_rpc_errors_total", (("method", "tx_submit"),))] == 1
    assert ("metanode_rpc_errors_total", (("method", "chain_head"),)) not in s
    assert s[("metanode_jobs", (("state", "pending"),))] == 0
    assert s[("metanode_jobs", (("state", "verified"),))] == 5 and s[("metanode_jobs", (("state", "disputed"),))] == 1
    assert s[("metanode_cage_runs_total", (("status", "ok"),))] == 1 and s[("metanode_cage_runs_total", (("status", "failed"),))] == 1
    assert s[("metanode_cage_run_seconds_sum", ())] == pytest.approx(2.0)
    assert s[("metanode_storage_bytes", ())] == 4096
    assert s[("metanode_db_checkpoint_seconds_count", ())] == 2 and s[("metanode_db_checkpoint_seconds_sum", ())] == pytest.approx(1.58)
    assert s[("metanode_db_checkpoint_seconds_bucket", (("le", "0.1"),))] == 1
    assert s[("metanode_db_checkpoint_log_bytes_total", ())] == 33 << 20


async def test_healthz_404_405_and_bad_requests():
    m = NodeMetrics()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(m.serve, "127.0.0.1", 0)
        assert (await http_get(port, "/healthz"))[::2] == (200, b"ok\n")
        assert (await http_get(port, "/nope"))[0] == 404
        assert (await http_get(port, "/metrics", method="POST"))[0] == 405
        head = await http_get(port, "/metrics", method="HEAD")
        assert head[0] == 200 and head[2] == b"" and int(head[1]["Content-Length"]) > 0
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"garbage\r\n\r\n")
            assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 400")
        nursery.cancel_scope.cancel()


async def test_separate_registries_do_not_share_series():
    a, b = NodeMetrics(), NodeMetrics()
    a.set_peers(4)
    assert samples(b.exposition().decode())[("metanode_peers", ())] == 0
    assert samples(a.exposition().decode())[("metanode_peers", ())] == 4


def test_rpc_method_labels_are_bounded():
    m = NodeMetrics()
    for i in range(MAX_RPC_METHOD_LABELS + 50):
        m.on_rpc(f"method_{i}", True)
    s = samples(m.exposition().decode())
    methods = {dict(k[1])["method"] for k in s if k[0] == "metanode_rpc_calls_total"}
    assert len(methods) == MAX_RPC_METHOD_LABELS + 1
    assert s[("metanode_rpc_calls_total", (("method", "other"),))] == 50


async def test_busy_port_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"metrics: cannot listen on 127.0.0.1:{port}: the port is already in use"):
            await NodeMetrics().serve("127.0.0.1", port)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_cancelled_server_stops_its_thread_and_closes_its_socket():
    """The daemon's stop cancels serve(): the server thread is joined and the
    listening socket closed (no thread, no fd, no port left behind)."""
    fds_before = _open_fds()
    m = NodeMetrics()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(m.serve, "127.0.0.1", 0)
        assert any(t.name == f"metrics 127.0.0.1:{port}" for t in threading.enumerate())
        assert (await http_get(port, "/metrics"))[0] == 200
        nursery.cancel_scope.cancel()
    assert not any(t.name.startswith("metrics ") for t in threading.enumerate()), threading.enumerate()
    assert _open_fds() <= fds_before
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    # The port is free again: a new server binds it.
    async with trio.open_nursery() as nursery:
        assert await nursery.start(m.serve, "127.0.0.1", port) == port
        nursery.cancel_scope.cancel()


async def test_head_of_healthz_and_a_silent_client_costs_only_its_connection():
    m = NodeMetrics()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(m.serve, "127.0.0.1", 0)
        status, headers, body = await http_get(port, "/healthz", method="HEAD")
        assert (status, body, headers["Content-Length"]) == (200, b"", "3")
        silent = await trio.open_tcp_stream("127.0.0.1", port)  # connects, never sends
        assert (await http_get(port, "/metrics"))[0] == 200  # others are served meanwhile
        await silent.aclose()
        nursery.cancel_scope.cancel()


def test_a_slow_checkpoint_is_logged_and_every_one_counted():
    from structlog.testing import capture_logs

    from node.roles.validator import SLOW_CHECKPOINT_S, record_checkpoint

    m = NodeMetrics()
    with capture_logs() as logs:
        record_checkpoint(m, SLOW_CHECKPOINT_S / 10, 16 << 20)
        record_checkpoint(m, SLOW_CHECKPOINT_S * 2, 16 << 20)
    s = samples(m.exposition().decode())
    assert s[("metanode_db_checkpoint_seconds_count", ())] == 2
    slow = [entry for entry in logs if entry["event"] == "a database checkpoint delayed a block"]
    assert len(slow) == 1 and slow[0]["log_level"] == "warning" and slow[0]["seconds"] == SLOW_CHECKPOINT_S * 2
