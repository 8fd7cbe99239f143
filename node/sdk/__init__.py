"""Layer 7, sdk: what a user's program imports to use a cluster.

``Client`` / ``AsyncClient`` over p2p JSON-RPC (``client``; uploads in
``uploads``, dataset names and job preparation in ``datasets``, services in ``services``, the
replaceable connection in ``link``, ``JobResult`` in ``results``),
``HttpClient`` over the signed HTTP gateway (``http_client``), and mesh
probing (``mesh``). Never imports ``node.roles``: a client does not carry
server code. ``from node.sdk import Client`` works; the submodules load when
first named, so importing the package costs nothing.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {"Client": "client", "AsyncClient": "client", "JobResult": "results", "PreparedJob": "datasets",
            "PreparedService": "services", "HttpClient": "http_client", "HttpError": "http_client"}
__all__ = ["AsyncClient", "Client", "HttpClient", "HttpError", "JobResult", "PreparedJob", "PreparedService"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'node.sdk' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"node.sdk.{_EXPORTS[name]}"), name)
