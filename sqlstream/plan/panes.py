"""HOP windows aggregated in panes (Flink's window slicing, Li et al.'s "panes").

A HOP window of size S sliding by L puts each row into S/L windows, so aggregating the
assigned rows directly hashes every row S/L times. A pane is a slice of time of width
g = gcd(S, L): every row of a pane falls in exactly the same windows, the windows of the
pane's start. So an aggregate whose accumulators combine (count, sum, min, max, and their
FILTERs) first folds a batch per pane, then assigns each pane's partial to its windows and
combines the partials per window. Nexmark q5's bids (5 windows each) fold in a quarter of
the time: 0.09 against 0.37 s for 920 k bids.

Only where the result is the same by construction: the windows are fixed intervals (no
months or days, whose length varies), the group keys are ``window_start``/``window_end``
themselves plus expressions of the row, the arguments and FILTERs read no window column,
and there is no ``count(DISTINCT ...)`` (its value tables are per window).

>>> hop = Hop('"ts"', "INTERVAL '2' SECOND", "INTERVAL '5' SECOND", "TIMESTAMP '1970-01-01'")
>>> pane_width_us(hop)
1000000
>>> print(pane_assign_sql(hop, pane_width_us(hop)))
SELECT *, time_bucket(INTERVAL '1000000 microseconds', "ts", TIMESTAMP '1970-01-01') AS window_start, time_bucket(INTERVAL '1000000 microseconds', "ts", TIMESTAMP '1970-01-01') + INTERVAL '5' SECOND AS window_end FROM __in
"""

from __future__ import annotations

import math

import duckdb

from sqlstream.plan.nodes import Accumulator, Hop
from sqlstream.plan.scope import q

#: what ``expand_sql`` reads: the pane partials (keys and accumulators per pane)
PANE_PARTIALS = "__pane_partials"


def pane_width_us(hop: Hop) -> int | None:
    """The pane width in microseconds, or None when a window's length is not fixed."""
    parts = []
    for interval in (hop.slide_sql, hop.size_sql):
        months, days, us = duckdb.sql(
            f"SELECT datepart('year', i) * 12 + datepart('month', i), datepart('day', i), "
            f"epoch_us(i) FROM (SELECT {interval} AS i)"
        ).fetchall()[0]
        if months or days or us <= 0:
            return None
        parts.append(us)
    return math.gcd(*parts)


def pane_assign_sql(hop: Hop, width_us: int) -> str:
    """The step replacing the window assignment under a pane aggregate: each row once, its
    ``window_start`` the start of its pane (``window_end`` that plus the size)."""
    pane = f"time_bucket(INTERVAL '{width_us} microseconds', {hop.time_sql}, {hop.origin_sql})"
    return (
        f"SELECT *, {pane} AS window_start, {pane} + {hop.size_sql} AS window_end FROM __in"
    )


def expand_sql(
    hop: Hop, keys: list[str], window_keys: dict[str, str], accumulators: list[Accumulator]
) -> str:
    """SQL over ``PANE_PARTIALS`` (per key and pane) giving the partials per key and window.

    ``window_keys`` maps the key columns holding a window bound to 'window_start' or
    'window_end' (at least one); the other keys pass through.
    """
    name, kind = next(iter(window_keys.items()))
    start = q(name) if kind == "window_start" else f"{q(name)} - {hop.size_sql}"
    out = []
    for k in keys:
        bound = window_keys.get(k)
        if bound == "window_start":
            out.append(f"__w AS {q(k)}")
        elif bound == "window_end":
            out.append(f"__w + {hop.size_sql} AS {q(k)}")
        else:
            out.append(q(k))
    combined = [f"{a.combine}({q(a.name)})::{a.duck_type} AS {q(a.name)}" for a in accumulators]
    return (
        f"SELECT {', '.join(out + combined)} FROM (SELECT *, unnest({hop.windows_of('__p')}) "
        f"AS __w FROM (SELECT *, {start} AS __p FROM {PANE_PARTIALS})) "
        f"WHERE {hop.covers('__w', '__p')} GROUP BY ALL"
    )
