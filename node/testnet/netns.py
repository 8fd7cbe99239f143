"""One Linux network namespace per testnet node, joined by a bridge in the root
namespace, so links can be cut (``ip link set ... down``) and degraded
(``tc qdisc ... netem``) per node.

Layout for a run with tag ``T`` (4 hex digits) on subnet ``10.77.K.0/24``::

    root namespace:  bridge mb<T> 10.77.K.254/24  <- veth mv<T>h<i> (host end)
    namespace mn-<T>-<i>:  veth mv<T>n<i> 10.77.K.(i+1)/24, lo up

Only names with our prefix and addresses inside 10.77.0.0/16 are ever
created or deleted. What was created is recorded in ``DIR/netns.json``
before it is created, so a run that dies half-way is cleaned up by the next
run on that directory (:func:`cleanup_recorded`).

Where delay/loss is wanted and the kernel has no sch_netem, :func:`create_network`
joins the same namespaces with a userspace switch instead (:mod:`node.testnet.tunswitch`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from node.errors import UserError

if TYPE_CHECKING:
    from node.testnet.tunswitch import TunNetwork

STATE_FILE = "netns.json"
SUBNET_POOL = ipaddress.ip_network("10.77.0.0/16")
_LOOPBACK_ADDR_RE = re.compile(r"/ip4/127\.0\.0\.1/tcp/(\d+)(?!\d)")
_NAME_RE = re.compile(r"^(mn-[0-9a-f]{4}-\d+|mb[0-9a-f]{4}|mv[0-9a-f]{4}[hn]\d+)$")


class NetnsError(UserError):
    """An ``ip``/``tc`` command failed; the message quotes the command and its error."""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"`{' '.join(args)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def netns_unavailable_reason() -> str | None:
    """None when namespaces can be made here; otherwise why not (for skips and errors)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or use a loopback manifest with netns = false)"
    return None


def netem_unavailable_reason() -> str | None:
    """None when ``tc qdisc ... netem`` works; probed on a throwaway namespace's loopback."""
    if (reason := netns_unavailable_reason()) is not None:
        return reason
    if shutil.which("tc") is None:
        return "the `tc` command (iproute2) is not installed"
    probe = f"mn-{secrets.token_hex(2)}-999"
    _run("ip", "netns", "add", probe)
    try:
        result = _run("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", check=False)
        if result.returncode != 0:
            return f"this kernel cannot run netem (`tc qdisc add ... netem`: {result.stderr.strip()}); the sch_netem module is missing"
        return None
    finally:
        _run("ip", "netns", "del", probe, check=False)


def _used_subnets() -> set[ipaddress.IPv4Network]:
    out = _run("ip", "-o", "-4", "addr", "show").stdout
    used = set()
    for match in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+/\d+)", out):
        used.add(ipaddress.ip_interface(match.group(1)).network)
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_subnets()
    for subnet in SUBNET_POOL.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise NetnsError(f"no free /24 left in {SUBNET_POOL} for a testnet bridge")


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
        net = cls(directory, secrets.token_hex(2), _free_subnet(), list(nodes))
        net._record()
        try:
            _run("ip", "link", "add", net.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{net.bridge_ip}/{net.subnet.prefixlen}", "dev", net.bridge)
            _run("ip", "link", "set", net.bridge, "up")
            for node in nodes:
                ns, host, inner = net.namespace(node), net.host_veth(node), net.node_veth(node)
                _run("ip", "netns", "add", ns)
                _run("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
                _run("ip", "link", "set", inner, "netns", ns)
                _run("ip", "link", "set", host, "master", net.bridge)
                _run("ip", "link", "set", host, "up")
                _run("ip", "-n", ns, "addr", "add", f"{net.ip(node)}/{net.subnet.prefixlen}", "dev", inner)
                _run("ip", "-n", ns, "link", "set", inner, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            net.teardown()
            raise
        return net

    def _record(self) -> None:
        names = [self.bridge] + [f"mn-{self.tag}-{i}" for i in range(len(self.nodes))] + [f"mv{self.tag}h{i}" for i in range(len(self.nodes))]
        (self.directory / STATE_FILE).write_text(json.dumps({"tag": self.tag, "subnet": str(self.subnet), "names": names}, indent=2) + "\n")

    def disconnect(self, node: str) -> None:
        """Cut every link of the node (its veth goes down: peers and clients lose it)."""
        _run("ip", "link", "set", self.host_veth(node), "down")

    def reconnect(self, node: str) -> None:
        _run("ip", "link", "set", self.host_veth(node), "up")

    def degrade(self, node: str, *, delay_ms: int, loss_pct: float) -> None:
        """netem on both ends of the node's veth, so its traffic each way is delayed / lost."""
        spec = ["netem"]
        if delay_ms:
            spec += ["delay", f"{delay_ms}ms"]
        if loss_pct:
            spec += ["loss", f"{loss_pct:g}%"]
        _run("ip", "netns", "exec", self.namespace(node), "tc", "qdisc", "replace", "dev", self.node_veth(node), "root", *spec)
        _run("tc", "qdisc", "replace", "dev", self.host_veth(node), "root", *spec)

    def restore(self, node: str) -> None:
        _run("ip", "netns", "exec", self.namespace(node), "tc", "qdisc", "del", "dev", self.node_veth(node), "root", check=False)
        _run("tc", "qdisc", "del", "dev", self.host_veth(node), "root", check=False)

    def teardown(self) -> None:
        """Delete the namespaces, veths and bridge (idempotent), then the record."""
        _delete_names([self.bridge] + [f"mn-{self.tag}-{i}" for i in range(len(self.nodes))] + [f"mv{self.tag}h{i}" for i in range(len(self.nodes))])
        (self.directory / STATE_FILE).unlink(missing_ok=True)


def _delete_names(names: list[str]) -> None:
    for name in names:
        if not _NAME_RE.match(name):
            continue  # never touch anything we did not name
        if name.startswith("mn-"):
            _run("ip", "netns", "del", name, check=False)  # takes the inner veth end with it
        else:
            _run("ip", "link", "del", name, check=False)  # a veth's peer goes with it


def cleanup_recorded(directory: Path) -> list[str]:
    """Remove what an earlier (crashed) run in ``directory`` recorded; returns the names tried."""
    state = directory / STATE_FILE
    try:
        recorded = json.loads(state.read_text())
        names = [str(n) for n in recorded["names"]]
        switch_pid = int(recorded.get("switch_pid", 0))  # the userspace switch's (node.testnet.tunswitch)
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NetnsError(f"{state} is damaged ({exc}); remove it after checking `ip netns list`") from None
    if switch_pid:
        from node.testnet.tunswitch import stop_recorded_switch

        stop_recorded_switch(switch_pid, str(recorded.get("tag", "")))
    _delete_names(names)
    state.unlink(missing_ok=True)
    return names


def rewrite_addresses(directory: Path, ports_to_ips: dict[int, str]) -> None:
    """Point every config and the testnet manifest at the nodes' namespace
    addresses (layout writes 127.0.0.1; ports are distinct, so they identify nodes)."""
    files = sorted(directory.glob("node*.toml")) + [directory / "testnet.json"]
    for path in files:
        text = _LOOPBACK_ADDR_RE.sub(lambda m: f"/ip4/{ports_to_ips.get(int(m.group(1)), '127.0.0.1')}/tcp/{m.group(1)}", path.read_text())
        path.write_text(text)


# -- which network: kernel bridge + netem, else the userspace TUN switch ----------
def link_emulation_unavailable_reason() -> str | None:
    """None when delay/loss can be emulated here (netem, else :mod:`node.testnet.tunswitch`); otherwise why not."""
    if (netem := netem_unavailable_reason()) is None:
        return None
    from node.testnet.tunswitch import tun_unavailable_reason

    if (tun := tun_unavailable_reason()) is None:
        return None
    return f"{netem}; and the userspace switch cannot run either: {tun}"


def create_network(directory: Path, nodes: list[str], *, emulate_links: bool) -> "NetnsNetwork | TunNetwork":
    """The veth bridge when no delay/loss is wanted or netem works here; else the TUN switch."""
    if not emulate_links or netem_unavailable_reason() is None:
        return NetnsNetwork.create(directory, nodes)
    from node.testnet.tunswitch import TunNetwork

    return TunNetwork.create(directory, nodes)
