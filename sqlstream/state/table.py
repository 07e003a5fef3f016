"""Operator state: a DuckDB table, the keys changed since the last checkpoint, and its
Postgres mirror in schema ``sqlstream_state``.

The DuckDB table is the working copy the operator queries and updates with set-based SQL.
Every update also records the touched keys in a "dirty" table, so a checkpoint writes only
the keys that changed: its cost follows the change, not the state size (DESIGN §6).

In Postgres each row also carries ``vnode`` (the md5 of the key's text form modulo 256, so
state can later be split among workers) and ``__row``, a row id that only grows. A third
DuckDB table holds each key Postgres has with its row id, so a checkpoint deletes the rows
of changed and gone keys by id and appends the changed keys' current rows under new ids: no
key comparisons in Postgres, and one small index whose inserts all land at its right edge
(for state the watermark drops, only once deletes are few enough to probe it).
A key that came and went between two checkpoints (a bid that never made an auction's top
10, a window opened and closed within the interval) costs Postgres nothing.

>>> import duckdb
>>> con = duckdb.connect()
>>> st = StateTable(con, "op1", keys=[("k", "INTEGER")], values=[("n", "BIGINT")])
>>> st.create()
>>> _ = con.execute(f"INSERT INTO {st.table} VALUES (1, 10), (NULL, 5)")
>>> _ = con.execute(f"INSERT INTO {st.dirty} VALUES (1), (NULL), (2)")
>>> d = st.delta()
>>> sorted(d.rows.column("n").to_pylist()), sorted(d.rows.column("__row").to_pylist())
([5, 10], [0, 1])
>>> d.dropped.num_rows
0
>>> _ = con.execute(f"UPDATE {st.table} SET n = 11 WHERE k = 1")
>>> _ = con.execute(f"INSERT INTO {st.dirty} VALUES (1), (NULL)")
>>> _ = con.execute(f"DELETE FROM {st.table} WHERE k IS NULL")
>>> d = st.delta()
>>> d.rows.column("n").to_pylist(), d.rows.column("__row").to_pylist(), d.dropped.num_rows
([11], [2], 2)
"""

from __future__ import annotations

from typing import NamedTuple

import duckdb
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from sqlstream.formats.pgcopy import copy_in, copy_out
from sqlstream.types import from_duckdb

PG_SCHEMA = "sqlstream_state"
#: the hidden column numbering the rows written to Postgres, in the order they were written
ROW_ID = "__row"
#: the version of the mirror tables' layout; part of every plan fingerprint, so state written
#: in another layout is refused at start-up (or reset) rather than misread
STATE_LAYOUT = 2


def qi(name: str) -> str:
    """A DuckDB-quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def not_distinct(left: str, right: str, cols: list[str]) -> str:
    """Join condition matching rows whose columns are equal or both NULL (GROUP BY semantics)."""
    if not cols:
        return "TRUE"
    return " AND ".join(f"{left}.{qi(c)} IS NOT DISTINCT FROM {right}.{qi(c)}" for c in cols)


class Delta(NamedTuple):
    """What a checkpoint writes for one state table (or append log): rows to append, with
    their vnode and a fresh row id, and the ids of the rows to delete."""

    rows: pa.Table  # the current rows of the changed keys (an append log: the new rows)
    dropped: pa.Table  # the rows Postgres holds for changed and gone keys (their __row)
    held: int = 0  # the rows Postgres holds before this delta


#: How long a checkpoint waits for readers of a state table to truncate it (then: DELETE)
TRUNCATE_WAIT_MS = 20
#: A mirror whose rows all go is truncated from this many rows on (see ``truncates``)
TRUNCATE_MIN_ROWS = 10_000

#: Deleting less than this part of what Postgres holds probes the row-id index row by row;
#: more is one hash join over the table, which then costs less than the probes.
PROBE_FRACTION = 1 / 8


class StateTable:
    """One keyed state table of an operator (see the module docstring)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        operator_id: str,
        keys: list[tuple[str, str]],
        values: list[tuple[str, str]],
        *,
        bounded: bool = False,
    ) -> None:
        self.con = con
        self.operator_id = operator_id
        self.keys = keys
        self.values = values
        #: the watermark drops its rows (windows, time-bounded join sides): it turns over
        self.bounded = bounded
        #: whether the Postgres mirror has its row-id index (for ``bounded`` state: built at
        #: the first probing delete; not known after a restart, so asked for once again)
        self.indexed = not bounded
        self.table = qi(f"state_{operator_id}")
        self.dirty = qi(f"dirty_{operator_id}")
        #: the keys the Postgres mirror holds (as of the last checkpoint) and their row ids
        self.persisted = qi(f"pg_{operator_id}")
        #: the row id the next row written to Postgres gets
        self.next_row = 0
        #: rows in the Postgres mirror (as of the last checkpoint)
        self.pg_rows = 0

    @property
    def key_names(self) -> list[str]:
        return [k for k, _ in self.keys]

    @property
    def columns(self) -> list[tuple[str, str]]:
        return self.keys + self.values

    @property
    def pg_table(self) -> sql.Identifier:
        return sql.Identifier(PG_SCHEMA, self.operator_id)

    def create(self) -> None:
        cols = ", ".join(f"{qi(n)} {t}" for n, t in self.columns)
        self.con.execute(f"CREATE OR REPLACE TABLE {self.table} ({cols})")
        key_cols = [f"{qi(n)} {t}" for n, t in self.keys]
        self._clear_dirty()
        self.con.execute(
            f"CREATE OR REPLACE TABLE {self.persisted} "
            f"({', '.join([*key_cols, f'{qi(ROW_ID)} BIGINT'])})"
        )
        self.next_row = self.pg_rows = 0

    def _clear_dirty(self) -> None:
        # A new table, not DELETE FROM: a DuckDB DELETE of a few 100 k rows is 4 ms, but at
        # times 200 ms (in q5's checkpoints, whichever table's turn it is); the replaced
        # table goes with its deletions (q5 +9 %, alternating in one process).
        key_cols = ", ".join(f"{qi(n)} {t}" for n, t in self.keys) or "__none BOOLEAN"
        self.con.execute(f"CREATE OR REPLACE TABLE {self.dirty} ({key_cols})")

    def mark_all_dirty(self) -> None:
        """Mark every current row changed (after a reset the whole state must be written)."""
        self.con.execute(f"INSERT INTO {self.dirty} SELECT {self._key_select()} FROM {self.table}")

    def _key_select(self, alias: str | None = None) -> str:
        if not self.keys:
            return "TRUE"
        prefix = f"{alias}." if alias else ""
        return ", ".join(prefix + qi(k) for k in self.key_names)

    def row_count(self) -> int:
        return self.con.sql(f"SELECT count(*) FROM {self.table}").fetchall()[0][0]

    def delete_where(self, condition: str) -> None:
        """Drop the rows matching ``condition`` (over alias ``s``), e.g. behind the watermark;
        the next checkpoint deletes them in Postgres too."""
        self.con.execute(
            f"INSERT INTO {self.dirty} SELECT {self._key_select('s')} "
            f"FROM {self.table} s WHERE {condition}"
        )
        self.con.execute(f"DELETE FROM {self.table} AS s WHERE {condition}")

    def _vnode(self, alias: str) -> str:
        if not self.keys:
            return "0::SMALLINT"
        parts = ", ".join(f"coalesce({alias}.{qi(k)}::VARCHAR, '\\N')" for k in self.key_names)
        # ``md5_number(...) % 256`` as a mask: the same vnode without a 128-bit division per
        # row. (So was md5_number_upper(...) % 256, but duckdb 2.0.1 takes 4x longer for it
        # than for md5_number: 146 against 36 ms for 120 k keys.)
        return f"(md5_number(concat_ws('|', {parts})) & 255)::SMALLINT"

    def delta(self) -> Delta:
        """The changes since the last checkpoint; clears the dirty set and records the
        written rows as being in Postgres (a failed checkpoint is recovered from the previous
        one, which discards this state altogether)."""
        keys, con, kept = self.key_names, self.con, self.persisted
        if not con.sql(f"SELECT count(*) FROM {self.dirty}").fetchall()[0][0]:
            return Delta(pa.table({}), pa.table({}))
        if keys:
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE __dirty AS SELECT DISTINCT {self._key_select()} "
                f"FROM {self.dirty}"
            )
            dropped = con.sql(
                f"SELECT g.{qi(ROW_ID)} FROM {kept} g SEMI JOIN __dirty d "
                f"ON {not_distinct('g', 'd', keys)} ORDER BY 1"  # probed in index order
            ).to_arrow_table()
            rows = con.sql(
                f"SELECT {self._vnode('s')} AS vnode, s.* FROM {self.table} s "
                f"SEMI JOIN __dirty d ON {not_distinct('s', 'd', keys)}"
            ).to_arrow_table()
        else:  # the one row of a global aggregate: always rewritten
            dropped = con.sql(f"SELECT {qi(ROW_ID)} FROM {kept}").to_arrow_table()
            rows = con.sql(f"SELECT 0::SMALLINT AS vnode, * FROM {self.table}").to_arrow_table()
        self._clear_dirty()
        ids = np.arange(self.next_row, self.next_row + rows.num_rows, dtype=np.int64)
        rows = rows.add_column(1, ROW_ID, pa.array(ids))
        self.next_row += rows.num_rows
        if dropped.num_rows:
            con.register("__dropped", dropped)
            try:
                con.execute(
                    f"DELETE FROM {kept} WHERE {qi(ROW_ID)} IN (SELECT {qi(ROW_ID)} FROM __dropped)"
                )
            finally:
                con.unregister("__dropped")
        if rows.num_rows:
            con.register("__written", rows.select([*keys, ROW_ID]))
            try:
                con.execute(f"INSERT INTO {kept} SELECT * FROM __written")
            finally:
                con.unregister("__written")
        held, self.pg_rows = self.pg_rows, self.pg_rows + rows.num_rows - dropped.num_rows
        return Delta(rows, dropped, held)

    # -- Postgres mirror ------------------------------------------------------------------

    def pg_columns(self) -> list[tuple[str, str]]:
        """(name, Postgres type) of the mirror table: vnode, the row id, the columns."""
        return [("vnode", "smallint"), (ROW_ID, "bigint")] + [
            (n, _pg_type(t)) for n, t in self.columns
        ]

    def pg_create(self, cur: psycopg.Cursor) -> None:
        cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in self.pg_columns()
        )
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(self.pg_table, cols))
        if not self.bounded:
            cur.execute(
                sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({})").format(
                    sql.Identifier(f"{self.operator_id}_row"), self.pg_table, sql.Identifier(ROW_ID)
                )
            )

    def pg_write(self, cur: psycopg.Cursor, delta: Delta) -> tuple[int, int]:
        """Write a ``delta()`` inside the checkpoint transaction: delete the rows of every
        changed or gone key, append the changed keys' rows. (A delete and an insert cost
        Postgres less than half of an ``UPDATE`` of the same rows.) Touches no DuckDB table,
        so it runs in the committer's thread. Returns (rows written, rows deleted).

        Rows are found by their id, which only grows, so the id's index takes each insert at
        its right edge (several times cheaper than an index over the key columns, which the
        checkpoint never needs: DuckDB knows each key's row id).

        The index of ``bounded`` state is built only when a checkpoint first deletes few
        enough rows to probe it, so state that turns over (windows that close) never pays
        for index entries (q5 +10 %, alternating in one process). Other state has it from
        the start: building it at the first probe would hold that checkpoint up by the whole
        table's index (0.35 s more for 1 M keys in the first checkpoint after a restart)."""
        # Asked for once only: CREATE INDEX IF NOT EXISTS locks the table even when the
        # index is there, which would cancel an autovacuum at every checkpoint.
        out = apply_delta(
            cur, self.pg_table, self.operator_id, delta, self.pg_columns(),
            index_on_probe=not self.indexed,
        )  # fmt: skip
        self.indexed |= probes(delta)
        return out

    def pg_load(self, conn: psycopg.Connection) -> int:
        """Replace the DuckDB table with the checkpointed rows (recovery)."""
        self.create()
        names = [ROW_ID, *(n for n, _ in self.columns)]
        schema = self.con.sql(
            f"SELECT NULL::BIGINT AS {qi(ROW_ID)}, * FROM {self.table}"
        ).to_arrow_table().schema
        cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
        rows = copy_out(conn, sql.SQL("SELECT {} FROM {}").format(cols, self.pg_table), schema)
        if rows.num_rows:
            self.con.register("__load", rows)
            try:
                self.con.execute(f"INSERT INTO {self.table} SELECT * EXCLUDE ({qi(ROW_ID)}) FROM __load")
                kept = ", ".join([*(qi(k) for k in self.key_names), qi(ROW_ID)])
                self.con.execute(f"INSERT INTO {self.persisted} SELECT {kept} FROM __load")
            finally:
                self.con.unregister("__load")
            self.next_row = pc.max(rows.column(ROW_ID)).as_py() + 1
        self.pg_rows = rows.num_rows
        return rows.num_rows


def apply_delta(
    cur: psycopg.Cursor,
    table: sql.Identifier,
    name: str,
    delta: Delta,
    pg_columns: list[tuple[str, str]],
    *,
    index_on_probe: bool = False,
) -> tuple[int, int]:
    """Apply a state table's or append log's ``delta`` to its Postgres mirror ``table``:
    delete the dropped row ids (all of them: empty it, see ``_empty``), then COPY the rows
    in. Returns (rows written, rows deleted).

    The delete's join is chosen here because Postgres has no statistics on the fresh table
    of ids and guesses badly. Under ``PROBE_FRACTION`` of what the mirror holds it probes the
    row-id index, in id order: left to itself Postgres hashes the whole table (O(state) per
    checkpoint: 0.6 s for 200 k of 1 M rows, against 0.47 s probing, and less the smaller the
    change). Above it, a hash join: left to itself Postgres sorts both sides on disk under a
    join it estimates at 1000x the rows (0.7 s for 129 k rows, against 0.15 s hashing).
    ``index_on_probe``: the mirror gets its row-id index only when it first needs probes
    (state that only grows, or drops as much as it keeps, never pays for index entries; ids
    only grow, so inserts land at the index's edge once it is there).
    """
    rows, dropped, held = delta
    if truncates(delta):
        _empty(cur, table)
    elif dropped.num_rows:
        probe = probes(delta)
        if probe and index_on_probe:
            cur.execute(
                sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({})").format(
                    sql.Identifier(f"{name}_row"), table, sql.Identifier(ROW_ID)
                )
            )
        ids = sql.Identifier(f"_drop_{name}")
        cur.execute(
            sql.SQL("CREATE TEMP TABLE {} ({} bigint) ON COMMIT DROP").format(
                ids, sql.Identifier(ROW_ID)
            )
        )
        copy_in(cur, ids, dropped, ["bigint"])
        off = ("hashjoin", "mergejoin") if probe else ("mergejoin", "nestloop")
        for plan in off:
            cur.execute(f"SET LOCAL enable_{plan} = off")
        cur.execute(
            sql.SQL("DELETE FROM {} t USING {} d WHERE t.{} = d.{}").format(
                table, ids, sql.Identifier(ROW_ID), sql.Identifier(ROW_ID)
            )
        )
        for plan in off:
            cur.execute(f"RESET enable_{plan}")
    if rows.num_rows:
        copy_in(cur, table, rows, [t for _, t in pg_columns])
    return rows.num_rows, dropped.num_rows


def truncates(delta: Delta) -> bool:
    """Whether ``apply_delta`` empties the mirror at once: every row it holds goes, and
    enough of them that deleting them one by one would cost (below that, the by-id delete
    takes a few ms and no exclusive lock, which a global aggregate rewritten at every
    checkpoint would otherwise take every time)."""
    n = delta.dropped.num_rows
    return n == delta.held and n >= TRUNCATE_MIN_ROWS


def probes(delta: Delta) -> bool:
    """Whether ``apply_delta`` deletes by probing the row-id index."""
    n = delta.dropped.num_rows
    return bool(n) and not truncates(delta) and n < PROBE_FRACTION * delta.held


def _empty(cur: psycopg.Cursor, table: sql.Identifier) -> None:
    """Empty a mirror whose rows all go (its windows closed, a log's rows all expired).

    TRUNCATE: no ids to send, no per-row work, no dead rows (7 ms against 160 ms for
    deleting 129 k rows by id). But it waits for every reader of the table, and someone may
    be reading the checkpoint with SQL, even in a transaction left open: after a short wait
    the rows are deleted instead (42-62 ms), which waits for no reader. (TRUNCATE is also
    not MVCC-safe: a reader whose snapshot predates the commit sees the table empty.)
    """
    try:
        with cur.connection.transaction():  # a savepoint: a lock timeout undoes only this
            cur.execute(f"SET LOCAL lock_timeout = '{TRUNCATE_WAIT_MS}ms'")
            cur.execute(sql.SQL("TRUNCATE {}").format(table))
        cur.execute("RESET lock_timeout")
    except psycopg.errors.LockNotAvailable:
        cur.execute(sql.SQL("DELETE FROM {}").format(table))


def _pg_type(duck_type: str) -> str:
    return from_duckdb(duck_type)


def merge_partial(
    state: StateTable, partial_sql: str, merges: dict[str, str], keep_sql: str
) -> tuple[str, str]:
    """Fold a batch's per-key partial accumulators into ``state``.

    ``partial_sql`` yields the key columns and one column per value; ``merges`` gives, per
    value column, SQL combining the old row ``o`` and the partial ``p``; rows for which
    ``keep_sql`` (over the merged row) is false are removed. Returns the names of two temp
    tables: the affected keys' rows before (``__old``) and after (``__new``) the merge, from
    which operators derive their output changes. All set-based: five statements a batch,
    whatever its size.
    """
    con, keys = state.con, state.key_names
    con.execute(f"CREATE OR REPLACE TEMP TABLE __p AS {partial_sql}")
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE __old AS SELECT s.* FROM {state.table} s "
        f"SEMI JOIN __p p ON {not_distinct('s', 'p', keys)}"
    )
    cols = [f"p.{qi(k)}" for k in keys] + [f"{merges[v]} AS {qi(v)}" for v, _ in state.values]
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE __new AS SELECT * FROM (SELECT {', '.join(cols)} "
        f"FROM __p p LEFT JOIN __old o ON {not_distinct('p', 'o', keys)}) WHERE {keep_sql}"
    )
    con.execute(f"DELETE FROM {state.table} USING __p p WHERE {not_distinct(state.table, 'p', keys)}")
    con.execute(f"INSERT INTO {state.table} SELECT * FROM __new")
    con.execute(f"INSERT INTO {state.dirty} SELECT {state._key_select('p')} FROM __p p")
    return "__old", "__new"
