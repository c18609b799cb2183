"""The whole sandbox in one object: cluster + pgpool + hook config, over a shared sshd/app.

Layout under ``base`` (the paths the hook config names)::

    pg/node<N>/{data,socket,postgres.log}   PostgreSQL nodes
    pgpool/{pgpool.conf,pcp.conf,pgpool.log,run/}
    pgpass, pcppass                         0600, owned by postgres
    pgpool-hook.yaml                        hook config
    state/                                  engine state dir, owned by postgres

The sshd and the engine copy (``HookApp``) may live elsewhere and be shared by several
sandboxes (the test session starts them once); ``python -m sandbox up`` puts them under
``base`` too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.app import HookApp, deep_merge, hook_settings, write_hook_config
from sandbox.osuser import make_postgres_dir
from sandbox.pg import DEFAULT_ADDRESSES, DEFAULT_PORT, Cluster, Node
from sandbox.pgpool import DEFAULT_PCP_PORT, DEFAULT_PGPOOL_PORT, Pgpool
from sandbox.sshd import Sshd

STATE_FILE = "sandbox.json"


@dataclass
class PgpoolSandbox:
    """Primary + standbys, pgpool with hook commands, and the hook config file.

    ``failover_command``/``follow_primary_command`` default to the engine's commands via
    ``app``; ``recovery_scripts`` = (recovery_1st_stage text, pgpool_remote_start text),
    default the engine wrappers.  ``config_overrides`` are deep-merged into the hook
    config (``None`` deletes a key); ``pgpool_settings`` override pgpool.conf parameters.
    """

    base: Path
    sshd: Sshd
    app: HookApp
    addresses: Sequence[str] = DEFAULT_ADDRESSES
    pg_port: int = DEFAULT_PORT
    pgpool_port: int = DEFAULT_PGPOOL_PORT
    pcp_port: int = DEFAULT_PCP_PORT
    failover_command: str | None = None
    follow_primary_command: str | None = None
    recovery_scripts: tuple[str, str] | None = None
    config_overrides: Mapping[str, Any] = field(default_factory=dict)
    pgpool_settings: Mapping[str, object] = field(default_factory=dict)
    cluster: Cluster = field(init=False)
    pgpool: Pgpool = field(init=False)

    def __post_init__(self) -> None:
        self.base = Path(self.base)
        self.cluster = Cluster(self.base, self.addresses, self.pg_port)
        self.pgpool = Pgpool(
            self.base / "pgpool",
            self.cluster,
            failover_command=self.failover_command or self.app.hook_command(self.config_path, "failover"),
            follow_primary_command=self.follow_primary_command
            or self.app.hook_command(self.config_path, "follow_primary"),
            port=self.pgpool_port,
            pcp_port=self.pcp_port,
            extra_settings=self.pgpool_settings,
            pcppass_file=self.base / "pcppass",
        )

    @property
    def config_path(self) -> Path:
        return self.base / "pgpool-hook.yaml"

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    @property
    def nodes(self) -> list[Node]:
        return self.cluster.nodes

    def hook_config(self, **overrides: Any) -> dict[str, Any]:
        settings = hook_settings(
            workflows_dir=self.app.workflows_dir,
            state_dir=self.state_dir,
            passfile=self.cluster.passfile,
            ssh_port=self.sshd.port,
            ssh_key_file=self.sshd.key_file,
            known_hosts=self.sshd.known_hosts,
            pcp_port=self.pcp_port,
            pcppass=self.pgpool.pcppass,
            ssh_user=self.sshd.user,
            pcp_user=self.pgpool.pcp_user,
        )
        return deep_merge(deep_merge(settings, self.config_overrides), overrides)

    def write_config(self, **overrides: Any) -> Path:
        """(Re)write the hook config; pgpool reads the file anew at every hook call."""
        return write_hook_config(self.config_path, **self.hook_config(**overrides))

    def build(self, *, start_pgpool: bool = True) -> PgpoolSandbox:
        make_postgres_dir(self.base)
        self.cluster.build()
        self.write_config()
        first, remote = self.recovery_scripts or (
            self.app.recovery_script(self.config_path, "recovery_1st_stage"),
            self.app.recovery_script(self.config_path, "remote_start"),
        )
        self.cluster.install_recovery_scripts(first, remote)
        self.pgpool.write_config()
        if start_pgpool:
            self.pgpool.start()
        self.save_state()
        return self

    def destroy(self, *, remove: bool = True) -> None:
        """Stop pgpool first (so no failover fires while nodes go down), then the nodes."""
        try:
            self.pgpool.stop()
        finally:
            self.cluster.destroy(remove=remove)
            if remove:
                for name in ("pgpool", "state", "pcppass", "pgpool-hook.yaml", STATE_FILE):
                    path = self.base / name
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)

    def save_state(self) -> None:
        """Record ports/addresses so ``python -m sandbox down/status`` can find everything."""
        state = {
            "addresses": list(self.addresses),
            "pg_port": self.pg_port,
            "pgpool_port": self.pgpool_port,
            "pcp_port": self.pcp_port,
            "ssh_root": str(self.sshd.root),
            "ssh_port": self.sshd.port,
            "ssh_addresses": list(self.sshd.addresses),
            "app_base": str(self.app.base),
            "python": self.app.python,
        }
        (self.base / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, base: Path) -> PgpoolSandbox:
        state = json.loads((Path(base) / STATE_FILE).read_text())
        sshd = Sshd(Path(state["ssh_root"]), state["ssh_addresses"], state["ssh_port"])
        app = HookApp(Path(state["app_base"]), python=state["python"])
        return cls(
            Path(base),
            sshd,
            app,
            addresses=state["addresses"],
            pg_port=state["pg_port"],
            pgpool_port=state["pgpool_port"],
            pcp_port=state["pcp_port"],
        )
