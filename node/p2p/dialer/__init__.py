"""A light libp2p dialer: what a short client needs, on trio sockets alone.

py-libp2p takes most of a second to import (its QUIC transport alone
~0.4 s) and a CLI call needs one TCP connection. This package speaks the
same wire protocols, client side only, with nothing but trio, PyNaCl and
hashlib:

* node/p2p/dialer/multistream.py: multistream-select 1.0;
* node/p2p/dialer/noise.py: the libp2p Noise XX handshake and channel;
* node/p2p/dialer/yamux.py: yamux streams and flow control;
* node/p2p/dialer/connection.py: the dial itself, step by step, with errors
  that name the step, and the node's keepalive pings answered.

The daemon keeps py-libp2p (node/p2p/host.py); tests/p2p/test_dialer.py
checks the two interoperate. Public API::

    async with open_connection(NodeAddress.from_multiaddr(maddr), identity.seed, timeout=10) as conn:
        stream = await conn.open_stream("/metanode/rpc/1.0.0")  # read/write/close/reset
"""

from node.p2p.dialer.connection import PING_PROTOCOL, Connection, DialError, NodeAddress, open_connection
from node.p2p.dialer.multistream import NegotiationError, ProtocolRefused

__all__ = ["PING_PROTOCOL", "Connection", "DialError", "NegotiationError", "NodeAddress", "ProtocolRefused", "open_connection"]
