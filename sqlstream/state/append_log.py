"""Append-only operator state: rows that are only ever added (a view over an append-only
stream), each with a hidden row id.

No keys to merge, so nothing is consolidated: a batch is appended as it is, and a checkpoint
copies the rows added since the previous one to Postgres — a COPY, not an upsert. The row
id is the key; its vnode is the id modulo 256.

A log whose rows expire behind the watermark can hold its batches as Arrow until the next
expiry (``defer``), so that the rows that expire right away are never inserted: read it
through ``relation``, which includes them.

>>> import duckdb, pyarrow as pa
>>> log = AppendLog(duckdb.connect(), "op", [("a", "BIGINT")])
>>> log.create()
>>> log.append(pa.table({"a": [5, 6]}))
>>> log.row_count(), log.pending_rows()
(2, 2)
>>> log.delete_where("s.a < 6"), log.row_count()
(1, 1)
>>> held = AppendLog(duckdb.connect(), "op", [("a", "BIGINT")], defer=True)
>>> held.create()
>>> held.append(pa.table({"a": [5, 6, 7]}))
>>> held.con.sql(f"SELECT count(*) FROM {held.table}").fetchall()  # waiting as Arrow
[(0,)]
>>> held.con.sql(f"SELECT sum(a) FROM {held.relation}").fetchall()
[(18,)]
>>> held.delete_where("s.a < 7"), held.con.sql(f"SELECT a FROM {held.table}").fetchall()
(2, [(7,)])
"""

from __future__ import annotations

import duckdb
import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

from sqlstream.formats.pgcopy import copy_out
from sqlstream.state.table import PG_SCHEMA, ROW_ID, Delta, apply_delta, probes, qi
from sqlstream.types import from_duckdb


class AppendLog:
    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        operator_id: str,
        columns: list[tuple[str, str]],
        *,
        defer: bool = False,
    ) -> None:
        self.con = con
        self.operator_id = operator_id
        self.columns = columns
        self.table = qi(f"state_{operator_id}")
        self.next_row = 0
        #: rows with an id below this are in Postgres already
        self.checkpointed = 0
        #: rows in the table now (kept here: empty logs then cost no statements)
        self.live = 0
        #: rows in the Postgres mirror (as of the last checkpoint)
        self.pg_rows = 0
        #: ids of checkpointed rows deleted since the last checkpoint, held as Arrow rather
        #: than in a DuckDB table: inserting them made DuckDB run its automatic checkpoint
        #: (a vacuum of the whole database) where the same run without checkpoints had none,
        #: 250 ms of Nexmark q9's 1.4 s
        self._gone: list[pa.Array] = []
        #: whether the mirror has its row-id index (built at the first probing delete)
        self.indexed = False
        #: batches appended since the last ``delete_where`` (with their ids), held as Arrow
        #: when ``defer``: a join side expiring behind the watermark (Nexmark q7's bids)
        #: keeps ~130 k of each 920 k-bid batch, and inserting them all only to delete most
        #: again was 114 ms of such a batch's 250
        self.defer = defer
        self._held: pa.Table | None = None
        self._held_name = f"__held_{operator_id}"
        self._schema = pa.schema([])  # the table's, once created

    @property
    def relation(self) -> str:
        """The log's rows to read from in a query: its table, and the rows held as Arrow."""
        if self._held is None:
            return self.table
        return f"(SELECT * FROM {self.table} UNION ALL SELECT * FROM {qi(self._held_name)})"

    @property
    def pg_table(self) -> sql.Identifier:
        return sql.Identifier(PG_SCHEMA, self.operator_id)

    def create(self) -> None:
        cols = ", ".join(f"{qi(n)} {t}" for n, t in [(ROW_ID, "BIGINT"), *self.columns])
        self.con.execute(f"CREATE OR REPLACE TABLE {self.table} ({cols})")
        self.release()
        self._gone = []
        self.next_row = self.checkpointed = self.live = self.pg_rows = 0
        if self.defer:
            # held batches take the table's own Arrow types: batches of one input may differ
            # (a TINYINT column comes as int8 from a batch's Arrow, as int16 from a state
            # table's SMALLINT), which an INSERT casts away and concatenating does not
            self._schema = self.con.sql(f"SELECT * FROM {self.table}").to_arrow_table().schema

    def append(self, rows: pa.Table) -> None:
        ids = pa.array(np.arange(self.next_row, self.next_row + rows.num_rows, dtype=np.int64))
        batch = rows.select([n for n, _ in self.columns]).add_column(0, ROW_ID, ids)
        if self.defer:
            if not batch.schema.equals(self._schema):
                batch = batch.cast(self._schema)
            self._held = batch if self._held is None else pa.concat_tables([self._held, batch])
            self.con.register(self._held_name, self._held)
        else:
            self.con.register("__append", batch)
            try:
                self.con.execute(f"INSERT INTO {self.table} SELECT * FROM __append")
            finally:
                self.con.unregister("__append")
        self.next_row += rows.num_rows
        self.live += rows.num_rows

    def release(self) -> None:
        """Forget the held rows (the log is recreated, reloaded or dropped)."""
        if self._held is not None:
            self.con.unregister(self._held_name)
            self._held = None

    def _flush(self, keep: str = "TRUE") -> int:
        """Insert the held rows for which ``keep`` is true (over alias ``s``); the number
        not inserted."""
        if self._held is None:
            return 0
        (kept,) = self.con.execute(
            f"INSERT INTO {self.table} SELECT * FROM {qi(self._held_name)} AS s WHERE {keep}"
        ).fetchall()[0]
        dropped = self._held.num_rows - kept
        self.release()
        self.live -= dropped
        return dropped

    def append_from(self, relation: str) -> None:
        """Append the rows of a DuckDB relation (a temp table, a subquery) with the log's
        columns, inside DuckDB: no trip through Arrow."""
        self._flush()
        names = ", ".join(qi(n) for n, _ in self.columns)
        (added,) = self.con.execute(
            f"INSERT INTO {self.table} SELECT {self.next_row} + row_number() OVER () - 1, "
            f"{names} FROM {relation}"
        ).fetchall()[0]
        self.next_row += added
        self.live += added

    def take_ids(self, count: int) -> np.ndarray:
        """Row ids for ``count`` rows about to arrive, in arrival order, for rows numbered
        before some of them are dropped (``append_numbered``): ids then have gaps, and still
        order rows by arrival."""
        ids = np.arange(self.next_row, self.next_row + count, dtype=np.int64)
        self.next_row += count
        return ids

    def append_numbered(self, relation: str) -> None:
        """Append the rows of a relation carrying ids from ``take_ids`` in column ``__row``."""
        self._flush()
        names = ", ".join(qi(n) for n, _ in [(ROW_ID, "BIGINT"), *self.columns])
        (added,) = self.con.execute(
            f"INSERT INTO {self.table} SELECT {names} FROM {relation}"
        ).fetchall()[0]
        self.live += added

    def delete_where(self, condition: str) -> int:
        """Drop rows matching ``condition`` (over alias ``s``), e.g. behind the watermark;
        held rows that stay are inserted now."""
        if not self.live:
            return 0
        # held rows are in neither the table nor Postgres (their ids are >= checkpointed);
        # the table goes first, so that its delete does not scan the held rows that stay
        deleted = 0
        if self.live > (0 if self._held is None else self._held.num_rows):
            if self.checkpointed:
                ids = self.con.sql(
                    f"SELECT s.{qi(ROW_ID)} FROM {self.table} s "
                    f"WHERE ({condition}) AND s.{qi(ROW_ID)} < {self.checkpointed}"
                ).to_arrow_table()
                if ids.num_rows:
                    self._gone.extend(ids.column(0).chunks)
            (deleted,) = self.con.execute(
                f"DELETE FROM {self.table} AS s WHERE {condition}"
            ).fetchall()[0]
            self.live -= deleted
        return deleted + self._flush(f"({condition}) IS NOT TRUE")

    def row_count(self) -> int:
        return self.live

    def pending_rows(self) -> int:
        return self.next_row - self.checkpointed

    def pg_columns(self) -> list[tuple[str, str]]:
        return [("vnode", "smallint"), (ROW_ID, "bigint")] + [
            (n, from_duckdb(t)) for n, t in self.columns
        ]

    def pg_create(self, cur: psycopg.Cursor) -> None:
        cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in self.pg_columns()
        )
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(self.pg_table, cols))

    def delta(self) -> Delta:
        """The rows added since the last checkpoint (with their vnode) and the ids of the
        checkpointed rows deleted since; from now on they count as checkpointed."""
        self._flush()
        gone = pa.table({})
        if self._gone:
            ids = np.sort(pa.chunked_array(self._gone).to_numpy())  # probed in id order
            gone = pa.table({ROW_ID: pa.array(ids)})
            self._gone = []
        rows = pa.table({})
        if self.next_row > self.checkpointed:
            rows = self.con.sql(
                # The row id is the key; ids are dense (or evenly thinned, ``take_ids``), so
                # the id itself spreads rows over the 256 key groups (and costs nothing,
                # unlike hashing every row).
                f"SELECT ({qi(ROW_ID)} % 256)::SMALLINT AS vnode, * "
                f"FROM {self.table} WHERE {qi(ROW_ID)} >= {self.checkpointed}"
            ).to_arrow_table()
            self.checkpointed = self.next_row
        held, self.pg_rows = self.pg_rows, self.pg_rows + rows.num_rows - gone.num_rows
        return Delta(rows, gone, held)

    def pg_write(self, cur: psycopg.Cursor, delta: Delta) -> tuple[int, int]:
        """Write a ``delta()`` inside the checkpoint transaction (no DuckDB: it runs in the
        committer's thread). Returns (rows written, rows deleted)."""
        out = apply_delta(
            cur, self.pg_table, self.operator_id, delta, self.pg_columns(),
            index_on_probe=not self.indexed,
        )  # fmt: skip
        self.indexed |= probes(delta)  # once only, as StateTable.pg_write
        return out

    def pg_load(self, conn: psycopg.Connection) -> int:
        self.create()
        schema = self.con.sql(f"SELECT * FROM {self.table}").to_arrow_table().schema
        cols = sql.SQL(", ").join(sql.Identifier(n) for n in schema.names)
        rows = copy_out(conn, sql.SQL("SELECT {} FROM {}").format(cols, self.pg_table), schema)
        if rows.num_rows:
            self.con.register("__load", rows)
            self.con.execute(f"INSERT INTO {self.table} SELECT * FROM __load")
            self.con.unregister("__load")
            top = self.con.sql(f"SELECT max({qi(ROW_ID)}) FROM {self.table}").fetchall()[0][0]
            self.next_row = self.checkpointed = top + 1
            self.live = self.pg_rows = rows.num_rows
        return rows.num_rows
