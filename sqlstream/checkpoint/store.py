"""The catalog database: object definitions, checkpoints, offsets, watermarks.

One :class:`CatalogStore` per running engine. It applies the migrations, then holds a
session-level advisory lock for its whole life, so two engines never run the same catalog
(their checkpoints would interleave).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from sqlstream.checkpoint.migrations import migrate
from sqlstream.errors import CatalogError
from sqlstream.types import Schema, schema_from_json, schema_to_json

# Arbitrary but fixed: identifies "the sqlstream engine" among advisory locks.
_ENGINE_LOCK = 0x5351_5354

_EPOCH = datetime(1970, 1, 1)


def us_to_timestamp(us: int) -> datetime | str:
    from sqlstream.engine.reader import WATERMARK_END

    if us == WATERMARK_END:
        return "infinity"
    return _EPOCH + timedelta(microseconds=us)


@dataclass
class ObjectRow:
    name: str
    kind: str
    sql: str
    options: dict[str, str]
    schema: Schema
    fingerprint: str
    depends_on: list[str] = field(default_factory=list)


def connect(dsn: str) -> psycopg.Connection:
    """A catalog connection. JIT is off: the engine's statements are many and short, and a
    misestimated one (a join against a fresh temp table) would otherwise spend ~0.5 s
    compiling."""
    return psycopg.connect(dsn, autocommit=True, options="-c jit=off")


class CatalogStore:
    def __init__(self, dsn: str, *, lock: bool = True) -> None:
        self.dsn = dsn
        try:
            self.conn = connect(dsn)
        except psycopg.OperationalError as e:
            raise CatalogError(f"cannot connect to the catalog database: {_first_line(e)}") from e
        migrate(self.conn)
        if lock:
            got = self.conn.execute("SELECT pg_try_advisory_lock(%s)", [_ENGINE_LOCK]).fetchone()[0]
            if not got:
                self.conn.close()
                raise CatalogError(
                    "another sqlstream engine is running against this catalog database"
                )

    def close(self) -> None:
        self.conn.close()

    # -- objects --------------------------------------------------------------------------

    def objects(self) -> list[ObjectRow]:
        rows = self.conn.execute(
            "SELECT name, kind, sql, options, schema, fingerprint, depends_on "
            "FROM sqlstream.objects ORDER BY created_at, name"
        ).fetchall()
        return [
            ObjectRow(n, k, s, dict(o), schema_from_json(sc), f, list(d))
            for n, k, s, o, sc, f, d in rows
        ]

    def insert_object(self, obj: ObjectRow, cur: psycopg.Cursor) -> None:
        cur.execute(
            "INSERT INTO sqlstream.objects (name, kind, sql, options, schema, fingerprint, "
            "depends_on) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [
                obj.name,
                obj.kind,
                obj.sql,
                Jsonb(obj.options),
                Jsonb(schema_to_json(obj.schema)),
                obj.fingerprint,
                obj.depends_on,
            ],
        )

    def register_state(
        self, cur: psycopg.Cursor, operator: str, obj: str, kind: str, columns: Any, fp: str
    ) -> None:
        cur.execute(
            "INSERT INTO sqlstream.operator_state (operator, object, kind, state_table, schema, "
            "fingerprint) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (operator) DO UPDATE SET "
            "schema = EXCLUDED.schema, fingerprint = EXCLUDED.fingerprint",
            [operator, obj, kind, f"sqlstream_state.{operator}", Jsonb(columns), fp],
        )

    def state_fingerprints(self, obj: str) -> dict[str, str]:
        """Plan fingerprint each state table of ``obj`` was written under."""
        return dict(
            self.conn.execute(
                "SELECT operator, fingerprint FROM sqlstream.operator_state WHERE object = %s",
                [obj],
            ).fetchall()
        )

    def reset_state(self, cur: psycopg.Cursor, obj: str) -> None:
        """Drop an object's state tables (which another plan may have laid out differently),
        offsets and watermarks: the caller creates the new plan's tables, and the object
        starts from its sources anew."""
        for (op,) in cur.execute(
            "SELECT operator FROM sqlstream.operator_state WHERE object = %s", [obj]
        ).fetchall():
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("sqlstream_state", op)))
        cur.execute("DELETE FROM sqlstream.operator_state WHERE object = %s", [obj])
        cur.execute("DELETE FROM sqlstream.source_offsets WHERE object = %s", [obj])
        cur.execute("DELETE FROM sqlstream.watermarks WHERE object = %s", [obj])

    def delete_object(self, cur: psycopg.Cursor, name: str) -> None:
        """Remove an object with its state tables, offsets and watermarks."""
        tables = cur.execute(
            "SELECT operator FROM sqlstream.operator_state WHERE object = %s", [name]
        ).fetchall()
        for (op,) in tables:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("sqlstream_state", op)))
        cur.execute("DELETE FROM sqlstream.operator_state WHERE object = %s", [name])
        cur.execute("DELETE FROM sqlstream.source_offsets WHERE object = %s", [name])
        cur.execute("DELETE FROM sqlstream.watermarks WHERE object = %s", [name])
        cur.execute("DELETE FROM sqlstream.objects WHERE name = %s", [name])

    # -- checkpoints ----------------------------------------------------------------------

    def last_epoch(self) -> int | None:
        return self.conn.execute("SELECT max(epoch) FROM sqlstream.checkpoints").fetchone()[0]

    def offsets(self, obj: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for source, partition, offset in self.conn.execute(
            'SELECT source, partition, "offset" FROM sqlstream.source_offsets WHERE object = %s',
            [obj],
        ):
            out.setdefault(source, {})[partition] = offset
        return out

    def watermarks(self, obj: str) -> dict[str, int]:
        from sqlstream.engine.reader import WATERMARK_END

        # Read as microseconds: 'infinity' (a finished source) has no Python datetime.
        return {
            source: WATERMARK_END if us is None else int(us)
            for source, us in self.conn.execute(
                "SELECT source, CASE WHEN isfinite(watermark) THEN "
                "(extract(epoch FROM watermark) * 1000000)::bigint END "
                "FROM sqlstream.watermarks WHERE object = %s",
                [obj],
            )
        }

    @staticmethod
    def write_offsets(
        cur: psycopg.Cursor, obj: str, source: str, offsets: dict[str, Any], epoch: int
    ) -> None:
        if not offsets:
            return
        cur.executemany(
            'INSERT INTO sqlstream.source_offsets (object, source, partition, "offset", epoch) '
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (object, source, partition) DO UPDATE "
            'SET "offset" = EXCLUDED."offset", epoch = EXCLUDED.epoch',
            [(obj, source, p, Jsonb(o), epoch) for p, o in offsets.items()],
        )

    @staticmethod
    def write_watermark(cur: psycopg.Cursor, obj: str, source: str, us: int, epoch: int) -> None:
        cur.execute(
            "INSERT INTO sqlstream.watermarks (object, source, watermark, epoch) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (object, source) DO UPDATE "
            "SET watermark = EXCLUDED.watermark, epoch = EXCLUDED.epoch",
            [obj, source, us_to_timestamp(us), epoch],
        )


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
