"""The nexmark source: the Beam/Flink event model, determinism, offsets, bounds, columns."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sqlstream.connectors.base import ConnectorContext
from sqlstream.connectors.nexmark.generator import (
    COLUMNS,
    DICTIONARY_COLUMNS,
    NexmarkConfig,
    last_base0_auction,
)
from sqlstream.connectors.nexmark.source import NexmarkSource
from sqlstream.connectors.registry import source_class
from sqlstream.errors import InvalidParameterValue
from sqlstream.types import Column, arrow_schema

BASE_US = 1_436_918_400_000_000  # 2015-07-15, the default base time


def schema_of(table: str) -> list[Column]:
    return [Column(c, t) for c, t in COLUMNS[table].items()]


def make(table: str, options: dict[str, str] | None = None, schema=None) -> NexmarkSource:
    opts = {"nexmark.table.type": table, **(options or {})}
    return NexmarkSource(
        ConnectorContext("nx", "", Path(".")), schema or schema_of(table.lower()), opts, None
    )


def drain(src: NexmarkSource, sizes: list[int], limit: int = 10**9) -> pa.Table:
    """Poll with the given batch sizes (cycled) until ``limit`` rows or nothing is left."""
    tables, n, i = [], 0, 0
    while n < limit:
        batch = src.poll(min(sizes[i % len(sizes)], limit - n))
        i += 1
        if batch is None:
            break
        declared = arrow_schema(src.schema)
        for field, want in zip(batch.data.schema, declared, strict=True):
            # channel and url come dictionary-encoded (indices into a fixed table of strings)
            assert field.type == want.type or (
                field.name in DICTIONARY_COLUMNS.get(src._table, ())  # noqa: SLF001
                and field.type == pa.dictionary(pa.int32(), want.type)
            ), (field, want)
        tables.append(batch.data.cast(declared))
        n += batch.data.num_rows
    return pa.concat_tables(tables) if tables else arrow_schema(src.schema).empty_table()


def ts_us(table: pa.Table) -> np.ndarray:
    return table.column("date_time").cast(pa.int64()).to_numpy()


def event_numbers(table: pa.Table) -> np.ndarray:
    """Event numbers recovered from the event times (default 100 µs gap)."""
    return (ts_us(table) - BASE_US) // 100


def test_registered() -> None:
    assert source_class("nexmark") is NexmarkSource


@pytest.mark.parametrize("table", ["person", "auction", "bid"])
def test_deterministic_across_batch_sizes(table: str) -> None:
    opts = {"nexmark.event.num": "20000"}
    whole = drain(make(table, opts), [10**6])
    assert drain(make(table, opts), [1, 7, 333, 4096]).equals(whole)
    # a fresh source, seeked to an offset taken midway, continues exactly
    src = make(table, opts)
    first = drain(src, [123], limit=150)
    offsets = src.poll(1).offsets  # one row more, then restart from its offsets
    restarted = make(table, opts)
    restarted.seek(offsets)
    rest = drain(restarted, [999])
    head = whole.slice(0, first.num_rows + 1)
    assert pa.concat_tables([head, rest]).equals(whole)


def test_a_batch_generated_in_pieces_on_threads_equals_small_batches() -> None:
    # 368 k bids in one poll are three 128 k-event pieces, generated side by side; 50 k-row
    # polls are one piece each, generated in the calling thread
    opts = {"nexmark.event.num": "400000"}
    whole = drain(make("bid", opts), [10**6])
    assert whole.num_rows == 368_000
    assert drain(make("bid", opts), [50_000]).equals(whole)


def test_proportions_and_ids() -> None:
    n = 50 * 400
    people = drain(make("person", {"nexmark.event.num": str(n)}), [10**6])
    auctions = drain(make("auction", {"nexmark.event.num": str(n)}), [10**6])
    bids = drain(make("bid", {"nexmark.event.num": str(n)}), [10**6])
    assert (people.num_rows, auctions.num_rows, bids.num_rows) == (400, 1200, 18400)
    # positions within each block of 50: 0 person, 1..3 auctions, 4..49 bids
    assert set((event_numbers(people) % 50).tolist()) == {0}
    assert set((event_numbers(auctions) % 50).tolist()) == {1, 2, 3}
    assert set((event_numbers(bids) % 50).tolist()) == set(range(4, 50))
    # ids are consecutive from 1000
    assert people.column("id").to_pylist() == list(range(1000, 1400))
    assert auctions.column("id").to_pylist() == list(range(1000, 2200))
    assert set(auctions.column("category").to_pylist()) == {10, 11, 12, 13, 14}


def test_references_and_prices() -> None:
    n = 50 * 2000
    cfg = NexmarkConfig()
    bids = drain(make("bid", {"nexmark.event.num": str(n)}), [10**6])
    ev = event_numbers(bids)
    last_auction = last_base0_auction(ev, cfg) + 1000
    last_person = ev // 50 + 1000
    auction = bids.column("auction").to_numpy()
    bidder = bids.column("bidder").to_numpy()
    # in-flight auctions (100) with a 10-id lead; active people with a 10-id lead
    assert (auction >= np.maximum(last_auction - 100, 1000)).all()
    assert (auction <= last_auction + 10).all()
    assert (bidder >= 1000).all() and (bidder <= last_person + 10).all()
    assert (auction <= last_auction).mean() > 0.9  # leads are rare
    # hot auctions: about half the bids go to a multiple-of-100 (base-0) auction
    hot = ((auction - 1000) % 100 == 0).mean()
    assert 0.45 < hot < 0.6
    price = bids.column("price").to_numpy()
    assert price.min() >= 100 and price.max() <= 10**8
    # log-uniform: each decade of 100..10^8 gets about a sixth
    decades = np.histogram(np.log10(price), bins=6, range=(2, 8))[0] / len(price)
    assert np.allclose(decades, 1 / 6, atol=0.02)
    channels = bids.column("channel").to_pylist()
    assert 0.45 < np.mean([c in ("Google", "Facebook", "Baidu", "Apple") for c in channels]) < 0.55
    auctions = drain(make("auction", {"nexmark.event.num": str(n)}), [10**6])
    seller = auctions.column("seller").to_numpy()
    assert (seller >= 1000).all() and (seller <= event_numbers(auctions) // 50 + 1000 + 10).all()
    initial = auctions.column("initial_bid").to_numpy()
    assert (initial >= 100).all() and (auctions.column("reserve").to_numpy() > initial).all()
    expires = auctions.column("expires").cast(pa.int64()).to_numpy()
    assert (expires > ts_us(auctions)).all()


def test_event_time_gap() -> None:
    bids = drain(make("bid", {"nexmark.event.num": "1000"}), [10**6])
    t = ts_us(bids)
    assert (np.diff(t) > 0).all()
    assert t[0] == BASE_US + 4 * 100  # event 4 at 0.1 ms per event
    opts = {"nexmark.event.num": "1000", "nexmark.min.event.gap.in.ns": "2000000",
            "nexmark.base.time": "0"}  # fmt: skip
    people = drain(make("person", opts), [10**6])
    assert (ts_us(people) == np.arange(20) * 50 * 2000).all()


def test_event_num_bound_and_finished() -> None:
    src = make("bid", {"nexmark.event.num": "120"})
    assert not src.finished()
    first = src.poll(50)
    assert first.data.num_rows == 50 and not src.finished()
    second = src.poll(1000)
    assert second.data.num_rows == 46 + 46 + 16 - 50
    assert second.offsets == {"0": 120}
    assert src.finished() and src.poll(10) is None


def test_splits_partition_the_events() -> None:
    opts = {"nexmark.event.num": "5000"}
    whole = drain(make("bid", opts), [10**6])
    src = make("bid", {**opts, "nexmark.split.num": "3"})
    assert src.partitions() == ["0", "1", "2"]
    split = drain(src, [100, 7])
    assert split.num_rows == whole.num_rows
    assert split.sort_by("date_time").equals(whole)
    # partitions at different offsets: each resumes from its own event number
    src = make("bid", {**opts, "nexmark.split.num": "3"})
    src.seek({"0": 3000, "1": 1000, "2": 4999})
    resumed = drain(src, [333])
    got = event_numbers(resumed)
    expect = [e for e in range(5000) if e % 50 >= 4 and e >= {0: 3000, 1: 1000, 2: 4999}[e % 3]]
    assert sorted(got.tolist()) == expect
    assert src.finished()
    # and those rows are the very rows of the unsplit stream, strings included
    keep = pa.array([e in set(expect) for e in event_numbers(whole).tolist()])
    assert resumed.sort_by("date_time").equals(whole.filter(keep))


def test_subset_of_columns_in_any_order() -> None:
    full = drain(make("bid", {"nexmark.event.num": "500"}), [10**6])
    schema = [Column("price", "bigint"), Column("date_time", "timestamp"),
              Column("auction", "bigint")]  # fmt: skip
    part = drain(make("bid", {"nexmark.event.num": "500"}, schema), [64])
    assert part.equals(full.select(["price", "date_time", "auction"]))
    # a compatible declared type is cast (integer ids, timestamptz time)
    schema = [Column("id", "integer"), Column("date_time", "timestamptz")]
    people = drain(make("Person", {"nexmark.event.num": "500"}, schema), [64])
    assert people.schema == arrow_schema(schema)
    assert people.column("id").to_pylist() == list(range(1000, 1010))


def test_bad_options_and_columns() -> None:
    with pytest.raises(InvalidParameterValue, match="no column 'nope'"):
        make("bid", schema=[Column("nope", "bigint")])
    with pytest.raises(InvalidParameterValue, match="no column 'id'"):
        make("bid", schema=[Column("id", "bigint")])
    with pytest.raises(InvalidParameterValue, match="must be one of"):
        make("Trade", schema=schema_of("bid"))
    with pytest.raises(InvalidParameterValue, match="required"):
        NexmarkSource(ConnectorContext("nx", "", Path(".")), schema_of("bid"), {}, None)
    with pytest.raises(InvalidParameterValue, match="unknown option"):
        make("bid", {"nexmark.bogus": "1"})
    with pytest.raises(InvalidParameterValue, match="integer"):
        make("bid", {"nexmark.event.num": "many"})
    with pytest.raises(InvalidParameterValue, match="cannot be"):
        make("bid", schema=[Column("price", "boolean"), Column("channel", "bigint")])


def test_freeze_and_pacing() -> None:
    src = make("bid")
    with pytest.raises(InvalidParameterValue, match="needs an end"):
        src.freeze()
    src = make("bid", {"nexmark.event.num": "300"})
    src.freeze()
    assert drain(src, [1000]).num_rows == 6 * 46 and src.finished()
    # paced: 1000 events/s yields about that many events' bids over ~0.2 s
    src = make("bid", {"nexmark.event.rate": "1000"})
    got, deadline = 0, time.monotonic() + 0.2
    while time.monotonic() < deadline:
        batch = src.poll(10**6)
        got += batch.data.num_rows if batch else 0
        time.sleep(0.01)
    assert 100 <= got <= 300
    src.freeze()
    drain(src, [10**6])
    assert src.finished()


def test_wide_configuration() -> None:
    opts = {"nexmark.event.num": "10000", "nexmark.num.categories": "3",
            "nexmark.first.category.id": "1", "nexmark.seed": "7"}  # fmt: skip
    auctions = drain(make("auction", opts), [10**6])
    assert set(auctions.column("category").to_pylist()) == {1, 2, 3}
    other = drain(make("auction", {**opts, "nexmark.seed": "8"}), [10**6])
    assert not auctions.column("item_name").equals(other.column("item_name"))


def test_end_to_end_through_the_engine(catalog_dsn, tmp_data_dir) -> None:
    """CREATE SOURCE ... connector = 'nexmark' feeds a materialized view (q0-like count)."""
    from sqlstream.config import Settings
    from sqlstream.engine.engine import Engine
    from sqlstream.engine.loop import JobOptions, run_engine

    engine = Engine(Settings(data_dir=tmp_data_dir, checkpoint_interval=0.0), catalog_dsn)
    try:
        engine.execute_script(
            "CREATE SOURCE bid (date_time TIMESTAMP, auction BIGINT, price BIGINT) WITH ("
            "connector = 'nexmark', nexmark.table.type = 'Bid', nexmark.event.num = '5000');"
            "CREATE MATERIALIZED VIEW per_auction AS "
            "SELECT auction, count(*) AS n FROM bid GROUP BY auction;"
        )
        run_engine(engine, JobOptions(once=True))
        rows = engine.query("SELECT auction, n FROM per_auction").to_pylist()
        assert sum(r["n"] for r in rows) == 4600
        assert min(r["auction"] for r in rows) >= 1000
    finally:
        engine.close()


def test_pruned_columns_are_null_and_the_rest_unchanged() -> None:
    full = make("Bid", {"nexmark.event.num": "5000"})
    pruned = make("Bid", {"nexmark.event.num": "5000"})
    pruned.use_columns({"price", "date_time"})
    full.seek({})
    pruned.seek({})
    a, b = drain(full, [700]), drain(pruned, [700])
    assert b.schema == a.schema and b.num_rows == a.num_rows
    for name in a.column_names:
        if name in ("price", "date_time"):
            assert b.column(name).equals(a.column(name)), name
        else:
            assert b.column(name).null_count == b.num_rows, name
