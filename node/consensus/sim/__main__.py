"""``python -m node.consensus.sim``: run seeded IBFT simulations.

Examples::

    python -m node.consensus.sim --seeds 200 --n 4 --faults all
    python -m node.consensus.sim --seeds 5000 --n 4,7 --jobs 2
    python -m node.consensus.sim --seeds 200 --faults set-change   # set changes alone
    python -m node.consensus.sim --seed 17 --n 7 --faults all -v   # replay one
    python -m node.consensus.sim --wan --seeds 20 --n 16 --faults silent   # wide-area links (20-150 ms)

Exit status 0 when every run kept every invariant, 1 otherwise; each failing
seed prints the one command that replays it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor

import click

from node.consensus.sim import ALL_FAULTS, SimResult, parse_faults, run_seed
from node.consensus.sim.wan import WanModel, run_wan

# Costs of the order bench/scaling.py measures on one core (it passes its own).
WAN_MODEL = WanModel(sign_us=20, verify_us=50, vrf_us=400, message_us=25)


def _one(args: tuple[int, int, tuple[str, ...]]) -> SimResult:
    return run_seed(*args)


PROG = "python -m node.consensus.sim"


@click.command(name=PROG, help=__doc__.split("\n")[0], context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--seeds", type=int, default=100, help="how many seeds to run (default 100)")
@click.option("--start", type=int, default=0, help="first seed (default 0)")
@click.option("--seed", type=int, default=None, help="run exactly this one seed")
@click.option("--n", "n", default="4", help="validators, or a comma list run in turn (default 4)")
@click.option("--faults", default="all", help=f"all | none | comma list ({','.join(ALL_FAULTS)})")
@click.option("--jobs", type=int, default=1, help="worker processes (default 1)")
@click.option("-v", "--verbose", is_flag=True, help="print every run's scenario and heights")
@click.option("--wan", is_flag=True, help="wide-area links and CPU costs under a client load (faults: none or silent)")
@click.pass_context
def simulate(
    ctx: click.Context, seeds: int, start: int, seed: int | None, n: str, faults: str, jobs: int, verbose: bool, wan: bool,
) -> None:
    try:
        fault_kinds = parse_faults(faults)
        sizes = [int(x) for x in n.split(",")]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if any(size < 1 or size > 64 for size in sizes):
        raise click.UsageError("--n must be between 1 and 64")
    seed_list = [seed] if seed is not None else list(range(start, start + seeds))
    if wan:
        ctx.exit(_run_wan(seed_list, sizes, fault_kinds, faults, verbose))
    runs = [(one_seed, size, fault_kinds) for size in sizes for one_seed in seed_list]
    started = time.monotonic()
    tally = {"failures": 0, "with_changes": 0, "changes": 0}
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            _report(pool.map(_one, runs, chunksize=8), verbose, tally)
    else:
        _report(map(_one, runs), verbose, tally)
    elapsed = time.monotonic() - started
    failures = tally["failures"]
    print(f"{len(runs) - failures}/{len(runs)} runs passed (n={n}, faults={faults}) in {elapsed:.1f} s; "
          f"{tally['with_changes']} runs changed the validator set ({tally['changes']} changes executed)")
    ctx.exit(1 if failures else 0)


def _run_wan(seed_list: list[int], sizes: list[int], fault_kinds: tuple[str, ...], faults: str, verbose: bool) -> int:
    """``--wan``: run_wan for every (n, seed); 1 if any run broke an invariant."""
    if set(fault_kinds) - {"silent"}:
        raise click.UsageError(f"--wan takes --faults none or silent, not {faults!r}")
    silent = "silent" in fault_kinds
    if silent and min(sizes) < 4:
        raise click.UsageError("--wan --faults silent needs every --n >= 4")
    started, failures, runs = time.monotonic(), 0, 0
    for size in sizes:
        for one_seed in seed_list:
            result = run_wan(one_seed, size, WAN_MODEL, silent=silent, load_ms=3_000)
            runs += 1
            if verbose or not result.ok:
                figures = result.summary()
                print(f"{'ok  ' if result.ok else 'FAIL'} seed={one_seed} n={size} heights={result.heights} "
                      f"finality p50/p99={figures['tx_quorum_p50_ms']}/{figures['tx_quorum_p99_ms']} ms "
                      f"rounds/height={result.rounds_per_height:.2f}  {WAN_MODEL.describe()}")
            if not result.ok:
                failures += 1
                print(f"     {result.error}")
                print(f"     replay: {PROG} --wan --seed {one_seed} --n {size} --faults {'silent' if silent else 'none'}")
            sys.stdout.flush()
    print(f"{runs - failures}/{runs} wide-area runs passed (faults={faults}) in {time.monotonic() - started:.1f} s")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: this process's); the exit status
    (0 all runs kept every invariant, 1 some did not, 2 a usage error)."""
    try:
        simulate.main(args=argv, prog_name=PROG)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return 0


def _report(results: Iterable[SimResult], verbose: bool, tally: dict[str, int]) -> None:
    """Print failures (every run with ``verbose``) and count into ``tally``."""
    for result in results:
        executed = [h for h in result.set_changes_executed if h >= 0]
        tally["with_changes"] += bool(executed)
        tally["changes"] += len(executed)
        if verbose or not result.ok:
            status = "ok  " if result.ok else "FAIL"
            changes = f" set changes executed at {result.set_changes_executed}" if result.scenario.changes else ""
            print(f"{status} seed={result.seed} n={result.n} heights={result.heights} "
                  f"virtual={result.virtual_ms} ms  {result.scenario.describe()}{changes}")
        if not result.ok:
            tally["failures"] += 1
            print(f"     {result.error}")
            print(f"     replay: {result.replay}")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
