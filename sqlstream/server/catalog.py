"""The engine's objects as the wire server presents them to tools.

Objects are read from the catalog database (``sqlstream.objects``, DESIGN §6), which is the
durable truth the engine itself recovers from, so introspection never needs the engine
thread. Each relation gets a stable OID (a hash of its name) so that psql's ``\\d name`` can
refer back to it, a Postgres ``relkind`` and display type names.

>>> obj = CatalogObject("bids", "source", "CREATE SOURCE bids (a INT) WITH (connector = 'datagen')",
...                     {"connector": "datagen"}, [Column("a", "integer")])
>>> obj.relkind, 16384 <= obj.oid < 2**31
('f', True)
>>> display_type("varchar"), display_type("timestamp[]")
('character varying', 'timestamp without time zone[]')
>>> redact_sql("WITH (connector = 'kafka', properties.sasl.password = 'hunter2')")
"WITH (connector = 'kafka', properties.sasl.password = '***')"
"""

from __future__ import annotations

import datetime as dt
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import psycopg

from sqlstream.types import Column, schema_from_json

#: relkind of each object kind in pg_class: a source stores nothing here (its data lives
#: outside), which is what Postgres calls a foreign table; sinks are not relations.
RELKINDS = {"table": "r", "materialized view": "m", "source": "f", "view": "v"}
RELKIND_WORDS = {
    "r": "table", "v": "view", "m": "materialized view", "i": "index", "S": "sequence",
    "t": "TOAST table", "f": "foreign table", "p": "partitioned table", "I": "partitioned index",
}

_DISPLAY = {
    "varchar": "character varying",
    "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone",
    "time": "time without time zone",
}

_SECRET_KEY = re.compile(r"(password|passwd|secret|token|credential|private|api[._-]?key|access[._-]?key|sasl\.jaas)", re.I)
_OPTION = re.compile(r"""(?P<key>[A-Za-z_][\w.\-]*|'[^']*'|"[^"]*")(?P<eq>\s*=\s*)'(?P<value>(?:[^']|'')*)'""")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)(\S+)", re.I)


def display_type(type_: str) -> str:
    """``format_type`` of a canonical type, as psql shows it."""
    if type_.endswith("[]"):
        return display_type(type_[:-2]) + "[]"
    return _DISPLAY.get(type_, type_)


def redact_value(key: str, value: str) -> str:
    """A connector option's value, fit to be shown: secrets hidden, passwords in DSNs too."""
    if _SECRET_KEY.search(key.strip("'\"")):
        return "***"
    value = _URL_PASSWORD.sub(r"\1***\3", value)
    return _KV_PASSWORD.sub(r"\1***", value)


def redact_sql(sql: str) -> str:
    """A definition with the values of secret options (``key = 'value'``) replaced by ***."""

    def repl(m: re.Match[str]) -> str:
        shown = redact_value(m.group("key"), m.group("value").replace("''", "'"))
        return f"{m.group('key')}{m.group('eq')}'{shown.replace(chr(39), chr(39) * 2)}'"

    return _OPTION.sub(repl, sql)


def stable_oid(name: str) -> int:
    """An OID for a relation that stays the same across restarts (user OIDs start at 16384)."""
    return 16384 + zlib.crc32(name.encode()) % (2**31 - 16384)


@dataclass
class CatalogObject:
    name: str
    kind: str  # 'source' | 'table' | 'materialized view' | 'sink' | 'view'
    sql: str
    options: dict[str, Any] = field(default_factory=dict)
    columns: list[Column] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    created_at: dt.datetime | None = None

    @property
    def oid(self) -> int:
        return stable_oid(self.name)

    @property
    def relkind(self) -> str | None:
        return RELKINDS.get(self.kind)

    @property
    def connector(self) -> str:
        return str(self.options.get("connector", ""))

    def shown_options(self) -> list[tuple[str, str]]:
        return [(k, redact_value(k, str(v))) for k, v in sorted(self.options.items())]


def read_objects(conn: psycopg.Connection) -> list[CatalogObject]:
    """Every object in the catalog, oldest first (empty when the catalog is not set up yet)."""
    try:
        rows = conn.execute(
            "SELECT name, kind, sql, options, schema, depends_on, created_at "
            "FROM sqlstream.objects ORDER BY created_at, name"
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        return []
    return [
        CatalogObject(n, k, s, dict(o or {}), schema_from_json(sc or []), list(d or []), c)
        for n, k, s, o, sc, d, c in rows
    ]
