"""Watermark alignment: the readers of one pipeline advance together in event time.

A pipeline's watermark is the smallest of its readers'; a reader that runs ahead in event
time (a sparse source polled with the same row budget as a dense one) only piles up state
that waits for the others. So each epoch the reader furthest behind reads in full, and the
others read only up to where it got plus ``MAX_LEAD_US``, sized by their own rows per
microsecond of event time (see docs/performance.md, "Memory over a run").

A reader that has not read yet, has finished, has no watermark, or whose source has had
nothing for ``IDLE_S`` seconds holds no one back: waiting for it cannot bring the readers
together, only stall them. Some reader reads in every epoch while any has input, so
``run --once`` always ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlstream.engine.reader import WATERMARK_END, Reader

#: how far, in event time, a reader may read ahead of the slowest reader of its pipeline.
#: Only a tolerance: a leading reader reads each epoch about as much event time as the
#: slowest did, whatever this is, so it bounds the lead without costing throughput.
MAX_LEAD_US = 1_000_000
#: seconds a reader's source may have nothing to give before the reader stops holding the
#: others back (an idle source: caught up, or a quiet topic; Flink's idle timeout)
IDLE_S = 1.0


def moving(r: Reader) -> bool:
    """Whether a reader has a watermark that is still moving (read some, not finished)."""
    return r.watermark_column is not None and r.watermark_us not in (None, WATERMARK_END)


def poll_order(readers: Sequence[Reader]) -> list[int]:
    """Indexes of ``readers``, the one furthest behind in event time (or without a watermark
    yet) first."""
    return sorted(
        range(len(readers)),
        key=lambda i: -math.inf if readers[i].watermark_us is None else readers[i].watermark_us,
    )


def reach(readers: Sequence[Reader], full: int, idle_s: float, now: float) -> dict[int, float]:
    """Where, in event time, each reader taking part in alignment would get with a full poll
    of ``full`` rows (its watermark plus that many rows at its last batch's rows per
    microsecond), by index; empty when fewer than two take part.

    Taking part: a moving watermark, and rows from its source within the last ``idle_s``
    seconds (``now`` is ``time.monotonic()``).
    """
    out = {}
    for i, r in enumerate(readers):
        if not moving(r):
            continue
        if r.empty_since is not None and now - r.empty_since >= idle_s:
            continue
        step = full / r.rows_per_us if r.rows_per_us else math.inf
        out[i] = r.watermark_us + step  # type: ignore[operator]
    return out if len(out) > 1 else {}


def poll_budget(r: Reader, i: int, reached: dict[int, float], full: int, max_lead_us: int) -> int:
    """Rows to ask reader ``r`` (index ``i``) for this epoch; 0 means skip it (it leads).

    The target is the least far any aligned reader gets this epoch plus ``max_lead_us``: for
    one already polled (those behind ``r``) where it actually got to, for the others where a
    full poll would take them (:func:`reach`). A reader reads the rows that take it to the
    target at its last batch's rows per microsecond: at least 1/64 of ``full`` (so that its
    polls do not shrink to where their fixed cost dominates), at most all of it; none when it
    is already there. So the reader that sets the target reads a full batch and the others
    about as much event time, and while any reader has input, some reader reads.

    A reader whose rows per microsecond are not known yet (none read since the start or a
    restart) first reads small probes, so that its first batch cannot lead by a whole batch
    of event time; after a full batch's worth of rows without knowing (event time that does
    not move) it reads in full.
    """
    probe = max(full // 64, 1)
    if r.watermark_column is None:
        return full
    if r.rows_per_us is None:
        return probe if r.rows_read < full and r.watermark_us != WATERMARK_END else full
    if i not in reached:
        return full
    room = min(reached.values()) + max_lead_us - r.watermark_us  # type: ignore[operator]
    if room <= 0:
        return 0
    if math.isinf(room):
        return full
    return max(probe, min(full, math.ceil(room * r.rows_per_us)))
