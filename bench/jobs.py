"""Jobs benchmark: small SQL jobs on a four-node testnet, submit to verified.

For each configuration (4, 2 and 1 processing nodes; every node is also a
validator, scheduler, gateway and storage node) a fresh testnet of real
daemon processes starts in a temporary directory. Tenants (keys from
``Identity.from_label``), spread over the four gateways, each upload a small
CSV once and run one warm-up job; then each submits SQL jobs with
replication r = 2 (r = 1 with one processing node) from one task (a
tenant's nonces are sequential). Per configuration:

  * idle: ``--idle`` seconds with no load (the daemons' CPU floor);
  * offered load: ``--rate`` jobs/s in total (open loop) for ``--seconds``:
    jobs/s reaching ``verified`` (completed per second over the steady
    window, after ``--warmup``) and submit-to-verified latency p50/p99 of
    the jobs submitted in that window;
  * saturation: every tenant keeps ``--window`` jobs outstanding (closed
    loop) for ``--seconds``: the most jobs/s the cluster completes;
  * CPU per verified job, per daemon and its cage workers (from /proc, from
    the phase's start until its jobs are drained), grouped by the roles the
    daemons hold, and, less each daemon's idle floor, the marginal CPU of one
    more job: with ``--split-roles`` each daemon holds one role set (4
    validator+scheduler, N processing, 2 gateway+storage) so each role's cost
    is measured apart and throughput on N machines can be predicted;
  * dead node (``--dead-node``, on by default; last, on the configuration with
    the most processing nodes, >= 3): one processing node is killed with
    SIGKILL and the first r=2 job assigned to it is timed, from submit and
    from the block at its assignment's deadline (when the chain learns the
    node is down and gives the slot to another; see bench/jobs_dead_node.py).

Each tenant's connection subscribes to ``chain_newBlock``. A job's state
changes only when a block is applied, and the node applies a block before
it notifies, so on each notification the tenant reads one
``analytics_list`` page covering its outstanding jobs: latency runs from the
submit call to that answer, with no polling interval. Each verified job's
latency is split at the block times (header timestamps, notifications) and
at the ``job executed`` lines of the processing nodes' logs. Baselines from
the same run, before any testnet starts: the query in-process on DuckDB
(threads=1, as in the cage; median) and run once through a local cage pool.

    python bench/jobs.py                        # 4, 2, 1 processing nodes, 4 jobs/s offered, 30 s phases, dead node
    python bench/jobs.py --configs 4 --split-roles --window 8
    python bench/jobs.py --configs 4 --rate 4 --window 0 --keep
    python bench/jobs.py --smoke [--json]       # one configuration, a handful of jobs, no dead node (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.base.keys import Identity  # noqa: E402
from node.base.logging import configure_client_logging  # noqa: E402
from node.p2p.rpc import RpcCallError  # noqa: E402
from node.sdk.client import FINAL_STATES, AsyncClient  # noqa: E402
from node.testnet import layout, processes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jobs_dead_node  # noqa: E402
import proc_cpu  # noqa: E402
from jobs_report import QUERY, ROWS, STAGES, render, table_rows  # noqa: E402


def tenant_csv(index: int) -> str:
    lines = ["day,product,region,units"]
    lines += [f"2026-01-{1 + i % 28:02d},p{(i * 7 + index) % 12},r{i % 5},{(i * 31 + index) % 97}" for i in range(ROWS)]
    return "\n".join(lines) + "\n"


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- baselines ------------------------------------------------------------------------------
def baselines(csv_path: Path, runs: int) -> dict[str, Any]:
    con = duckdb.connect(config={"threads": 1})
    sql = QUERY.replace("FROM sales", f"FROM read_csv('{csv_path}')")
    con.execute(sql).fetchall()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        con.execute(sql).fetchall()
        times.append(time.perf_counter() - start)
    con.close()
    out: dict[str, Any] = {"duckdb_ms": med(times) * 1000, "cage_ms": None, "cage_note": ""}
    try:
        from node.cage.job import JobSpec
        from node.cage.pool import CagePool

        job = JobSpec(kind="sql", policy="processing", inputs={"sales": str(csv_path)}, sql=QUERY, seed=b"bench", clock=1_700_000_000)
        with CagePool() as pool:
            pool.run(job)
            cage = []
            for _ in range(max(3, runs // 5)):
                start = time.perf_counter()
                outcome = pool.run(job)
                cage.append(time.perf_counter() - start)
                if not outcome.ok:
                    raise RuntimeError(f"{outcome.status}: {outcome.detail}")
        out["cage_ms"] = med(cage) * 1000
    except Exception as exc:  # a host without the cage's layers still gets the other figures
        out["cage_note"] = f"(cage not measured: {str(exc)[:160]})"
    return out


# -- load -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Job:
    phase: str
    t_submit: float  # wall clock (s), to compare with block and log timestamps
    t_accepted: float = 0.0  # analytics_submit answered (nonce lookup + admission)
    t_final: float | None = None
    state: str | None = None
    heights: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Tenant:
    index: int
    identity: Identity
    address: str
    client: AsyncClient | None = None
    connected: trio.Event = dataclasses.field(default_factory=trio.Event)
    finished: trio.Condition = dataclasses.field(default_factory=trio.Condition)
    dataset: str = ""
    jobs: dict[str, Job] = dataclasses.field(default_factory=dict)  # in submission order
    position: dict[str, int] = dataclasses.field(default_factory=dict)
    outstanding: set[str] = dataclasses.field(default_factory=set)
    seen: dict[int, float] = dataclasses.field(default_factory=dict)  # height -> its notification arrived
    problems: dict[str, int] = dataclasses.field(default_factory=dict)

    def note(self, what: str) -> None:
        self.problems[what] = self.problems.get(what, 0) + 1


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = next((e for e in exc.exceptions if not isinstance(e, trio.Cancelled)), exc.exceptions[0])
    return exc


async def session(tenant: Tenant, blocks: dict[int, tuple[int, int]]) -> None:
    """Keep the tenant connected and watching; reconnect when the node drops
    the connection (as it does when keepalives go unanswered under load)."""
    while True:
        try:
            async with AsyncClient.connect(tenant.address, tenant.identity, timeout=30) as client:
                tenant.client = client
                tenant.connected.set()
                await watch(tenant, client, blocks)
        except (Exception, trio.TooSlowError) as exc:
            tenant.note(f"connection lost: {str(_first_leaf(exc))[:60]}")
        tenant.client = None
        await trio.sleep(0.5)


async def watch(tenant: Tenant, client: AsyncClient, blocks: dict[int, tuple[int, int]]) -> None:
    """On each new block, one ``analytics_list`` page (newest first) covering the outstanding jobs."""
    await client.rpc.call("chain_subscribe")
    async for note in client.rpc.notifications:
        if note.get("method") != "chain_newBlock":
            continue
        block = note["params"]["block"]
        tenant.seen.setdefault(block["height"], time.time())
        blocks.setdefault(block["height"], (block["timestamp_ms"], block["tx_count"]))
        if not tenant.outstanding:
            continue
        limit = min(500, len(tenant.jobs) - min(tenant.position[j] for j in tenant.outstanding) + 5)
        try:
            page = await client.rpc.call("analytics_list", {"limit": limit}, timeout=120)
            listed = {j["id"]: j for j in page["jobs"]}
            if page["next"] is not None:  # cut off at 500: ask for the rest one by one
                rest = [i for i in tenant.outstanding if i not in listed][:100]
                answers = await client.rpc.call_batch([("analytics_status", {"job_id": i}) for i in rest], timeout=120)
                listed.update({a["result"]["id"]: a["result"] for a in answers if "result" in a})
        except (RpcCallError, trio.TooSlowError) as exc:
            tenant.note(f"analytics_list: {type(exc).__name__} {str(exc)[:80]}")
            continue
        now = time.time()
        for job_id in [i for i in tenant.outstanding if listed.get(i, {}).get("state") in FINAL_STATES]:
            job, status = tenant.jobs[job_id], listed[job_id]
            job.t_final, job.state = now, status["state"]
            job.heights = {"submitted": status["submitted_height"], "finished": status["finished_height"]}
            tenant.outstanding.discard(job_id)
        async with tenant.finished:
            tenant.finished.notify_all()


async def submit(tenant: Tenant, phase: str, replication: int) -> None:
    client, t0 = tenant.client, time.time()
    if client is None:
        tenant.note("submit skipped: reconnecting")
        await trio.sleep(0.2)
        return
    try:
        job_id = await client.submit_job(job_type="sql", data_source={"sales": tenant.dataset},
                                         parameters={"query": QUERY}, replication=replication)
    except RpcCallError as exc:
        tenant.note(f"submit refused: {exc.code} {exc.message}")
        await trio.sleep(0.2)
        return
    except (Exception, trio.TooSlowError) as exc:  # the connection died under it (ConnectionError, StreamClosed...)
        tenant.note(f"submit failed: {type(exc).__name__}")
        await trio.sleep(0.2)
        return
    tenant.jobs[job_id], tenant.position[job_id] = Job(phase, t0, time.time()), len(tenant.jobs)
    tenant.outstanding.add(job_id)


async def open_loop(tenant: Tenant, phase: str, replication: int, interval: float, offset: float, stop_at: float) -> None:
    next_at = trio.current_time() + offset
    while True:
        await trio.sleep_until(next_at)
        if trio.current_time() >= stop_at:
            return
        await submit(tenant, phase, replication)
        next_at = max(next_at + interval, trio.current_time())


async def closed_loop(tenant: Tenant, phase: str, replication: int, window: int, stop_at: float) -> None:
    while trio.current_time() < stop_at:
        async with tenant.finished:
            while len(tenant.outstanding) >= window and trio.current_time() < stop_at:
                with trio.move_on_at(stop_at):
                    await tenant.finished.wait()
        if trio.current_time() < stop_at:
            await submit(tenant, phase, replication)


async def drain(tenants: list[Tenant], timeout: float) -> None:
    with trio.move_on_after(timeout):
        while any(t.outstanding for t in tenants):
            await trio.sleep(0.2)


async def fetch_result_heights(tenant: Tenant) -> None:
    """After the load: the blocks that carried each verified job's results."""
    ids = [i for i, j in tenant.jobs.items() if j.state == "verified" and j.phase != "warmup"]
    for chunk in (ids[i:i + 50] for i in range(0, len(ids), 50)):
        await tenant.connected.wait()
        try:
            answers = await tenant.client.rpc.call_batch([("analytics_status", {"job_id": i}) for i in chunk], timeout=120)  # type: ignore[union-attr]
        except (Exception, trio.TooSlowError):
            tenant.note("result heights not fetched")
            continue
        for job_id, answer in zip(chunk, answers):
            if "result" in answer:
                tenant.jobs[job_id].heights["results"] = [r["height"] for r in answer["result"]["results"]]


# -- one configuration ------------------------------------------------------------------------
def plan(processing: int, seed: str, split: bool = False) -> list[layout.NodePlan]:
    """Four validators with every role; only the first ``processing`` keep the processing role.
    ``split``: one role set per daemon instead, so each role's CPU is measured apart: four
    validator+scheduler nodes, ``processing`` processing nodes and two gateway+storage nodes
    (storage keeps two replicas of each dataset, as in the shared layout)."""
    if split:
        plans = layout.plan_testnet(4, non_validators=processing + 2, seed=seed, validator_roles=("validator", "scheduler"),
                                    other_roles=("processing",))
        return [p if i < 4 + processing else dataclasses.replace(p, roles=("gateway", "storage")) for i, p in enumerate(plans)]
    plans = layout.plan_testnet(4, seed=seed)
    return [p if i < processing else dataclasses.replace(p, roles=tuple(r for r in p.roles if r != "processing"))
            for i, p in enumerate(plans)]


async def run_config(plans: list[layout.NodePlan], data_dir: Path, args: argparse.Namespace, processing: int,
                     replication: int, pids: dict[str, int], dead_node: bool) -> dict[str, Any]:
    gateways = [p for p in plans if "gateway" in p.roles]
    tenants = [Tenant(i, Identity.from_label(f"bench-jobs/tenant{i}"), gateways[i % len(gateways)].address) for i in range(args.tenants)]
    blocks: dict[int, tuple[int, int]] = {}
    with trio.fail_after(180):  # the testnet is up and every processing node registered on chain
        while True:
            try:
                async with AsyncClient.connect(gateways[0].address, tenants[0].identity) as probe:
                    health = await probe.health()
                if health["processing_nodes"] >= processing and health["height"] >= 2:
                    break
            except Exception:
                pass
            await trio.sleep(1.0)
    ran: list[tuple[str, float, float, dict[str, Any], dict[str, Any], str]] = []
    async with trio.open_nursery() as sessions:
        for t in tenants:
            sessions.start_soon(session, t, blocks)
        with trio.fail_after(120):
            for t in tenants:
                await t.connected.wait()

        async def upload(t: Tenant) -> None:
            path = data_dir / f"tenant{t.index}.csv"
            path.write_text(tenant_csv(t.index))
            t.dataset = (await t.client.upload_dataset(path, name="sales"))["digest"]  # type: ignore[union-attr]

        for step in (upload, lambda t: submit(t, "warmup", replication)):  # warm-up: inputs reach the processing nodes
            async with trio.open_nursery() as nursery:
                for t in tenants:
                    nursery.start_soon(step, t)
        await drain(tenants, 120)
        idle, idle_window = proc_cpu.Window(pids), (time.time(), time.time() + args.idle)
        await trio.sleep(args.idle)
        idle_cpu = idle.stop() if args.idle else None
        for phase, window in [("offered", None)] + ([("saturation", args.window)] if args.window else []):
            cpu, start, stop_at = proc_cpu.Window(pids), time.time(), trio.current_time() + args.seconds
            whole = proc_cpu.Window(pids)  # to the end of the drain: all the work the phase's jobs took
            async with trio.open_nursery() as nursery:
                for t in tenants:
                    if window is None:
                        interval = args.tenants / args.rate
                        nursery.start_soon(open_loop, t, phase, replication, interval, interval * t.index / args.tenants, stop_at)
                    else:
                        nursery.start_soon(closed_loop, t, phase, replication, window, stop_at)
            end, usage = time.time(), cpu.stop()
            await drain(tenants, args.drain)
            ran.append((phase, start, end, usage, whole.stop(),
                        f"{args.rate:g} jobs/s offered" if window is None else f"{window} outstanding per tenant"))
            for t in tenants:  # still open after the drain: counted as unfinished; the next phase starts clean
                t.outstanding.clear()
        dead = None
        if dead_node:  # last: the killed node stays down
            victim = [p for p in plans if "processing" in p.roles][processing - 1]
            tenant = next(t for t in tenants if t.address != victim.address)
            with trio.move_on_after(args.dead_timeout):
                await tenant.connected.wait()
                assert tenant.client is not None
                dead = await jobs_dead_node.measure(tenant.client, tenant.dataset, QUERY, victim.name, victim.identity.peer_id,
                                                    pids[victim.name], tenant.seen, args.dead_deadline)
            if dead is None:
                dead = {"error": f"no figure within {args.dead_timeout:g} s"}
        with trio.move_on_after(120):
            async with trio.open_nursery() as nursery:
                for t in tenants:
                    nursery.start_soon(fetch_result_heights, t)
        sessions.cancel_scope.cancel()
    return {"tenants": tenants, "blocks": blocks, "ran": ran, "idle_cpu": idle_cpu, "idle_window": idle_window, "dead_node": dead}


def executions(directory: Path) -> dict[str, float]:
    """Job id -> when the last of its processing nodes logged ``job executed`` (wall clock, s)."""
    last: dict[str, float] = {}
    for log in directory.glob("node*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if '"job executed"' in line:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                at = datetime.datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
                last[entry["job"]] = max(at, last.get(entry["job"], 0.0))
    return last


def phase_figures(raw: dict[str, Any], phase: str, start: float, end: float, warmup: float, executed: dict[str, float]) -> dict[str, Any]:
    """Jobs/s over the steady window [start + warmup, end]; latency and its stages for jobs submitted in it."""
    w0, blocks = start + warmup, raw["blocks"]
    jobs = [(t, i, j) for t in raw["tenants"] for i, j in t.jobs.items() if j.phase == phase]
    steady = [(t, i, j) for t, i, j in jobs if w0 <= j.t_submit <= end]
    verified = [(t, i, j) for t, i, j in steady if j.state == "verified"]
    latency = [(j.t_final or 0.0) - j.t_submit for _, _, j in verified]  # verified jobs have a t_final
    states: dict[str, int] = {}
    for _, _, j in jobs:
        states[j.state or "unfinished"] = states.get(j.state or "unfinished", 0) + 1
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    block_counts: dict[str, int] = {}
    for t, job_id, j in verified:
        sub, fin = j.heights["submitted"], j.heights["finished"]
        res = max(j.heights.get("results") or [fin])
        if not {sub, res} <= set(blocks) or not {sub, fin} <= set(t.seen) or job_id not in executed:
            continue
        marks = [j.t_submit, j.t_accepted, blocks[sub][0] / 1000, t.seen[sub], executed[job_id], blocks[res][0] / 1000,
                 t.seen[fin], j.t_final]
        for stage, a, b in zip(STAGES, marks, marks[1:]):
            stages[stage].append(b - a)
        block_counts[str(fin - sub)] = block_counts.get(str(fin - sub), 0) + 1
    heights = [h for h in blocks if w0 <= blocks[h][0] / 1000 <= end]
    intervals = [blocks[h + 1][0] - blocks[h][0] for h in heights if h + 1 in blocks]
    committed = block_latency(raw, w0, end)
    window = end - w0
    return {
        "submitted": len(jobs), "states": states, "window_s": window, "offered_s": len(steady) / window,
        "jobs_s": sum(1 for _, _, j in jobs if j.state == "verified" and w0 <= (j.t_final or 0) <= end) / window,
        "p50_ms": med(latency) * 1000, "p99_ms": pct(latency, 0.99) * 1000, "verified_in_window": len(verified),
        "stages_ms": {s: med(v) * 1000 for s, v in stages.items()}, "stages_p90_ms": {s: pct(v, 0.9) * 1000 for s, v in stages.items()},
        "blocks_submit_to_verdict": dict(sorted(block_counts.items())),
        "block_interval_ms": {"median": med(intervals), "p90": pct(intervals, 0.9), "max": max(intervals, default=float("nan"))},
        "txs_per_block": med([blocks[h][1] for h in heights]),
        "proposal_to_notified_ms": {"median": med(committed), "p90": pct(committed, 0.9)},
    }


def block_latency(raw: dict[str, Any], start: float, end: float) -> list[float]:
    """Per block proposed in [start, end]: ms from its header timestamp (the proposal) to the
    first tenant's notification (committed, applied by that gateway, sent)."""
    blocks, out = raw["blocks"], []
    for h, (ts, _) in blocks.items():
        seen = [t.seen[h] for t in raw["tenants"] if h in t.seen]
        if start <= ts / 1000 <= end and seen:
            out.append(min(seen) * 1000 - ts)
    return out


def measure_config(processing: int, args: argparse.Namespace) -> dict[str, Any]:
    replication = 2 if processing >= 2 else 1
    directory = Path(tempfile.mkdtemp(prefix=f"metanode-bench-jobs-{processing}p-"))
    plans = plan(processing, f"bench-jobs-{processing}", args.split_roles)
    layout.write_testnet(directory, plans)
    ok = False
    dead_node = args.dead_node and processing >= 3 and processing == max(args.config_list)  # a spare node to take the slot
    try:
        pids = processes.up(directory)
        try:
            raw = trio.run(run_config, plans, directory, args, processing, replication, pids, dead_node)
        except BaseExceptionGroup as group:  # one connection nursery per tenant nests the real error deep
            raise _first_leaf(group) from None
        ok = True
    finally:
        processes.down(directory)
        if not ok:
            print(f"jobs bench: configuration with {processing} processing node(s) failed; logs kept in {directory}", file=sys.stderr)
    executed = executions(directory)  # read after the daemons stopped: their logs are complete
    idle = block_latency(raw, *raw["idle_window"])
    out: dict[str, Any] = {"processing_nodes": processing, "replication": replication, "tenants": args.tenants,
                           "idle_cpu": raw["idle_cpu"], "idle_proposal_to_notified_ms": {"median": med(idle), "p90": pct(idle, 0.9)}}
    roles = {p.name: p.roles for p in plans}
    for phase, start, end, usage, whole, load in raw["ran"]:
        # CPU from the phase's start to the end of its drain, per job of the phase verified.
        done = sum(1 for t in raw["tenants"] for j in t.jobs.values() if j.phase == phase and j.state == "verified")
        out[phase] = {"load": load, **phase_figures(raw, phase, start, end, args.warmup, executed), "cpu": usage,
                      "cpu_per_job": proc_cpu.per_unit(whole, roles, done, raw["idle_cpu"])}
    if raw["dead_node"] is not None:
        out["dead_node"] = raw["dead_node"]
    tenants = raw["tenants"]
    out["problems"] = {k: sum(t.problems.get(k, 0) for t in tenants) for k in sorted({k for t in tenants for k in t.problems})}
    if args.keep:
        print(f"jobs bench: testnet of {processing} processing node(s) kept in {directory}", file=sys.stderr)
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return out


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="4,2,1", help="processing node counts, one fresh testnet each (default 4,2,1)")
    parser.add_argument("--tenants", type=int, default=16)
    parser.add_argument("--rate", type=float, default=4.0, help="offered jobs per second, all tenants together")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each load phase")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds at the start of a phase left out of the figures")
    parser.add_argument("--window", type=int, default=4, help="outstanding jobs per tenant in the saturation phase (0: skip it)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of no load measured before the phases (0: skip)")
    parser.add_argument("--drain", type=float, default=90.0, help="seconds to wait for outstanding jobs after a phase")
    parser.add_argument("--split-roles", action="store_true",
                        help="one role set per daemon (4 validator+scheduler, N processing, 2 gateway+storage) to measure each role's CPU apart")
    parser.add_argument("--dead-node", action=argparse.BooleanOptionalAction, default=True,
                        help="last, on the configuration with the most (>= 3) processing nodes: kill -9 one and time a job assigned to it")
    parser.add_argument("--dead-deadline", type=int, default=100,
                        help="deadline_blocks of the dead-node job (default 100, the SDK's: the ack rule finds the dead node first)")
    parser.add_argument("--dead-timeout", type=float, default=120.0, help="seconds to give the dead-node figure")
    parser.add_argument("--smoke", action="store_true", help="one configuration, a handful of jobs, no dead node (CI)")
    parser.add_argument("--keep", action="store_true", help="keep each testnet directory (configs, node logs)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.smoke:
        args.configs, args.tenants, args.rate, args.seconds, args.warmup, args.window, args.idle = "4", 2, 2.0, 3.0, 0.0, 0, 0.0
        args.dead_node = False
    try:
        configs = [int(x) for x in args.configs.split(",")]
    except ValueError:
        parser.error(f"--configs: expected processing node counts like 4,2,1, got {args.configs!r}")
    if any(not 1 <= k <= 4 for k in configs):
        parser.error("--configs: each processing node count must be 1..4 (the testnet has four nodes)")
    if args.tenants < 1 or args.rate <= 0 or args.seconds <= args.warmup or args.window < 0 or args.idle < 0:
        parser.error("need --tenants >= 1, --rate > 0, --seconds > --warmup, --window >= 0, --idle >= 0")
    if args.dead_deadline < 2 or args.dead_timeout <= 0:
        parser.error("need --dead-deadline >= 2 (the chain's min_deadline_blocks) and --dead-timeout > 0")
    args.config_list = configs
    configure_client_logging()
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM tears the testnet down like Ctrl-C
    with tempfile.TemporaryDirectory(prefix="metanode-bench-jobs-base-") as tmp:
        csv_path = Path(tmp) / "sales.csv"
        csv_path.write_text(tenant_csv(0))
        base = baselines(csv_path, 10 if args.smoke else 50)
    results = [measure_config(k, args) for k in configs]
    report = {"bench": "jobs", "smoke": args.smoke, "tenants": args.tenants, "query": QUERY, "baselines": base,
              "configs": results, "load_average": os.getloadavg()}
    report["rows"] = table_rows(results, base)
    print(json.dumps(report) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
