"""``analytics trace``'s checks on the user's machine: each receipt verified
offline against a genesis file, and each execution's witness compared field by
field with its signed job.exec receipt (node/receipts/execution.py:
witness_mismatches), so a gateway's word is never what the user relies on."""

from __future__ import annotations

import base64
from typing import Any


async def verify_offline(client: Any, receipt_id: str, genesis: str) -> bool:
    """Whether the receipt's bundle (fetched from the node) verifies against ``genesis``."""
    return bool(await client.verify_receipt(receipt_id, genesis))


async def attach_witnesses(client: Any, job_id: str, receipts: list[dict[str, Any]]) -> None:
    """Each job.exec receipt gets its execution's witness and whether the two agree."""
    from node.cage.witness import WitnessError, decode_witness_file
    from node.receipts.envelope import decode_receipt
    from node.receipts.execution import witness_mismatches

    executions = {e["receipt"]: e for e in (await client.witness(job_id))["executions"]}
    for r in receipts:
        if r["kind"] != "job.exec":
            continue
        e = executions.get(r["id"])
        if e is None or not e["available"]:
            r["witness"] = {"available": False, "digest": e["witness_digest"] if e else None}
            continue
        envelope = bytes.fromhex((await client.rpc.call("receipt_get", {"id": r["id"]}))["envelope"])
        try:
            record, digest, _ = decode_witness_file(base64.b64decode(e["file"]))
            mismatches = witness_mismatches(decode_receipt(envelope), record, digest)
        except (WitnessError, ValueError, KeyError, TypeError) as exc:
            mismatches = [f"witness file unreadable: {exc}"]
        r["witness"] = {"available": True, "digest": e["witness_digest"], "matches_receipt": not mismatches,
                        "mismatches": mismatches, "record": e["witness"]}


def witness_lines(w: dict[str, Any]) -> str:
    """A witness under its receipt's line: whether it matches, then what it read, wrote and was denied."""
    if not w["available"]:
        return f"         witness {w['digest']}: not available from the nodes that ran it"
    rec = w["record"]
    head = f"         witness {w['digest']}: " + ("matches the receipt" if w["matches_receipt"] else "DOES NOT MATCH: " + "; ".join(w["mismatches"]))
    lines = [head, f"           exit {rec['exit']['status']}  seed {rec.get('seed', '')[:16]}...  result {str(rec.get('result_digest'))[:16]}..."]
    for item in rec.get("inputs", []):
        lines.append(f"           read    {item.get('name')}  {item.get('size')} bytes  sha256 {str(item.get('sha256'))[:16]}...")
    for item in rec.get("outputs", []):
        lines.append(f"           wrote   {item.get('name')}  {item.get('size')} bytes")
    for item in rec.get("denials", []):
        lines.append(f"           denied  {item}")
    return "\n".join(lines)


async def with_service_placements(client: Any, status: dict[str, Any] | None, receipts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A service run's trace with the ``service.placement`` receipts that decided
    where it could run: the last one at or before the run's first receipt (the
    placement it was scheduled onto) and every one up to its last (replacements
    while it ran), in height order. A plain job's trace is returned as it is."""
    if not status or not status.get("service") or not receipts:
        return receipts
    from node.base.codec import hash_tagged

    # The service id is a pure function of owner and name (docs/services.md).
    service_id = hash_tagged("metanode/service-id/v1", bytes.fromhex(str(status["tenant"])) + str(status["service"]).encode())
    placements = [r for r in await client.rpc.call("receipt_trace", {"job_id": service_id.hex()})
                  if r["kind"] == "service.placement"]
    first, last = min(r["height"] for r in receipts), max(r["height"] for r in receipts)
    before = [r for r in placements if r["height"] <= first][-1:]
    during = [r for r in placements if first < r["height"] <= last]
    # Each placement goes before the run's first receipt at or after its height (the block's
    # service pass places before it schedules); the run's own order is the node's.
    merged = list(receipts)
    for placement in reversed(before + during):
        at = next((i for i, r in enumerate(merged) if r["height"] >= placement["height"] and r["kind"] != "service.placement"),
                  len(merged))
        merged.insert(at if placement not in before else 0, placement)
    return merged
