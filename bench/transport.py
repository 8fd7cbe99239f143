"""BPCI transport benchmark: the hardened libp2p host beside plain trio TCP.

Measures in one run, on loopback, for both:
  * 100-byte request/response round trip (median, p99), framed as BPCI frames;
  * bulk throughput: 64 MiB through one stream (MB/s);
  * connection set-up (TCP connect; for BPCI also Noise XX + yamux + stream).
and prints the ratios next to the goals of the performance issue (16)
(round trip within 5x of plain TCP, bulk >= 250 MB/s on one stream).

    python bench/transport.py            # full run
    python bench/transport.py --smoke    # tiny sizes, for CI
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.base.keys import Identity  # noqa: E402
from node.p2p.framing import FramedStream, encode_frame  # noqa: E402
from node.p2p.host import build_host, running_host  # noqa: E402

ECHO = TProtocol("/metanode/bench-echo/1.0.0")
SINK = TProtocol("/metanode/bench-sink/1.0.0")
CHUNK = 64 * 1024


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- plain trio TCP -----------------------------------------------------------
async def tcp_figures(rounds: int, bulk_bytes: int, connects: int) -> dict[str, float]:
    async def echo(stream: trio.SocketStream) -> None:
        framed = _TcpFramed(stream)
        while (frame := await framed.read_frame()) is not None:
            await stream.send_all(encode_frame(frame))

    async def sink(stream: trio.SocketStream) -> None:
        got = 0
        while got < bulk_bytes:
            data = await stream.receive_some(256 * 1024)
            if not data:
                return
            got += len(data)
        await stream.send_all(b"k")

    out: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        echo_listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        sink_listeners = await nursery.start(partial(trio.serve_tcp, sink, 0, host="127.0.0.1"))
        echo_port = echo_listeners[0].socket.getsockname()[1]
        sink_port = sink_listeners[0].socket.getsockname()[1]

        stream = await trio.open_tcp_stream("127.0.0.1", echo_port)
        framed = _TcpFramed(stream)
        payload = b"x" * 100
        rtts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await stream.send_all(encode_frame(payload))
            await framed.read_frame()
            rtts.append(time.perf_counter() - t0)
        await stream.aclose()
        out["rtt_median_us"] = statistics.median(rtts) * 1e6
        out["rtt_p99_us"] = pct(rtts, 0.99) * 1e6

        stream = await trio.open_tcp_stream("127.0.0.1", sink_port)
        block = b"\x00" * CHUNK
        t0, c0 = time.perf_counter(), cpu_now()
        sent = 0
        while sent < bulk_bytes:
            await stream.send_all(block)
            sent += len(block)
        await stream.receive_some(1)
        out["bulk_mb_s"] = bulk_bytes / (time.perf_counter() - t0) / 1e6
        out["bulk_cpu_ms_per_mb"] = (cpu_now() - c0) / (bulk_bytes / 1e6) * 1000
        await stream.aclose()

        setups = []
        for _ in range(connects):
            t0 = time.perf_counter()
            s = await trio.open_tcp_stream("127.0.0.1", echo_port)
            await s.send_all(encode_frame(payload))
            await _TcpFramed(s).read_frame()
            setups.append(time.perf_counter() - t0)
            await s.aclose()
        out["connect_ms"] = statistics.median(setups) * 1e3
        nursery.cancel_scope.cancel()
    return out


class _TcpFramed:
    def __init__(self, stream: trio.SocketStream) -> None:
        from node.p2p.framing import FrameDecoder

        self.stream, self.decoder = stream, FrameDecoder()
        self.ready: list[bytes] = []

    async def read_frame(self) -> bytes | None:
        while not self.ready:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.ready.extend(self.decoder.feed(data))
        return self.ready.pop(0)


# -- BPCI -----------------------------------------------------------------------
async def bpci_figures(rounds: int, bulk_bytes: int, connects: int) -> dict[str, float]:
    server = build_host(Identity.from_label("bench-server"))

    async def echo(stream: Any) -> None:
        framed = FramedStream(stream)
        while (frame := await framed.read_frame()) is not None:
            await framed.write_frame(frame)
        await framed.close()

    async def sink(stream: Any) -> None:
        got = 0
        while got < bulk_bytes:
            data = await stream.read(1024 * 1024)
            if not data:
                return
            got += len(data)
        await stream.write(b"k")
        await stream.close()

    server.set_stream_handler(ECHO, echo)
    server.set_stream_handler(SINK, sink)
    out: dict[str, float] = {}
    async with running_host(server, [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        info = info_from_p2p_addr(server.get_addrs()[0])
        client = build_host(Identity.from_label("bench-client"))
        async with running_host(client, []):
            await client.connect(info)
            framed = FramedStream(await client.new_stream(info.peer_id, [ECHO]))
            payload = b"x" * 100
            rtts = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                await framed.write_frame(payload)
                await framed.read_frame()
                rtts.append(time.perf_counter() - t0)
            await framed.close()
            out["rtt_median_us"] = statistics.median(rtts) * 1e6
            out["rtt_p99_us"] = pct(rtts, 0.99) * 1e6

            stream = await client.new_stream(info.peer_id, [SINK])
            block = b"\x00" * CHUNK
            t0, c0 = time.perf_counter(), cpu_now()
            sent = 0
            while sent < bulk_bytes:
                await stream.write(block)
                sent += len(block)
            await stream.read(1)
            out["bulk_mb_s"] = bulk_bytes / (time.perf_counter() - t0) / 1e6
            # Both ends run in this one process: CPU per MB moved, sender and receiver together.
            out["bulk_cpu_ms_per_mb"] = (cpu_now() - c0) / (bulk_bytes / 1e6) * 1000
            await stream.close()

        setups = []
        for i in range(connects):
            fresh = build_host(Identity.from_label(f"bench-client-{i}"))
            async with running_host(fresh, []):
                t0 = time.perf_counter()
                await fresh.connect(info)
                f = FramedStream(await fresh.new_stream(info.peer_id, [ECHO]))
                await f.write_frame(payload)
                await f.read_frame()
                setups.append(time.perf_counter() - t0)
                await f.close()
        out["connect_ms"] = statistics.median(setups) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object (bench/run_all.py)")
    args = parser.parse_args()
    rounds, bulk, connects = (50, 2 * 1024 * 1024, 3) if args.smoke else (2000, 64 * 1024 * 1024, 30)

    tcp = trio.run(tcp_figures, rounds, bulk, connects)
    bpci = trio.run(bpci_figures, rounds, bulk, connects)
    if args.json:
        import json

        print(json.dumps({"bench": "transport", "smoke": args.smoke, "bpci": bpci, "tcp": tcp,
                          "sizes": {"round_trips": rounds, "bulk_bytes": bulk, "connections": connects}}))
        return
    rows = [
        ("round trip 100 B, median (us)", "rtt_median_us", "<= 5x TCP", lambda b, t: b / t <= 5),
        ("round trip 100 B, p99 (us)", "rtt_p99_us", "", None),
        ("bulk, one stream (MB/s)", "bulk_mb_s", ">= 250 MB/s", lambda b, t: b >= 250),
        ("bulk CPU, both ends (ms per MB)", "bulk_cpu_ms_per_mb", "", None),
        ("connection set-up (ms)", "connect_ms", "", None),
    ]
    print(f"transport benchmark ({'smoke' if args.smoke else 'full'}: {rounds} round trips, {bulk // 2**20} MiB bulk, {connects} connections)")
    print(f"{'figure':34} {'BPCI':>12} {'plain TCP':>12} {'ratio':>8}  goal")
    for label, key, goal, ok in rows:
        b, t = bpci[key], tcp[key]
        verdict = "" if ok is None else ("  met" if ok(b, t) else "  NOT met")
        print(f"{label:34} {b:12.1f} {t:12.1f} {b / t:8.2f}  {goal}{verdict}")


if __name__ == "__main__":
    main()
