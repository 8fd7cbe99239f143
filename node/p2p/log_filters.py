"""Logging filters for expected network failures: one counted line instead of
an ERROR with a traceback.

Installed on their loggers when this module is first imported (node/p2p/admission.py
imports it for :data:`ACCEPT_OVERLOAD`'s count, so every host has them).
"""

from __future__ import annotations

import logging
import math
import os
import time

import trio


class AcceptOverloadLog(logging.Filter):
    """Turns trio's account of an overloaded accept into one counted line.

    Our TCP listener (node/p2p/listener.py), like ``trio.serve_listeners``, on
    EMFILE/ENFILE/ENOMEM/ENOBUFS sleeps 100 ms and tries again: the right
    behaviour (the listener never dies of it). But both log each retry at
    ERROR with a traceback, ten a second while the condition lasts. This
    filter keeps the first line of each second (at WARNING, no traceback,
    with how many were folded into it) and counts them all for node_status.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._last_logged = -math.inf
        self._folded = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += 1
        now = time.monotonic()
        if now - self._last_logged < 1.0:
            self._folded += 1
            return False
        errno_name = ""
        if record.exc_info and isinstance(record.exc_info[1], OSError):
            errno_name = os.strerror(record.exc_info[1].errno or 0)
        record.msg = "accept failed (%s); the listener backs off 100 ms and keeps accepting (%d more since the last report)"
        record.args = (errno_name or "out of resources", self._folded)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self._last_logged, self._folded = now, 0
        return True


ACCEPT_OVERLOAD = AcceptOverloadLog()
for _accepting in ("trio.serve_listeners", "metanode.p2p.listener"):
    logging.getLogger(_accepting).addFilter(ACCEPT_OVERLOAD)


class CancelledRegistrationLog(logging.Filter):
    """Drops upstream's traceback for a connection whose registration we cancelled.

    The admission closes a handshake it evicts or that missed its deadline by
    cancelling its scope; when that lands while upstream's ``add_conn`` waits
    for the muxer, upstream logs ``[ADDCONN_FAIL]`` with a full traceback at
    WARNING. It is the admission working (counted in node_status under
    ``budget.evicted`` and ``handshake_timeouts``), not a fault. Any other
    ``add_conn`` failure still gets through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("[ADDCONN_FAIL]"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(arg, trio.Cancelled) for arg in args)


logging.getLogger("libp2p.network.swarm").addFilter(CancelledRegistrationLog())


class IdentifyReplyLog(logging.Filter):
    """One line, not a traceback, when an identify reply cannot be sent.

    Upstream logs ``Error sending identify response`` at ERROR with the
    formatted traceback as an argument. It happens whenever a peer closes its
    connection right after the handshake (a vanishing stranger under attack:
    "Broken pipe"); the peer and the error are worth a line, the traceback
    of our write path is not."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Error sending identify response") and isinstance(record.args, tuple) \
                and len(record.args) == 4:
            record.msg = "could not send the identify reply to %s: %s (%s)"
            record.args = record.args[:3]
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("libp2p.identity.identify").addFilter(IdentifyReplyLog())
