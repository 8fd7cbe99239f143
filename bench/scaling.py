"""Scaling model: IBFT finality against n over wide-area links, in the deterministic simulator.

Runs the real IBFT core (node/consensus/sim, ``run_wan``) at n = 4, 16 and 64
validators over seeded one-way links of 20..150 ms (+ up to 10% jitter per
message), each node a single core that pays, per message, the Ed25519
signing and verification costs measured here on this machine (and the VRF
proof and message decoding costs), under a steady client load of 20 tx/s.
Each n runs with no fault and with one silent validator (the round-0
proposer of height 2, and every n heights after). Reported, in virtual time
(machine load does not change the figures, only the measured CPU costs do):

  * finality, tx submit -> its block final at a quorum (2f+1) / at all honest (p50, p99);
  * proposal -> final at a quorum (p50, p99), beside the model's lower bound:
    three one-way delays (PROPOSAL, PREPARE, COMMIT) over the median link;
  * rounds per height, consensus messages and bytes per height (O(n^2)),
    modelled CPU per validator per height (O(n)).

    python bench/scaling.py                 # n = 4,16,64, 3 seeds, 20 s of load each
    python bench/scaling.py --n 4,16 --seeds 1 --load-s 5
    python bench/scaling.py --smoke         # tiny (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.base import vrf  # noqa: E402
from node.base.keys import Identity, verify  # noqa: E402
from node.consensus import messages as m  # noqa: E402
from node.consensus.sim.wan import WanModel, WanResult, percentile, run_wan  # noqa: E402


def _per_call_us(call: Any, seconds: float) -> int:
    """The best batch's time per call: the machine may be shared, and the
    least disturbed batch is the closest to what one free core does."""
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(20):
            call()
        best = min(best, (time.perf_counter() - started) / 20)
    return max(1, round(best * 1e6))


def measure_costs(seconds: float) -> dict[str, int]:
    """Microseconds per Ed25519 sign and verify, VRF proof verify, and the
    decoding of a COMMIT message, measured on one core of this machine."""
    identity = Identity.from_label("bench-scaling")
    message = b"m" * 80
    signature = identity.sign(m.SIGN_TAG, message)
    # node.base.vrf caches verdicts: time one pass over proofs never checked before.
    alphas = [b"alpha-%d" % i for i in range(16 if seconds < 1 else 64)]
    proofs = [vrf.prove(identity.seed, alpha) for alpha in alphas]
    times = []
    for alpha, proof in zip(alphas, proofs):
        started = time.perf_counter()
        vrf.verify(identity.public_key, proof, alpha)
        times.append(time.perf_counter() - started)
    vrf_us = max(1, round(sorted(times)[len(times) // 4] * 1e6))  # first quartile, as the best batch above
    commit = m.Message(m.sign_payload(identity, m.commit_payload(5, 0, b"\x11" * 32, b"\x22" * 64))).encode()
    share = seconds / 3
    return {
        "sign_us": _per_call_us(lambda: identity.sign(m.SIGN_TAG, message), share),
        "verify_us": _per_call_us(lambda: verify(identity.public_key, m.SIGN_TAG, message, signature), share),
        "vrf_us": vrf_us,
        "message_us": _per_call_us(lambda: m.decode_message(commit, max_size=1 << 20, max_block_size=1 << 20), share),
    }


def pooled(results: list[WanResult]) -> dict[str, Any]:
    """One row from the runs of one (n, silent): percentiles over every
    transaction and height of every seed, per-height figures averaged."""
    tx_q = [v for r in results for v in r.tx_quorum_ms]
    tx_a = [v for r in results for v in r.tx_all_ms]
    prop = [v for r in results for v in r.proposal_ms]
    rounds = [x for r in results for x in r.commit_rounds]
    count = len(results)

    def pct(values: list[int], p: int) -> float:
        return float(percentile(values, p)) if values else float("nan")

    return {
        "n": results[0].n, "silent": results[0].silent, "seeds": [r.seed for r in results],
        "ok": all(r.ok for r in results), "errors": [r.error for r in results if r.error],
        "heights": sum(r.heights for r in results), "txs": sum(r.txs for r in results),
        "tx_quorum_p50_ms": pct(tx_q, 50), "tx_quorum_p99_ms": pct(tx_q, 99),
        "tx_all_p50_ms": pct(tx_a, 50), "tx_all_p99_ms": pct(tx_a, 99),
        "proposal_quorum_p50_ms": pct(prop, 50), "proposal_quorum_p99_ms": pct(prop, 99),
        "rounds_per_height": sum(r + 1 for r in rounds) / len(rounds) if rounds else float("nan"),
        "messages_per_height": sum(r.messages_per_height for r in results) / count,
        "kb_per_height": sum(r.bytes_per_height for r in results) / count / 1000,
        "block_announcements_per_height": sum(r.blocks_per_height for r in results) / count,
        "cpu_ms_per_height": sum(r.cpu_us_per_height for r in results) / count / 1000,
        "median_link_ms": sum(r.median_link_ms for r in results) / count,
        "lower_bound_ms": sum(r.lower_bound_ms for r in results) / count,
        "silent_heights": [h for r in results for h in r.silent_heights],
    }


FIGURES = [  # (key, label, format)
    ("tx_quorum_p50_ms", "finality p50, submit -> quorum (ms)", "{:.0f}"),
    ("tx_quorum_p99_ms", "finality p99, submit -> quorum (ms)", "{:.0f}"),
    ("tx_all_p50_ms", "finality p50, submit -> all honest (ms)", "{:.0f}"),
    ("tx_all_p99_ms", "finality p99, submit -> all honest (ms)", "{:.0f}"),
    ("proposal_quorum_p50_ms", "proposal -> quorum p50 (ms)", "{:.0f}"),
    ("proposal_quorum_p99_ms", "proposal -> quorum p99 (ms)", "{:.0f}"),
    ("lower_bound_ms", "  baseline: 3 x median link (ms)", "{:.0f}"),
    ("rounds_per_height", "rounds per height", "{:.2f}"),
    ("messages_per_height", "consensus messages per height", "{:.0f}"),
    ("kb_per_height", "consensus kB per height", "{:.0f}"),
    ("cpu_ms_per_height", "CPU per validator per height (ms)", "{:.1f}"),
]


def render(rows: list[dict[str, Any]], model: WanModel, sizes: list[int], seeds: int, load_s: float) -> str:
    out = [f"scaling model: deterministic IBFT simulator, links {model.min_ms}-{model.max_ms} ms one-way "
           f"(+<={model.jitter_pct}% jitter), {seeds} seed(s) x {load_s:g} s of load at "
           f"{1000 // TX_INTERVAL_MS} tx/s per n; block period {model.block_period_ms} ms, "
           f"round timeout {model.round_timeout_base_ms} ms",
           f"CPU per node (measured here, us): sign {model.sign_us}, verify {model.verify_us}, "
           f"VRF verify {model.vrf_us}, message decode {model.message_us}"]
    for silent in (False, True):
        mine = {r["n"]: r for r in rows if r["silent"] == silent}
        out += ["", ("with one silent validator (a faulty proposer every n heights)" if silent else "no fault"),
                f"{'figure':44}" + "".join(f"{'n=' + str(n):>10}" for n in sizes)]
        for key, label, fmt in FIGURES:
            out.append(f"{label:44}" + "".join(f"{fmt.format(mine[n][key]):>10}" for n in sizes))
        if silent:
            for n in sizes:
                gaps = ", ".join(f"h{h} r{r} {gap} ms" for h, r, gap in mine[n]["silent_heights"][:3])
                out.append(f"  n={n}: heights with the silent round-0 proposer (height, deciding round, gap): {gaps}")
    return "\n".join(out)


TX_INTERVAL_MS = 50


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="4,16,64", help="validator counts, comma list (default 4,16,64)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per n (default 3)")
    parser.add_argument("--load-s", type=float, default=20.0, help="virtual seconds of client load per run (default 20)")
    parser.add_argument("--min-ms", type=int, default=20, help="shortest one-way link (default 20)")
    parser.add_argument("--max-ms", type=int, default=150, help="longest one-way link (default 150)")
    parser.add_argument("--verify-us", type=int, help="Ed25519 verify cost (default: measured)")
    parser.add_argument("--sign-us", type=int, help="Ed25519 sign cost (default: measured)")
    parser.add_argument("--message-us", type=int, help="per-message handling cost (default: measured COMMIT decode)")
    parser.add_argument("--smoke", action="store_true", help="tiny runs for CI")
    parser.add_argument("--json", action="store_true", help="print only the JSON line (bench/run_all.py)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.n.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--n: expected a comma list of integers, got {args.n!r}")
    if not sizes or any(not 4 <= n <= 128 for n in sizes):
        parser.error("--n: every size must be 4..128 (a silent validator needs f >= 1)")
    if args.seeds < 1 or args.load_s * 1000 < TX_INTERVAL_MS:
        parser.error("--seeds must be >= 1 and --load-s >= 0.05")
    if args.smoke:
        args.seeds, args.load_s = 1, 0.5
    costs = measure_costs(0.3 if args.smoke else 2.0)
    for name in ("sign_us", "verify_us", "message_us"):
        if getattr(args, name) is not None:
            costs[name] = getattr(args, name)
    try:
        model = WanModel(min_ms=args.min_ms, max_ms=args.max_ms, **costs)
    except ValueError as exc:
        parser.error(str(exc))
    started = time.perf_counter()
    rows = []
    for n in sizes:
        for silent in (False, True):
            results = [run_wan(seed, n, model, silent=silent, load_ms=int(args.load_s * 1000), tx_interval_ms=TX_INTERVAL_MS)
                       for seed in range(args.seeds)]
            rows.append(pooled(results))
    wall = time.perf_counter() - started
    failed = [f"n={r['n']} silent={r['silent']}: {e}" for r in rows for e in r["errors"]]
    doc = {"metric": "scaling", "smoke": args.smoke, "seeds": args.seeds, "load_s": args.load_s,
           "tx_per_s": 1000 // TX_INTERVAL_MS, "model": model.__dict__, "wall_s": wall, "rows": rows}
    if not args.json:
        print(render(rows, model, sizes, args.seeds, args.load_s))
        print(f"\n{wall:.1f} s of wall time (the figures are virtual time; the same seeds and costs give the same figures)")
    print(json.dumps(doc))
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
