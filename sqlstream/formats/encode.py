"""Arrow → bytes encoders for sinks: Parquet, CSV and JSON lines.

Values are written the way Postgres prints them in text format (DESIGN §2), so a file written
by a sink reads the same as ``psql`` output and loads back with ``COPY ... (FORMAT csv)``:

============  ============================  ===============================================
type          CSV (and ``pg_text``)          JSON lines
============  ============================  ===============================================
boolean       ``t`` / ``f``                 ``true`` / ``false``
integers      ``42``                        ``42``
real, double  ``0.1``, ``NaN``, ``Infinity``  ``0.1``; ``"NaN"``, ``"Infinity"`` (strings)
numeric       ``1.50`` (as stored)          ``1.5`` (a JSON number)
timestamp     ``2024-01-01 00:00:00.5``     ``"2024-01-01 00:00:00.5"``
timestamptz   ``2024-01-01 00:00:00+00``    ``"2024-01-01 00:00:00+00"`` (always UTC)
date, time    ``2024-01-01``, ``12:00:00``  the same, as strings
interval      ``1 day 02:00:00``            ``"1 day 02:00:00"``
bytea         ``\\x00ff`` (hex)             ``"\\\\x00ff"``
jsonb         the JSON text                 embedded as JSON (when the schema is given)
arrays        ``{1,2,NULL}``                ``[1,2,null]``
NULL          empty, unquoted               ``null``
============  ============================  ===============================================

CSV has a header line (column names) unless ``header=False``; strings are always quoted, so an
empty string (``""``) and NULL (nothing) stay distinct — Postgres' own CSV convention.

Parquet keeps Arrow's types, except intervals, which Parquet cannot hold at microsecond
precision: they are written as their text (``1 day 02:00:00``).

The conversions run as one DuckDB projection over the Arrow data (no per-row Python).

>>> import pyarrow as pa
>>> t = pa.table({"id": [1, 2], "ok": [True, None], "name": ["a", ""]})
>>> encode_csv(t).decode()
'"id","ok","name"\\n1,"t","a"\\n2,,""\\n'
>>> encode_json_lines(t).decode()
'{"id":1,"ok":true,"name":"a"}\\n{"id":2,"ok":null,"name":""}\\n'
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sqlstream.errors import InvalidParameterValue
from sqlstream.types import Schema

#: encodings a file-like sink can write, and the file extension of each
EXTENSIONS = {"parquet": "parquet", "csv": "csv", "json": "jsonl"}

# One in-memory DuckDB for all encoders; each call takes its own cursor (a DuckDB connection
# is not safe to share between threads, its cursors are).
_db = duckdb.connect()
_db_lock = threading.Lock()


def _quote(name: str) -> str:
    """A DuckDB identifier; column names are user input."""
    return '"' + name.replace('"', '""') + '"'


def _run(table: pa.Table, select_list: list[str]) -> pa.Table:
    """``SELECT <select_list> FROM table`` on DuckDB, with timestamps printed in UTC."""
    with _db_lock:
        con = _db.cursor()
    try:
        # TimeZone is per connection; without it timestamptz would print in the machine's zone.
        con.execute("SET TimeZone = 'UTC'")
        con.register("_t", table)
        return con.sql(f"SELECT {', '.join(select_list)} FROM _t").to_arrow_table()
    finally:
        con.close()


def _float_text(e: str) -> str:
    # DuckDB prints 'nan'/'inf'; Postgres prints and prefers 'NaN'/'Infinity'.
    return (
        f"CASE WHEN isnan({e}) THEN 'NaN' WHEN isinf({e}) AND {e} > 0 THEN 'Infinity' "
        f"WHEN isinf({e}) THEN '-Infinity' ELSE {e}::VARCHAR END"
    )


def _text_expr(e: str, t: pa.DataType, *, in_array: bool = False) -> str:
    """A DuckDB expression printing ``e`` (of Arrow type ``t``) as Postgres text."""
    if pa.types.is_boolean(t):
        return f"CASE WHEN {e} THEN 't' WHEN NOT {e} THEN 'f' END"
    if pa.types.is_floating(t):
        return _float_text(e)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return f"'\\x' || lower(hex({e}))"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = _text_expr("x", t.value_type, in_array=True)
        if not _is_list(t.value_type):
            # Array elements are double-quoted with \ escapes; NULL stays bare.
            inner = (
                f"""CASE WHEN x IS NULL THEN 'NULL' ELSE '"' || """
                f"""replace(replace({inner}, '\\', '\\\\'), '"', '\\"') || '"' END"""
            )
        return f"'{{' || array_to_string(list_transform({e}, lambda x: {inner}), ',') || '}}'"
    if pa.types.is_struct(t) or pa.types.is_map(t):
        return f"to_json({e})::VARCHAR"
    if pa.types.is_null(t):
        return "NULL::VARCHAR"
    if (pa.types.is_string(t) or pa.types.is_large_string(t)) and not in_array:
        return e
    return f"{e}::VARCHAR"


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _csv_native(t: pa.DataType) -> bool:
    """Types whose Arrow CSV rendering already is Postgres text (kept, not re-printed)."""
    return (
        pa.types.is_integer(t)
        or pa.types.is_decimal(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_date32(t)
    )


def pg_text(table: pa.Table) -> pa.Table:
    """Every column as Postgres text (``pa.string()``), NULLs kept.

    >>> import pyarrow as pa, datetime as dt
    >>> pg_text(pa.table({"b": [True], "ts": [dt.datetime(2024, 1, 1)]})).to_pylist()
    [{'b': 't', 'ts': '2024-01-01 00:00:00'}]
    """
    if table.num_columns == 0:
        return table
    exprs = [f"{_text_expr(_quote(f.name), f.type)} AS {_quote(f.name)}" for f in table.schema]
    return _run(table, exprs)


def _csv_ready(table: pa.Table) -> pa.Table:
    """Re-print only the columns Arrow's CSV writer would render differently from Postgres."""
    if all(_csv_native(f.type) for f in table.schema) or table.num_columns == 0:
        return table
    exprs = [
        _quote(f.name)
        if _csv_native(f.type)
        else f"{_text_expr(_quote(f.name), f.type)} AS {_quote(f.name)}"
        for f in table.schema
    ]
    return _run(table, exprs)


def encode_csv(table: pa.Table, *, header: bool = True, delimiter: str = ",") -> bytes:
    """CSV with Postgres text values; readable by ``COPY ... FROM STDIN (FORMAT csv)``."""
    buf = io.BytesIO()
    options = pacsv.WriteOptions(include_header=header, delimiter=delimiter)
    pacsv.write_csv(_csv_ready(table), buf, options)
    return buf.getvalue()


def _json_expr(e: str, t: pa.DataType, jsonb: bool) -> str:
    if jsonb:
        return f"json({e})"
    if pa.types.is_float32(t):
        # to_json widens real to double (0.1 -> 0.10000000149011612); go through its text.
        return _json_expr(f"{e}::VARCHAR::DOUBLE", pa.float64(), False)
    if pa.types.is_floating(t):
        # NaN and Infinity are not JSON; write them as strings, as Postgres' to_json does.
        return f"CASE WHEN isnan({e}) OR isinf({e}) THEN to_json({_float_text(e)}) ELSE to_json({e}) END"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return f"'\\x' || lower(hex({e}))"
    return e


def encode_json_lines(table: pa.Table, schema: Schema | None = None) -> bytes:
    """One JSON object per row and line. ``schema`` marks ``jsonb`` columns to embed as JSON."""
    if table.num_rows == 0:
        return b""
    jsonb = {c.name for c in schema or [] if c.type == "jsonb"}
    fields = ", ".join(
        f"{_quote(f.name)} := {_json_expr(_quote(f.name), f.type, f.name in jsonb)}"
        for f in table.schema
    )
    lines = _run(table, [f"to_json(struct_pack({fields}))::VARCHAR || chr(10) AS j"])
    # Join all lines in Arrow: view the column as one list and concatenate its strings.
    col = lines.column(0).combine_chunks()
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(col)], pa.int32()), col), "")
    return joined[0].as_buffer().to_pybytes()


def encode_parquet(table: pa.Table, *, compression: str = "snappy") -> bytes:
    """A Parquet file; intervals become their Postgres text (Parquet has no such type)."""
    intervals = [f.name for f in table.schema if pa.types.is_interval(f.type)]
    if intervals:
        text = pg_text(table.select(intervals))
        for name in intervals:
            table = table.set_column(table.schema.get_field_index(name), name, text.column(name))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression)
    return buf.getvalue()


def make_encoder(
    encoding: str, options: dict[str, str] | None = None, schema: Schema | None = None
) -> Callable[[pa.Table], bytes]:
    """The encoder for ``FORMAT PLAIN ENCODE <encoding> (options)``, options checked now.

    Options: csv ``header`` ('true'), ``delimiter`` (','); parquet ``compression``
    ('snappy'; also 'zstd', 'gzip', 'none'). JSON takes none.

    >>> make_encoder("csv", {"header": "false"})(pa.table({"a": [1]}))
    b'1\\n'
    """
    options = {k.lower(): v for k, v in (options or {}).items()}
    allowed = {"csv": {"header", "delimiter"}, "parquet": {"compression"}, "json": set()}
    if encoding not in allowed:
        raise InvalidParameterValue(
            f"ENCODE {encoding.upper()} is not supported here (use PARQUET, CSV or JSON)"
        )
    unknown = set(options) - allowed[encoding]
    if unknown:
        raise InvalidParameterValue(
            f"unknown option(s) for ENCODE {encoding.upper()}: {', '.join(sorted(unknown))}"
        )
    if encoding == "csv":
        header = options.get("header", "true").lower()
        if header not in ("true", "false"):
            raise InvalidParameterValue(f"csv option header must be true or false, not '{header}'")
        delimiter = options.get("delimiter", ",")
        if len(delimiter) != 1:
            raise InvalidParameterValue("csv option delimiter must be one character")
        return lambda t: encode_csv(t, header=header == "true", delimiter=delimiter)
    if encoding == "parquet":
        compression = options.get("compression", "snappy").lower()
        if compression not in ("snappy", "zstd", "gzip", "lz4", "brotli", "none"):
            raise InvalidParameterValue(f"unknown parquet compression '{compression}'")
        return lambda t: encode_parquet(t, compression=compression)
    return lambda t: encode_json_lines(t, schema)
