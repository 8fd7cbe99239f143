"""Shared builders for the receipts tests: one valid body per kind.

(A uniquely named module rather than conftest, so that test files can
import it without clashing with other packages' conftest modules.)
"""

from __future__ import annotations

import hashlib

from node.base.keys import Identity


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


NODE_A = Identity.from_label("receipts-node-a")
NODE_B = Identity.from_label("receipts-node-b")
NODE_C = Identity.from_label("receipts-node-c")

# kind -> (subject, kind-specific fields) of a valid receipt.
VALID_FIELDS: dict[str, tuple[bytes, dict]] = {
    "api.call": (
        digest("request"),
        {
            "method": "analytics_submit",
            "tenant": NODE_C.public_key,
            "outcome": "accepted",
            "code": 0,
            "response": digest("response"),
        },
    ),
    "data.store": (digest("dataset"), {"content": "dataset", "tenant": digest("tenant"), "size": 123_456, "replicas": 3}),
    "job.schedule": (
        digest("job"),
        {
            "block": digest("block"),
            "assignees": [NODE_A.peer_id, NODE_B.peer_id],
            "seed": digest("seed"),
            "deadline": 40,
        },
    ),
    "job.exec": (
        digest("job"),
        {
            "input_root": digest("inputs"),
            "code": digest("code"),
            "policy": digest("policy"),
            "seed": digest("seed"),
            "result": digest("result"),
            "witness": digest("witness"),
            "exit": 0,
        },
    ),
    "job.verdict": (
        digest("job"),
        {
            "verdict": "verified",
            "results": [
                {"node": NODE_A.peer_id, "result": digest("result")},
                {"node": NODE_B.peer_id, "result": digest("result")},
            ],
        },
    ),
}
