"""Strict schemas of receipt bodies, one per kind.

A body is a flat map: the common fields (``version``, ``kind``, ``issuer``,
``height``, ``subject``, ``prev``) plus the fields of its kind. Every field
is required, no other field is allowed, and every digest is 32 bytes. The
same check runs when a receipt is built and when one is decoded, and a
failure names the field (``issuer.key``, ``results[2].node``...).

What ``subject`` names, per kind:

=================  ==========================================================
kind               subject
=================  ==========================================================
``api.call``       digest of the request the gateway answered
``data.store``     SHA-256 of the stored dataset or result
``job.schedule``   job id
``job.exec``       job id
``job.verdict``    job id
``service.placement`` service id
=================  ==========================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from node.base.keys import public_key_from_peer_id
from node.base.verification import Reason, ReceiptError

VERSION = 1
DIGEST_SIZE = 32
MAX_UINT = 2**63 - 1  # fits a signed 64-bit SQL column
MAX_LIST = 64

Check = Callable[[Any, str], None]


def _fail(path: str, message: str) -> ReceiptError:
    return ReceiptError(Reason.SCHEMA, f"{path}: {message}", field=path)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def digest(value: Any, path: str) -> None:
    """32 bytes (a SHA-256 digest or an Ed25519 public key)."""
    if not isinstance(value, bytes):
        raise _fail(path, f"must be {DIGEST_SIZE} bytes, got {_type_name(value)}")
    if len(value) != DIGEST_SIZE:
        raise _fail(path, f"must be {DIGEST_SIZE} bytes, got {len(value)}")


def optional(check: Check) -> Check:
    def check_optional(value: Any, path: str) -> None:
        if value is not None:
            check(value, path)

    return check_optional


def may_be_absent(check: Check) -> Check:
    """A field a receipt may leave out (added to a kind after its first
    release: receipts without it keep their bytes and their id); when
    present it must pass ``check``."""

    def check_if_present(value: Any, path: str) -> None:
        check(value, path)

    check_if_present.may_be_absent = True  # type: ignore[attr-defined]
    return check_if_present


def integer(low: int, high: int) -> Check:
    def check_integer(value: Any, path: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(path, f"must be an integer, got {_type_name(value)}")
        if not low <= value <= high:
            raise _fail(path, f"must be in [{low}, {high}], got {value}")

    return check_integer


def choice(*options: str) -> Check:
    def check_choice(value: Any, path: str) -> None:
        if not isinstance(value, str) or value not in options:
            raise _fail(path, f"must be one of {', '.join(options)}; got {value!r}")

    return check_choice


def pattern(regex: str, what: str) -> Check:
    compiled = re.compile(regex)

    def check_pattern(value: Any, path: str) -> None:
        if not isinstance(value, str):
            raise _fail(path, f"must be a text string, got {_type_name(value)}")
        if not compiled.fullmatch(value):
            raise _fail(path, f"must be {what}; got {value[:80]!r}")

    return check_pattern


@lru_cache(maxsize=4096)
def _is_peer_id(text: str) -> bool:
    try:
        public_key_from_peer_id(text)
    except ValueError:
        return False
    return True


def peer_id(value: Any, path: str) -> None:
    """A libp2p peer id of an Ed25519 key (base58)."""
    if not isinstance(value, str):
        raise _fail(path, f"must be a peer id string, got {_type_name(value)}")
    if len(value) > 64 or not _is_peer_id(value):
        raise _fail(path, f"is not an Ed25519 peer id: {value[:80]!r}")


def record(fields: Mapping[str, Check]) -> Check:
    """A map with exactly these fields."""

    def check_record(value: Any, path: str) -> None:
        check_fields(value, fields, path)

    return check_record


def list_of(item: Check, *, low: int, high: int, unique_key: str | None = None, distinct: bool = True) -> Check:
    """A list of ``low``..``high`` items; with ``unique_key`` no two items
    (maps) may share that key's value; without it no two items may be equal
    (``distinct=False``: items may repeat, e.g. maps checked by a kind rule)."""

    def check_list(value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise _fail(path, f"must be a list, got {_type_name(value)}")
        if not low <= len(value) <= high:
            raise _fail(path, f"must have {low} to {high} items, got {len(value)}")
        seen = set()
        for i, entry in enumerate(value):
            item(entry, f"{path}[{i}]")
            if not distinct:
                continue
            key = entry[unique_key] if unique_key else entry
            if key in seen:
                raise _fail(f"{path}[{i}]", "repeats an earlier item")
            seen.add(key)

    return check_list


def check_fields(value: Any, fields: Mapping[str, Check], path: str) -> None:
    if not isinstance(value, dict):
        raise _fail(path, f"must be a map, got {_type_name(value)}")
    for name, check in fields.items():
        if name not in value:
            if getattr(check, "may_be_absent", False):
                continue
            raise _fail(_join(path, name), "is missing")
        check(value[name], _join(path, name))
    for name in value:
        if name not in fields:
            raise _fail(_join(path, str(name)), "is not a field of this map")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


uint = integer(0, MAX_UINT)

COMMON_FIELDS: dict[str, Check] = {
    "version": integer(VERSION, VERSION),
    "kind": pattern(r"[a-z]+\.[a-z]+", "a receipt kind"),
    "issuer": record({"node": peer_id, "key": digest}),
    # Block height, or the logical time at which the issuer acted.
    "height": uint,
    "subject": digest,
    # Id of the issuer's previous receipt; null for its first.
    "prev": optional(digest),
}

KIND_FIELDS: dict[str, dict[str, Check]] = {
    # A gateway answered a client call (subject: request digest).
    "api.call": {
        "method": pattern(r"[a-z][a-z0-9]*_[a-z][a-z0-9_]{0,62}", "a namespace_method name"),
        "tenant": digest,  # the tenant's Ed25519 public key
        "outcome": choice("accepted", "rejected", "failed"),
        "code": integer(-(2**31), 2**31 - 1),  # JSON-RPC error code; 0 when accepted
        "response": digest,  # digest of the response the gateway returned
    },
    # A storage node holds content (subject: its SHA-256).
    "data.store": {
        "content": choice("dataset", "result"),
        "tenant": digest,  # the uploader's public key: dataset.register on chain must be this tenant's
        "size": uint,
        "replicas": integer(1, 255),
        # Bad rows left out of an upload (on_bad_rows=skip); absent when none
        # were (docs/storage.md). The subject is then the digest of the good rows.
        "skipped_rows": may_be_absent(integer(1, MAX_UINT)),
    },
    # A job was assigned by a committed block (subject: job id).
    "job.schedule": {
        "block": digest,  # hash of the block the assignment derives from
        "assignees": list_of(peer_id, low=1, high=MAX_LIST),
        "seed": digest,
        "deadline": uint,  # height by which results must be committed
    },
    # A processing node ran a job in the cage (subject: job id).
    "job.exec": {
        "input_root": digest,
        "code": digest,
        "policy": digest,
        "seed": digest,
        "result": digest,
        "witness": digest,
        "exit": integer(-255, 255),  # negative: killed by that signal
    },
    # The committed results of a job were compared (subject: job id).
    "job.verdict": {
        "verdict": choice("verified", "disputed"),
        "results": list_of(
            record({"node": peer_id, "result": digest}), low=1, high=MAX_LIST, unique_key="node"
        ),
    },
    # A block changed where a service's replicas run (subject: service id).
    "service.placement": {
        "block": digest,  # hash of the block the placement derives from
        "action": choice("deploy", "scale", "stop", "replace", "fill"),
        "replicas": integer(1, 255),  # the service's replica count after the block
        "placements": list_of(peer_id, low=0, high=MAX_LIST),  # the placed nodes, slot order
        # Each slot that changed: the node that left it (null: a new slot) and the
        # one that entered it (null: the slot is gone).
        "moved": list_of(record({"from": optional(peer_id), "to": optional(peer_id)}), low=0, high=2 * MAX_LIST,
                         distinct=False),
    },
}

KINDS = tuple(KIND_FIELDS)


def _check_verdict(body: dict) -> None:
    distinct = {entry["result"] for entry in body["results"]}
    if body["verdict"] == "verified" and len(distinct) != 1:
        raise _fail("verdict", "is verified but the result digests differ")
    if body["verdict"] == "disputed" and len(distinct) == 1:
        raise _fail("verdict", "is disputed but every result digest is equal")


def _check_placement(body: dict) -> None:
    if len(set(body["placements"])) != len(body["placements"]):
        raise _fail("placements", "names a node twice")
    if len(body["placements"]) > body["replicas"]:
        raise _fail("placements", f"holds more nodes than replicas ({body['replicas']})")
    leaving: set[str] = set()
    entering: set[str] = set()
    for i, move in enumerate(body["moved"]):
        if move["from"] is None and move["to"] is None:
            raise _fail(f"moved[{i}]", "moves no node (from and to are both null)")
        if move["from"] in leaving or move["to"] in entering:
            raise _fail(f"moved[{i}]", "moves a node an earlier entry moves")
        if move["from"] is not None:
            leaving.add(move["from"])
        if move["to"] is not None:
            entering.add(move["to"])


_KIND_RULES: dict[str, Callable[[dict], None]] = {"job.verdict": _check_verdict, "service.placement": _check_placement}


def check_body(body: Any) -> None:
    """Check a receipt body against its kind's schema; ReceiptError if not
    (reason UNSUPPORTED_VERSION, UNKNOWN_KIND or SCHEMA, naming the field)."""
    if not isinstance(body, dict):
        raise _fail("body", f"must be a map, got {_type_name(body)}")
    version = body.get("version")
    if version != VERSION or isinstance(version, bool):
        raise ReceiptError(
            Reason.UNSUPPORTED_VERSION, f"version: {version!r} is not supported (expected {VERSION})", "version"
        )
    kind = body.get("kind")
    if not isinstance(kind, str) or kind not in KIND_FIELDS:
        raise ReceiptError(Reason.UNKNOWN_KIND, f"kind: {kind!r} is not one of {', '.join(KINDS)}", "kind")
    fields = KIND_FIELDS[kind]
    check_fields(body, COMMON_FIELDS | fields, "")
    rule = _KIND_RULES.get(kind)
    if rule is not None:
        rule(body)
