"""``python -m node.consensus.sim``: run seeded IBFT simulations.

Examples::

    python -m node.consensus.sim --seeds 200 --n 4 --faults all
    python -m node.consensus.sim --seeds 5000 --n 4,7 --jobs 2
    python -m node.consensus.sim --seed 17 --n 7 --faults all -v   # replay one

Exit status 0 when every run kept every invariant, 1 otherwise; each failing
seed prints the one command that replays it.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from node.consensus.sim import SimResult, parse_faults, run_seed


def _one(args: tuple[int, int, tuple[str, ...]]) -> SimResult:
    return run_seed(*args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.consensus.sim", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run (default 100)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seed", type=int, help="run exactly this one seed")
    parser.add_argument("--n", default="4", help="validators, or a comma list run in turn (default 4)")
    parser.add_argument("--faults", default="all", help="all | none | comma list (delay,drop,dup,partition,crash,silent,equivocate,shared-key)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run's scenario and heights")
    args = parser.parse_args(argv)
    try:
        faults = parse_faults(args.faults)
        sizes = [int(x) for x in args.n.split(",")]
    except ValueError as exc:
        parser.error(str(exc))
    if any(size < 1 or size > 64 for size in sizes):
        parser.error("--n must be between 1 and 64")
    seeds = [args.seed] if args.seed is not None else list(range(args.start, args.start + args.seeds))
    jobs = [(seed, size, faults) for size in sizes for seed in seeds]
    started = time.monotonic()
    failures = 0
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = pool.map(_one, jobs, chunksize=8)
            failures = _report(results, args.verbose)
    else:
        failures = _report(map(_one, jobs), args.verbose)
    elapsed = time.monotonic() - started
    print(f"{len(jobs) - failures}/{len(jobs)} runs passed (n={args.n}, faults={args.faults}) in {elapsed:.1f} s")
    return 1 if failures else 0


def _report(results, verbose: bool) -> int:
    failures = 0
    for result in results:
        if verbose or not result.ok:
            status = "ok  " if result.ok else "FAIL"
            print(f"{status} seed={result.seed} n={result.n} heights={result.heights} "
                  f"virtual={result.virtual_ms} ms  {result.scenario.describe()}")
        if not result.ok:
            failures += 1
            print(f"     {result.error}")
            print(f"     replay: {result.replay}")
        sys.stdout.flush()
    return failures


if __name__ == "__main__":
    sys.exit(main())
