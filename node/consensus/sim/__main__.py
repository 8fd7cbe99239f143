"""``python -m node.consensus.sim``: run seeded IBFT simulations.

Examples::

    python -m node.consensus.sim --seeds 200 --n 4 --faults all
    python -m node.consensus.sim --seeds 5000 --n 4,7 --jobs 2
    python -m node.consensus.sim --seeds 200 --faults set-change   # set changes alone
    python -m node.consensus.sim --seed 17 --n 7 --faults all -v   # replay one

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
@click.pass_context
def simulate(ctx: click.Context, seeds: int, start: int, seed: int | None, n: str, faults: str, jobs: int, verbose: bool) -> None:
    try:
        fault_kinds = parse_faults(faults)
        sizes = [int(x) for x in n.split(",")]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if any(size < 1 or size > 64 for size in sizes):
        raise click.UsageError("--n must be between 1 and 64")
    seed_list = [seed] if seed is not None else list(range(start, start + seeds))
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
