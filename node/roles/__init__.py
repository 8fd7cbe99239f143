"""Layer 6, roles: where the network, the chain, the cage and the application meet.

One component per role a node can play (validator, scheduler, gateway with its
HTTP front, processing, storage, metrics); the daemon (``daemon``) composes the
ones its config enables. Roles may import every layer below them; nothing
below imports a role, and ``sdk`` and ``cli`` never do either (the CLI's
``daemon start`` loads the daemon lazily).
"""
