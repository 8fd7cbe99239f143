"""structlog set-up: console for people, JSON for machines.

Standard-library records (libp2p, trio, duckdb) are routed through the same
structlog processors. libp2p sets its logger to WARNING with
``propagate=False`` and no handlers at import, so its warnings would reach
stderr through the last-resort handler; we attach our handler to it
explicitly.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_state: dict[str, Any] = {}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "console", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if fmt == "json" else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name("metanode")
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != "metanode"] + [handler]
    root.setLevel(_LEVELS[level])
    _state["handler"], _state["level"] = handler, _LEVELS[level]
    if "libp2p" in sys.modules:
        route_libp2p_logs()


def route_libp2p_logs() -> None:
    """Send libp2p's records through our handler. Call after importing
    libp2p, which clears its logger's handlers at import time."""
    handler = _state.get("handler")
    if handler is None:
        return
    libp2p_logger = logging.getLogger("libp2p")
    libp2p_logger.handlers = [handler]
    libp2p_logger.propagate = False
    # libp2p is chatty at INFO; its warnings and errors are what we want.
    libp2p_logger.setLevel(max(_state["level"], logging.WARNING))


def _identity(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
    return event


def configure_client_logging() -> None:
    """For short client commands: our own errors are reported once, as one
    line; libp2p's account of a failed dial would only repeat them."""
    configure_logging("error")
    logging.getLogger("libp2p").setLevel(logging.CRITICAL + 1)
    _state["level"] = logging.CRITICAL + 1
