"""Signed HTTP requests: the ``Authorization`` header of the HTTP gateway.

A request is signed by the tenant key::

    Authorization: Metanode-Ed25519 key=<64 hex>,ts=<unix ms>,sig=<128 hex>

``sig`` is the Ed25519 signature, under the node/base/keys.py convention (tag, a
zero byte, message), of::

    "metanode/http/v1" 0x00 METHOD "\\n" TARGET "\\n" TS "\\n" hex(sha256(body))

TARGET being the request target exactly as sent (path and query). The
gateway refuses a timestamp more than 300 s from its clock and a signature
it has already seen within that window (:class:`ReplayGuard`, bounded).
This module is small on purpose: clients (``metanode keys http-auth``,
node/sdk/http_client.py) import it without the server.
"""

from __future__ import annotations

import hashlib
import heapq
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from node.base.keys import Identity, verify

AUTH_SCHEME = "Metanode-Ed25519"
SIGN_TAG = "metanode/http/v1"
MAX_SKEW_MS = 300_000
REPLAY_CACHE_ENTRIES = 100_000


class AuthError(Exception):
    """A request that is not (or no longer) authenticated; the message says why."""


def signing_message(method: str, target: str, ts_ms: int, body_sha256: str) -> bytes:
    """What is signed (under :data:`SIGN_TAG`) for one request."""
    return f"{method.upper()}\n{target}\n{ts_ms}\n{body_sha256}".encode()


def sign_request(identity: Identity, method: str, path: str, body: bytes = b"", now_ms: int | None = None, *,
                 body_sha256: str | None = None) -> str:
    """The ``Authorization`` header value for a request (``path`` with its query, as sent)."""
    ts = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    digest = body_sha256 or hashlib.sha256(body).hexdigest()
    sig = identity.sign(SIGN_TAG, signing_message(method, path, ts, digest))
    return f"{AUTH_SCHEME} key={identity.public_key.hex()},ts={ts},sig={sig.hex()}"


@dataclass(frozen=True)
class Credentials:
    key: bytes
    ts: int
    sig: bytes


_PARAM = re.compile(r"\s*([a-z]+)=([0-9a-fA-F]+)\s*")


def parse_authorization(value: str | None) -> Credentials:
    """Parse the header; AuthError naming what is wrong."""
    if not value:
        raise AuthError(f"missing Authorization header; expected '{AUTH_SCHEME} key=<64 hex>,ts=<unix ms>,sig=<128 hex>'")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != AUTH_SCHEME.lower():
        raise AuthError(f"Authorization scheme must be {AUTH_SCHEME}, got {scheme[:40]!r}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        match = _PARAM.fullmatch(part)
        if match is None or match[1] in fields:
            raise AuthError(f"bad Authorization parameter {part.strip()[:40]!r}; expected key=,ts=,sig= once each")
        fields[match[1]] = match[2]
    if set(fields) != {"key", "ts", "sig"}:
        raise AuthError(f"Authorization must have exactly key, ts and sig; got {sorted(fields)}")
    if len(fields["key"]) != 64 or len(fields["sig"]) != 128:
        raise AuthError("key must be 64 hex characters and sig 128")
    if not fields["ts"].isdigit() or len(fields["ts"]) > 16:
        raise AuthError("ts must be unix time in milliseconds")
    return Credentials(bytes.fromhex(fields["key"]), int(fields["ts"]), bytes.fromhex(fields["sig"]))


class ReplayGuard:
    """Signatures seen within the time window, at most ``max_entries``.

    When full, the oldest entry is dropped and its timestamp becomes a floor:
    requests signed at or before it are refused (re-sign and retry), so an
    evicted signature can never be replayed."""

    def __init__(self, window_ms: int = MAX_SKEW_MS, max_entries: int = REPLAY_CACHE_ENTRIES) -> None:
        self.window_ms, self.max_entries = window_ms, max_entries
        self._heap: list[tuple[int, bytes]] = []
        self._seen: set[bytes] = set()
        self._floor = -1

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, token: bytes, ts: int, now_ms: int) -> str | None:
        """None if ``token`` is new (and remember it), else why it is refused."""
        while self._heap and self._heap[0][0] < now_ms - self.window_ms:
            self._seen.discard(heapq.heappop(self._heap)[1])
        if ts <= self._floor:
            return "timestamp older than the replay cache keeps; sign the request again"
        if token in self._seen:
            return "replayed request: this signature was already used"
        heapq.heappush(self._heap, (ts, token))
        self._seen.add(token)
        while len(self._heap) > self.max_entries:
            oldest, dropped = heapq.heappop(self._heap)
            self._seen.discard(dropped)
            self._floor = max(self._floor, oldest)
        return None


class RequestVerifier:
    """Checks ``Authorization`` headers: format and clock first, signature and replay after the body."""

    def __init__(self, *, max_skew_ms: int = MAX_SKEW_MS, max_entries: int = REPLAY_CACHE_ENTRIES,
                 clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.max_skew_ms = max_skew_ms
        self.clock = clock
        self.replays = ReplayGuard(max_skew_ms, max_entries)

    def preflight(self, header: str | None) -> Credentials:
        creds = parse_authorization(header)
        skew = creds.ts - self.clock()
        if abs(skew) > self.max_skew_ms:
            raise AuthError(f"timestamp is {abs(skew) // 1000} s {'ahead of' if skew > 0 else 'behind'} the gateway's "
                                f"clock (at most {self.max_skew_ms // 1000} s allowed)")
        return creds

    def verify(self, creds: Credentials, method: str, target: str, body_sha256: str) -> None:
        if not verify(creds.key, SIGN_TAG, signing_message(method, target, creds.ts, body_sha256), creds.sig):
            raise AuthError("bad signature: not made by this key over this method, target, ts and body")
        now = self.clock()
        if abs(creds.ts - now) > self.max_skew_ms:  # the body took long to arrive
            raise AuthError("timestamp left the allowed window while the body arrived; sign again")
        problem = self.replays.admit(creds.key + creds.sig, creds.ts, now)
        if problem:
            raise AuthError(problem)
