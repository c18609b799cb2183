"""``python -m engine`` behaves exactly like the ``pgpool-hook`` console script."""

from engine.cli import entry

entry()
