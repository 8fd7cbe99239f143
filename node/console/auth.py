"""Who may use the console: the printed token, the session cookie, Host and Origin.

The console acts with the user's key, so anything that can make a request
to it can act as the user. Three doors are shut:

- another local user or process: it has neither the token (printed once, on
  the user's terminal) nor a session cookie;
- a web page in the user's browser (cross-site request forgery): the cookie
  is ``SameSite=Strict`` and a state-changing request whose ``Origin`` is
  not the console's own is refused;
- DNS rebinding (a hostile name that resolves to 127.0.0.1, so that the
  browser treats the console as that site's origin): a request whose
  ``Host`` header is not the address the console listens on is refused.

Tokens and session ids are compared in constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections import OrderedDict

COOKIE_NAME = "metanode_console"
TOKEN_BYTES = 32
MAX_SESSIONS = 64  # browsers (tabs share one) that logged in with the token; the oldest is forgotten first


def new_secret() -> str:
    """32 random bytes, URL-safe base64 (no padding): a token or a session id."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) stays on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def url_host(host: str) -> str:
    """``host`` as it is written in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class Gate:
    """The token, the sessions it opened, and the names this server answers to."""

    def __init__(self, host: str, port: int, *, token: str | None = None) -> None:
        self.token = token or new_secret()
        self.host = host
        self.port = port
        self._sessions: OrderedDict[str, None] = OrderedDict()

    # -- the token and sessions ----------------------------------------------------------------
    def token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def open_session(self) -> str:
        session = new_secret()
        self._sessions[session] = None
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def session_ok(self, cookie_header: str | None) -> bool:
        """Whether a ``Cookie`` header carries a session this server opened.
        Every session is compared (in constant time each), not looked up."""
        candidate = session_cookie(cookie_header)
        if not candidate:
            return False
        found = False
        for session in self._sessions:
            found |= hmac.compare_digest(candidate.encode(), session.encode())
        return found

    def set_cookie(self, session: str) -> str:
        return f"{COOKIE_NAME}={session}; HttpOnly; SameSite=Strict; Path=/"

    # -- where requests may come from ----------------------------------------------------------
    def allowed_hosts(self) -> set[str]:
        """``Host`` values a browser sends for this server (lower case, with the port)."""
        port = f":{self.port}"
        names = {url_host(self.host).lower() + port}
        if is_loopback(self.host):
            names |= {"localhost" + port, "127.0.0.1" + port, "[::1]" + port}
        return names

    def host_ok(self, host_header: str | None) -> bool:
        """The DNS-rebinding check. A server listening on a wildcard address
        (``--allow-remote``) is reached under names it cannot know: then only
        the port is checked."""
        if not host_header:
            return False
        host = host_header.strip().lower()
        if is_wildcard(self.host):
            return host.rpartition(":")[2] == str(self.port) and "]" not in host.rpartition(":")[2]
        return host in self.allowed_hosts()

    def origin_ok(self, origin: str | None, host_header: str | None) -> bool:
        """A request that changes something must come from the console's own
        pages: its ``Origin``, when the client sends one (browsers do on every
        POST), must be this server's. A client that is not a browser sends
        none, and must hold the cookie all the same."""
        if origin is None:
            return True
        return bool(host_header) and origin.strip().lower() == f"http://{(host_header or '').strip().lower()}"

    def url(self, path: str = "/") -> str:
        """The URL to print: with the token, under the address a browser can open."""
        host = "127.0.0.1" if is_wildcard(self.host) else url_host(self.host)
        return f"http://{host}:{self.port}{path}?token={self.token}"


def session_cookie(header: str | None) -> str | None:
    """The console's session id in a ``Cookie`` header (None when absent)."""
    if not header:
        return None
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE_NAME and value:
            return value.strip().strip('"')
    return None
