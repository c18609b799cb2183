"""Pause Python's cyclic garbage collector while a workflow is loaded, checked or planned.

Loading and planning build many long-lived objects (positioned YAML nodes, the model,
compiled templates, plans) and almost no garbage cycles.  The cyclic collector still
walks every live object at each full collection, and full collections come round more
often the more is allocated, so its cost grows faster than the workflow: it was a third
of a 10,000-step dry-run.  Reference counting frees everything else as usual.

When the work is done, what it built is moved to the collector's permanent generation
(``gc.freeze``) before the collector is switched on again: those objects live as long as
the run anyway, and otherwise the first collection afterwards would walk all of them at
once.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.enable()
