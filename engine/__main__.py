"""``python -m engine`` behaves exactly like the ``pgpool-hook`` console script."""

from engine.launch import entry

entry()
