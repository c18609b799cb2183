"""Passwords never leave the process: not on stderr, stdout, in the journal or in any message.

A recognisable password (``S3cr3t-<uuid>-<source>``) is put in every place the engine reads
passwords from: config secrets from the environment, from a file and given as a value, the
postgres passfile, and PGPASSWORD.  Then workflows fail in every way we know (SQL
authentication against a server that quotes the password back, ssh failures and a remote
command printing it, a local command printing it, a template rendering it, exit messages,
dry-runs and ``--diff``, config and render errors) and every output is searched for it.
Where the password was really used, the mask ``********`` must show in its place.

Only one test needs the sandbox (sshd); the others run anywhere.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.cli import main

BASE = f"S3cr3t-{uuid.uuid4().hex[:10]}"
SECRETS = {
    "env": f"{BASE}-env",
    "file": f"{BASE}-file",
    "value": f"{BASE}-value",
    "passfile": f"{BASE}-passfile",
    "pgpassword": f"{BASE}-pgpassword",
}
MASK = "********"


class EchoServer:
    """A PostgreSQL look-alike that asks for a clear-text password and quotes it back in its error.

    The worst a server (or a man in the middle) can do to our output: libpq puts the
    server's message into the exception, the exception becomes the step's message.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.received: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self._handle(conn)
                except (OSError, struct.error):
                    pass

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        while True:  # SSLRequest / GSSENCRequest: "N", then the StartupMessage
            (length,) = struct.unpack("!I", self._read(conn, 4))
            body = self._read(conn, length - 4)
            if struct.unpack("!I", body[:4])[0] in (80877103, 80877104):
                conn.sendall(b"N")
                continue
            break
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        self._read(conn, 1)
        (length,) = struct.unpack("!I", self._read(conn, 4))
        password = self._read(conn, length - 4).rstrip(b"\0")
        self.received.append(password.decode())
        fields = b"SFATAL\0VFATAL\0C28P01\0M" + b'password authentication failed: got "' + password + b'"\0\0'
        conn.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)

    def close(self) -> None:
        self.sock.close()


class Site:
    def __init__(self, base: Path, monkeypatch: pytest.MonkeyPatch):
        self.base = base
        self.state = base / "state"
        self.workflows = base / "workflows"
        self.workflows.mkdir()
        (base / "db.pw").write_text(SECRETS["file"] + "\n")
        (base / "pgpass").write_text(f"*:*:*:postgres:{SECRETS['passfile']}\n")
        (base / "pgpass").chmod(0o600)
        monkeypatch.setenv("HOOK_DB_PW", SECRETS["env"])
        monkeypatch.setenv("PGPASSWORD", SECRETS["pgpassword"])
        monkeypatch.delenv("PGPOOL_HOOK_CONFIG", raising=False)
        self.config = base / "pgpool-hook.yaml"
        self.write_config()

    def write_config(self, **extra: Any) -> None:
        data: dict[str, Any] = {
            "workflows_dir": str(self.workflows),
            "state_dir": str(self.state),
            "lock_timeout": 1,
            "postgres": {"passfile": str(self.base / "pgpass"), "connect_timeout": 3},
            "secrets": {
                "env": {"env": "HOOK_DB_PW"},
                "file": {"file": "db.pw"},
                "value": {"value": SECRETS["value"]},
            },
        }
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        self.config.write_text(yaml.safe_dump(data))

    def workflow(self, text: str, name: str = "w") -> str:
        (self.workflows / f"{name}.yaml").write_text(text)
        return name

    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
        """Run the command in-process; returns the exit code and *everything* it left behind."""
        if argv[0] in ("run", "validate"):
            argv = (argv[0], "--config", str(self.config), *argv[1:])
        code = main(list(argv))
        out, err = capsys.readouterr()
        left = [out, err]
        for path in self.base.rglob("*"):
            if path.is_file() and path.name not in ("db.pw", "pgpass", "pgpool-hook.yaml"):
                left.append(path.read_text(errors="replace"))
        assert "Traceback" not in out + err
        return code, "\n".join(left)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    return Site(tmp_path, monkeypatch)


def leaked(text: str) -> list[str]:
    return [line for line in text.splitlines() if BASE in line]


# ---- SQL: a server that quotes the password back ------------------------------------------

SQL = """
name: w
params: [{name: port, type: int}]
steps:
  - id: q
    sql: {host: 127.0.0.1, port: "{{ port }}", statement: SELECT 1}
    timeout: 5
"""


@pytest.mark.parametrize("source", ["env", "file", "value", "pgpassword", "passfile"])
def test_sql_authentication_failure_quoting_the_password(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    if source in ("env", "file", "value"):
        site.write_config(postgres={"password_secret": source})
    if source == "passfile":
        monkeypatch.delenv("PGPASSWORD")
    server = EchoServer()
    try:
        code, everything = site.run(capsys, "run", site.workflow(SQL), str(server.port))
    finally:
        server.close()
    assert server.received == [SECRETS[source]]  # the password really went out ...
    assert code == 1
    assert f'password authentication failed: got "{MASK}"' in everything  # ... and came back masked
    assert leaked(everything) == []


# ---- local commands, templates, exit messages --------------------------------------------

LOCAL = """
name: w
params: [dest]
vars:
  conninfo: "host=db user=repl password={{ secrets.file }}"
steps:
  - id: conf
    template:
      dest: "{{ dest }}"
      content: "primary_conninfo = {{ conninfo | pgquote }}\\npassword={{ secrets.value }}\\n"
  - id: show
    local:
      command: [sh, -c, 'echo "pw=$PW"; echo "pw=$PW" >&2; echo "$PGPASSWORD"']
      env: {PW: "{{ secrets.env }}"}
  - id: fail
    local: [sh, -c, 'echo "connection failed for {{ secrets.env }}" >&2; exit 3']
    undo: tell
handlers:
  - id: tell
    local: [sh, -c, 'echo "undoing with {{ secrets.file }}" >&2; exit 1']
"""


def test_local_commands_and_templates_that_print_and_fail(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = site.base / "out" / "myrecovery.conf"
    dest.parent.mkdir()
    code, everything = site.run(capsys, "run", site.workflow(LOCAL), str(dest))
    assert code == 3  # failed, and the undo failed too
    assert not dest.exists()  # the template was rolled back
    assert f"pw={MASK}" in everything and f"connection failed for {MASK}" in everything
    assert f"undoing with {MASK}" in everything
    assert leaked(everything) == []
    journal = [json.loads(line) for line in (site.state / "journal.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "run_finished" for e in journal)


def test_dry_run_and_diff_show_masks(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    dest = site.base / "out" / "myrecovery.conf"
    dest.parent.mkdir()
    dest.write_text(f"password={SECRETS['value']}\n")  # what --diff reads back
    name = site.workflow(LOCAL)
    for extra in ([], ["--diff"]):
        code, everything = site.run(capsys, "run", "--dry-run", *extra, name, str(dest))
        assert code == 0
        assert f"password={MASK}" in everything
        assert leaked(everything.replace(dest.read_text(), "")) == []  # the file itself holds it


EXIT = """
name: w
steps:
  - id: stop
    exit: {code: 4, message: "giving up: {{ secrets.env }} / {{ secrets.value }}"}
"""


def test_exit_message(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, everything = site.run(capsys, "run", site.workflow(EXIT))
    assert code == 4
    assert f"giving up: {MASK} / {MASK}" in everything
    assert leaked(everything) == []


# ---- errors that quote values: render errors and config errors ------------------------------

RENDER = """
name: w
vars:
  users: {repl: x}
  password: "{{ users[secrets.env] }}"
steps:
  - id: a
    local: [echo, "{{ password }}"]
"""

RENDER_IN_STEP = """
name: w
vars:
  users: {repl: x}
steps:
  - id: a
    local: [echo, "{{ users[secrets.env] }}"]
"""


@pytest.mark.parametrize("text", [RENDER, RENDER_IN_STEP], ids=["in-a-var", "in-a-step"])
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_render_error_naming_the_value(
    site: Site, capsys: pytest.CaptureFixture[str], text: str, dry: bool
) -> None:
    """Jinja2's message for a missing key quotes the key: here, the password."""
    code, everything = site.run(capsys, "run", *(["--dry-run"] if dry else []), site.workflow(text))
    assert code in (1, 2)
    assert "has no attribute" in everything
    assert leaked(everything) == []


@pytest.mark.parametrize(
    "secrets",
    [
        {"value": {"value": SECRETS["value"], "env": "HOOK_DB_PW"}},  # two sources: the schema quotes both
        {"value": {"value": SECRETS["value"], "file": "db.pw"}},
        {"value": {"vaule": SECRETS["value"]}},  # typo: "unknown key"
        {"value": [SECRETS["value"]]},  # not a mapping
    ],
    ids=["value-and-env", "value-and-file", "typo", "list"],
)
@pytest.mark.parametrize("command", ["run", "validate"])
def test_config_errors_do_not_quote_a_secret(
    site: Site, capsys: pytest.CaptureFixture[str], secrets: dict[str, Any], command: str
) -> None:
    site.write_config(secrets=secrets)
    name = site.workflow(EXIT)
    code, everything = site.run(capsys, command, *([name] if command == "run" else []))
    assert code == 2
    assert "secrets.value" in everything
    assert leaked(everything) == []


def test_set_of_a_secret_with_an_error_does_not_quote_it(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    name = site.workflow(EXIT)
    code, everything = site.run(
        capsys,
        "run",
        "--set",
        f"secrets.other.value={SECRETS['value']}",
        "--set",
        "secrets.other.env=X",
        name,
    )
    assert code == 2
    assert leaked(everything) == []


# ---- ssh (sandbox sshd) ----------------------------------------------------------------------

SSH = """
name: w
params: [host, {{name: port, type: int}}]
steps:
  - id: remote
    ssh:
      host: "{{{{ host }}}}"
      port: "{{{{ port }}}}"
      command: 'printenv PGPASSWORD; echo "{{{{ secrets.file }}}}" >&2; exit 3'
      env: {{PGPASSWORD: "{{{{ secrets.env }}}}"}}
    timeout: 10
"""


def test_ssh_command_printing_the_password_and_ssh_that_cannot_connect(
    site: Site, capsys: pytest.CaptureFixture[str], sshd: Any
) -> None:
    site.write_config(
        ssh={
            "user": sshd.user,
            "port": sshd.port,
            "key_file": str(sshd.key_file),
            "known_hosts": str(sshd.known_hosts),
            "host_key_policy": "strict",
            "connect_timeout": 2,
        }
    )
    name = site.workflow(SSH.format())
    code, everything = site.run(capsys, "run", name, "127.0.0.21", str(sshd.port))
    assert code == 1
    assert f"stdout| {MASK}" in everything and f"stderr| {MASK}" in everything
    assert leaked(everything) == []
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code, everything = site.run(capsys, "run", name, "127.0.0.1", str(port))
    assert code == 1
    assert leaked(everything) == []
    code, everything = site.run(capsys, "run", "--dry-run", name, "127.0.0.1", str(port))
    assert code == 0 and f"PGPASSWORD={MASK}" in everything
    assert leaked(everything) == []


def test_secret_given_with_set_is_masked_in_the_journal_that_records_overrides(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """The journal keeps a run's --set overrides (for resume); a secret among them is masked."""
    code, everything = site.run(
        capsys, "run", "--set", f"secrets.extra.value={SECRETS['value']}x", site.workflow(EXIT)
    )
    assert code == 4
    assert MASK in (site.state / "journal.jsonl").read_text()
    assert leaked(everything) == []
