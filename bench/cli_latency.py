"""CLI latency: ``metanode rpc node_status`` against a running local node, whole
process, beside the cost of starting Python with the three libraries any
metanode client needs.

One real node (a one-validator testnet of one daemon process) starts in a
temporary directory. Then, alternating so that the machine's load falls on
both alike, N runs each of

  * ``metanode rpc node_status --node ADDR`` (a subprocess: interpreter
    start, imports, dial, Noise, yamux, one JSON-RPC call, exit), and
  * ``python -c "import trio, nacl.signing, cbor2"`` (the baseline);

and, for reference, a few runs of ``python -c "import libp2p"`` (what the
command paid before the light dialer). Prints median and p90 of each and the
ratio of the medians against the goal of issue 14: within 3x the baseline.

    python bench/cli_latency.py               # 30 runs each
    python bench/cli_latency.py --runs 100
    python bench/cli_latency.py --smoke       # 5 runs each (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.testnet import layout, processes  # noqa: E402

GOAL_RATIO = 3.0
BASELINE = [sys.executable, "-c", "import trio, nacl.signing, cbor2"]
LIBP2P = [sys.executable, "-c", "import libp2p"]


def metanode_command() -> list[str]:
    """The installed ``metanode`` script beside this interpreter, as a user runs it;
    ``python -m node`` where there is none."""
    script = Path(sys.executable).with_name("metanode")
    return [str(script)] if script.exists() else [sys.executable, "-m", "node"]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(values), "p90_s": pct(values, 0.9), "min_s": min(values), "runs": len(values)}


def wait_ready(command: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        if done.returncode == 0:
            return
        last = done.stderr.strip()[-300:]
        time.sleep(0.5)
    raise RuntimeError(f"the node did not answer within {timeout:g} s: {last}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="metanode-bench-cli-"))
    ok = False
    try:
        plans = layout.plan_testnet(1, validator_roles=("validator", "gateway"), seed="bench-cli-latency")
        layout.write_testnet(work, plans)
        try:
            processes.up(work)
            command = [*metanode_command(), "rpc", "node_status", "--node", plans[0].address]
            wait_ready(command, 90)
            for _ in range(args.warmup):  # page cache, .pyc files
                timed(BASELINE)
                timed(command)
            cli, baseline = [], []
            for _ in range(args.runs):
                baseline.append(timed(BASELINE))
                cli.append(timed(command))
            libp2p = [timed(LIBP2P) for _ in range(min(args.runs, 5))]
            ok = True
        finally:
            processes.down(work)
            if not ok:
                print(f"cli latency bench failed; node logs kept in {work}", file=sys.stderr)
        ratio = statistics.median(cli) / statistics.median(baseline)
        return {"bench": "cli_latency", "smoke": args.smoke, "command": " ".join(command[-4:-2]),
                "cli": summary(cli), "baseline": summary(baseline), "libp2p_import": summary(libp2p),
                "ratio": ratio, "goal": f"<= {GOAL_RATIO:g}x the baseline", "met": ratio <= GOAL_RATIO,
                "load_average": os.getloadavg()}
    finally:
        if ok:
            shutil.rmtree(work, ignore_errors=True)


def render(report: dict[str, Any]) -> str:
    def line(label: str, s: dict[str, float]) -> str:
        return f"{label:<52} median {s['median_s'] * 1000:7.1f} ms   p90 {s['p90_s'] * 1000:7.1f} ms   ({s['runs']} runs)"

    return "\n".join([
        line("metanode rpc node_status (whole process)", report["cli"]),
        line('python -c "import trio, nacl.signing, cbor2"', report["baseline"]),
        line('python -c "import libp2p" (reference: the old cost)', report["libp2p_import"]),
        f"ratio of medians: {report['ratio']:.2f}x (goal {report['goal']}: {'met' if report['met'] else 'not met'})",
        f"load average: {', '.join(f'{x:.2f}' for x in report['load_average'])}",
    ])


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="timed runs of each command (default 30)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each first (default 2)")
    parser.add_argument("--smoke", action="store_true", help="5 runs each (CI)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.warmup = 5, 1
    if args.runs < 1 or args.warmup < 0:
        parser.error("need --runs >= 1 and --warmup >= 0")
    signal.signal(signal.SIGTERM, _interrupt)
    report = run(args)
    print(json.dumps(report) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
