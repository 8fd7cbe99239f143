"""One Linux network namespace per testnet node, joined by a bridge in the root
namespace, so links can be cut (``ip link set ... down``) and degraded
(``tc qdisc ... netem``) per node.

Layout for a run with tag ``T`` (4 hex digits) on subnet ``10.77.K.0/24``::

    root namespace:  bridge mb<T> 10.77.K.254/24  <- veth mv<T>h<i> (host end)
    namespace mn-<T>-<i>:  veth mv<T>n<i> 10.77.K.(i+1)/24, lo up

Only names with our prefix and addresses inside 10.77.0.0/16 are ever
created or deleted. What was created is recorded in ``DIR/netns.json``
before it is created, so a run that dies half-way is cleaned up by the next
run on that directory (:func:`node.testnet.netbase.cleanup_recorded`).

Where delay/loss is wanted and the kernel has no sch_netem,
:func:`node.testnet.network.create_network` joins the same namespaces with a
userspace switch instead (:mod:`node.testnet.tunswitch`).
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from node.testnet.netbase import STATE_FILE, NetnsError, cleanup_recorded, delete_names, free_subnet, netns_unavailable_reason, run

_LOOPBACK_ADDR_RE = re.compile(r"/ip4/127\.0\.0\.1/tcp/(\d+)(?!\d)")


@dataclass
class NetnsNetwork:
    """The namespaces, veths and bridge of one run; create with :meth:`create`."""

    directory: Path
    tag: str
    subnet: ipaddress.IPv4Network
    nodes: list[str] = field(default_factory=list)
    backend = "netem"  # how delay/loss is applied (the runner names it in its events)

    @property
    def bridge(self) -> str:
        return f"mb{self.tag}"

    @property
    def bridge_ip(self) -> str:
        return str(self.subnet.network_address + 254)

    def namespace(self, node: str) -> str:
        return f"mn-{self.tag}-{self.nodes.index(node)}"

    def host_veth(self, node: str) -> str:
        return f"mv{self.tag}h{self.nodes.index(node)}"

    def node_veth(self, node: str) -> str:
        return f"mv{self.tag}n{self.nodes.index(node)}"

    def ip(self, node: str) -> str:
        return str(self.subnet.network_address + 1 + self.nodes.index(node))

    def exec_prefix(self, node: str) -> list[str]:
        """Prepend to a command to run it inside the node's namespace (execs in place: same pid)."""
        return ["ip", "netns", "exec", self.namespace(node)]

    @classmethod
    def create(cls, directory: Path, nodes: list[str]) -> "NetnsNetwork":
        """Build the bridge and one namespace per node; on any failure, remove what was built."""
        if (reason := netns_unavailable_reason()) is not None:
            raise NetnsError(f"cannot build network namespaces: {reason}")
        if len(nodes) > 250:
            raise NetnsError("at most 250 nodes fit one /24 testnet subnet")
        cleanup_recorded(directory)
        net = cls(directory, secrets.token_hex(2), free_subnet(), list(nodes))
        net._record()
        try:
            run("ip", "link", "add", net.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{net.bridge_ip}/{net.subnet.prefixlen}", "dev", net.bridge)
            run("ip", "link", "set", net.bridge, "up")
            for node in nodes:
                ns, host, inner = net.namespace(node), net.host_veth(node), net.node_veth(node)
                run("ip", "netns", "add", ns)
                run("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
                run("ip", "link", "set", inner, "netns", ns)
                run("ip", "link", "set", host, "master", net.bridge)
                run("ip", "link", "set", host, "up")
                run("ip", "-n", ns, "addr", "add", f"{net.ip(node)}/{net.subnet.prefixlen}", "dev", inner)
                run("ip", "-n", ns, "link", "set", inner, "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            net.teardown()
            raise
        return net

    def _record(self) -> None:
        names = [self.bridge] + [f"mn-{self.tag}-{i}" for i in range(len(self.nodes))] + [f"mv{self.tag}h{i}" for i in range(len(self.nodes))]
        (self.directory / STATE_FILE).write_text(json.dumps({"tag": self.tag, "subnet": str(self.subnet), "names": names}, indent=2) + "\n")

    def disconnect(self, node: str) -> None:
        """Cut every link of the node (its veth goes down: peers and clients lose it)."""
        run("ip", "link", "set", self.host_veth(node), "down")

    def reconnect(self, node: str) -> None:
        run("ip", "link", "set", self.host_veth(node), "up")

    def degrade(self, node: str, *, delay_ms: int, loss_pct: float) -> None:
        """netem on both ends of the node's veth, so its traffic each way is delayed / lost."""
        spec = ["netem"]
        if delay_ms:
            spec += ["delay", f"{delay_ms}ms"]
        if loss_pct:
            spec += ["loss", f"{loss_pct:g}%"]
        run("ip", "netns", "exec", self.namespace(node), "tc", "qdisc", "replace", "dev", self.node_veth(node), "root", *spec)
        run("tc", "qdisc", "replace", "dev", self.host_veth(node), "root", *spec)

    def restore(self, node: str) -> None:
        run("ip", "netns", "exec", self.namespace(node), "tc", "qdisc", "del", "dev", self.node_veth(node), "root", check=False)
        run("tc", "qdisc", "del", "dev", self.host_veth(node), "root", check=False)

    def teardown(self) -> None:
        """Delete the namespaces, veths and bridge (idempotent), then the record."""
        delete_names([self.bridge] + [f"mn-{self.tag}-{i}" for i in range(len(self.nodes))] + [f"mv{self.tag}h{i}" for i in range(len(self.nodes))])
        (self.directory / STATE_FILE).unlink(missing_ok=True)


def rewrite_addresses(directory: Path, ports_to_ips: dict[int, str]) -> None:
    """Point every config and the testnet manifest at the nodes' namespace
    addresses (layout writes 127.0.0.1; ports are distinct, so they identify nodes)."""
    files = sorted(directory.glob("node*.toml")) + [directory / "testnet.json"]
    for path in files:
        text = _LOOPBACK_ADDR_RE.sub(lambda m: f"/ip4/{ports_to_ips.get(int(m.group(1)), '127.0.0.1')}/tcp/{m.group(1)}", path.read_text())
        path.write_text(text)


