"""A userspace IPv4 switch between testnet namespaces, for kernels without
sch_netem (no ``tc ... netem``, no iptables, no tc actions): delay, loss and
link cuts become real per-packet effects on the daemons' real TCP.

Every node namespace gets a TUN device (layer 3, ``IFF_TUN | IFF_NO_PI``)
holding the node's address ``10.77.K.(i+1)/24`` (the /24 routes to it); the
root namespace gets one at ``10.77.K.254`` so the runner reaches the nodes as
it does over the bridge. One switch process (``python -m
node.testnet.tunswitch``, started by :class:`TunNetwork`) holds every TUN fd,
reads IPv4 packets, and writes each into the TUN of its destination address
after the delay of both ends' links, dropping it with each end's loss
probability (drawn from a seeded ``random.Random``, so decisions replay), or
always when either end is down. That is what netem on both ends of a node's
veth did. Per link (source, destination) delivery stays FIFO even when a
delay changes; each destination queues at most :data:`MAX_QUEUE` packets.

Control is JSON lines on the switch's stdin/stdout; the switch exits when its
stdin closes, so it never outlives the runner. Its log and final counters go
to ``DIR/tunswitch.log``. The namespaces and the switch pid are recorded in
``DIR/netns.json`` before they exist, for :func:`node.testnet.netbase.cleanup_recorded`
(TUN devices are not persistent: they vanish with the switch).
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import ipaddress
import json
import logging
import os
import random
import secrets
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from node.testnet.netbase import STATE_FILE, NetnsError, cleanup_recorded, delete_names, free_subnet, netns_unavailable_reason, run

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
MAX_QUEUE = 10_000  # packets waiting for one destination; more are dropped, as a router would
READ_BATCH = 64  # packets read from one TUN before looking at the others
CONTROL_TIMEOUT_S = 30.0
LOG_FILE = "tunswitch.log"
COUNTERS = ("sent", "delivered", "delayed", "lost", "cut", "overflow", "unroutable", "errors")
log = logging.getLogger(__name__)


# -- TUN devices ---------------------------------------------------------------
def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_tun(device: str, netns: str | None = None) -> int:
    """Create TUN ``device`` inside namespace ``netns`` (None: the current one); returns its fd (non-blocking)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY) if netns else -1
    try:
        if netns:
            target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", device.encode(), IFF_TUN | IFF_NO_PI))
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        if netns:
            _setns(home)
            os.close(home)


def tun_unavailable_reason() -> str | None:
    """None when this host can run the switch (namespaces + /dev/net/tun); otherwise why not."""
    if (reason := netns_unavailable_reason()) is not None:
        return reason
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist (no TUN support in this kernel or container)"
    try:
        os.close(open_tun(f"mtprobe{secrets.token_hex(2)}"))  # not persistent: gone on close
    except OSError as exc:
        return f"cannot create a TUN device ({exc.strerror or exc})"
    return None


# -- the switch ----------------------------------------------------------------
@dataclass
class Port:
    """One TUN device: a node's link (or the root namespace's)."""

    index: int
    name: str
    address: bytes
    fd: int
    delay_s: float = 0.0
    loss: float = 0.0
    down: bool = False
    queued: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))


class Switch:
    """Moves packets between ports; :meth:`run` is the event loop."""

    def __init__(self, ports: list[Port], seed: int) -> None:
        self.ports = ports
        self.by_name = {p.name: p for p in ports}
        self.by_address = {p.address: p for p in ports}
        self.seed = seed
        self.rng = random.Random(seed)
        self.heap: list[tuple[float, int, int, bytes]] = []  # (due, seq, destination index, packet)
        self.seq = 0
        self.last_due: dict[tuple[int, int], float] = {}  # per link, keeps delivery FIFO
        self.started = time.monotonic()

    def route(self, src: Port, packet: bytes, now: float) -> None:
        src.counters["sent"] += 1
        dst = self.by_address.get(packet[16:20]) if len(packet) >= 20 and packet[0] >> 4 == 4 else None
        if dst is None or dst is src:
            src.counters["unroutable"] += 1  # IPv6, broadcast, an address nobody has
            return
        if src.down or dst.down:
            (src if src.down else dst).counters["cut"] += 1
            return
        for port in (src, dst):  # the sender's link, then the receiver's
            if port.loss and self.rng.random() < port.loss:
                port.counters["lost"] += 1
                return
        link = (src.index, dst.index)
        due = max(now + src.delay_s + dst.delay_s, self.last_due.get(link, 0.0))
        if due <= now:
            self.deliver(dst, packet)
            return
        if dst.queued >= MAX_QUEUE:
            dst.counters["overflow"] += 1
            return
        for port in (src, dst):
            if port.delay_s:
                port.counters["delayed"] += 1
        self.last_due[link] = due
        dst.queued += 1
        self.seq += 1
        heapq.heappush(self.heap, (due, self.seq, dst.index, packet))

    def deliver(self, dst: Port, packet: bytes) -> None:
        if dst.down:  # went down while the packet was in flight
            dst.counters["cut"] += 1
            return
        try:
            os.write(dst.fd, packet)
            dst.counters["delivered"] += 1
        except BlockingIOError:
            dst.counters["overflow"] += 1
        except OSError:
            dst.counters["errors"] += 1  # e.g. the device is not up yet

    def deliver_due(self, now: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, index, packet = heapq.heappop(heap)
            dst = self.ports[index]
            dst.queued -= 1
            self.deliver(dst, packet)

    def stats(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "ports": {p.name: {**p.counters, "queued": p.queued, "delay_ms": round(p.delay_s * 1000, 3),
                               "loss_pct": round(p.loss * 100, 6), "down": p.down} for p in self.ports},
        }

    def control(self, request: Any) -> dict[str, Any]:
        """One control request -> its reply (never raises on bad input)."""
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": "a request is a JSON object with a string 'op'"}
        op = request["op"]
        if op in ("stats", "stop"):
            return {"ok": True, "stats": self.stats()}
        port = self.by_name.get(request.get("port"))  # type: ignore[arg-type]
        if port is None:
            return {"ok": False, "error": f"unknown port {request.get('port')!r}; ports: {sorted(self.by_name)}"}
        if op == "link":
            if not isinstance(request.get("up"), bool):
                return {"ok": False, "error": "'link' needs a boolean 'up'"}
            port.down = not request["up"]
            return {"ok": True}
        if op == "set":
            delay, loss = request.get("delay_ms", 0), request.get("loss_pct", 0)
            for key, value, top in (("delay_ms", delay, 60_000), ("loss_pct", loss, 100)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
                    return {"ok": False, "error": f"{key}: expected a number 0..{top}, got {value!r}"}
            port.delay_s, port.loss = delay / 1000, loss / 100
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r} (ops: set, link, stats, stop)"}

    def run(self, control_in: int, reply: Any) -> None:
        """Forward until a 'stop' request or the end of ``control_in``."""
        os.set_blocking(control_in, False)
        poller = select.epoll()
        by_fd = {p.fd: p for p in self.ports}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        poller.register(control_in, select.EPOLLIN)
        pending = b""
        while True:
            timeout = max(0.0, self.heap[0][0] - time.monotonic()) if self.heap else -1
            events = poller.poll(timeout)
            now = time.monotonic()
            self.deliver_due(now)  # first, so nothing read below overtakes a due packet
            for fd, _ in events:
                if fd == control_in:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        log.info("control channel closed: stopping")
                        return
                    pending += chunk
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        try:
                            request = json.loads(line)
                        except ValueError as exc:
                            request = None
                            answer: dict[str, Any] = {"ok": False, "error": f"not JSON: {exc}"}
                        else:
                            answer = self.control(request)
                        reply(answer)
                        if isinstance(request, dict) and request.get("op") == "stop":
                            return
                        if answer.get("ok") and isinstance(request, dict) and request.get("op") in ("set", "link"):
                            log.info("control: %s", json.dumps(request, sort_keys=True))
                    continue
                src = by_fd[fd]
                for _ in range(READ_BATCH):
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    except OSError:
                        src.counters["errors"] += 1
                        break
                    self.route(src, packet, now)


SWITCH_PROG = "python -m node.testnet.tunswitch"


@click.command(name=SWITCH_PROG, help=__doc__.split("\n\n")[0], context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--tag", required=True, help="the run's tag (for finding this process again)")
@click.option("--seed", type=int, required=True, help="seed of the loss decisions")
@click.option("--port", "port_specs", multiple=True, required=True, metavar="NAME:NETNS:DEVICE:ADDRESS",
              help="one TUN per port; NETNS empty for the current namespace")
@click.pass_context
def switch_command(ctx: click.Context, tag: str, seed: int, port_specs: tuple[str, ...]) -> None:
    ctx.exit(_run_switch(tag, seed, port_specs))


def main(argv: list[str] | None = None) -> int:
    """The switch process (started by :class:`TunNetwork` with its argv); its exit
    status: 0 stopped (stdin closed or SIGTERM), 1 a port could not be opened, 2 a usage error."""
    try:
        switch_command.main(args=argv, prog_name=SWITCH_PROG)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return 0


def _run_switch(tag: str, seed: int, port_specs: tuple[str, ...]) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s tunswitch %(message)s")
    out = sys.stdout

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    ports: list[Port] = []
    try:
        for spec in port_specs:
            if spec.count(":") != 3:
                raise ValueError("expected NAME:NETNS:DEVICE:ADDRESS")
            name, netns, device, address = spec.split(":")
            fd = open_tun(device, netns or None)
            ports.append(Port(len(ports), name, ipaddress.IPv4Address(address).packed, fd))
    except (ValueError, OSError) as exc:
        reply({"ok": False, "error": f"cannot open port {spec!r}: {exc}"})
        return 1
    switch = Switch(ports, seed)

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    log.info("tag %s seed %d ports %s", tag, seed, ", ".join(port_specs))
    reply({"ok": True, "ready": True, "pid": os.getpid()})
    try:
        switch.run(sys.stdin.fileno(), reply)
    except BrokenPipeError:
        pass
    finally:
        log.info("final counters %s", json.dumps(switch.stats(), sort_keys=True))
    return 0


# -- the runner's side ---------------------------------------------------------
@dataclass
class TunNetwork:
    """Namespaces joined by the switch; same interface as :class:`node.testnet.netns.NetnsNetwork`."""

    directory: Path
    tag: str
    subnet: ipaddress.IPv4Network
    nodes: list[str]
    seed: int
    final_stats: dict[str, Any] | None = None
    _proc: subprocess.Popen[bytes] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    backend = "tunswitch"  # the runner names it in its events

    @property
    def bridge(self) -> str:
        """The root namespace's TUN (where the bridge would be)."""
        return f"mt{self.tag}h"

    @property
    def bridge_ip(self) -> str:
        return str(self.subnet.network_address + 254)

    def namespace(self, node: str) -> str:
        return f"mn-{self.tag}-{self.nodes.index(node)}"

    def device(self, node: str) -> str:
        return f"mt{self.tag}n{self.nodes.index(node)}"

    def host_veth(self, node: str) -> str:
        """What is cut on disconnect (the runner's event text names it)."""
        return f"switch port {self.device(node)}"

    def ip(self, node: str) -> str:
        return str(self.subnet.network_address + 1 + self.nodes.index(node))

    def exec_prefix(self, node: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(node)]

    @classmethod
    def create(cls, directory: Path, nodes: list[str], *, seed: int | None = None) -> "TunNetwork":
        """One namespace per node and the switch between them; on any failure, remove what was built."""
        if (reason := tun_unavailable_reason()) is not None:
            raise NetnsError(f"cannot build the userspace switch network: {reason}")
        if len(nodes) > 250:
            raise NetnsError("at most 250 nodes fit one /24 testnet subnet")
        cleanup_recorded(directory)
        net = cls(directory, secrets.token_hex(2), free_subnet(), list(nodes), secrets.randbits(31) if seed is None else seed)
        net._record()
        try:
            for node in nodes:
                run("ip", "netns", "add", net.namespace(node))
            net._start_switch()
            prefix = net.subnet.prefixlen
            run("ip", "addr", "add", f"{net.bridge_ip}/{prefix}", "dev", net.bridge)
            run("ip", "link", "set", net.bridge, "up")
            for node in nodes:
                ns = net.namespace(node)
                run("ip", "-n", ns, "addr", "add", f"{net.ip(node)}/{prefix}", "dev", net.device(node))
                run("ip", "-n", ns, "link", "set", net.device(node), "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            net.teardown()
            raise
        return net

    def _names(self) -> list[str]:
        return [f"mn-{self.tag}-{i}" for i in range(len(self.nodes))]

    def _record(self) -> None:
        state = {"tag": self.tag, "subnet": str(self.subnet), "backend": self.backend, "seed": self.seed, "names": self._names()}
        if self._proc is not None:
            state["switch_pid"] = self._proc.pid
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _start_switch(self) -> None:
        ports = [f"host::{self.bridge}:{self.bridge_ip}"]
        ports += [f"{node}:{self.namespace(node)}:{self.device(node)}:{self.ip(node)}" for node in self.nodes]
        argv = [sys.executable, "-m", "node.testnet.tunswitch", "--tag", self.tag, "--seed", str(self.seed)]
        argv += [arg for port in ports for arg in ("--port", port)]
        with open(self.directory / LOG_FILE, "ab") as log_file:
            # Own session: a Ctrl-C to the runner must not kill the links before its teardown.
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, start_new_session=True)
        self._record()
        ready = self._read_reply(self._proc)
        if not ready.get("ok"):
            raise NetnsError(f"the tun switch did not start: {ready.get('error')}")

    def _read_reply(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], CONTROL_TIMEOUT_S)
        line = proc.stdout.readline() if readable else b""
        if not line:
            raise NetnsError(f"the tun switch (pid {proc.pid}) " + ("did not answer" if not readable else "exited") + f"; see {self.directory / LOG_FILE}")
        return dict(json.loads(line))

    def _send(self, proc: subprocess.Popen[bytes], request: dict[str, Any]) -> dict[str, Any]:
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            raise NetnsError(f"the tun switch (pid {proc.pid}) exited; see {self.directory / LOG_FILE}") from None
        return self._read_reply(proc)

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._proc is None:
                raise NetnsError("the tun switch is not running (network torn down)")
            answer = self._send(self._proc, request)
        if not answer.get("ok"):
            raise NetnsError(f"tun switch refused {request}: {answer.get('error')}")
        return answer

    def _port(self, node: str) -> str:
        if node not in self.nodes:
            raise NetnsError(f"no node {node!r} in this network (nodes: {', '.join(self.nodes)})")
        return node

    def disconnect(self, node: str) -> None:
        """Cut every link of the node: the switch drops all its packets, both ways."""
        self._call({"op": "link", "port": self._port(node), "up": False})

    def reconnect(self, node: str) -> None:
        self._call({"op": "link", "port": self._port(node), "up": True})

    def degrade(self, node: str, *, delay_ms: int, loss_pct: float) -> None:
        """Delay / lose the node's packets each way (both ends of its link, as netem on a veth pair)."""
        self._call({"op": "set", "port": self._port(node), "delay_ms": delay_ms, "loss_pct": loss_pct})

    def restore(self, node: str) -> None:
        self._call({"op": "set", "port": self._port(node), "delay_ms": 0, "loss_pct": 0})

    def stats(self) -> dict[str, Any]:
        """Per port (each node, and "host" for the root namespace): packets sent, delivered, delayed, dropped."""
        return dict(self._call({"op": "stats"})["stats"])

    def teardown(self) -> None:
        """Stop the switch (its TUNs go with it), delete the namespaces, then the record (idempotent)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            try:
                self.final_stats = self._send(proc, {"op": "stop"}).get("stats")
            except (OSError, ValueError, NetnsError) as exc:
                log.warning("tun switch pid %d did not stop cleanly: %s", proc.pid, exc)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass  # unsent bytes to a switch that is gone
            if self.final_stats is not None:
                log.info("tun switch %s final counters: %s", self.tag, json.dumps(self.final_stats["ports"], sort_keys=True))
        delete_names(self._names())
        (self.directory / STATE_FILE).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
