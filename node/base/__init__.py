"""Layer 0, base: what every other layer stands on, with no knowledge of any of them.

Deterministic CBOR and domain-separated hashing (``codec``), the one table of
error codes (``errors``), Ed25519 identities (``keys``), the node database
(``db``), logging, the node config schema (``config``), the RFC 9162 Merkle
math (``merkle``), the reasons verification fails (``verification``), the signed
HTTP request format (``http_auth``) and retry with backoff (``retry``).

Imports nothing from ``node`` outside ``node.base``.
"""
