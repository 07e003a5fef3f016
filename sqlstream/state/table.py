"""Operator state: a DuckDB table, the keys changed since the last checkpoint, and its
Postgres mirror in schema ``sqlstream_state``.

The DuckDB table is the working copy the operator queries and updates with set-based SQL.
Every update also records the touched keys in a "dirty" table, so a checkpoint writes only
the rows that changed (upserts for keys still present, deletes for keys gone): its cost
follows the change, not the state size (DESIGN §6). A third table holds the keys Postgres
has, so a key that came and went between two checkpoints (a bid that never made an
auction's top 10, a window opened and closed within the interval) costs Postgres nothing,
and a new key goes in without a conflict check. Each Postgres row carries ``vnode``, the
md5 of the key's text form modulo 256, so state can later be split among workers.

>>> import duckdb
>>> con = duckdb.connect()
>>> st = StateTable(con, "op1", keys=[("k", "INTEGER")], values=[("n", "BIGINT")])
>>> st.create()
>>> _ = con.execute(f"INSERT INTO {st.table} VALUES (1, 10), (NULL, 5)")
>>> _ = con.execute(f"INSERT INTO {st.dirty} VALUES (1), (NULL), (2)")
>>> d = st.delta()
>>> sorted(d.new.column("n").to_pylist()), d.changed.num_rows, d.gone.column("k").to_pylist()
([5, 10], 0, [])
>>> _ = con.execute(f"UPDATE {st.table} SET n = 11 WHERE k = 1")
>>> _ = con.execute(f"INSERT INTO {st.dirty} VALUES (1), (NULL)")
>>> _ = con.execute(f"DELETE FROM {st.table} WHERE k IS NULL")
>>> d = st.delta()
>>> d.new.num_rows, d.changed.column("n").to_pylist(), d.gone.column("k").to_pylist()
(0, [11], [None])
"""

from __future__ import annotations

from typing import NamedTuple

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from sqlstream.formats.pgcopy import copy_in, copy_out
from sqlstream.types import from_duckdb

PG_SCHEMA = "sqlstream_state"


def qi(name: str) -> str:
    """A DuckDB-quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def not_distinct(left: str, right: str, cols: list[str]) -> str:
    """Join condition matching rows whose columns are equal or both NULL (GROUP BY semantics)."""
    if not cols:
        return "TRUE"
    return " AND ".join(f"{left}.{qi(c)} IS NOT DISTINCT FROM {right}.{qi(c)}" for c in cols)


class Delta(NamedTuple):
    """A state table's changes since the last checkpoint, each row with its vnode."""

    new: pa.Table  # rows of keys Postgres does not have
    changed: pa.Table  # rows of keys it has
    gone: pa.Table  # keys it has that are no longer in the state


class StateTable:
    """One keyed state table of an operator (see the module docstring)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        operator_id: str,
        keys: list[tuple[str, str]],
        values: list[tuple[str, str]],
    ) -> None:
        self.con = con
        self.operator_id = operator_id
        self.keys = keys
        self.values = values
        self.table = qi(f"state_{operator_id}")
        self.dirty = qi(f"dirty_{operator_id}")
        #: the keys the Postgres mirror holds (as of the last checkpoint)
        self.persisted = qi(f"pg_{operator_id}")

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
        key_cols = ", ".join(f"{qi(n)} {t}" for n, t in self.keys) or "__none BOOLEAN"
        self.con.execute(f"CREATE OR REPLACE TABLE {self.dirty} ({key_cols})")
        self.con.execute(f"CREATE OR REPLACE TABLE {self.persisted} ({key_cols})")

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
        # md5_number_upper holds the low-order bytes of md5_number, so this is the same
        # vnode as ``md5_number(...) % 256``, without a 128-bit division per row (3x faster).
        return f"(md5_number_upper(concat_ws('|', {parts})) % 256)::SMALLINT"

    def delta(self) -> Delta:
        """The changes since the last checkpoint; clears the dirty set and records the new
        keys as being in Postgres (a failed checkpoint is recovered from the previous one,
        which discards this state altogether)."""
        keys, con, kept = self.key_names, self.con, self.persisted
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE __dirty AS SELECT DISTINCT {self._key_select()} "
            f"FROM {self.dirty}"
        )
        con.execute(f"DELETE FROM {self.dirty}")
        if not keys:  # the one row of a global aggregate: always an upsert
            row = con.sql(f"SELECT {self._vnode('s')} AS vnode, s.* FROM {self.table} s")
            changed = row.to_arrow_table()
            return Delta(changed.slice(0, 0), changed, pa.table({"vnode": pa.array([], pa.int16())}))
        upserts = con.sql(
            f"SELECT {self._vnode('s')} AS vnode, s.*, g.__known IS NOT NULL AS __known "
            f"FROM {self.table} s SEMI JOIN __dirty d ON {not_distinct('s', 'd', keys)} "
            f"LEFT JOIN (SELECT *, TRUE AS __known FROM {kept}) g "
            f"ON {not_distinct('s', 'g', keys)}"
        ).to_arrow_table()
        known = upserts.column("__known")
        upserts = upserts.drop_columns(["__known"])
        new, changed = upserts.filter(pc.invert(known)), upserts.filter(known)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE __gone AS SELECT d.* FROM __dirty d "
            f"ANTI JOIN {self.table} s ON {not_distinct('s', 'd', keys)} "
            f"SEMI JOIN {kept} g ON {not_distinct('g', 'd', keys)}"
        )
        gone = con.sql(f"SELECT {self._vnode('d')} AS vnode, d.* FROM __gone d").to_arrow_table()
        con.execute(f"DELETE FROM {kept} USING __gone d WHERE {not_distinct(kept, 'd', keys)}")
        con.register("__fresh", new.select(keys))
        try:
            con.execute(f"INSERT INTO {kept} SELECT * FROM __fresh")
        finally:
            con.unregister("__fresh")
        return Delta(new, changed, gone)

    # -- Postgres mirror ------------------------------------------------------------------

    def pg_columns(self) -> list[tuple[str, str]]:
        """(name, Postgres type) of the mirror table, vnode first."""
        return [("vnode", "smallint")] + [(n, _pg_type(t)) for n, t in self.columns]

    def pg_create(self, cur: psycopg.Cursor) -> None:
        cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in self.pg_columns()
        )
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(self.pg_table, cols))
        key = sql.SQL(", ").join(sql.Identifier(n) for n in ["vnode", *self.key_names])
        cur.execute(
            sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({}) NULLS NOT DISTINCT").format(
                sql.Identifier(f"{self.operator_id}_key"), self.pg_table, key
            )
        )

    def pg_write_delta(self, cur: psycopg.Cursor) -> tuple[int, int]:
        """Write the changes since the last checkpoint inside the checkpoint transaction."""
        if not self.con.sql(f"SELECT count(*) FROM {self.dirty}").fetchall()[0][0]:
            return 0, 0
        new, upserts, deletes = self.delta()
        pg_types = dict(self.pg_columns())
        names = list(pg_types)
        key = ["vnode", *self.key_names]
        if deletes.num_rows:
            tmp = sql.Identifier(f"_del_{self.operator_id}")
            cur.execute(
                sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(tmp, self.pg_table)
            )
            cols = sql.SQL(", ").join(sql.Identifier(n) for n in deletes.column_names)
            copy_in(
                cur,
                sql.SQL("{} ({})").format(tmp, cols),
                deletes,
                [pg_types[n] for n in deletes.column_names],
            )
            # Postgres cannot hash-join on IS NOT DISTINCT FROM, so match keys with "=" (which
            # the unique index serves), and only the rare keys holding a NULL the slow way,
            # narrowed by vnode.
            eq = sql.SQL(" AND ").join(
                sql.SQL("t.{0} = d.{0}").format(sql.Identifier(k)) for k in key
            )
            cur.execute(sql.SQL("DELETE FROM {} t USING {} d WHERE {}").format(self.pg_table, tmp, eq))
            if self.keys:
                has_null = sql.SQL(" OR ").join(
                    sql.SQL("d.{} IS NULL").format(sql.Identifier(k)) for k in self.key_names
                )
                same = sql.SQL(" AND ").join(
                    sql.SQL("t.{0} IS NOT DISTINCT FROM d.{0}").format(sql.Identifier(k))
                    for k in self.key_names
                )
                cur.execute(
                    sql.SQL(
                        "DELETE FROM {} t USING {} d WHERE t.vnode = d.vnode AND ({}) AND {}"
                    ).format(self.pg_table, tmp, has_null, same)
                )
        if new.num_rows:
            # keys Postgres does not have: straight in, no staging table, no conflict check
            copy_in(cur, self.pg_table, new, [pg_types[n] for n in new.column_names])
        if upserts.num_rows:
            tmp = sql.Identifier(f"_up_{self.operator_id}")
            cur.execute(
                sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(tmp, self.pg_table)
            )
            copy_in(cur, tmp, upserts, [pg_types[n] for n in upserts.column_names])
            cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
            updates = [n for n in names if n not in key]
            on_conflict = (
                sql.SQL("DO UPDATE SET ")
                + sql.SQL(", ").join(
                    sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in updates
                )
                if updates
                else sql.SQL("DO NOTHING")
            )
            cur.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
                    self.pg_table,
                    cols,
                    cols,
                    tmp,
                    sql.SQL(", ").join(sql.Identifier(k) for k in key),
                    on_conflict,
                )
            )
        return new.num_rows + upserts.num_rows, deletes.num_rows

    def pg_load(self, conn: psycopg.Connection) -> int:
        """Replace the DuckDB table with the checkpointed rows (recovery)."""
        self.create()
        schema = self.con.sql(f"SELECT * FROM {self.table}").to_arrow_table().schema
        cols = sql.SQL(", ").join(sql.Identifier(n) for n, _ in self.columns)
        rows = copy_out(conn, sql.SQL("SELECT {} FROM {}").format(cols, self.pg_table), schema)
        if rows.num_rows:
            self.con.register("__load", rows)
            self.con.execute(f"INSERT INTO {self.table} SELECT * FROM __load")
            self.con.unregister("__load")
            if self.keys:
                self.con.execute(
                    f"INSERT INTO {self.persisted} SELECT {self._key_select()} FROM {self.table}"
                )
        return rows.num_rows


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
