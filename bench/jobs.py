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
    loop) for ``--seconds``: the most jobs/s the cluster completes.

Each tenant's connection subscribes to ``chain_newBlock``. A job's state
changes only when a block is applied, and the node applies a block before
it notifies, so on each notification the tenant reads one
``analytics_list`` page covering its outstanding jobs: latency runs from the
submit call to that answer, with no polling interval. Each verified job's
latency is split at the block times (header timestamps, notifications) and
at the ``job executed`` lines of the processing nodes' logs. Baselines from
the same run, before any testnet starts: the query in-process on DuckDB
(threads=1, as in the cage; median) and run once through a local cage pool.

    python bench/jobs.py                        # 4, 2, 1 processing nodes, 12 jobs/s offered, 30 s phases
    python bench/jobs.py --configs 4 --rate 4 --window 0 --keep
    python bench/jobs.py --smoke [--json]       # one configuration, a handful of jobs (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import resource
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

QUERY = "SELECT product, count(*) AS n, sum(units) AS units FROM sales GROUP BY product"
ROWS = 200
GOAL_JOBS_S, GOAL_P50_MS = 10.0, 1500.0
STAGES = ("submit call", "wait for proposal", "consensus, job block", "execution", "wait for result proposal",
          "consensus, result block", "observed")


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


# -- CPU accounting ---------------------------------------------------------------------------
def tree_cpu(roots: list[int]) -> tuple[float, float]:
    """CPU seconds of the ``roots`` (the daemons) and of all their descendants
    (cage fork servers, with the jobs they forked and reaped)."""
    tick, stats = os.sysconf("SC_CLK_TCK"), {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / tick)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    own, below, todo = sum(stats[p][1] for p in roots if p in stats), 0.0, [c for p in roots for c in children.get(p, [])]
    while todo:
        pid = todo.pop()
        below += stats[pid][1]
        todo.extend(children.get(pid, []))
    return own, below


def machine_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of this machine since boot (steal: the hypervisor ran someone else)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(v) - v[3] - v[4] - v[7]) / tick, v[7] / tick, sum(v) / tick


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuWindow:
    """CPU used between construction and :meth:`stop`, in cores (CPU seconds per second)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.start = pids, (time.time(), tree_cpu(pids), _self_cpu(), machine_cpu())

    def stop(self) -> dict[str, float]:
        (_, (own0, below0), client0, (busy0, steal0, total0)), wall = self.start, time.time() - self.start[0]
        (own, below), client, (busy, steal, total) = tree_cpu(self.pids), _self_cpu(), machine_cpu()
        own, below, client, busy = own - own0, below - below0, client - client0, busy - busy0
        return {"cores": (total - total0) / wall, "machine": busy / wall, "daemons": own / wall, "cages": below / wall,
                "bench_client": client / wall, "other": max(0.0, busy - own - below - client) / wall,
                "steal": (steal - steal0) / wall}


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
def plan(processing: int, seed: str) -> list[layout.NodePlan]:
    """Four validators with every role; only the first ``processing`` keep the processing role."""
    plans = layout.plan_testnet(4, seed=seed)
    return [p if i < processing else dataclasses.replace(p, roles=tuple(r for r in p.roles if r != "processing"))
            for i, p in enumerate(plans)]


async def run_config(plans: list[layout.NodePlan], data_dir: Path, args: argparse.Namespace, processing: int,
                     replication: int, pids: list[int]) -> dict[str, Any]:
    tenants = [Tenant(i, Identity.from_label(f"bench-jobs/tenant{i}"), plans[i % len(plans)].address) for i in range(args.tenants)]
    blocks: dict[int, tuple[int, int]] = {}
    with trio.fail_after(180):  # the testnet is up and every processing node registered on chain
        while True:
            try:
                async with AsyncClient.connect(plans[0].address, tenants[0].identity) as probe:
                    health = await probe.health()
                if health["processing_nodes"] >= processing and health["height"] >= 2:
                    break
            except Exception:
                pass
            await trio.sleep(1.0)
    ran: list[tuple[str, float, float, dict[str, float], str]] = []
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
        idle, idle_window = CpuWindow(pids), (time.time(), time.time() + args.idle)
        await trio.sleep(args.idle)
        idle_cpu = idle.stop() if args.idle else None
        for phase, window in [("offered", None)] + ([("saturation", args.window)] if args.window else []):
            cpu, start, stop_at = CpuWindow(pids), time.time(), trio.current_time() + args.seconds
            async with trio.open_nursery() as nursery:
                for t in tenants:
                    if window is None:
                        interval = args.tenants / args.rate
                        nursery.start_soon(open_loop, t, phase, replication, interval, interval * t.index / args.tenants, stop_at)
                    else:
                        nursery.start_soon(closed_loop, t, phase, replication, window, stop_at)
            end, usage = time.time(), cpu.stop()
            await drain(tenants, args.drain)
            ran.append((phase, start, end, usage, f"{args.rate:g} jobs/s offered" if window is None else f"{window} outstanding per tenant"))
            for t in tenants:  # still open after the drain: counted as unfinished; the next phase starts clean
                t.outstanding.clear()
        with trio.move_on_after(120):
            async with trio.open_nursery() as nursery:
                for t in tenants:
                    nursery.start_soon(fetch_result_heights, t)
        sessions.cancel_scope.cancel()
    return {"tenants": tenants, "blocks": blocks, "ran": ran, "idle_cpu": idle_cpu, "idle_window": idle_window}


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
    latency = [j.t_final - j.t_submit for _, _, j in verified]  # type: ignore[operator]
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
    plans = plan(processing, f"bench-jobs-{processing}")
    layout.write_testnet(directory, plans)
    ok = False
    try:
        pids = list(processes.up(directory).values())
        try:
            raw = trio.run(run_config, plans, directory, args, processing, replication, pids)
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
    for phase, start, end, usage, load in raw["ran"]:
        out[phase] = {"load": load, **phase_figures(raw, phase, start, end, args.warmup, executed), "cpu": usage}
    tenants = raw["tenants"]
    out["problems"] = {k: sum(t.problems.get(k, 0) for t in tenants) for k in sorted({k for t in tenants for k in t.problems})}
    if args.keep:
        print(f"jobs bench: testnet of {processing} processing node(s) kept in {directory}", file=sys.stderr)
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return out


# -- output -----------------------------------------------------------------------------------
def table_rows(configs: list[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    rows, q_s, top = [], 1000 / base["duckdb_ms"], max(c["processing_nodes"] for c in configs)

    def row(figure: str, value: float, unit: str, baseline: float | None, label: str, goal: str = "", met: bool | None = None) -> None:
        rows.append({"figure": figure, "value": value, "unit": unit, "baseline": baseline, "baseline_label": label, "goal": goal, "met": met})

    for c in configs:
        tag, main, o = f"{c['processing_nodes']} processing, r={c['replication']}", c["processing_nodes"] == top, c["offered"]
        row(f"jobs/s verified at {o['load']} ({tag})", o["jobs_s"], "jobs/s", q_s, "in-process DuckDB queries/s",
            *((f">= {GOAL_JOBS_S:g} jobs/s", o["jobs_s"] >= GOAL_JOBS_S) if main else ()))
        row(f"submit to verified p50 ({tag})", o["p50_ms"], "ms", base["duckdb_ms"], "in-process DuckDB ms",
            *((f"< {GOAL_P50_MS:g} ms", o["p50_ms"] < GOAL_P50_MS) if main else ()))
        row(f"submit to verified p99 ({tag})", o["p99_ms"], "ms", base["cage_ms"], "one cage run ms")
        if "saturation" in c:
            s = c["saturation"]
            row(f"jobs/s at saturation, {s['load']} ({tag})", s["jobs_s"], "jobs/s", q_s, "in-process DuckDB queries/s")
            row(f"p50 at saturation ({tag})", s["p50_ms"], "ms", base["duckdb_ms"], "in-process DuckDB ms")
    return rows


def render(report: dict[str, Any]) -> str:
    base = report["baselines"]
    cage = "n/a" if base["cage_ms"] is None else f"{base['cage_ms']:.1f} ms"
    lines = [f"jobs benchmark ({'smoke' if report['smoke'] else 'full'}): 4 validator daemons on loopback, {os.cpu_count()} cores "
             f"(shared with whatever else runs: see 'other'), {report['tenants']} tenants, query over {ROWS}-row CSVs: {QUERY}",
             f"baselines: in-process DuckDB {base['duckdb_ms']:.2f} ms, one cage run {cage} {base['cage_note']}".rstrip(), ""]
    header = f"{'figure':64} {'value':>9}  {'baseline':>9}  {'ratio':>8}  goal"
    lines += [header, "-" * len(header)]
    for r in report["rows"]:
        ratio = r["value"] / r["baseline"] if r["baseline"] else float("nan")
        met = "" if r["met"] is None else ("  met" if r["met"] else "  NOT met")
        baseline = "n/a" if r["baseline"] is None else f"{r['baseline']:.1f}"
        lines.append(f"{r['figure']:64} {r['value']:9.1f}  {baseline:>9}  {ratio:8.2f}  {r['goal']}{met}")
    lines += ["", "where the time goes: medians per verified job of the steady window, ms (p90); CPU in cores"]
    for c in report["configs"]:
        if c["idle_cpu"]:
            i = c["idle_cpu"]
            b = c["idle_proposal_to_notified_ms"]
            lines.append(f"  {c['processing_nodes']}p idle        CPU: daemons {i['daemons']:.2f} + cages {i['cages']:.2f}, other processes "
                         f"{i['other']:.2f}; block proposal to notification {b['median']:.0f} ms (p90 {b['p90']:.0f})")
        for phase in ("offered", "saturation"):
            if phase in c:
                f, cpu = c[phase], c[phase]["cpu"]
                stages = ", ".join(f"{s} {f['stages_ms'][s]:.0f} ({f['stages_p90_ms'][s]:.0f})" for s in STAGES)
                lines.append(f"  {c['processing_nodes']}p {phase:10}  {stages}")
                lines.append(f"  {'':14}blocks from job block to verdict {f['blocks_submit_to_verdict']}; block interval median "
                             f"{f['block_interval_ms']['median']:.0f} ms, p90 {f['block_interval_ms']['p90']:.0f}, max "
                             f"{f['block_interval_ms']['max']:.0f}; proposal to notification {f['proposal_to_notified_ms']['median']:.0f} ms "
                             f"(p90 {f['proposal_to_notified_ms']['p90']:.0f}); txs/block {f['txs_per_block']:.0f}; jobs {f['states']}")
                lines.append(f"  {'':14}CPU: machine {cpu['machine']:.2f} of {cpu['cores']:.0f} = daemons {cpu['daemons']:.2f} + their cages "
                             f"{cpu['cages']:.2f} + bench client {cpu['bench_client']:.2f} + other processes {cpu['other']:.2f} "
                             f"(hypervisor steal {cpu['steal']:.2f})")
        if c["problems"]:
            lines.append(f"  {c['processing_nodes']}p refused or failed calls: {c['problems']}")
    return "\n".join(lines)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="4,2,1", help="processing node counts, one fresh testnet each (default 4,2,1)")
    parser.add_argument("--tenants", type=int, default=16)
    parser.add_argument("--rate", type=float, default=12.0, help="offered jobs per second, all tenants together")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each load phase")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds at the start of a phase left out of the figures")
    parser.add_argument("--window", type=int, default=4, help="outstanding jobs per tenant in the saturation phase (0: skip it)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of no load measured before the phases (0: skip)")
    parser.add_argument("--drain", type=float, default=90.0, help="seconds to wait for outstanding jobs after a phase")
    parser.add_argument("--smoke", action="store_true", help="one configuration, a handful of jobs (CI)")
    parser.add_argument("--keep", action="store_true", help="keep each testnet directory (configs, node logs)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.smoke:
        args.configs, args.tenants, args.rate, args.seconds, args.warmup, args.window, args.idle = "4", 2, 2.0, 3.0, 0.0, 0, 0.0
    try:
        configs = [int(x) for x in args.configs.split(",")]
    except ValueError:
        parser.error(f"--configs: expected processing node counts like 4,2,1, got {args.configs!r}")
    if any(not 1 <= k <= 4 for k in configs):
        parser.error("--configs: each processing node count must be 1..4 (the testnet has four nodes)")
    if args.tenants < 1 or args.rate <= 0 or args.seconds <= args.warmup or args.window < 0 or args.idle < 0:
        parser.error("need --tenants >= 1, --rate > 0, --seconds > --warmup, --window >= 0, --idle >= 0")
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
