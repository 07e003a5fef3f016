"""Column types: one Postgres type name per column, mapped to DuckDB and Arrow.

A schema is a list of :class:`Column`; the type is the Postgres spelling (what clients see
and what the catalog stores), from which the DuckDB and Arrow types are derived.

>>> c = Column("price", normalize_type("INT8"))
>>> c.type, duckdb_type(c.type), arrow_type(c.type)
('bigint', 'BIGINT', DataType(int64))
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import sqlglot
from sqlglot import exp

from sqlstream.errors import FeatureNotSupported


@dataclass(frozen=True)
class Column:
    name: str
    type: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type}

    @staticmethod
    def from_json(d: dict[str, str]) -> Column:
        return Column(d["name"], d["type"])


Schema = list[Column]

_CANONICAL: dict[exp.DataType.Type, str] = {
    exp.DataType.Type.BOOLEAN: "boolean",
    exp.DataType.Type.SMALLINT: "smallint",
    exp.DataType.Type.INT: "integer",
    exp.DataType.Type.BIGINT: "bigint",
    exp.DataType.Type.FLOAT: "real",
    exp.DataType.Type.DOUBLE: "double precision",
    exp.DataType.Type.VARCHAR: "varchar",
    exp.DataType.Type.CHAR: "varchar",
    exp.DataType.Type.TEXT: "varchar",
    exp.DataType.Type.DATE: "date",
    exp.DataType.Type.TIME: "time",
    exp.DataType.Type.TIMESTAMP: "timestamp",
    exp.DataType.Type.TIMESTAMPTZ: "timestamptz",
    exp.DataType.Type.INTERVAL: "interval",
    exp.DataType.Type.JSON: "jsonb",
    exp.DataType.Type.JSONB: "jsonb",
    exp.DataType.Type.VARBINARY: "bytea",
    exp.DataType.Type.BINARY: "bytea",
    exp.DataType.Type.UUID: "uuid",
    # DuckDB-only types that appear in results (sum(bigint) is a HUGEINT, for one).
    exp.DataType.Type.TINYINT: "smallint",
    exp.DataType.Type.UTINYINT: "smallint",
    exp.DataType.Type.USMALLINT: "integer",
    exp.DataType.Type.UINT: "bigint",
    exp.DataType.Type.UBIGINT: "numeric(20,0)",
    exp.DataType.Type.INT128: "numeric(38,0)",
    exp.DataType.Type.UINT128: "numeric(38,0)",
    exp.DataType.Type.TIMESTAMP_S: "timestamp",
    exp.DataType.Type.TIMESTAMP_MS: "timestamp",
    exp.DataType.Type.TIMESTAMP_NS: "timestamp",
    exp.DataType.Type.TIMESTAMPNTZ: "timestamp",
}

_DUCKDB = {
    "boolean": "BOOLEAN",
    "smallint": "SMALLINT",
    "integer": "INTEGER",
    "bigint": "BIGINT",
    "real": "FLOAT",
    "double precision": "DOUBLE",
    "varchar": "VARCHAR",
    "date": "DATE",
    "time": "TIME",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "interval": "INTERVAL",
    "jsonb": "JSON",
    "bytea": "BLOB",
    "uuid": "UUID",
}

_ARROW = {
    "boolean": pa.bool_(),
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double precision": pa.float64(),
    "varchar": pa.string(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "interval": pa.month_day_nano_interval(),
    "jsonb": pa.string(),
    "bytea": pa.binary(),
    "uuid": pa.string(),
}

# Postgres type OIDs, for the wire protocol and for DESCRIBE.
PG_OID = {
    "boolean": 16,
    "bytea": 17,
    "bigint": 20,
    "smallint": 21,
    "integer": 23,
    "varchar": 1043,
    "jsonb": 3802,
    "real": 700,
    "double precision": 701,
    "date": 1082,
    "time": 1083,
    "timestamp": 1114,
    "timestamptz": 1184,
    "interval": 1186,
    "numeric": 1700,
    "uuid": 2950,
}


def normalize_type(type_: exp.DataType | str) -> str:
    """The canonical Postgres spelling of a SQL type.

    >>> normalize_type("DECIMAL(10, 2)"), normalize_type("text"), normalize_type("float8")
    ('numeric(10,2)', 'varchar', 'double precision')
    """
    dt = type_ if isinstance(type_, exp.DataType) else exp.DataType.build(type_, dialect="postgres")
    if dt.this == exp.DataType.Type.DECIMAL:
        params = [p.sql() for p in dt.expressions]
        return f"numeric({','.join(params)})" if params else "numeric"
    if dt.this == exp.DataType.Type.ARRAY and dt.expressions:
        return normalize_type(dt.expressions[0]) + "[]"
    name = _CANONICAL.get(dt.this)
    if name is None:
        raise FeatureNotSupported(f"type {dt.sql('postgres')} is not supported")
    return name


def _numeric_params(type_: str) -> tuple[int, int]:
    if "(" not in type_:
        return 38, 9
    inner = type_[type_.index("(") + 1 : type_.rindex(")")].split(",")
    precision = int(inner[0])
    scale = int(inner[1]) if len(inner) > 1 else 0
    return min(precision, 38), scale


def duckdb_type(type_: str) -> str:
    """DuckDB's name for a canonical type."""
    if type_.endswith("[]"):
        return duckdb_type(type_[:-2]) + "[]"
    if type_.startswith("numeric"):
        p, s = _numeric_params(type_)
        return f"DECIMAL({p},{s})"
    return _DUCKDB[type_]


def arrow_type(type_: str) -> pa.DataType:
    """The Arrow type a column of this type travels as."""
    if type_.endswith("[]"):
        return pa.list_(arrow_type(type_[:-2]))
    if type_.startswith("numeric"):
        return pa.decimal128(*_numeric_params(type_))
    return _ARROW[type_]


def arrow_schema(schema: Schema) -> pa.Schema:
    return pa.schema([pa.field(c.name, arrow_type(c.type)) for c in schema])


def pg_oid(type_: str) -> int:
    if type_.endswith("[]"):
        return 2277  # anyarray; element-specific array OIDs are the server's concern
    if type_.startswith("numeric"):
        return PG_OID["numeric"]
    return PG_OID[type_]


def from_duckdb(duck_type: str) -> str:
    """The canonical type of a DuckDB result column (as DuckDB prints its type)."""
    return normalize_type(sqlglot.exp.DataType.build(duck_type, dialect="duckdb"))


def schema_to_json(schema: Schema) -> list[dict[str, str]]:
    return [c.to_json() for c in schema]


def schema_from_json(data: list[dict[str, str]]) -> Schema:
    return [Column.from_json(d) for d in data]
