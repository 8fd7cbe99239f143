"""Run a manifest: start a testnet of real daemons, put load on it, apply the
timed perturbations, then check the outcome.

Checks (each a line of the report; any failure makes the run fail):
- every node caught up to the height the cluster reached after the load;
- no fork: every node holds the same block hash at every height;
- every submitted transaction is committed;
- with ``[load] job_rate``: every submitted analytics job is final and every
  receipt of every job verifies offline (:mod:`node.testnet.jobload`).

Perturbations are timed from the start of the load. Process actions (kill,
pause, restart) work on loopback; network actions (disconnect, delay, loss)
need one network namespace per node (:mod:`node.testnet.netns`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.base.errors import UserError
from node.p2p.client import call_node, connect_to_node
from node.testnet import layout, processes
from node.testnet.loadgen import JobWorkload, LoadGenerator
from node.testnet.manifest import Manifest, Perturbation
from node.testnet.netns import NetnsNetwork, rewrite_addresses
from node.testnet.network import create_network, link_emulation_unavailable_reason
from node.testnet.tunswitch import TunNetwork

CHAIN_ID = "metanode-testnet"
START_TIMEOUT_S = 90.0
CATCH_UP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class RunReport:
    events: list[tuple[float, str]] = field(default_factory=list)  # (seconds since load start, what)
    txs_submitted: int = 0
    txs_committed: int = 0
    jobs_summary: str | None = None  # the job workload's figures (None: no jobs)
    unreachable_attempts: int = 0  # submissions that found their node down or cut off (and moved on)
    final_heights: dict[str, int | None] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def text(self) -> str:
        lines = ["perturbations:"]
        lines += [f"  {t:7.1f}s  {what}" for t, what in self.events] or ["  (none)"]
        lines.append(f"transactions: {self.txs_submitted} submitted, {self.txs_committed} committed ({self.unreachable_attempts} submissions found their node unreachable)")
        if self.jobs_summary is not None:
            lines.append(f"jobs: {self.jobs_summary}")
        lines.append("final heights: " + ", ".join(f"{n}={h if h is not None else 'unreachable'}" for n, h in self.final_heights.items()))
        lines += [f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in self.checks]
        lines.append("result: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


class TestnetRun:
    """One run of a manifest in ``directory`` (which must not hold a testnet yet)."""

    def __init__(self, manifest: Manifest, directory: Path, *, log: Callable[[str], None] = print, jobs: JobWorkload | None = None) -> None:
        self.manifest = manifest
        self.directory = directory
        self.log = log
        self.jobs = jobs
        self.report = RunReport()
        self.network: NetnsNetwork | TunNetwork | None = None
        self.addresses: dict[str, str] = {}
        self.configs: dict[str, str] = {}
        self._load_started = 0.0
        self._wrote_testnet = False

    # -- setup and teardown ------------------------------------------------
    def _build(self) -> None:
        spec = self.manifest.testnet
        emulate_links = spec.netns and any(p.action in ("delay", "loss") for p in self.manifest.perturbations)
        if emulate_links and (reason := link_emulation_unavailable_reason()) is not None:  # netem, else the TUN switch
            raise UserError(f"{self.manifest.source}: delay/loss perturbations cannot run here: {reason}")
        plans = layout.plan_testnet(spec.validators, non_validators=spec.non_validators)
        genesis = layout.testnet_genesis(plans, chain_id=CHAIN_ID, block_period_ms=spec.block_period_ms)
        layout.write_testnet(self.directory, plans, genesis)
        self._wrote_testnet = True  # from here on the nodes are ours to stop
        if spec.netns:
            self.network = create_network(self.directory, [p.name for p in plans], emulate_links=emulate_links)
            rewrite_addresses(self.directory, {p.port: self.network.ip(p.name) for p in plans})
        for node in layout.read_manifest(self.directory):
            self.addresses[str(node["name"])] = str(node["address"])
            self.configs[str(node["name"])] = str(node["config"])

    def _start(self, name: str) -> int:
        if self.network is None:
            return processes.start_node(self.directory, name, self.configs[name])
        # `ip netns exec` execs the daemon in place, so the pid is the daemon's.
        with open(processes.log_file(self.directory, name), "ab") as log:
            proc = subprocess.Popen(
                [*self.network.exec_prefix(name), sys.executable, "-m", "node", "daemon", "start", "--config", str(self.directory / self.configs[name])],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        processes.pid_file(self.directory, name).write_text(f"{proc.pid}\n")
        return proc.pid

    def _teardown(self) -> None:
        if self._wrote_testnet:  # never stop nodes of a testnet this run did not create
            processes.down(self.directory, timeout=STOP_TIMEOUT_S)
        if self.network is not None:
            self.network.teardown()

    # -- the run -----------------------------------------------------------
    async def run(self) -> RunReport:
        try:
            self._build()
            for name in self.addresses:
                self._start(name)
            self.log(f"started {len(self.addresses)} nodes in {self.directory}" + (f" (netns, {self.network.backend} via {self.network.bridge}, {self.network.subnet})" if self.network else " (loopback)"))
            await self._wait_for(lambda h: all(x is not None and x >= 1 for x in h.values()), START_TIMEOUT_S, "every node to finalise a first block")
            await self._load_and_perturb()
            await self._settle_and_check()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._teardown)
        return self.report

    async def _load_and_perturb(self) -> None:
        load = self.manifest.load
        gen = LoadGenerator(list(self.addresses.values()), CHAIN_ID, load.tx_rate)
        self._gen = gen
        self._load_started = trio.current_time()
        stop_at = self._load_started + load.duration_s
        self.log(f"load: {load.tx_rate:g} tx/s for {load.duration_s:g} s; {len(self.manifest.perturbations)} perturbations")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gen.run, stop_at)
            if self.jobs is not None:
                nursery.start_soon(self.jobs.run, list(self.addresses.values()), stop_at)
            for p in self.manifest.perturbations:
                nursery.start_soon(self._perturb, p)

    def _event(self, what: str) -> None:
        t = trio.current_time() - self._load_started
        self.report.events.append((t, what))
        self.log(f"  {t:7.1f}s  {what}")

    async def _perturb(self, p: Perturbation) -> None:
        await trio.sleep_until(self._load_started + p.at_s)
        name = p.node
        if p.action in ("kill", "pause", "restart"):
            pid = processes.running_pid(self.directory, name)
            if pid is None:
                self._event(f"{p.action} {name}: SKIPPED, the node is not running")
                return
            if p.action == "kill":
                os.kill(pid, signal.SIGKILL)
                await self._wait_dead(name, 10.0)
                self._event(f"kill {name} (SIGKILL pid {pid})")
                await trio.sleep(p.duration_s)
                self._event(f"start {name} (pid {self._start(name)})")
            elif p.action == "restart":
                os.kill(pid, signal.SIGTERM)
                if not await self._wait_dead(name, STOP_TIMEOUT_S):
                    os.kill(pid, signal.SIGKILL)
                    await self._wait_dead(name, 10.0)
                self._event(f"stop {name} (SIGTERM pid {pid})")
                await trio.sleep(p.duration_s)
                self._event(f"start {name} (pid {self._start(name)})")
            else:
                os.kill(pid, signal.SIGSTOP)
                self._event(f"pause {name} (SIGSTOP pid {pid})")
                await trio.sleep(p.duration_s)
                os.kill(pid, signal.SIGCONT)
                self._event(f"resume {name} (SIGCONT)")
        else:
            net = self.network
            assert net is not None  # manifest validation requires netns for network actions
            if p.action == "disconnect":
                net.disconnect(name)
                self._event(f"disconnect {name} ({net.host_veth(name)} down)")
                await trio.sleep(p.duration_s)
                net.reconnect(name)
                self._event(f"reconnect {name}")
            else:
                net.degrade(name, delay_ms=p.delay_ms, loss_pct=p.loss_pct)
                self._event(f"{net.backend} {name}: delay {p.delay_ms} ms, loss {p.loss_pct:g}%")
                await trio.sleep(p.duration_s)
                net.restore(name)
                self._event(f"{net.backend} {name} removed")

    async def _wait_dead(self, name: str, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while processes.running_pid(self.directory, name) is not None:
                await trio.sleep(0.05)
            return True
        return False

    # -- checks ------------------------------------------------------------
    async def _heights(self) -> dict[str, int | None]:
        heights: dict[str, int | None] = {}

        async def one(name: str, address: str) -> None:
            try:
                with trio.fail_after(8):
                    heights[name] = int((await call_node(address, "chain_head", timeout=5))["height"])
            except (Exception, trio.TooSlowError):
                heights[name] = None

        async with trio.open_nursery() as nursery:
            for name, address in self.addresses.items():
                nursery.start_soon(one, name, address)
        return {n: heights[n] for n in self.addresses}

    async def _wait_for(self, done: Callable[[dict[str, int | None]], bool], timeout: float, what: str) -> dict[str, int | None]:
        deadline = trio.current_time() + timeout
        while True:
            heights = await self._heights()
            if done(heights):
                return heights
            if trio.current_time() >= deadline:
                raise UserError(f"timed out after {timeout:g} s waiting for {what} (heights: {heights}); logs in {self.directory}")
            await trio.sleep(0.5)

    async def _settle_and_check(self) -> None:
        gen = self._gen
        await gen.drain(deadline=trio.current_time() + CATCH_UP_TIMEOUT_S)
        target = max((h for h in (await self._heights()).values() if h is not None), default=0)
        caught_up = True
        try:
            heights = await self._wait_for(lambda h: all(x is not None and x >= target for x in h.values()), CATCH_UP_TIMEOUT_S, f"every node to reach height {target}")
        except UserError as exc:
            caught_up, heights = False, await self._heights()
            self.report.checks.append(Check("catch-up", False, str(exc)))
        self.report.final_heights = heights
        if caught_up:
            self.report.checks.append(Check("catch-up", True, f"every node reached height {target}"))
        common = min((h for h in heights.values() if h is not None), default=0)
        chains = {name: await self._block_hashes(address, common) for name, address in self.addresses.items() if heights[name] is not None}
        self.report.checks.append(_fork_check(chains, common))
        reference = next(iter(chains.values()), ([], set()))
        on_chain = reference[1]
        submitted = gen.submitted
        committed = sum(1 for tx in submitted if tx.hash.hex() in on_chain)
        self.report.txs_submitted, self.report.txs_committed = len(submitted), committed
        self.report.unreachable_attempts = gen.unreachable_attempts
        self.report.checks.append(Check("transactions", committed == len(submitted), f"{committed} of {len(submitted)} submitted transactions committed by height {common}"))
        if self.jobs is not None:
            self.log("jobs: waiting for every job to be final, then verifying every receipt offline")
            problems = await self.jobs.check(list(self.addresses.values()))
            self.report.jobs_summary = self.jobs.summary()
            self.report.checks.append(Check("jobs", not problems, "; ".join(problems) or f"every job final, every receipt verifies offline ({self.report.jobs_summary})"))
        else:
            self.log("jobs: not checked ([load] job_rate is 0)")

    async def _block_hashes(self, address: str, up_to: int) -> tuple[list[str], set[str]]:
        """Block hashes 1..up_to and every transaction hash in them, over one connection."""
        hashes: list[str] = []
        txs: set[str] = set()
        async with connect_to_node(address) as client:
            for height in range(1, up_to + 1):
                block = await client.call("chain_block", {"height": height}, timeout=10)
                hashes.append(str(block["hash"]))
                txs.update(str(t) for t in block["tx_hashes"])
        return hashes, txs


def _fork_check(chains: dict[str, tuple[list[str], set[str]]], common: int) -> Check:
    if len(chains) < 2:
        return Check("no fork", False, f"only {len(chains)} node(s) answered; nothing to compare")
    names = sorted(chains)
    for height in range(1, common + 1):
        seen: dict[str, list[str]] = {}
        for name in names:
            seen.setdefault(chains[name][0][height - 1], []).append(name)
        if len(seen) > 1:
            return Check("no fork", False, f"fork at height {height}: " + "; ".join(f"{h[:12]} on {','.join(n)}" for h, n in seen.items()))
    return Check("no fork", True, f"{len(chains)} nodes agree on every block 1..{common}")


def run_manifest(manifest: Manifest, directory: Path, *, log: Callable[[str], None] = print, jobs: JobWorkload | None = None) -> RunReport:
    """Run ``manifest`` in ``directory`` and return the report (nodes stopped, namespaces removed)."""
    if jobs is None and manifest.load.job_rate > 0:
        from node.testnet.jobload import AnalyticsWorkload

        jobs = AnalyticsWorkload(genesis=directory / layout.GENESIS, job_rate=manifest.load.job_rate)
    run = TestnetRun(manifest, directory, log=log, jobs=jobs)

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through run()'s finally: nodes stopped, namespaces removed

    # The runner dials nodes it has just killed or cut off on purpose and handles
    # every failure itself; libp2p's own warnings about those dials are noise here.
    libp2p_logger = logging.getLogger("libp2p")
    previous_level = libp2p_logger.level
    libp2p_logger.setLevel(logging.CRITICAL)
    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        return trio.run(run.run)
    finally:
        signal.signal(signal.SIGTERM, previous)
        libp2p_logger.setLevel(previous_level)
