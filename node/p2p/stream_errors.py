"""The exceptions a stream may raise, whichever implementation it comes from.

Two stream implementations meet the same framing and RPC code: py-libp2p's
(the daemon, node/p2p/host.py) and the light dialer's (node/p2p/dialer/,
what the command line and the client library use). Naming libp2p's
exception classes in an ``except`` clause would import libp2p, which is
most of a short command's run time. So the classes are looked up when an
exception is being matched: libp2p's are included only once libp2p is
loaded, and a libp2p stream cannot exist before that.
"""

from __future__ import annotations

import sys

_LIBP2P_STREAM_EXCEPTIONS = "libp2p.network.stream.exceptions"


class StreamError(Exception):
    """A light-dialer stream failed: reset by the peer, or its connection lost."""


class StreamReset(StreamError):
    """The peer (or this side) reset the stream; its data is gone."""


class ConnectionLost(StreamError):
    """The connection under the stream ended (closed, broken, or a protocol violation)."""


def _libp2p(name: str) -> tuple[type[BaseException], ...]:
    module = sys.modules.get(_LIBP2P_STREAM_EXCEPTIONS)
    return (getattr(module, name),) if module is not None else ()


def stream_errors() -> tuple[type[BaseException], ...]:
    """Every stream failure class in use: ours, and libp2p's once it is loaded."""
    return (StreamError, *_libp2p("StreamError"))


def stream_eof_errors() -> tuple[type[BaseException], ...]:
    """The classes that signal a clean end of stream by raising (libp2p's
    ``StreamEOF``); the light dialer's streams return ``b""`` instead."""
    return _libp2p("StreamEOF")
