"""Remember which workflow and config files already passed the checks, by content hash.

A hook's start-up is failover time.  Full validation (YAML parsing, JSON Schema,
Jinja2 parsing of every field) costs more than the rest of a short run, and
these files almost never change between two failovers.  So ``run`` keeps what
passed as JSON, keyed by a hash of the file, the template files it reads, the
``--set`` overrides and the engine's own code; any change to one of them means
a full check again.  ``validate`` and ``--dry-run`` never use the cache.

Both are remembered in ``state_dir/cache``.  A config names its state_dir, so
its checked settings are also kept per user, in ``$XDG_CACHE_HOME/pgpool-hook``
(``~/.cache/pgpool-hook``), where a run finds them before knowing the state_dir.

An entry decides what a run executes (commands, program folders), so only an
entry this user wrote is used: owned by the effective user, writable by nobody
else, and holding the key it was written for (a renamed entry is no entry).
Files are written 0600 in a 0700 folder.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

try:  # hashlib loads OpenSSL first (~4 ms of every start); its blake2b *is* this builtin one
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - an interpreter built without it
    from hashlib import blake2b

from engine.model import Workflow, workflow_from_dict, workflow_to_dict

# Anything above source.MAX_BYTES: a file that passed the checks is never larger, so it is
# read whole, exactly as the checks read it, and a larger one is simply not found.
READ_LIMIT = 4 * 1024 * 1024

_ENGINE_FINGERPRINT: str | None = None


def engine_fingerprint() -> str:
    """Changes whenever any engine source file changes (size or mtime)."""
    global _ENGINE_FINGERPRINT
    if _ENGINE_FINGERPRINT is None:
        root = os.path.dirname(os.path.abspath(__file__))
        h = blake2b(digest_size=8)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py"):
                    st = os.stat(os.path.join(dirpath, name))
                    h.update(
                        f"{os.path.relpath(os.path.join(dirpath, name), root)}:{st.st_size}:{st.st_mtime_ns};".encode()
                    )
        _ENGINE_FINGERPRINT = h.hexdigest()
    return _ENGINE_FINGERPRINT


def _digest(*parts: bytes) -> str:
    """Hash of ``parts``, each length-prefixed so that no two lists of parts hash alike."""
    h = blake2b(digest_size=16)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def read_source(path: str) -> bytes | None:
    """The bytes a cache key is made of (None if unreadable: the checks will say why)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(READ_LIMIT)
    except OSError:
        return None


def _read_own(entry: str, key: str) -> dict[str, Any] | None:
    """The record in ``entry`` if this user wrote it for ``key``, else None."""
    try:  # O_NONBLOCK: a FIFO put in its place must not hang the hook
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with open(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return None
            record = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def _write_own(entry: str, key: str, record: dict[str, Any]) -> None:
    """Write ``record`` for ``key`` atomically, 0600 in a 0700 folder; never fails a run."""
    tmp = f"{entry}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(entry), mode=0o700, exist_ok=True)
        try:
            os.unlink(tmp)  # left by a killed run that had the same pid
        except FileNotFoundError:
            pass
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as fh:
            json.dump({**record, "key": key}, fh)
        os.replace(tmp, entry)
    except (OSError, TypeError, ValueError):  # TypeError/ValueError: a value JSON cannot hold
        try:
            os.unlink(tmp)
        except OSError:
            pass


# ---- workflows ---------------------------------------------------------------------------


def _workflow_key(path: str, data: bytes) -> str:
    return _digest(engine_fingerprint().encode(), os.path.abspath(path).encode(), data)


def _workflow_entry(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, f"workflow-{key}.json")


def lookup(cache_dir: str, path: str, data: bytes) -> Workflow | None:
    """The workflow at ``path`` as it passed validation, if its content is ``data``."""
    key = _workflow_key(path, data)
    stored = _read_own(_workflow_entry(cache_dir, key), key)
    if stored is None:
        return None
    try:
        for dep, digest in stored["deps"].items():
            with open(dep, "rb") as dh:
                if _digest(dh.read()) != digest:
                    return None
        return workflow_from_dict(stored["model"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def cached_workflow(path: str, cache_dir: str) -> Workflow | None:
    """The workflow at ``path`` if it passed validation as it is now, without the checks' imports."""
    data = read_source(path)
    return lookup(cache_dir, path, data) if data is not None else None


def store(cache_dir: str, path: str, data: bytes, workflow: Workflow, deps: list[str]) -> None:
    """Remember that ``workflow`` (``data`` at ``path``, reading ``deps``) passed validation."""
    from engine.resume import fingerprint

    key = _workflow_key(path, data)
    # what each run records for resume, so that a warm start need not compute it
    model = {**workflow_to_dict(workflow), "digests": fingerprint(workflow)}
    record: dict[str, Any] = {"model": model, "deps": {}}
    try:
        for dep in deps:
            with open(dep, "rb") as dh:
                record["deps"][dep] = _digest(dh.read())
    except OSError:
        return  # a cache is an optimisation: never fail a run over it
    _write_own(_workflow_entry(cache_dir, key), key, record)


# ---- configs -----------------------------------------------------------------------------


def user_dir() -> str | None:
    """This user's cache folder, or None when the user has no usable home."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pgpool-hook") if os.path.isabs(base) else None


def _exact_json(data: Any) -> bool:
    """Whether JSON gives ``data`` back unchanged."""
    try:
        return bool(json.loads(json.dumps(data)) == data)
    except (TypeError, ValueError):
        return False


class ConfigEntry:
    """What is remembered about one config file's content with one set of overrides.

    Two records, written once the input passes the checks.  ``state_dir/cache`` says
    that it passed, as for workflows; but the state_dir is only known once the file is
    parsed, so this user's cache folder also keeps the checked settings (the file merged
    with the overrides) as ``data``, and a run need not parse the file at all.  Settings
    that hold a secret's value are not kept there: such a run parses the file again and
    skips the checks, as does a user without a writable home.
    """

    def __init__(self, data: bytes, overrides: dict[str, Any] | None):
        extra = json.dumps(overrides or {}, sort_keys=True, default=str).encode()
        self.key = _digest(engine_fingerprint().encode(), data, extra)
        folder = user_dir()
        self._settings = os.path.join(folder, f"config-{self.key}.json") if folder else None
        record = _read_own(self._settings, self.key) if self._settings else None
        found = record.get("data") if record is not None else None
        self.data: dict[str, Any] | None = found if isinstance(found, dict) else None

    def _marker(self, state_dir: str) -> str:
        return os.path.join(state_dir, "cache", f"config-{self.key}.json")

    def passed(self, state_dir: str) -> bool:
        """Whether this input passed the checks before (``state_dir``: the one it names)."""
        return _read_own(self._marker(state_dir), self.key) is not None

    def remember(self, state_dir: str, data: dict[str, Any] | None) -> None:
        """Record that the input passed (once), and keep its settings ``data`` unless None."""
        if not self.passed(state_dir):
            _write_own(self._marker(state_dir), self.key, {})
        if self._settings is not None and data is not None and _exact_json(data):
            _write_own(self._settings, self.key, {"data": data})
