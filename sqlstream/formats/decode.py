"""Decoding record payloads (JSON lines, CSV) into Arrow tables of a declared schema.

Used by the file source and meant for message sources too (Kafka, NATS, ...): the input is
either one buffer of newline-separated records (a file) or a list of payloads (one record
each). The result keeps the good records, in order, and rejects the bad ones (unparseable,
wrong type, a declared column missing) with their record number, raw bytes and a reason, so
that the caller can turn them into dead letters (DESIGN §8).

>>> from sqlstream.types import Column
>>> schema = [Column("id", "bigint"), Column("ts", "timestamp")]
>>> d = decode_json(b'{"id": 1, "ts": "2024-01-01T00:00:00Z"}\\nnot json\\n{"ts": null}\\n', schema)
>>> d.table.column("id").to_pylist(), d.records, [(r.index, r.line, r.raw) for r in d.rejected]
([1], 3, [(1, 2, b'not json'), (2, 3, b'{"ts": null}')])

Speed: the whole input goes through pyarrow's multi-threaded JSON / CSV reader first. Only
an input that fails as a whole takes the slow path, which bisects it (JSON: re-reading halves
with the same reader, so good records get exactly the same conversion either way) or splits
it into records with Python's csv module (CSV) to find the bad records.

Text values follow Postgres input rules where pyarrow's differ: timestamps as
'YYYY-MM-DD HH:MM:SS[.ffffff]' or ISO-8601 with 'T' and an optional 'Z' / '+hh:mm' (converted
to UTC), booleans as t/f/true/false/1/0/yes/no/on/off, numerics rounded half away from zero
to the declared scale, an unquoted empty CSV field is NULL, a quoted one an empty string.
"""

from __future__ import annotations

import csv
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from sqlstream.errors import DataException, FeatureNotSupported
from sqlstream.types import Schema, _numeric_params, arrow_schema, arrow_type

__all__ = [
    "Decoded",
    "Rejected",
    "check_schema",
    "conform",
    "decode_csv",
    "decode_json",
    "parse_strings",
]


@dataclass
class Rejected:
    """A record that could not be decoded."""

    index: int  # record number in the input, 0-based (good and bad records count)
    line: int  # 1-based line of the input where it starts (index + 1 for a payload list)
    raw: bytes
    reason: str


@dataclass
class Decoded:
    """Good records as a table of the schema, plus the rejected ones."""

    table: pa.Table
    index: np.ndarray  # int64 record number of each row of ``table``, ascending
    rejected: list[Rejected]  # ascending by index
    records: int  # good + rejected

    @staticmethod
    def empty(schema: Schema) -> Decoded:
        return Decoded(arrow_schema(schema).empty_table(), np.zeros(0, np.int64), [], 0)


Payloads = bytes | bytearray | memoryview | Sequence[bytes]

# --------------------------------------------------------------------------------------------
# Text -> typed values (vectorised; a failing array is bisected to find the failing rows)

_TS = pa.timestamp("us")
_TSZ = pa.timestamp("us", tz="UTC")
_ZONED = r"\d:\d\d(?::\d\d(?:\.\d*)?)?\s*(?:[zZ]|[+-]\d\d(?::?\d\d)?)$"
_TRUE = pa.array(["t", "true", "1", "yes", "y", "on"])
_FALSE = pa.array(["f", "false", "0", "no", "n", "off"])
_INT_TYPES = {"smallint", "integer", "bigint", "real", "double precision"}
_TEXT_TYPES = {"varchar", "jsonb", "uuid"}
_TIME_TYPES = {"timestamp", "timestamptz", "date", "time"}


def _short(e: Exception) -> str:
    msg = str(e).split("\n")[0]
    for noise in ("JSON parse error: ", "CSV parse error: "):
        msg = msg.replace(noise, "")
    cut = msg.rfind(" in row ")
    if cut > 0:
        msg = msg[:cut]
    return msg[:200]


def _by_rows(
    arr: pa.Array, fn: Callable[[pa.Array], pa.Array], target: pa.DataType
) -> tuple[pa.Array, dict[int, str]]:
    """``fn(arr)``; when it fails, bisect to null out (and report) just the failing rows."""
    try:
        return fn(arr), {}
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError) as e:
        if len(arr) == 1:
            return pa.nulls(1, target), {0: _short(e)}
        mid = len(arr) // 2
        left, lbad = _by_rows(arr.slice(0, mid), fn, target)
        right, rbad = _by_rows(arr.slice(mid), fn, target)
        lbad.update({i + mid: r for i, r in rbad.items()})
        return pa.concat_arrays([left, right]), lbad


def _timestamps(arr: pa.Array) -> pa.Array:
    """Strings -> timestamp[us] (UTC wall clock); zoned values are converted to UTC."""
    arr = pc.utf8_trim_whitespace(arr)
    try:  # the common case, all without a zone, needs no regex
        return pc.cast(arr, _TS)
    except pa.ArrowInvalid:
        pass
    zoned = pc.match_substring_regex(arr, _ZONED)
    n_zoned = pc.sum(zoned).as_py() or 0
    if n_zoned == 0:
        return pc.cast(arr, _TS)
    if n_zoned == len(arr) - arr.null_count:
        return pc.cast(pc.cast(arr, _TSZ), _TS)
    none = pa.scalar(None, pa.string())
    naive = pc.cast(pc.if_else(zoned, none, arr), _TS)
    utc = pc.cast(pc.cast(pc.if_else(zoned, arr, none), _TSZ), _TS)
    return pc.coalesce(naive, utc)


def _numeric(arr: pa.Array, type_: str) -> pa.Array:
    """Decimal or text -> decimal128(p, s), rounding half away from zero like Postgres."""
    precision, scale = _numeric_params(type_)
    if pa.types.is_string(arr.type):
        arr = pc.cast(pc.utf8_trim_whitespace(arr), _wide_decimal(scale))
    rounded = pc.round(arr, ndigits=scale, round_mode="half_towards_infinity")
    return pc.cast(rounded, pa.decimal128(precision, scale))


def _wide_decimal(scale: int) -> pa.DataType:
    # wide enough that any value of a numeric(p<=38) column parses before it is range-checked
    return pa.decimal256(76, max(scale, 36))


def _booleans(arr: pa.Array) -> pa.Array:
    low = pc.utf8_lower(pc.utf8_trim_whitespace(arr))
    is_true, is_false = pc.is_in(low, _TRUE), pc.is_in(low, _FALSE)
    invalid = pc.and_(pc.is_valid(low), pc.invert(pc.or_(is_true, is_false)))
    if pc.any(invalid).as_py():
        raise pa.ArrowInvalid(f"invalid boolean '{low.filter(invalid)[0]}'")
    return pc.if_else(pc.is_null(low), pa.scalar(None, pa.bool_()), is_true)


def _bytea(arr: pa.Array) -> pa.Array:
    """Postgres bytea text: '\\x' and hex digits (as sinks write it), else the text's bytes."""
    con = _duckdb()
    con.register("bytea_in", pa.table({"s": arr}))
    try:
        out = con.sql(
            "SELECT CASE WHEN starts_with(s, '\\x') THEN unhex(s[3:]) ELSE encode(s) END AS b "
            "FROM bytea_in"
        ).to_arrow_table()
    except duckdb.Error as e:
        raise pa.ArrowInvalid(f"invalid bytea: {e}") from e
    finally:
        con.unregister("bytea_in")
    return out.column(0).combine_chunks().cast(pa.binary())


def _text_parser(type_: str) -> Callable[[pa.Array], pa.Array]:
    target = arrow_type(type_)
    if type_ in _TEXT_TYPES:
        return lambda a: a
    if type_ == "bytea":
        return _bytea
    if type_ in _INT_TYPES:
        return lambda a: pc.cast(pc.utf8_trim_whitespace(a), target)
    if type_.startswith("numeric"):
        return lambda a: _numeric(a, type_)
    if type_ == "boolean":
        return _booleans
    if type_ in ("timestamp", "timestamptz"):
        return lambda a: pc.cast(_timestamps(a), target)
    if type_ == "date":
        return lambda a: pc.cast(_timestamps(a), target, safe=False)
    if type_ == "time":
        return lambda a: pc.cast(
            pc.cast(
                pc.binary_join_element_wise("1970-01-01 ", pc.utf8_trim_whitespace(a), ""), _TS
            ),
            target,
        )
    raise FeatureNotSupported(f"columns of type {type_} cannot be read from text")


def parse_strings(arr: pa.Array | pa.ChunkedArray, type_: str) -> tuple[pa.Array, dict[int, str]]:
    """Text values -> the Arrow type of ``type_``; failing rows become NULL and are reported.

    >>> parse_strings(pa.array(["1", "x", None]), "integer")[1]
    {1: "Failed to parse string: 'x' as a scalar of type int32"}
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.string():
        arr = pc.cast(arr, pa.string())
    return _by_rows(arr, _text_parser(type_), arrow_type(type_))


def check_schema(schema: Schema, encode: str) -> None:
    """Raise FeatureNotSupported when a column's type cannot be decoded from ``encode``."""
    for c in schema:
        ok = (
            c.type in _TEXT_TYPES | _INT_TYPES | _TIME_TYPES | {"boolean", "bytea"}
            or c.type.startswith("numeric")
            or (encode == "json" and c.type.endswith("[]") and _json_wire_type(c.type) is not None)
            or encode == "parquet"
        )
        if not ok:
            raise FeatureNotSupported(
                f"column {c.name}: type {c.type} cannot be read from {encode.upper()}"
            )


# --------------------------------------------------------------------------------------------
# Records: byte spans in one buffer


def _blank(b: bytes) -> bool:
    # isspace() stops at the first other byte; strip() would copy the whole buffer
    return not b or b.isspace()


class _Records:
    """The records of an input as byte spans of one buffer.

    For a buffer, records are its non-blank lines; for a payload list, the payloads (joined
    by newlines so that one reader call can parse them all).
    """

    def __init__(self, data: Payloads, *, json: bool) -> None:
        self.payloads: Sequence[bytes] | None = None
        if isinstance(data, bytes | bytearray | memoryview):
            self.buf = bytes(data)
            self._starts: np.ndarray | None = None
        else:
            self.payloads = [bytes(p) for p in data]
            parts = self.payloads
            if json and any(b"\n" in p or b"\r" in p for p in parts):
                # raw newlines are only whitespace in valid JSON: flatten each payload to a line
                parts = [p.replace(b"\n", b" ").replace(b"\r", b" ") for p in parts]
            self.buf = b"\n".join(parts)
            lengths = np.fromiter((len(p) for p in parts), np.int64, len(parts))
            self._starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
            self._ends = self._starts + lengths
            self._lines = np.arange(1, len(parts) + 1, dtype=np.int64)
            self._blank = np.array([_blank(p) for p in parts], dtype=bool)

    def physical_lines(self) -> int:
        b = self.buf
        return b.count(b"\n") + (1 if b and not b.endswith(b"\n") else 0)

    def _compute(self) -> None:
        arr = np.frombuffer(self.buf, dtype=np.uint8)
        nl = np.flatnonzero(arr == 10)
        starts = np.concatenate([[0], nl + 1]).astype(np.int64)
        ends = np.concatenate([nl, [len(arr)]]).astype(np.int64)
        if len(arr) and arr[-1] == 10:  # no line after the final newline
            starts, ends = starts[:-1], ends[:-1]
        lines = np.arange(1, len(starts) + 1, dtype=np.int64)
        if len(arr):
            ends = ends - ((ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13))
            first = arr[np.minimum(starts, len(arr) - 1)]
        else:
            first = np.zeros(len(starts), dtype=np.uint8)
        # blank lines are not records; only empty lines or lines starting with whitespace can
        # be blank, so only those few are looked at one by one
        maybe = np.flatnonzero((ends == starts) | np.isin(first, (9, 13, 32)))
        keep = np.ones(len(starts), dtype=bool)
        for i in maybe:
            if _blank(self.buf[starts[i] : ends[i]]):
                keep[i] = False
        self._starts, self._ends, self._lines = starts[keep], ends[keep], lines[keep]
        self._blank = np.zeros(len(self._starts), dtype=bool)

    @property
    def starts(self) -> np.ndarray:
        if self._starts is None:
            self._compute()
        return self._starts

    @property
    def ends(self) -> np.ndarray:
        _ = self.starts
        return self._ends

    @property
    def blank(self) -> np.ndarray:
        """Which records are empty (only payloads can be; blank lines are no records)."""
        _ = self.starts
        return self._blank

    @property
    def lines(self) -> np.ndarray:
        _ = self.starts
        return self._lines

    def __len__(self) -> int:
        return len(self.starts)

    def raw(self, i: int) -> bytes:
        if self.payloads is not None:
            return self.payloads[i]
        return self.buf[self.starts[i] : self.ends[i]]

    def span(self, lo: int, hi: int) -> pa.Buffer:
        """Records lo..hi-1 as one zero-copy buffer slice."""
        s, e = int(self.starts[lo]), int(self.ends[hi - 1])
        return pa.py_buffer(self.buf).slice(s, e - s)

    def strings(self, rows: np.ndarray) -> pa.Array:
        """The text of the given records as a large_string array (zero-copy, then a take)."""
        n = len(self.starts)
        offsets = np.empty(2 * n, dtype=np.int64)
        offsets[0::2], offsets[1::2] = self.starts, self.ends
        # element 2i is record i; element 2i+1 is the separator after it
        arr = pa.LargeStringArray.from_buffers(
            2 * n - 1 if n else 0,
            pa.py_buffer(offsets if n else np.zeros(1, np.int64)),
            pa.py_buffer(self.buf),
        )
        return arr.take(pa.array(rows * 2))

    def reject(self, i: int, reason: str) -> Rejected:
        return Rejected(int(i), int(self.lines[i]), self.raw(i), reason)


# --------------------------------------------------------------------------------------------
# JSON lines


def _json_wire_type(type_: str) -> pa.DataType | None:
    """What pyarrow's JSON reader parses a column as (None: not by pyarrow)."""
    if type_ in _TIME_TYPES or type_ in ("bytea", "uuid", "varchar"):
        return pa.string()
    if type_.startswith("numeric"):
        return _wide_decimal(_numeric_params(type_)[1])
    if type_ == "jsonb":
        return None  # taken as JSON text by DuckDB
    if type_.endswith("[]"):
        inner = type_[:-2]
        if inner in _INT_TYPES or inner in ("boolean", "varchar"):
            return arrow_type(type_)
        return None
    return arrow_type(type_)


def _read_json(buf: pa.Buffer, wire: pa.Schema, max_block: int = 1 << 22) -> pa.Table:
    # ~4 MiB blocks parse fastest here; a line must fit in one block, so the slow path
    # (which reads smaller ranges) allows up to 16 MiB
    block = min(max(buf.size + 1, 1 << 16), max_block)
    return pa_json.read_json(
        pa.BufferReader(buf),
        read_options=pa_json.ReadOptions(block_size=block),
        parse_options=pa_json.ParseOptions(
            explicit_schema=wire, unexpected_field_behavior="ignore"
        ),
    )


def _bisect_json(
    recs: _Records, cand: np.ndarray, wire: pa.Schema, good: list, bad: dict[int, str]
) -> None:
    """Parse candidate records; split failing ranges until the bad records are alone."""
    stack = [(0, len(cand))]
    while stack:
        lo, hi = stack.pop()
        try:
            t = _read_json(recs.span(int(cand[lo]), int(cand[hi - 1]) + 1), wire, 1 << 24)
            if t.num_rows == hi - lo:
                good.append((cand[lo:hi], t))
                continue
            reason = "expected one JSON object per line"
        except pa.ArrowInvalid as e:
            reason = _json_reason(e)
        if hi - lo == 1:
            bad[int(cand[lo])] = reason
        else:
            mid = (lo + hi) // 2
            stack += [(mid, hi), (lo, mid)]  # left half first, to keep record order


_CHANGED = re.compile(r"Column\(/?([^)]*)\) changed from (\w+) to (\w+)")


def _json_reason(e: Exception) -> str:
    """pyarrow's JSON error as a short reason for a single record."""
    msg = str(e)
    m = _CHANGED.search(msg)
    if m:
        where = f"column {m[1]}" if m[1] else "record"
        return f"{where}: expected JSON {m[2]}, got {m[3]}"
    if msg.startswith("JSON parse error"):
        return f"invalid JSON: {_short(e)}"
    return _short(e)


_local = threading.local()

# Python's csv refuses fields over 128 KiB by default, which pyarrow accepts; the slow path
# must accept the same records as the fast one.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))


def _duckdb() -> duckdb.DuckDBPyConnection:
    con = getattr(_local, "con", None)
    if con is None:
        con = _local.con = duckdb.connect()
    return con


def _json_path(name: str) -> str:
    return '$."' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def decode_json(data: Payloads, schema: Schema) -> Decoded:
    """JSON objects (one per line, or one per payload) -> rows of ``schema``.

    Keys not in the schema are ignored; a declared key that is absent rejects the record
    (``null`` is a NULL); a value of the wrong JSON type rejects it too.
    """
    check_schema(schema, "json")
    recs = _Records(data, json=True)
    wire = pa.schema([(c.name, w) for c in schema if (w := _json_wire_type(c.type)) is not None])
    table: pa.Table | None = None
    bad: dict[int, str] = {}
    if recs.payloads is None and not _blank(recs.buf):
        try:
            table = _read_json(pa.py_buffer(recs.buf), wire)
        except pa.ArrowInvalid:
            table = None
        # cheap check first (no blank lines at all), else compare with the non-blank lines
        if table is not None and table.num_rows != recs.physical_lines():
            if table.num_rows != len(recs):
                table = None
        index = np.arange(table.num_rows if table is not None else 0, dtype=np.int64)
    if table is None:
        if recs.payloads is None and _blank(recs.buf):
            return Decoded.empty(schema)
        cand = np.flatnonzero(~recs.blank)
        bad = {int(i): "empty record" for i in np.flatnonzero(recs.blank)}
        good: list[tuple[np.ndarray, pa.Table]] = []
        if len(cand):
            _bisect_json(recs, cand, wire, good, bad)
        index = np.concatenate([g[0] for g in good]) if good else np.zeros(0, np.int64)
        index = index.astype(np.int64)
        table = pa.concat_tables([g[1] for g in good]) if good else wire.empty_table()
    n_records = len(recs) if recs.payloads is not None or bad else None
    return _finish(recs, table, index, bad, schema, n_records, json=True)


def _json_presence(
    recs: _Records, schema: Schema, table: pa.Table, index: np.ndarray, bad_rows: dict[int, str]
) -> dict[str, pa.Array]:
    """Reject rows missing a declared key; return the values of jsonb columns.

    pyarrow gives NULL both for ``null`` and for an absent key, so the NULL rows (usually
    few) are checked with DuckDB's json_exists; jsonb columns come from json_extract.
    """
    checks: list[tuple[str, np.ndarray]] = []
    jsonb: dict[str, pa.Array] = {}
    for c in schema:
        if c.name in table.column_names:
            col = table.column(c.name)
            if col.null_count:
                rows = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
                checks.append((c.name, rows))
        else:
            checks.append((c.name, np.arange(table.num_rows, dtype=np.int64)))
    if not checks:
        return jsonb
    con = _duckdb()
    for name, rows in checks:
        if not len(rows):
            continue
        lines = pa.table({"l": recs.strings(index[rows])})
        path = _json_path(name)
        is_jsonb = next(c for c in schema if c.name == name).type == "jsonb"
        sql = "SELECT json_exists(l, $1) AS present FROM lines"
        if is_jsonb:
            sql = (
                "SELECT json_exists(l, $1) AS present, CASE WHEN json_type(l, $1) = 'NULL' "
                "THEN NULL ELSE json_extract(l, $1)::VARCHAR END AS v FROM lines"
            )
        con.register("lines", lines)
        try:
            out = con.sql(sql, params=[path]).to_arrow_table()
        finally:
            con.unregister("lines")
        present = out.column("present").to_numpy(zero_copy_only=False)
        for r in rows[~present.astype(bool)]:
            bad_rows.setdefault(int(r), f"missing column '{name}'")
        if is_jsonb:
            jsonb[name] = out.column("v").combine_chunks().cast(pa.string())
    return jsonb


def _finish(
    recs: _Records,
    table: pa.Table,
    index: np.ndarray,
    bad: dict[int, str],
    schema: Schema,
    n_records: int | None,
    *,
    json: bool,
) -> Decoded:
    """Wire table -> schema types; rows failing conversion join the rejected records."""
    bad_rows: dict[int, str] = {}
    jsonb = _json_presence(recs, schema, table, index, bad_rows) if json else {}
    arrays = []
    for c in schema:
        target = arrow_type(c.type)
        if c.name in jsonb:
            arr = jsonb[c.name]
        else:
            arr = table.column(c.name).combine_chunks()
            if arr.type != target:
                if pa.types.is_string(arr.type):
                    arr, failed = parse_strings(arr, c.type)
                else:
                    arr, failed = _by_rows(arr, lambda a, t=c.type: _numeric(a, t), target)
                for r, why in failed.items():
                    bad_rows.setdefault(r, f"column {c.name}: {why}")
        arrays.append(arr)
    out = pa.Table.from_arrays(arrays, schema=arrow_schema(schema))
    if bad_rows:
        keep = np.ones(out.num_rows, dtype=bool)
        keep[list(bad_rows)] = False
        for r, why in bad_rows.items():
            bad[int(index[r])] = why
        out, index = out.filter(pa.array(keep)), index[keep]
    if n_records is None:
        n_records = len(recs) if bad else out.num_rows
    rejected = [recs.reject(i, bad[i]) for i in sorted(bad)]
    return Decoded(out, index, rejected, n_records)


# --------------------------------------------------------------------------------------------
# CSV


def _read_csv_strings(
    buf: pa.Buffer, names: list[str], *, header: bool, delimiter: str, width: int | None = None
) -> pa.Table:
    """Declared columns as text (by header name, or by position when there is no header)."""
    if header:
        read = pa_csv.ReadOptions(block_size=1 << 22)
        include = names
    else:
        positions = [f"f{i}" for i in range(width if width is not None else len(names))]
        read = pa_csv.ReadOptions(column_names=positions, block_size=1 << 22)
        include = positions[: len(names)]
    t = pa_csv.read_csv(
        pa.BufferReader(buf),
        read_options=read,
        # quoted values may span lines (as Python's csv allows on the slow path)
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={n: pa.string() for n in include},
            include_columns=include,
            strings_can_be_null=True,
            null_values=[""],
            quoted_strings_can_be_null=False,
        ),
    )
    return t.rename_columns(names)


def decode_csv(
    data: Payloads, schema: Schema, *, header: bool = True, delimiter: str = ","
) -> Decoded:
    """CSV records (a buffer, optionally with a header line; or one record per payload).

    With a header, columns are matched by name and other columns are ignored; without one,
    its fields are the declared columns in order. A record with a different number of
    fields than the header (or than the schema, without a header) is rejected.
    """
    check_schema(schema, "csv")
    if isinstance(data, bytes | bytearray | memoryview):
        buf = bytes(data)
        if _blank(buf):
            return Decoded.empty(schema)
        fast = _csv_fast(buf, schema, header=header, delimiter=delimiter)
        if fast is not None:
            return fast
        return _csv_slow(_split_csv_buffer(buf, delimiter), schema, header, delimiter)
    payloads = [bytes(p) for p in data]
    joined = b"\n".join(payloads)
    if (
        payloads
        and joined.count(b"\n") == len(payloads) - 1
        and not any(_blank(p) for p in payloads)
    ):
        # one line per payload: the fast path applies to the joined lines
        fast = _csv_fast(joined, schema, header=False, delimiter=delimiter)
        if fast is not None and fast.records == len(payloads):
            return fast
    return _csv_slow(_split_csv_payloads(payloads, delimiter), schema, False, delimiter)


def _csv_fast(buf: bytes, schema: Schema, *, header: bool, delimiter: str) -> Decoded | None:
    """The whole input through pyarrow; None when any record is bad."""
    names = [c.name for c in schema]
    try:
        t = _read_csv_strings(pa.py_buffer(buf), names, header=header, delimiter=delimiter)
    except (pa.ArrowInvalid, pa.ArrowKeyError):
        return None
    arrays = []
    for c in schema:
        arr, failed = parse_strings(t.column(c.name), c.type)
        if failed:
            return None
        arrays.append(arr)
    out = pa.Table.from_arrays(arrays, schema=arrow_schema(schema))
    return Decoded(out, np.arange(out.num_rows, dtype=np.int64), [], out.num_rows)


@dataclass
class _CsvRecord:
    raw: bytes
    line: int
    fields: list[str] | None  # None: not one valid record (reason in ``error``)
    error: str = ""


def _split_csv_buffer(buf: bytes, delimiter: str) -> list[_CsvRecord]:
    """Records with their raw bytes and first line, via Python's csv (quote-aware)."""
    blines = buf.splitlines(keepends=True)
    texts = (b.decode("utf-8", "surrogateescape") for b in blines)
    reader = csv.reader(texts, delimiter=delimiter, strict=True)
    out: list[_CsvRecord] = []
    prev = 0
    while True:
        try:
            fields = next(reader)
            error = ""
        except StopIteration:
            break
        except csv.Error as e:
            fields, error = None, f"malformed CSV: {e}"
        cur = reader.line_num
        raw = b"".join(blines[prev:cur])
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        if fields == []:  # blank line: not a record
            prev = cur
            continue
        if fields is not None and not _is_utf8(raw):
            fields, error = None, "invalid UTF-8"
        out.append(_CsvRecord(raw, prev + 1, fields, error))
        prev = cur
    return out


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _split_csv_payloads(payloads: Sequence[bytes], delimiter: str) -> list[_CsvRecord]:
    out = []
    for i, p in enumerate(payloads):
        raw = bytes(p)
        try:
            rows = list(csv.reader([raw.decode("utf-8")], delimiter=delimiter, strict=True))
            if len(rows) == 1:
                out.append(_CsvRecord(raw, i + 1, rows[0]))
            else:
                out.append(_CsvRecord(raw, i + 1, None, "expected one CSV record"))
        except (csv.Error, UnicodeDecodeError) as e:
            out.append(_CsvRecord(raw, i + 1, None, f"malformed CSV: {e}"))
    return out


def _csv_slow(records: list[_CsvRecord], schema: Schema, header: bool, delimiter: str) -> Decoded:
    names = [c.name for c in schema]
    missing: list[str] = []
    if header:
        head = next((r for r in records if r.fields is not None), None)
        if head is None:
            return Decoded.empty(schema)
        records = records[records.index(head) + 1 :]
        width = len(head.fields or [])
        positions = {n: i for i, n in reversed(list(enumerate(head.fields or [])))}
        missing = [n for n in names if n not in positions]
        take = [positions.get(n, 0) for n in names]
    else:
        width, take = len(names), list(range(len(names)))
    bad: dict[int, str] = {}
    good: list[int] = []
    for i, r in enumerate(records):
        if r.fields is None:
            bad[i] = r.error
        elif missing:
            bad[i] = f"missing column '{missing[0]}' (not in the header)"
        elif len(r.fields) != width:
            bad[i] = f"expected {width} fields, got {len(r.fields)}"
        else:
            good.append(i)
    columns = _csv_good_strings(records, good, names, take, width, delimiter)
    arrays, bad_rows = [], {}
    for c, col in zip(schema, columns, strict=True):
        arr, failed = parse_strings(col, c.type)
        for row, why in failed.items():
            bad_rows.setdefault(row, f"column {c.name}: {why}")
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=arrow_schema(schema))
    index = np.array(good, dtype=np.int64)
    if bad_rows:
        keep = np.ones(len(good), dtype=bool)
        keep[list(bad_rows)] = False
        for row, why in bad_rows.items():
            bad[good[row]] = why
        table, index = table.filter(pa.array(keep)), index[keep]
    rejected = [Rejected(i, records[i].line, records[i].raw, bad[i]) for i in sorted(bad)]
    return Decoded(table, index, rejected, len(records))


def _csv_good_strings(
    records: list[_CsvRecord],
    good: list[int],
    names: list[str],
    take: list[int],
    width: int,
    delimiter: str,
) -> list[pa.Array]:
    """Text of the declared columns of the good records.

    Re-read by pyarrow so that NULL (unquoted empty) vs '' (quoted) is decided exactly as on
    the fast path; Python's csv module cannot tell them apart.
    """
    if not good:
        return [pa.array([], pa.string()) for _ in names]
    joined = b"\n".join(records[i].raw for i in good) + b"\n"
    try:
        t = _read_csv_strings(
            pa.py_buffer(joined),
            [f"f{i}" for i in range(width)],
            header=False,
            delimiter=delimiter,
            width=width,
        )
        if t.num_rows == len(good):
            return [t.column(f"f{i}").combine_chunks() for i in take]
    except pa.ArrowInvalid:
        pass
    rows = [records[i].fields or [] for i in good]
    return [pa.array([r[i] or None for r in rows], pa.string()) for i in take]


# --------------------------------------------------------------------------------------------
# Arrow inputs (Parquet)


def conform(table: pa.Table, schema: Schema) -> pa.Table:
    """Select the declared columns by name and cast them to the schema's types.

    Raises DataException when a column is missing or a value cannot be converted.
    """
    arrays = []
    for c in schema:
        if c.name not in table.column_names:
            raise DataException(f"missing column '{c.name}'")
        arr = table.column(c.name).combine_chunks()
        target = arrow_type(c.type)
        try:
            if arr.type == target:
                pass
            elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
                arr, failed = parse_strings(arr, c.type)
                if failed:
                    row, why = min(failed.items())
                    raise DataException(f"column {c.name}, row {row}: {why}")
            elif pa.types.is_decimal(arr.type) and pa.types.is_decimal(target):
                arr = _numeric(arr, c.type)
            elif pa.types.is_timestamp(arr.type) and pa.types.is_timestamp(target):
                arr = pc.cast(arr, target, safe=False)  # ns -> us truncates, as Postgres rounds
            else:
                arr = pc.cast(arr, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise DataException(f"column {c.name}: {_short(e)}") from e
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=arrow_schema(schema))
