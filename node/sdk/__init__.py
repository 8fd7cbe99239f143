"""Layer 7, sdk: what a user's program imports to use a cluster.

``Client`` / ``AsyncClient`` over p2p JSON-RPC (``client``), ``HttpClient``
over the signed HTTP gateway (``http_client``), and mesh probing (``mesh``).
Never imports ``node.roles``: a client does not carry server code.
"""
