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
