"""What both testnet networks stand on: ``ip`` commands, free subnets, the record of what a run made.

:mod:`node.testnet.netns` (kernel bridge + veths, netem) and
:mod:`node.testnet.tunswitch` (the userspace TUN switch) build on this module;
:mod:`node.testnet.network` chooses between them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from node.base.errors import UserError

STATE_FILE = "netns.json"
SUBNET_POOL = ipaddress.IPv4Network("10.77.0.0/16")
NAME_RE = re.compile(r"^(mn-[0-9a-f]{4}-\d+|mb[0-9a-f]{4}|mv[0-9a-f]{4}[hn]\d+)$")


class NetnsError(UserError):
    """An ``ip``/``tc`` command failed; the message quotes the command and its error."""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
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
    run("ip", "netns", "add", probe)
    try:
        result = run("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", check=False)
        if result.returncode != 0:
            return f"this kernel cannot run netem (`tc qdisc add ... netem`: {result.stderr.strip()}); the sch_netem module is missing"
        return None
    finally:
        run("ip", "netns", "del", probe, check=False)


def used_subnets() -> set[ipaddress.IPv4Network]:
    out = run("ip", "-o", "-4", "addr", "show").stdout
    used = set()
    for match in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+/\d+)", out):
        used.add(ipaddress.IPv4Interface(match.group(1)).network)
    return used


def free_subnet() -> ipaddress.IPv4Network:
    used = used_subnets()
    for subnet in SUBNET_POOL.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise NetnsError(f"no free /24 left in {SUBNET_POOL} for a testnet bridge")


def delete_names(names: list[str]) -> None:
    for name in names:
        if not NAME_RE.match(name):
            continue  # never touch anything we did not name
        if name.startswith("mn-"):
            run("ip", "netns", "del", name, check=False)  # takes the inner veth end with it
        else:
            run("ip", "link", "del", name, check=False)  # a veth's peer goes with it


def stop_recorded_switch(pid: int, tag: str) -> bool:
    """Kill a crashed run's switch if ``pid`` is still that switch (checked: pids are reused)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"node.testnet.tunswitch" not in argv or tag.encode() not in argv:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    for _ in range(100):  # its TUN fds close when it is gone (a zombie holds none)
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].startswith("Z"):
                break
        except OSError:
            break
        time.sleep(0.05)
    return True


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
        stop_recorded_switch(switch_pid, str(recorded.get("tag", "")))
    delete_names(names)
    state.unlink(missing_ok=True)
    return names
