"""Re-running a job from its witness and comparing every digest."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.base.errors import ConfigError
from node.cage.job import CageError, JobOutcome, JobSpec
from node.cage.policy import policy_from_value
from node.cage.pool import CagePool
from node.cage.witness import decode_witness_file


@dataclass
class ReplayReport:
    """Each compared item with the recorded and the replayed value."""

    matches: bool
    checks: list[tuple[str, bool, str, str]] = field(default_factory=list)  # (what, equal, recorded, replayed)
    outcome: JobOutcome | None = None


def _hex(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex() or "-"
    return "-" if value is None else str(value)


def job_from_witness(record: dict[str, Any], input_paths: dict[str, str], output_dir: str | None) -> JobSpec:
    """The JobSpec a witness record describes, reading inputs from ``input_paths``."""
    job = record["job"]
    names = [item["name"] for item in record["inputs"]]
    missing = [name for name in names if name not in input_paths]
    if missing:
        raise CageError(f"no path for input {missing[0]!r}: pass --input {missing[0]}=PATH")
    return JobSpec(
        kind=job["kind"], policy=record["policy"]["name"],
        inputs={name: input_paths[name] for name in names},
        sql=job["sql"], function=job["function"], params=job["params"],
        seed=record["job_seed"], clock=record["clock"], output_dir=output_dir,
    )


def replay(pool: CagePool, witness_file: bytes, input_overrides: dict[str, str] | None = None) -> ReplayReport:
    """Run the job a witness records, under its recorded policy, and compare
    inputs, code, result, outputs, exit and the witness digest itself."""
    record, recorded_digest, unhashed = decode_witness_file(witness_file)
    paths = dict(unhashed.get("input_paths") or {})
    paths.update(input_overrides or {})
    outcome = rerun(pool, record, paths)
    fresh = outcome.witness
    checks: list[tuple[str, bool, str, str]] = []

    def compare(what: str, recorded: Any, replayed: Any) -> None:
        checks.append((what, recorded == replayed, _hex(recorded), _hex(replayed)))

    replayed_inputs = {item["name"]: item for item in fresh["inputs"]}
    for item in record["inputs"]:
        other = replayed_inputs.get(item["name"], {})
        compare(f"input {item['name']}", item["sha256"], other.get("sha256"))
    compare("inputs root", record["inputs_root"], fresh["inputs_root"])
    for key in ("job", "policy", "worker", "duckdb", "python"):
        compare(f"code {key}", record["code"].get(key), fresh["code"].get(key))
    compare("seed", record["seed"], fresh["seed"])
    compare("layers", ",".join(record["layers"]["applied"]), ",".join(fresh["layers"]["applied"]))
    compare("exit", record["exit"]["status"], fresh["exit"]["status"])
    compare("result", record["result_digest"], fresh["result_digest"])
    recorded_outputs = {o["path"]: o["sha256"] for o in record["outputs"]}
    fresh_outputs = {o["path"]: o["sha256"] for o in fresh["outputs"]}
    for path in sorted(set(recorded_outputs) | set(fresh_outputs)):
        compare(f"output {path}", recorded_outputs.get(path), fresh_outputs.get(path))
    compare("witness", recorded_digest, outcome.witness_digest)
    return ReplayReport(matches=all(equal for _, equal, _, _ in checks), checks=checks, outcome=outcome)


def load_witness(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CageError(f"cannot read witness {path}: {exc.strerror}") from None


def rerun(pool: Any, record: dict[str, Any], input_paths: dict[str, str], *, prefix: str = "metanode-replay-") -> Any:
    """Run the job a witness record describes again, from ``input_paths``,
    under the policy the record names (refused if this host cannot read it)."""
    try:
        policy = policy_from_value(record["policy"])
    except ConfigError as exc:
        raise CageError(f"recorded policy is not valid here: {exc}") from None
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        job = job_from_witness(record, input_paths, scratch if record["outputs"] else None)
        return pool.run(job, policy=policy)
