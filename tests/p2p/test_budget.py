"""The p2p resource budget (node/p2p/budget.py) and the swarm's admission on it."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.base.keys import Identity
from node.p2p.admission import ConnectionLimits
from node.p2p.budget import CONNECTIONS, PENDING, STREAMS, BudgetExceeded, ResourceBudget
from node.p2p.host import build_host, running_host

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
REPO = Path(__file__).resolve().parents[2]


# -- the books -------------------------------------------------------------------
def test_reservations_add_up_and_release_gives_everything_back():
    budget = ResourceBudget()
    budget.set_limit("system", STREAMS, 5)
    budget.set_limit("peer", STREAMS, 3)
    budget.set_limit("conn", STREAMS, 2)
    held = [budget.reserve(STREAMS, peer="p1", conn="c1") for _ in range(2)]
    with pytest.raises(BudgetExceeded) as refused:
        budget.reserve(STREAMS, peer="p1", conn="c1")
    assert (refused.value.scope, refused.value.key, refused.value.limit, refused.value.in_use) == ("conn", "c1", 2, 2)
    held.append(budget.reserve(STREAMS, peer="p1", conn="c2"))
    with pytest.raises(BudgetExceeded, match="streams limit of peer p1 reached"):
        budget.reserve(STREAMS, peer="p1", conn="c3")
    held += [budget.reserve(STREAMS, peer="p2"), budget.reserve(STREAMS, peer="p3")]
    with pytest.raises(BudgetExceeded) as refused:  # the system scope is full: nothing is held by a refusal
        budget.reserve(STREAMS, peer="p4")
    assert refused.value.scope == "system" and budget.in_use(STREAMS, scope="peer", key="p4") == 0
    assert budget.in_use(STREAMS) == 5
    for reservation in held:
        reservation.release()
        reservation.release()  # idempotent
    assert budget.in_use(STREAMS) == 0
    assert budget._scopes.keys() == {("system", "")}  # empty narrower scopes are dropped
    assert budget.refused[(STREAMS, "conn")] == 1 and budget.refused[(STREAMS, "system")] == 1


def test_reserved_slots_are_for_privileged_reservations_only():
    budget = ResourceBudget()
    budget.set_limit("system", CONNECTIONS, 4, reserved=2)
    strangers = [budget.reserve(CONNECTIONS, peer=f"s{i}") for i in range(2)]
    with pytest.raises(BudgetExceeded) as refused:
        budget.reserve(CONNECTIONS, peer="s2")
    assert refused.value.limit == 2  # what strangers may hold
    validators = [budget.reserve(CONNECTIONS, peer=f"v{i}", privileged=True) for i in range(2)]
    with pytest.raises(BudgetExceeded):  # the total still holds for everyone
        budget.reserve(CONNECTIONS, peer="v2", privileged=True)
    validators[0].release()
    with pytest.raises(BudgetExceeded):  # a free reserved slot is still not a stranger's
        budget.reserve(CONNECTIONS, peer="s3")
    strangers[0].release()
    with budget.reserve(CONNECTIONS, peer="s3"):
        report = budget.report()[CONNECTIONS]
        assert report == {"in_use": 3, "limit": 4, "reserved": 2, "in_use_unprivileged": 2,
                          "refused": {"system": 3}}


def test_check_does_not_count_and_report_names_the_busiest_scope():
    budget = ResourceBudget()
    budget.set_limit("system", PENDING, 10)
    budget.set_limit("ip", PENDING, 2)
    a = [budget.reserve(PENDING, ip="10.0.0.1") for _ in range(2)]
    budget.reserve(PENDING, ip="10.0.0.2")
    assert budget.check(PENDING, ip="10.0.0.1") is not None and budget.check(PENDING, ip="10.0.0.3") is None
    assert not budget.refused
    report = budget.report()[PENDING]
    assert report["limit_per_ip"] == 2 and report["busiest_ip"] == {"key": "10.0.0.1", "in_use": 2}
    a[0].release()
    assert budget.in_use(PENDING, scope="ip", key="10.0.0.1") == 1


def test_limits_are_validated():
    budget = ResourceBudget()
    with pytest.raises(ValueError):
        budget.set_limit("planet", STREAMS, 1)
    with pytest.raises(ValueError):
        budget.set_limit("system", CONNECTIONS, 2, reserved=3)
    with pytest.raises(ValueError):
        budget.set_limit("peer", CONNECTIONS, 2, reserved=1)
    budget.set_limit("system", STREAMS, 1)
    budget.set_limit("system", STREAMS, None)  # no limit any more
    for _ in range(3):
        budget.reserve(STREAMS)


# -- the admission, on real sockets ------------------------------------------------
async def test_pending_handshakes_are_capped_per_ip_and_silent_ones_make_room():
    limits = ConnectionLimits(max_peers=8, max_pending=4, max_pending_per_ip=2, handshake_timeout=30.0)
    server = build_host(Identity.from_label("budget-server"), limits=limits)
    admission = server.get_network().admission
    async with running_host(server, [LOOPBACK]):
        addr = server.get_addrs()[0]
        port = int(addr.value_for_protocol("tcp"))
        silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(6)]
        await trio.sleep(0.3)
        # Two are held, the rest were closed at once (long before the 30 s deadline).
        assert admission.budget.in_use(PENDING) == 2
        assert admission.budget.report()[PENDING]["refused"] == {"ip": 4 - admission.evicted_pending}
        # An honest dialer from the same address displaces a silent handshake and gets in.
        client = build_host(Identity.from_label("budget-client"))
        async with running_host(client, []):
            with trio.fail_after(10):
                await client.connect(info_from_p2p_addr(addr))
            assert client.get_network().get_connections(server.get_id())
            assert admission.budget.in_use(CONNECTIONS) == 1 and admission.evicted_pending >= 1
        closed = 0
        for stream in silent:
            with trio.move_on_after(5):
                while await stream.receive_some(4096):
                    pass
                closed += 1
            await stream.aclose()
        assert closed >= 5  # every silent one but (at most) the last still pending
        with trio.fail_after(5):
            while admission.budget.in_use(CONNECTIONS):  # the client's close gave its slot back
                await trio.sleep(0.05)


async def test_strangers_never_take_the_reserved_slot():
    validator = Identity.from_label("budget-validator")
    limits = ConnectionLimits(max_peers=3, reserved_slots=1, handshake_timeout=30.0)
    server = build_host(Identity.from_label("budget-server-2"), limits=limits, privileged_peers=[validator.peer_id])
    admission = server.get_network().admission
    info = None
    async with running_host(server, [LOOPBACK]):
        info = info_from_p2p_addr(server.get_addrs()[0])
        async with trio.open_nursery() as nursery:
            async def connect(identity: Identity, result: list) -> None:
                host = build_host(identity)
                async with running_host(host, []):
                    try:
                        with trio.fail_after(10):
                            await host.connect(info)
                    except Exception:
                        pass
                    result.append(host)
                    await trio.sleep_forever()

            hosts: list = []
            for i in range(4):
                nursery.start_soon(connect, Identity.from_label(f"budget-stranger-{i}"), hosts)
            with trio.fail_after(20):
                while len(hosts) < 4:
                    await trio.sleep(0.05)
            await trio.sleep(0.3)
            assert admission.budget.in_use(CONNECTIONS) == 2  # max_peers 3 less the reserved slot
            # The validator gets its slot (the strangers connected just now: none is old enough to evict).
            nursery.start_soon(connect, validator, hosts)
            with trio.fail_after(10):
                while validator.peer_id not in {s.peer for s in admission.admitted.values()}:
                    await trio.sleep(0.05)
            assert admission.budget.in_use(CONNECTIONS) == 3
            nursery.cancel_scope.cancel()
        for host in hosts:
            with trio.move_on_after(1):
                await host.close()


EMFILE_SERVER = textwrap.dedent("""
    import resource, sys, os, json
    import trio
    from node.base.logging import configure_logging
    configure_logging("info")
    from node.base.keys import Identity
    from node.p2p.host import build_host, running_host
    from node.p2p.log_filters import ACCEPT_OVERLOAD
    import multiaddr

    async def main():
        host = build_host(Identity.from_label("emfile-server"))
        async with running_host(host, [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            print(host.get_addrs()[0], flush=True)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            in_use = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 1, hard))  # no room to accept
            await trio.to_thread.run_sync(sys.stdin.readline)  # the test's connections wait meanwhile
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            print(json.dumps({"overloads": ACCEPT_OVERLOAD.count}), flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)

    trio.run(main)
""")


async def test_accept_survives_emfile_and_says_so_in_one_line(tmp_path):
    """Out of descriptors, the listener backs off and keeps accepting; the log
    has one counted line per second, not a traceback per retry."""
    proc = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "server.log", "wb"), cwd=REPO, text=True)
    try:
        addr = multiaddr.Multiaddr(await trio.to_thread.run_sync(proc.stdout.readline))
        port = int(addr.value_for_protocol("tcp"))
        waiting = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        await trio.sleep(1.5)  # accept fails with EMFILE, again and again
        proc.stdin.write("\n")
        proc.stdin.flush()
        report = await trio.to_thread.run_sync(proc.stdout.readline)
        assert '"overloads": 0' not in report
        # The listener is still alive: a real client gets in.
        client = build_host(Identity.from_label("emfile-client"))
        async with running_host(client, []):
            with trio.fail_after(10):
                await client.connect(info_from_p2p_addr(multiaddr.Multiaddr(f"{addr}/p2p/{Identity.from_label('emfile-server').peer_id}")))
        for s in waiting:
            s.close()
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(10)
    log = (tmp_path / "server.log").read_text()
    assert "accept failed (Too many open files)" in log
    assert "Traceback" not in log and log.count("accept failed") <= 3


def test_pending_per_ip_above_the_total_is_a_config_error(tmp_path):
    from node.base.config import parse_config
    from node.base.errors import ConfigError

    doc = {"node": {"identity_key": "k", "data_dir": "d"}, "limits": {"max_pending_connections": 8, "max_pending_per_ip": 9}}
    with pytest.raises(ConfigError, match=r"\[limits\] max_pending_per_ip: expected at most max_pending_connections \(8\)"):
        parse_config(doc, tmp_path / "node.toml")


async def test_a_flood_from_many_addresses_cannot_keep_a_quiet_address_out():
    """When every pending slot is taken by young handshakes (a fast flood: none is
    silent or stale yet), a newcomer from an address holding fewer takes the oldest
    slot of the busiest address; an address already at its fair share cannot."""
    from node.p2p.admission import ConnectionAdmission, ConnectionLimits

    admission = ConnectionAdmission(ConnectionLimits(max_peers=8, max_pending=6, max_pending_per_ip=6))
    flood = [admission.admit_pending(f"10.0.0.{i % 2}") for i in range(6)]  # two flooding addresses, 3 each
    assert all(h is not None for h in flood)
    honest = admission.admit_pending("192.0.2.7")
    assert honest is not None and not honest.evicted
    assert sum(h.evicted for h in flood if h is not None) == 1
    assert flood[0] is not None and flood[0].evicted  # the oldest of the busiest address
    # Now 10.0.0.1 holds 3, 10.0.0.0 holds 2, 192.0.2.7 holds 1: the flooders are at their share.
    assert admission.admit_pending("10.0.0.0") is None
    assert admission.admit_pending("10.0.0.1") is None
    second = admission.admit_pending("192.0.2.8")  # another quiet address still gets in
    assert second is not None
