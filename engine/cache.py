"""Remember which workflow files already passed validation, by content hash.

A hook's start-up is failover time.  Full validation (JSON Schema, Jinja2
parsing of every field) costs more than the rest of a short run, and the
workflow file almost never changes between two failovers.  So ``run`` keeps
the validated model as JSON in ``state_dir/cache``, keyed by the hash of the
workflow file, the template files it reads and the engine's own code; any
change to one of them means a full validation again.  ``validate`` never uses
the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from engine.model import Workflow, workflow_from_dict, workflow_to_dict

_ENGINE_FINGERPRINT: str | None = None


def engine_fingerprint() -> str:
    """Changes whenever any engine source file changes (size or mtime)."""
    global _ENGINE_FINGERPRINT
    if _ENGINE_FINGERPRINT is None:
        root = os.path.dirname(os.path.abspath(__file__))
        h = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py"):
                    st = os.stat(os.path.join(dirpath, name))
                    h.update(
                        f"{os.path.relpath(os.path.join(dirpath, name), root)}:{st.st_size}:{st.st_mtime_ns};".encode()
                    )
        _ENGINE_FINGERPRINT = h.hexdigest()[:16]
    return _ENGINE_FINGERPRINT


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry_path(cache_dir: str, path: str, data: bytes) -> str:
    key = _digest(b"%s\0%s\0%s" % (engine_fingerprint().encode(), os.path.abspath(path).encode(), data))
    return os.path.join(cache_dir, f"workflow-{key[:32]}.json")


def lookup(cache_dir: str, path: str, data: bytes) -> Workflow | None:
    entry = _entry_path(cache_dir, path, data)
    try:
        with open(entry, encoding="utf-8") as fh:
            stored = json.load(fh)
        for dep, digest in stored["deps"].items():
            with open(dep, "rb") as dh:
                if _digest(dh.read()) != digest:
                    return None
        return workflow_from_dict(stored["model"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(cache_dir: str, path: str, data: bytes, workflow: Workflow, deps: list[str]) -> None:
    entry = _entry_path(cache_dir, path, data)
    record: dict[str, Any] = {"model": workflow_to_dict(workflow), "deps": {}}
    try:
        for dep in deps:
            with open(dep, "rb") as dh:
                record["deps"][dep] = _digest(dh.read())
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        tmp = f"{entry}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        os.replace(tmp, entry)
    except OSError:
        pass  # a cache is an optimisation: never fail a run over it
