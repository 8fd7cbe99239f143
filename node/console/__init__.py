"""Layer 8, console: ``metanode console``, a local web page over the cluster.

A small HTTP/1.1 server (trio + h11) on the user's own machine, loopback by
default, that serves the pages in ``static/`` and a JSON API answered by
calls through the SDK with the user's key. The key stays in this process;
the browser holds only a session cookie, which it got by opening the URL
with the one token the server printed.

``server`` (listening, HTTP, security headers, static files), ``auth`` (the
token, sessions, Host and Origin checks), ``api`` (the JSON routes),
``node`` (the connection to the node and what the routes ask of it),
``events`` (the server-sent event stream fed by one ``chain_subscribe``).

Sits between ``sdk`` and ``testnet``: it imports base, the p2p client (never
libp2p), consensus formats, receipts and sdk; never roles, app or cage.
"""
