"""Real-process test sandbox for pgpool-hook.

Builds, on one machine and entirely on loopback, what a Pgpool-II installation looks like:
PostgreSQL 15 nodes in streaming replication (each on its own 127.x address), an OpenSSH
server reachable on those addresses, and a Pgpool-II instance whose hook commands run the
project's engine.  Everything PostgreSQL or pgpool runs as the unprivileged ``postgres``
user, because that is how a Debian pgpool host runs the hooks, and because PostgreSQL
refuses to run as root.  The builder itself must run as root (it starts sshd and changes
file ownership).

Modules:
    osuser   running commands as ``postgres``, ownership, waiting helpers
    pg       ``Node`` and ``Cluster`` (primary + standbys)
    sshd     ``Sshd``: a throw-away OpenSSH server with generated keys
    pgpool   ``Pgpool``: a Pgpool-II 4.3 instance over a ``Cluster``
    app      ``HookApp``: a copy of the engine runnable by ``postgres`` + hook config files
    stack    ``PgpoolSandbox``: cluster + pgpool + hook config in one object (used by the
             ``pgpool_cluster`` fixture and by ``python -m sandbox up|down|status``)
"""

from sandbox.osuser import SandboxError, wait_until

__all__ = ["SandboxError", "wait_until"]
