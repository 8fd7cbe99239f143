"""A failed identify reply is one line in the node's log, never a traceback.

Upstream (libp2p.identity.identify) formats the traceback into its ERROR
record when a peer closes right after its handshake; test_adversary's
vanishing strangers made the attacked validator log it ("node0 logged a
traceback").
"""

from __future__ import annotations

import logging
import traceback

import node.p2p.log_filters  # noqa: F401 - installs the filter


def test_a_failed_identify_reply_is_one_warning_line(caplog):
    logger = logging.getLogger("libp2p.identity.identify")
    try:
        raise BrokenPipeError(32, "Broken pipe")
    except BrokenPipeError as exc:
        with caplog.at_level(logging.DEBUG, logger="libp2p.identity.identify"):
            logger.error("Error sending identify response to %s: %s (type: %s)\n%s", "12D3KooWpeer", exc, type(exc),
                         traceback.format_exc())
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert "12D3KooWpeer" in text and "Broken pipe" in text
    assert "Traceback" not in text and "\n" not in text
