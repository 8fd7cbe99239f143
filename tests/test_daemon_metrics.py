"""A daemon with [metrics] listen serves Prometheus figures that follow the chain and RPC."""

from __future__ import annotations

import time

import trio
from prometheus_client.parser import text_string_to_metric_families

from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.p2p.client import connect_to_node
from tests.support import running_daemon, write_node_config


async def scrape(port: int) -> dict[tuple[str, tuple], float]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    body = data.split(b"\r\n\r\n", 1)[1].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(body) for s in f.samples}


async def test_metrics_follow_blocks_and_rpc(node_dir):
    identity = Identity.from_label("test-node-m")
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id="metrics-test", genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=100, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    cfg = write_node_config(node_dir, "m", roles=["validator"], genesis=genesis, extra='\n[metrics]\nlisten = "127.0.0.1:0"\n')
    async with running_daemon(cfg) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0]) as rpc:
            status = await rpc.call("node_status")
            assert status["metrics"] == f"127.0.0.1:{daemon.metrics_port}"
            with trio.fail_after(30):
                while (await rpc.call("chain_head"))["height"] < 3:
                    await trio.sleep(0.1)
            samples = await scrape(daemon.metrics_port)
    assert samples[("metanode_height", ())] >= 3
    assert samples[("metanode_rpc_calls_total", (("method", "chain_head"),))] >= 1
    assert samples[("metanode_peers", ())] >= 0
    assert ("metanode_mempool_transactions", ()) in samples


def test_confined_daemon_serves_metrics_and_stops_cleanly(tmp_path):
    """The daemon confines itself (Landlock, seccomp) before the metrics server
    starts its thread: that server still answers, and SIGTERM stops the daemon
    with exit code 0 (the server thread joined, its socket closed)."""
    import json
    import signal
    import urllib.request

    from tests.support import DaemonProcess, free_port, node_addr, rpc_json, wait_until

    port, metrics_port = free_port(), free_port()
    cfg = write_node_config(tmp_path / "node", "c", port=port, roles=["gateway"], service_policy=None,
                            extra=f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    addr = node_addr(port, "c")
    with DaemonProcess(cfg) as proc:
        status = wait_until(lambda: rpc_json(addr, "node_status"), 60, what="daemon")
        assert {"landlock", "seccomp"} <= set(status["cage"]["layers"]), json.dumps(status["cage"])
        assert status["metrics"] == f"127.0.0.1:{metrics_port}"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
            body = answer.read().decode()
        assert "metanode_height" in body and "metanode_rpc_calls_total" in body
        proc.signal(signal.SIGTERM)
        assert proc.proc.wait(30) == 0, proc.log()[-2000:]
    assert "Traceback" not in proc.log()
