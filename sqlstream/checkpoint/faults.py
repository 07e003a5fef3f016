"""Crash injection for recovery tests: ``SQLSTREAM_CRASH_POINT=<point>:<n>`` kills the process
with SIGKILL the n-th time it reaches ``<point>`` — so tests can crash exactly inside a
checkpoint commit, which random timing rarely hits.

Points: ``pre-commit`` (sinks staged and state written, catalog transaction not yet
committed) and ``post-commit`` (transaction committed, sinks not yet published).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_ENV = "SQLSTREAM_CRASH_POINT"
_seen: Counter[str] = Counter()


def crash_point(point: str) -> None:
    spec = os.environ.get(_ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _seen[point] += 1
    if _seen[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
