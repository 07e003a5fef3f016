"""``nexmark``: the standard Nexmark person/auction/bid stream as a replayable source.

One source produces one table type (``nexmark.table.type``): the events of that type among
event numbers 0, 1, 2, ... (see :mod:`.generator` for the model). With ``nexmark.split.num = n``
partition p owns the event numbers p, p+n, p+2n, ...; its offset is the next event number it
will consider, so a restart resumes exactly, whatever the batch sizes were.

>>> from pathlib import Path
>>> from sqlstream.connectors.base import ConnectorContext
>>> from sqlstream.types import Column
>>> src = NexmarkSource(
...     ConnectorContext("bid", "", Path(".")),
...     [Column("auction", "bigint"), Column("price", "bigint")],
...     {"nexmark.table.type": "Bid", "nexmark.event.num": "50"},
...     None,
... )
>>> batch = src.poll(1000)
>>> batch.data.num_rows, batch.offsets, src.finished()
(46, {'0': 50}, True)
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa

from sqlstream.connectors.base import ConnectorContext, Format, Source, SourceBatch
from sqlstream.connectors.nexmark.generator import (
    COLUMNS,
    DICTIONARY_COLUMNS,
    NexmarkConfig,
    _Keys,
    count_of_type_below,
    events_of_type,
    events_of_type_range,
    generate,
)
from sqlstream.connectors.options import OptionSpec
from sqlstream.errors import InvalidParameterValue
from sqlstream.types import Schema, arrow_schema, arrow_type

_NO_LIMIT = 2**62
_DEFAULTS = NexmarkConfig()

# option name -> NexmarkConfig field (all integers)
_CONFIG_OPTIONS = {
    "nexmark.person.proportion": "person_proportion",
    "nexmark.auction.proportion": "auction_proportion",
    "nexmark.bid.proportion": "bid_proportion",
    "nexmark.first.person.id": "first_person_id",
    "nexmark.first.auction.id": "first_auction_id",
    "nexmark.first.category.id": "first_category_id",
    "nexmark.num.categories": "num_categories",
    "nexmark.active.people": "active_people",
    "nexmark.in.flight.auctions": "in_flight_auctions",
    "nexmark.person.id.lead": "person_id_lead",
    "nexmark.auction.id.lead": "auction_id_lead",
    "nexmark.hot.seller.ratio": "hot_seller_ratio",
    "nexmark.hot.auction.ratio": "hot_auction_ratio",
    "nexmark.hot.bidder.ratio": "hot_bidder_ratio",
    "nexmark.hot.channel.ratio": "hot_channel_ratio",
    "nexmark.avg.person.byte.size": "avg_person_byte_size",
    "nexmark.avg.auction.byte.size": "avg_auction_byte_size",
    "nexmark.avg.bid.byte.size": "avg_bid_byte_size",
    "nexmark.min.event.gap.in.ns": "min_event_gap_ns",
    "nexmark.seed": "seed",
}
# the ones that must be positive (divisors, ratios, sizes of ranges)
_POSITIVE = {
    "bid_proportion", "num_categories", "active_people", "in_flight_auctions",
    "hot_seller_ratio", "hot_auction_ratio", "hot_bidder_ratio", "hot_channel_ratio",
}  # fmt: skip


#: events generated per piece of a batch: the generator's passes over a piece stay in the CPU
#: cache, which is several times faster than passes over a whole million-event batch
_CHUNK_EVENTS = 1 << 17
_pool: cf.ThreadPoolExecutor | None = None


def _generator_pool() -> cf.ThreadPoolExecutor:
    """Threads that generate a batch's pieces side by side: numpy releases the GIL in its
    passes over whole arrays, so a batch generates on every core (q0 at 2 M events: 18.8 ->
    30.8 M events/s on 2 cores). Made on first use; a forked child, which has none of the
    parent's threads, makes its own."""
    global _pool
    if _pool is None:
        _pool = cf.ThreadPoolExecutor(len(os.sched_getaffinity(0)), "sqlstream-nexmark")
    return _pool


def _forget_pool() -> None:
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def _castable(natural: str, declared: str) -> bool:
    """Whether a declared column type can hold the generated values (ids and prices in
    narrower or wider numbers, times with or without a zone, anything as text)."""
    if declared == "varchar":
        return True
    if natural == "bigint":
        return declared in ("smallint", "integer", "real", "double precision") or (
            declared.startswith("numeric")
        )
    if natural == "timestamp":
        return declared in ("timestamptz", "date")
    return False


def _first_at_or_after(p: int, n: int, e: int) -> int:
    """The smallest event number >= e owned by partition p (number % n == p)."""
    return e + (p - e) % n


class NexmarkSource(Source):
    """Nexmark events of one table type; see the module docstring and docs/connectors/nexmark.md."""

    options_spec = [
        OptionSpec(
            "nexmark.table.type",
            required=True,
            choices=("person", "auction", "bid"),
            description="which events this source produces: Person, Auction or Bid",
        ),
        OptionSpec("nexmark.event.num", description="total events (all types); unset = unbounded"),
        OptionSpec("nexmark.split.num", default="1", description="number of partitions"),
        OptionSpec(
            "nexmark.event.rate",
            default="0",
            description="events per second over all types and partitions; 0 = as fast as possible",
        ),
        OptionSpec(
            "nexmark.use.real.time",
            default="false",
            choices=("true", "false"),
            description="pace events at one per min.event.gap (overrides event.rate)",
        ),
        OptionSpec(
            "nexmark.base.time",
            default=str(_DEFAULTS.base_time_us // 1000),
            description="event time of event 0, ms since the epoch (default 2015-07-15)",
        ),
        OptionSpec("nexmark.max.chunk.size", description="accepted for RisingWave compatibility"),
        *(
            OptionSpec(name, default=str(getattr(_DEFAULTS, attr)))
            for name, attr in _CONFIG_OPTIONS.items()
        ),
    ]

    def __init__(
        self, ctx: ConnectorContext, schema: Schema, options: dict[str, str], fmt: Format | None
    ) -> None:
        super().__init__(ctx, schema, options, fmt)
        o = self.options
        self._table = o["nexmark.table.type"].lower()
        values = {attr: self._int(name) for name, attr in _CONFIG_OPTIONS.items()}
        for attr in _POSITIVE:
            if values[attr] < 1:
                name = next(k for k, v in _CONFIG_OPTIONS.items() if v == attr)
                self._bad(f"{name} must be at least 1")
        self._cfg = NexmarkConfig(
            **values, base_time_us=self._int("nexmark.base.time", allow_negative=True) * 1000
        )
        lo, hi = self._cfg.type_range(self._table)
        if hi <= lo:
            self._bad(f"nexmark.{self._table}.proportion is 0: this source would never produce")
        self._keys = _Keys(self._cfg.seed)

        total = o.get("nexmark.event.num")
        self._total = self._int("nexmark.event.num") if total is not None else _NO_LIMIT
        self._n = self._int("nexmark.split.num")
        if self._n < 1:
            self._bad("nexmark.split.num must be at least 1")
        if o["nexmark.use.real.time"].lower() == "true":
            gap = self._cfg.min_event_gap_ns
            self._rate = 1e9 / gap if gap > 0 else 0.0
        else:
            try:
                self._rate = float(o["nexmark.event.rate"])
            except ValueError:
                self._bad(f"nexmark.event.rate must be a number, not '{o['nexmark.event.rate']}'")
            if not math.isfinite(self._rate) or self._rate < 0:
                self._bad("nexmark.event.rate must be a finite number >= 0")

        # the declared columns: known names only, types the natural type can be cast to
        known = COLUMNS[self._table]
        self._columns: list[str] = []
        self._casts: dict[str, pa.DataType] = {}
        for col in schema:
            name = col.name.lower()
            if name not in known:
                self._bad(
                    f"a nexmark {self._table} has no column '{col.name}' "
                    f"(columns: {', '.join(known)})"
                )
            natural = known[name]
            if col.type != natural:
                if not _castable(natural, col.type):
                    self._bad(f"column {col.name} is {natural} and cannot be {col.type}")
                self._casts[name] = arrow_type(col.type)
            self._columns.append(name)
        self._arrow_schema = arrow_schema(schema)
        # channel and url pick one of 10,004 strings: handed over dictionary-encoded, an index
        # per bid instead of a copy of its string (url: 1 against 46 ns); DuckDB reads them
        # as VARCHAR and puts out plain strings
        for i, name in enumerate(self._columns):
            if name in DICTIONARY_COLUMNS.get(self._table, ()) and name not in self._casts:
                field = self._arrow_schema.field(i)
                self._arrow_schema = self._arrow_schema.set(
                    i, field.with_type(pa.dictionary(pa.int32(), pa.string()))
                )
        self._wanted = list(self._columns)

        self._next = list(range(self._n))  # per partition: next event number it owns
        self._resume_min = 0
        self._t0: float | None = None
        self._frozen: int | None = None

    # -- options
    def _bad(self, msg: str) -> None:
        raise InvalidParameterValue(f"source {self.ctx.name}: {msg}")

    def _int(self, key: str, allow_negative: bool = False) -> int:
        text = self.options[key]
        try:
            value = int(text.strip())
        except ValueError:
            self._bad(f"{key} must be an integer, not '{text}'")
        if value < 0 and not allow_negative:
            self._bad(f"{key} must not be negative")
        return value

    # -- Source API
    def partitions(self) -> list[str]:
        return [str(p) for p in range(self._n)]

    def seek(self, offsets: dict[str, Any]) -> None:
        n = self._n
        for p in range(n):
            off = offsets.get(str(p))
            self._next[p] = _first_at_or_after(p, n, int(off)) if off is not None else p
        self._resume_min = min(self._next)
        self._t0 = None  # pacing restarts from the resume point

    def _limit(self) -> int:
        """Event numbers below this may be produced now."""
        limit = self._total
        if self._rate > 0:
            elapsed = 0.0 if self._t0 is None else time.monotonic() - self._t0
            limit = min(limit, self._resume_min + math.floor(elapsed * self._rate))
        if self._frozen is not None:
            limit = min(limit, self._frozen)
        return limit

    def poll(self, max_rows: int) -> SourceBatch | None:
        if self._t0 is None:
            self._t0 = time.monotonic()
        n, nxt, limit = self._n, self._next, self._limit()
        g = min(nxt)
        if g >= limit:
            return None
        cfg, table = self._cfg, self._table
        # up to the event just after the max_rows-th event of this type from g (over all
        # partitions together: balanced partitions then produce exactly max_rows rows)
        k0 = count_of_type_below(g, table, cfg)
        last = int(events_of_type(np.array([k0 + max(1, max_rows) - 1]), table, cfg)[0])
        g_end = min(last + 1, limit)
        k1 = count_of_type_below(g_end, table, cfg)
        ev = events_of_type_range(k0, k1, table, cfg)
        first: int | None = k0
        if any(nxt[p] != _first_at_or_after(p, n, g) for p in range(n)):
            # partitions at different positions (offsets from elsewhere): keep only the events
            # each partition still owes; the common case skips this
            ev = ev[ev >= np.asarray(nxt, dtype=np.int64)[ev % n]]
            first = None
        for p in range(n):
            nxt[p] = max(nxt[p], _first_at_or_after(p, n, g_end))
        def piece(i: int) -> pa.RecordBatch:
            return self._generate(ev[i : i + _CHUNK_EVENTS], None if first is None else first + i)

        starts = range(0, len(ev), _CHUNK_EVENTS)
        pieces = map(piece, starts) if len(starts) <= 1 else _generator_pool().map(piece, starts)
        data = pa.Table.from_batches(pieces, schema=self._arrow_schema)
        return SourceBatch(data, {str(p): nxt[p] for p in range(n)})

    def _generate(self, ev: np.ndarray, first: int | None) -> pa.RecordBatch:
        cols = generate(self._table, ev, self._wanted, self._cfg, self._keys, first)
        arrays = [
            pa.nulls(len(ev), f.type)
            if c not in cols
            else cols[c].cast(self._casts[c])
            if c in self._casts
            else cols[c]
            for c, f in zip(self._columns, self._arrow_schema, strict=True)
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=self._arrow_schema)

    def use_columns(self, names: set[str]) -> None:
        lowered = {n.lower() for n in names}
        self._wanted = [c for c in self._columns if c in lowered]

    def freeze(self) -> None:
        if self._total != _NO_LIMIT:
            # a bounded run is its own end: `--once` produces all of it (still paced)
            self._frozen = self._total
        elif self._rate <= 0:
            self._bad(
                "run --once needs an end: set nexmark.event.num, or a nexmark.event.rate "
                "(the events due so far are then the end)"
            )
        else:
            self._frozen = self._limit()

    def finished(self) -> bool:
        bound = self._total if self._frozen is None else min(self._total, self._frozen)
        return min(self._next) >= bound
