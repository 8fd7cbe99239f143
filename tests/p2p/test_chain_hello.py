"""The chain handshake: nodes on different genesis files refuse each other, naming what differs;
on the same genesis they peer; clients that never speak it keep working."""

from __future__ import annotations

import dataclasses

import multiaddr
import pytest
import structlog
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.base.codec import encode
from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.p2p.chain_hello import (
    AGREED,
    CHAIN_HELLO_PROTOCOL,
    HELLO_TAG,
    MAX_HELLO_BYTES,
    REFUSED,
    UNCHECKED,
    ChainHello,
    ChainIdentity,
    HelloError,
    differences,
    mismatch_message,
    summarize,
)
from node.p2p.client import call_node
from node.p2p.framing import FramedStream
from node.p2p.host import build_host, running_host
from tests.support import free_port, node_addr, running_daemon, write_node_config

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
GATED = "/metanode/test-gated/1.0.0"
T0 = 1767225600000


def genesis(**changes) -> Genesis:
    validators = tuple(Identity.from_label(f"hello-validator-{i}").public_key for i in range(4))
    return dataclasses.replace(Genesis(chain_id="hello-test", genesis_time_ms=T0, validators=validators), **changes)


def identity_of(g: Genesis) -> ChainIdentity:
    return ChainIdentity.of(g.chain_id, g.hash, g.full_value())


# -- the message ------------------------------------------------------------------------------

def test_differences_name_each_key_theirs_first():
    ours = genesis()
    theirs = genesis(rules={"max_attempts": 5}, block_period_ms=500,
                     validators=ours.validators[:3] + (Identity.from_label("other").public_key,))
    found = differences(identity_of(theirs), identity_of(ours))
    assert found == ["block_period_ms 500 != 1000", "rules.max_attempts 5 != 3", "validators differ"]
    fewer = genesis(validators=ours.validators[:3])
    assert differences(identity_of(fewer), identity_of(ours)) == ["validators differ (3 keys, ours 4)"]
    message = mismatch_message("12D3KooWpeer", identity_of(theirs), identity_of(ours))
    assert message.startswith(f"peer 12D3KooWpeer runs genesis {theirs.hash.hex()[:16]}... of chain 'hello-test', "
                              f"not ours {ours.hash.hex()[:16]}...")
    assert message.endswith(": block_period_ms 500 != 1000, rules.max_attempts 5 != 3, validators differ")


def test_identity_round_trips_and_stays_small_with_thousands_of_admitted_keys():
    from node.consensus.genesis import Admission

    keys = tuple(Identity.from_label(f"tenant-{i}").public_key for i in range(4096))
    big = genesis(admission=Admission("open", "allow-list", (), keys))
    identity = identity_of(big)
    frame = identity.encode()
    assert len(frame) < 2048 < MAX_HELLO_BYTES  # lists travel as [count, hash]
    assert ChainIdentity.decode(frame) == identity
    assert identity.summary["admission.admitted_tenants"][0] == 4096


@pytest.mark.parametrize("value, problem", [
    (["other/tag", "c", bytes(32), {}], "expected ['metanode/chain-hello/v1'"),
    ([HELLO_TAG, "", bytes(32), {}], "chain_id"),
    ([HELLO_TAG, "c", bytes(31), {}], "genesis_hash"),
    ([HELLO_TAG, "c", bytes(32), {"k": True}], "summary['k']"),
    ([HELLO_TAG, "c", bytes(32), {"k": [1, b"short"]}], "summary['k']"),
    ([HELLO_TAG, "c", bytes(32), {f"k{i}": i for i in range(300)}], "at most 256 entries"),
])
def test_malformed_hello_is_refused_with_a_reason(value, problem):
    with pytest.raises(HelloError, match=problem.replace("[", r"\[")):
        ChainIdentity.decode(encode(value))
    with pytest.raises(HelloError, match="deterministic CBOR"):
        ChainIdentity.decode(b"\xff\x00")


def test_summary_flattens_maps_and_hashes_lists():
    flat = summarize({"a": 1, "m": {"b": "x", "keys": [b"k" * 32]}})
    assert flat["a"] == 1 and flat["m.b"] == "x"
    assert flat["m.keys"][0] == 1 and len(flat["m.keys"][1]) == 32


# -- two real hosts -----------------------------------------------------------------------------

class _Host:
    """A hardened host with the chain handshake of ``g`` (None: no handshake) and a gated test protocol."""

    def __init__(self, label: str, g: Genesis | None) -> None:
        self.identity = Identity.from_label(label)
        self.host = build_host(self.identity, max_connections=16)
        self.hello = ChainHello(self.host, identity_of(g), gated_protocols=[GATED], timeout=3.0) if g else None
        self.gated_streams = 0

        async def gated(stream) -> None:
            self.gated_streams += 1
            await stream.close()

        self.host.set_stream_handler(GATED, gated)


async def _pair(a: _Host, b: _Host, body) -> None:
    async with running_host(a.host, [LOOPBACK]), running_host(b.host, [LOOPBACK]), trio.open_nursery() as nursery:
        for side in (a, b):
            if side.hello is not None:
                await nursery.start(side.hello.run)
        await body(nursery)
        nursery.cancel_scope.cancel()


def _muxed(side: _Host, other: _Host):
    conns = side.host.get_network().get_connections(other.host.get_id())
    return conns[0].muxed_conn if conns else None


async def _verdict(side: _Host, other: _Host) -> str:
    with trio.fail_after(10):
        while True:
            muxed = _muxed(side, other)
            if muxed is not None and side.hello.verdict_of(muxed) != "pending":
                return side.hello.verdict_of(muxed)
            await trio.sleep(0.02)


async def test_hosts_on_different_genesis_refuse_each_other_and_keep_the_gated_streams_out():
    ours, theirs = genesis(), genesis(rules={"max_attempts": 5})
    a, b = _Host("hello-a", ours), _Host("hello-b", theirs)

    async def body(nursery) -> None:
        addr = b.host.get_addrs()[0]
        await a.host.connect(info_from_p2p_addr(addr))
        # a opens a consensus-like stream at once, racing the handshake: b must not serve it.
        with trio.move_on_after(5):
            try:
                stream = await a.host.new_stream(b.host.get_id(), [GATED])
                await stream.read(1)
            except Exception:
                pass
        with trio.fail_after(10):
            while a.hello.refused < 1 or b.hello.refused < 1:
                await trio.sleep(0.02)
        with trio.fail_after(10):
            while _muxed(a, b) is not None or _muxed(b, a) is not None:
                await trio.sleep(0.02)
        assert b.gated_streams == 0
        assert a.hello.last_refusal == (
            f"peer {b.identity.peer_id} runs genesis {theirs.hash.hex()[:16]}... of chain 'hello-test', "
            f"not ours {ours.hash.hex()[:16]}... of chain 'hello-test': rules.max_attempts 5 != 3")
        assert b.hello.last_refusal.endswith(": rules.max_attempts 3 != 5")

    await _pair(a, b, body)


async def test_hosts_on_the_same_genesis_peer_and_serve_the_gated_streams():
    a, b = _Host("hello-c", genesis()), _Host("hello-d", genesis())

    async def body(nursery) -> None:
        await a.host.connect(info_from_p2p_addr(b.host.get_addrs()[0]))
        assert await _verdict(a, b) == AGREED and await _verdict(b, a) == AGREED
        stream = await a.host.new_stream(b.host.get_id(), [GATED])
        with trio.fail_after(10):
            while b.gated_streams < 1:
                await trio.sleep(0.02)
        await stream.close()
        assert _muxed(a, b) is not None and a.hello.refused == b.hello.refused == 0

    await _pair(a, b, body)


async def test_a_gated_stream_waits_for_the_verdict_and_a_refused_peer_never_reaches_its_handler():
    """The peer opens a consensus-like stream before its (slow) hello answer says it
    runs another genesis: the stream waits for the verdict, then is reset unserved."""
    ours, theirs = genesis(), genesis(genesis_time_ms=T0 + 86_400_000)
    b, slow = _Host("hello-i", ours), _Host("hello-j", None)

    async def answer_late(stream) -> None:
        framed = FramedStream(stream, MAX_HELLO_BYTES)
        await framed.read_frame()
        await trio.sleep(1.0)
        await framed.write_frame(identity_of(theirs).encode())
        await framed.close()

    slow.host.set_stream_handler(CHAIN_HELLO_PROTOCOL, answer_late)

    async def body(nursery) -> None:
        await slow.host.connect(info_from_p2p_addr(b.host.get_addrs()[0]))
        stream = await slow.host.new_stream(b.host.get_id(), [GATED])
        with trio.fail_after(10):
            with pytest.raises(Exception):  # reset unserved, then the connection closes
                while await stream.read(1):
                    pass
                raise EOFError("closed")
            while b.hello.refused_streams < 1 or _muxed(b, slow) is not None:
                await trio.sleep(0.02)
        assert b.gated_streams == 0
        assert b.hello.last_refusal.endswith(": genesis_time_ms 1767312000000 != 1767225600000")

    await _pair(b, slow, body)


async def test_a_host_without_the_handshake_is_not_refused():
    """Only a peer that answers with another identity is refused: one that does not
    speak the protocol (a node without a genesis, an older build) is let in, unchecked."""
    a, silent = _Host("hello-e", genesis()), _Host("hello-f", None)

    async def body(nursery) -> None:
        await silent.host.connect(info_from_p2p_addr(a.host.get_addrs()[0]))
        await trio.sleep(0.5)
        # An inbound connection that opens no gated stream (a client, a probe) is not
        # greeted at all: a flood of them must not make us open a stream on each.
        muxed = _muxed(a, silent)
        assert muxed is not None and a.hello.verdict_of(muxed) == "pending"
        stream = await silent.host.new_stream(a.host.get_id(), [GATED])
        with trio.fail_after(10):
            while a.gated_streams < 1:
                await trio.sleep(0.02)
        assert await _verdict(a, silent) == UNCHECKED
        await stream.close()
        assert a.hello.refused == 0

    await _pair(a, silent, body)


async def test_a_garbled_hello_is_reset_and_refuses_nobody():
    a, other = _Host("hello-g", genesis()), _Host("hello-h", None)

    async def body(nursery) -> None:
        await other.host.connect(info_from_p2p_addr(a.host.get_addrs()[0]))
        framed = FramedStream(await other.host.new_stream(a.host.get_id(), [CHAIN_HELLO_PROTOCOL]), MAX_HELLO_BYTES)
        await framed.write_frame(b"not cbor at all")
        with trio.fail_after(10):
            with pytest.raises(Exception):
                while await framed.read_frame() is not None:
                    pass
                raise EOFError("closed")
        assert a.hello.refused == 0 and _muxed(a, other) is not None

    await _pair(a, other, body)


# -- two daemons --------------------------------------------------------------------------------

def _daemon_configs(node_dir, genesis_a: Genesis, genesis_b: Genesis):
    paths = []
    for name, g in (("a", genesis_a), ("b", genesis_b)):
        path = node_dir / f"genesis-{name}.toml"
        g.write(path)
        paths.append(path)
    port_b = free_port()
    cfg_b = write_node_config(node_dir, "b", port=port_b, genesis=paths[1])
    cfg_a = write_node_config(node_dir, "a", peers=[node_addr(port_b, "b")], genesis=paths[0],
                              network={"redial_backoff_base": 0.2, "redial_backoff_cap": 1.0})
    return cfg_a, cfg_b, node_addr(port_b, "b").rsplit("/", 1)[1]


async def test_daemons_on_different_genesis_refuse_to_peer_and_warn_once(node_dir):
    theirs = genesis(rules={"max_attempts": 5})
    cfg_a, cfg_b, b_id = _daemon_configs(node_dir, genesis(), theirs)
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(cfg_b) as b, running_daemon(cfg_a) as a:
            with trio.fail_after(30):
                while a.chain_hello.refused < 3:  # a keeps redialling its persistent peer, with backoff
                    await trio.sleep(0.05)
            assert b.chain_hello.refused >= 1
            # The CLI's light dialer never speaks the handshake: it still gets answers.
            status = await call_node(b.listen_addrs()[0], "node_status")
            assert status["peer_id"] == b_id
    warnings = [e for e in logs if e.get("event") == "peer runs another genesis; connection closed"
                and e.get("log_level") == "warning"]
    a_warned = [e for e in warnings if e["peer"] == b_id]
    assert len(a_warned) == 1, a_warned  # once per peer, however often it is redialled
    assert a_warned[0]["detail"].endswith(": rules.max_attempts 5 != 3")


async def test_daemons_on_the_same_genesis_peer(node_dir):
    cfg_a, cfg_b, b_id = _daemon_configs(node_dir, genesis(), genesis())
    async with running_daemon(cfg_b) as b, running_daemon(cfg_a) as a:
        with trio.fail_after(30):
            while b_id not in a.peers.peers:
                await trio.sleep(0.05)
            while AGREED not in [a.chain_hello.verdict_of(c.muxed_conn) for c in _conns(a, b)]:
                await trio.sleep(0.05)
        assert a.chain_hello.refused == b.chain_hello.refused == 0
        assert REFUSED not in [b.chain_hello.verdict_of(c.muxed_conn) for c in _conns(b, a)]


def _conns(side, other):
    from libp2p.peer.id import ID

    return side.host.get_network().get_connections(ID.from_base58(other.identity.peer_id))
