"""Pgpool-II's own sample hook scripts, adapted for the sandbox at benchmark time.

The scripts come from the Debian ``pgpool2`` package (``/usr/share/doc/pgpool2/examples``)
and are never stored in this repository.  Only the knobs at the top of each script and the
things that cannot work on a loopback sandbox are changed, with the same substitutions as
``tests/test_sandbox.py``: PGHOME, ssh options (port, key, strict host keys instead of
``StrictHostKeyChecking=no``), archive dir, pcp path and port, the passfile baked into
``primary_conninfo``; the scp ``restore_command`` is dropped (it would need ``-P``; the
replication slots keep the WAL anyway).  Everything else, ``set -o xtrace`` and the
"passwordless ssh" probes included, runs as shipped: that is what is being compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SAMPLES_DIR = Path("/usr/share/doc/pgpool2/examples")
PGHOME = "/usr/lib/postgresql/15"

# workflow name -> sample file name (without .sample) and the name pgpool knows it by
SAMPLE_FILES = {
    "failover": "failover.sh",
    "follow_primary": "follow_primary.sh",
    "recovery_1st_stage": "recovery_1st_stage",
    "remote_start": "pgpool_remote_start",
}


@dataclass(frozen=True)
class SandboxKnobs:
    """What the samples hard-code that differs in the sandbox."""

    ssh_port: int
    known_hosts: Path
    key_file: Path
    passfile: Path
    pcp_port: int
    archive_dir: Path
    pghome: str = PGHOME
    pgpool_path: str = "/usr/sbin"


def available(samples_dir: Path = SAMPLES_DIR) -> bool:
    return all((samples_dir / f"{name}.sample").exists() for name in SAMPLE_FILES.values())


def adapt(text: str, knobs: SandboxKnobs) -> str:
    """One sample script's text with the sandbox's paths, ports and strict ssh."""
    ssh_options = (
        f"-p {knobs.ssh_port} -o BatchMode=yes -o StrictHostKeyChecking=yes "
        f"-o UserKnownHostsFile={knobs.known_hosts} -i {knobs.key_file}"
    )
    text = re.sub(r"(?m)^PGHOME=.*$", f"PGHOME={knobs.pghome}", text)
    text = re.sub(r"(?m)^SSH_OPTIONS=.*$", f'SSH_OPTIONS="{ssh_options}"', text)
    text = re.sub(r"(?m)^ARCHIVEDIR=.*$", f"ARCHIVEDIR={knobs.archive_dir}", text)
    text = re.sub(r"(?m)^PGPOOL_PATH=.*$", f"PGPOOL_PATH={knobs.pgpool_path}", text)
    text = re.sub(r"(?m)^PCP_PORT=.*$", f"PCP_PORT={knobs.pcp_port}", text)
    text = re.sub(r"(?m)^restore_command = .*\n", "", text)  # scp would need -P; slots suffice
    return text.replace("/var/lib/pgsql/.pgpass", str(knobs.passfile))


def adapted_scripts(knobs: SandboxKnobs, samples_dir: Path = SAMPLES_DIR) -> dict[str, str]:
    """{workflow name: adapted script text} for the four hooks."""
    return {
        workflow: adapt((samples_dir / f"{name}.sample").read_text(), knobs)
        for workflow, name in SAMPLE_FILES.items()
    }
