"""Values on the wire: Postgres type OIDs, text and binary output, parameter input.

Result columns carry sqlstream's canonical Postgres type names (:mod:`sqlstream.types`);
this module turns them into what a Postgres server would send: the type OID and size for
``RowDescription``, and each value in text format (what psql prints) or, when the client
asks, in binary format (what asyncpg reads).

>>> encode_text(True, "boolean"), encode_text(1.0, "double precision"), encode_text(1e16, "double precision")
(b't', b'1', b'1e+16')
>>> import datetime as dt
>>> encode_text(dt.datetime(2024, 1, 1, 0, 0, 0, 500000), "timestamp")
b'2024-01-01 00:00:00.5'
>>> type_oid("numeric(10,2)"), type_modifier("numeric(10,2)"), type_oid("bigint[]")
(1700, 655366, 1016)
"""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from sqlstream.errors import FeatureNotSupported, InvalidParameterValue, SqlStreamError

# -- types ------------------------------------------------------------------------------------

#: OIDs of the base types sqlstream produces, plus the few the catalog emulation uses.
BASE_OIDS: dict[str, int] = {
    "boolean": 16,
    "bytea": 17,
    "char": 18,
    "name": 19,
    "bigint": 20,
    "smallint": 21,
    "integer": 23,
    "text": 25,
    "oid": 26,
    "json": 114,
    "real": 700,
    "double precision": 701,
    "unknown": 705,
    "varchar": 1043,
    "date": 1082,
    "time": 1083,
    "timestamp": 1114,
    "timestamptz": 1184,
    "interval": 1186,
    "numeric": 1700,
    "uuid": 2950,
    "jsonb": 3802,
}

#: element OID -> array OID (pg_type.typarray)
ARRAY_OIDS: dict[int, int] = {
    16: 1000, 17: 1001, 18: 1002, 19: 1003, 20: 1016, 21: 1005, 23: 1007, 25: 1009, 26: 1028,
    114: 199, 700: 1021, 701: 1022, 1043: 1015, 1082: 1182, 1083: 1183, 1114: 1115, 1184: 1185,
    1186: 1187, 1700: 1231, 2950: 2951, 3802: 3807,
}

#: OID -> canonical type name, for parameters a client declares (aliases map to one name)
OID_TYPES: dict[int, str] = {oid: name for name, oid in BASE_OIDS.items()}
OID_TYPES.update({1042: "varchar", 0: "unknown"})  # bpchar travels as varchar
OID_TYPES.update({arr: OID_TYPES[el] + "[]" for el, arr in ARRAY_OIDS.items()})

_TYPLEN = {16: 1, 18: 1, 20: 8, 21: 2, 23: 4, 26: 4, 700: 4, 701: 8, 1082: 4, 1083: 8,
           1114: 8, 1184: 8, 1186: 16, 2950: 16, 19: 64}


def _base(type_: str) -> str:
    """'numeric(10,2)' -> 'numeric', 'character varying' -> 'varchar'."""
    t = type_.strip().lower()
    if t.startswith("numeric") or t.startswith("decimal"):
        return "numeric"
    if t.startswith(("varchar", "character varying", "char(", "character(", "bpchar")):
        return "varchar"
    return {"int": "integer", "int4": "integer", "int8": "bigint", "int2": "smallint",
            "float8": "double precision", "float4": "real", "bool": "boolean",
            "timestamp with time zone": "timestamptz",
            "timestamp without time zone": "timestamp"}.get(t, t)


def type_oid(type_: str) -> int:
    """The OID a column of this canonical type is reported with (text for anything unknown)."""
    if type_.endswith("[]"):
        return ARRAY_OIDS.get(type_oid(type_[:-2]), 1009)
    return BASE_OIDS.get(_base(type_), 25)


def type_size(type_: str) -> int:
    return -1 if type_.endswith("[]") else _TYPLEN.get(type_oid(type_), -1)


def type_modifier(type_: str) -> int:
    """``atttypmod``: (precision << 16 | scale) + 4 for ``numeric(p,s)``, else -1."""
    t = type_.replace(" ", "")
    if t.startswith("numeric(") and t.endswith(")"):
        parts = t[8:-1].split(",")
        p, s = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        return ((p << 16) | s) + 4
    return -1


# -- text output --------------------------------------------------------------------------------

_PG_EPOCH = dt.datetime(2000, 1, 1)
_PG_EPOCH_DATE = dt.date(2000, 1, 1)
_US = dt.timedelta(microseconds=1)


def format_float(v: float, *, single: bool = False) -> str:
    """Postgres's shortest exact output: '1.5', '1e+16', '1e-05', 'NaN', '-Infinity'.

    >>> format_float(123456789012345.6), format_float(1e15), format_float(0.1, single=True)
    ('123456789012345.6', '1e+15', '0.1')
    """
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    if v == 0:
        return "-0" if math.copysign(1, v) < 0 else "0"
    text = str(np.float32(v)) if single else repr(v)
    d = Decimal(text)
    sign = "-" if d.is_signed() else ""
    t = d.as_tuple()
    e = len(t.digits) + int(t.exponent) - 1  # decimal exponent of the first digit
    digits = "".join(map(str, t.digits)).rstrip("0") or "0"
    if -4 <= e < (6 if single else 15):
        if e >= 0:
            whole = digits[: e + 1].ljust(e + 1, "0")
            rest = digits[e + 1 :]
            return sign + whole + ("." + rest if rest else "")
        return sign + "0." + "0" * (-e - 1) + digits
    mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{mant}e{'-' if e < 0 else '+'}{abs(e):02d}"


def _frac(us: int) -> str:
    return ("." + f"{us:06d}".rstrip("0")) if us else ""


def format_timestamp(v: dt.datetime, *, tz: bool = False, zone: dt.tzinfo | None = None) -> str:
    """'2024-01-01 00:00:00[.ffffff]', with '+HH[:MM]' in ``zone`` (UTC by default) when
    ``tz``: a timestamptz is shown in the session's TimeZone, as Postgres does."""
    if not tz:
        return f"{v:%Y-%m-%d %H:%M:%S}{_frac(v.microsecond)}"
    if v.tzinfo is None:
        v = v.replace(tzinfo=dt.UTC)
    v = v.astimezone(zone or dt.UTC)
    offset = v.utcoffset() or dt.timedelta(0)
    sign = "-" if offset < dt.timedelta(0) else "+"
    minutes = abs(offset) // dt.timedelta(minutes=1)
    h, m = divmod(minutes, 60)
    suffix = f"{sign}{h:02d}" + (f":{m:02d}" if m else "")
    return f"{v:%Y-%m-%d %H:%M:%S}{_frac(v.microsecond)}{suffix}"


def format_interval(v: dt.timedelta) -> str:
    """Postgres's default IntervalStyle: '1 day 02:00:00', '-01:00:00', '3 days'.

    >>> format_interval(dt.timedelta(days=1, hours=2)), format_interval(-dt.timedelta(hours=1))
    ('1 day 02:00:00', '-01:00:00')
    """
    total = v // _US
    day_us = 86_400_000_000
    days = int(total / day_us)  # truncated towards zero, like Postgres keeps days apart
    rest = total - days * day_us
    parts = []
    if days:
        parts.append(f"{days} day{'' if abs(days) == 1 else 's'}")
    if rest or not days:
        sign = "-" if rest < 0 else ""
        rest = abs(rest)
        secs, us = divmod(rest, 1_000_000)
        h, rem = divmod(secs, 3600)
        m, s = divmod(rem, 60)
        parts.append(f"{sign}{h:02d}:{m:02d}:{s:02d}{_frac(us)}")
    return " ".join(parts)


def _array_item(v: Any, elem: str, zone: dt.tzinfo | None) -> str:
    if v is None:
        return "NULL"
    text = format_text(v, elem, zone)
    if text == "" or any(c in text for c in '{},"\\ \t\n') or text.upper() == "NULL":
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def format_text(v: Any, type_: str, zone: dt.tzinfo | None = None) -> str:
    """A non-NULL value in Postgres text format, for a column of canonical type ``type_``
    (``zone``: the session's TimeZone, for timestamptz)."""
    if type_.endswith("[]"):
        elem = type_[:-2]
        return "{" + ",".join(_array_item(x, elem, zone) for x in v) + "}"
    base = _base(type_)
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, float) or (base in ("double precision", "real") and isinstance(v, int | Decimal)):
        return format_float(float(v), single=base == "real")
    if isinstance(v, Decimal):
        if v.is_nan():
            return "NaN"
        if v.is_infinite():
            return "Infinity" if v > 0 else "-Infinity"
        return format(v, "f")
    if isinstance(v, dt.datetime):
        return format_timestamp(v, tz=base == "timestamptz" or v.tzinfo is not None, zone=zone)
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, dt.time):
        return f"{v:%H:%M:%S}{_frac(v.microsecond)}"
    if isinstance(v, dt.timedelta):
        return format_interval(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return "\\x" + bytes(v).hex()
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    if isinstance(v, list | tuple):
        return "{" + ",".join(_array_item(x, "text", zone) for x in v) + "}"
    return str(v)


def encode_text(v: Any, type_: str, zone: dt.tzinfo | None = None) -> bytes | None:
    return None if v is None else format_text(v, type_, zone).encode()


# -- binary output ------------------------------------------------------------------------------


def _numeric_binary(d: Decimal) -> bytes:
    """Postgres ``numeric_send``: base-10000 digits with weight, sign and display scale."""
    if d.is_nan():
        return struct.pack("!hhHH", 0, 0, 0xC000, 0)
    if d.is_infinite():
        return struct.pack("!hhHH", 0, 0, 0xD000 if d > 0 else 0xF000, 0)
    sign = 0x4000 if d.is_signed() and d != 0 else 0
    exponent = d.as_tuple().exponent
    dscale = max(0, -exponent) if isinstance(exponent, int) else 0
    int_part, _, frac_part = format(abs(d), "f").partition(".")
    int_part = int_part.lstrip("0")
    int_part = int_part.zfill((len(int_part) + 3) // 4 * 4)
    frac_part = frac_part + "0" * (-len(frac_part) % 4)
    groups = [int(int_part[i : i + 4]) for i in range(0, len(int_part), 4)]
    weight = len(groups) - 1
    groups += [int(frac_part[i : i + 4]) for i in range(0, len(frac_part), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    return struct.pack(f"!hhHH{len(groups)}H", len(groups), weight, sign, dscale, *groups)


def _timestamp_us(v: dt.datetime) -> int:
    if v.tzinfo is not None:
        v = v.astimezone(dt.UTC).replace(tzinfo=None)
    return (v - _PG_EPOCH) // _US


def encode_binary(v: Any, type_: str) -> bytes | None:
    """A value in Postgres binary format (``typsend``) for a column of type ``type_``."""
    if v is None:
        return None
    if type_.endswith("[]"):
        return _array_binary(v, type_[:-2])
    base = _base(type_)
    oid = type_oid(type_)
    if oid == 16:
        return b"\x01" if v else b"\x00"
    if oid == 21:
        return struct.pack("!h", int(v))
    if oid in (23, 26):
        return struct.pack("!i" if oid == 23 else "!I", int(v))
    if oid == 20:
        return struct.pack("!q", int(v))
    if oid == 700:
        return struct.pack("!f", float(v))
    if oid == 701:
        return struct.pack("!d", float(v))
    if oid == 1700:
        return _numeric_binary(v if isinstance(v, Decimal) else Decimal(str(v)))
    if oid in (1114, 1184):
        return struct.pack("!q", _timestamp_us(v))
    if oid == 1082:
        return struct.pack("!i", (v - _PG_EPOCH_DATE).days)
    if oid == 1083:
        return struct.pack("!q", ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond)
    if oid == 1186:
        total = v // _US
        days = int(total / 86_400_000_000)
        return struct.pack("!qii", total - days * 86_400_000_000, days, 0)
    if oid == 2950:
        return (v if isinstance(v, uuid.UUID) else uuid.UUID(str(v))).bytes
    if oid == 17:
        return bytes(v) if not isinstance(v, str) else v.encode()
    if oid == 3802:
        return b"\x01" + format_text(v, base).encode()
    return format_text(v, type_).encode()  # text, varchar, name, json, char: the text bytes


def _array_binary(items: list[Any], elem: str) -> bytes:
    elem_oid = type_oid(elem)
    has_null = any(x is None for x in items)
    out = [struct.pack("!iiIii", 1, 1 if has_null else 0, elem_oid, len(items), 1)]
    for x in items:
        data = encode_binary(x, elem)
        out.append(struct.pack("!i", -1) if data is None else struct.pack("!i", len(data)) + data)
    return b"".join(out)


def encode(v: Any, type_: str, fmt: int, zone: dt.tzinfo | None = None) -> bytes | None:
    return encode_binary(v, type_) if fmt == 1 else encode_text(v, type_, zone)


# -- parameters ---------------------------------------------------------------------------------


def decode_param(data: bytes, fmt: int, oid: int) -> Any:
    """A parameter value sent by the client, as a Python value (str for text format of
    types we pass through as quoted literals)."""
    type_ = OID_TYPES.get(oid, "unknown")
    if fmt == 0:
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise SqlStreamError("invalid byte sequence for encoding \"UTF8\"", sqlstate="22021") from None
    try:
        return _decode_binary(data, oid, type_)
    except (struct.error, ValueError, IndexError) as e:
        raise SqlStreamError(
            f"incorrect binary data format in bind parameter ({e})", sqlstate="22P03"
        ) from None


def _decode_binary(data: bytes, oid: int, type_: str) -> Any:
    if type_.endswith("[]"):
        ndim, _flags, elem_oid = struct.unpack_from("!iiI", data, 0)
        if ndim == 0:
            return []
        if ndim != 1:
            raise FeatureNotSupported("multi-dimensional array parameters are not supported")
        length, _lower = struct.unpack_from("!ii", data, 12)
        pos, items = 20, []
        for _ in range(length):
            (size,) = struct.unpack_from("!i", data, pos)
            pos += 4
            if size < 0:
                items.append(None)
            else:
                items.append(_decode_binary(data[pos : pos + size], elem_oid, OID_TYPES.get(elem_oid, "unknown")))
                pos += size
        return items
    if oid == 16:
        return data != b"\x00"
    if oid == 21:
        return struct.unpack("!h", data)[0]
    if oid == 23:
        return struct.unpack("!i", data)[0]
    if oid == 26:
        return struct.unpack("!I", data)[0]
    if oid == 20:
        return struct.unpack("!q", data)[0]
    if oid == 700:
        return struct.unpack("!f", data)[0]
    if oid == 701:
        return struct.unpack("!d", data)[0]
    if oid == 1700:
        ndigits, weight, sign, dscale = struct.unpack_from("!hhHH", data, 0)
        if sign == 0xC000:
            return Decimal("NaN")
        digits = struct.unpack_from(f"!{ndigits}H", data, 8)
        value = sum(Decimal(g) * Decimal(10000) ** (weight - i) for i, g in enumerate(digits))
        value = value.quantize(Decimal(1).scaleb(-dscale)) if dscale else Decimal(int(value))
        return -value if sign == 0x4000 else value
    if oid in (1114, 1184):
        (us,) = struct.unpack("!q", data)
        value = _PG_EPOCH + dt.timedelta(microseconds=us)
        return value.replace(tzinfo=dt.UTC) if oid == 1184 else value
    if oid == 1082:
        return _PG_EPOCH_DATE + dt.timedelta(days=struct.unpack("!i", data)[0])
    if oid == 1083:
        (us,) = struct.unpack("!q", data)
        return (dt.datetime.min + dt.timedelta(microseconds=us)).time()
    if oid == 1186:
        us, days, months = struct.unpack("!qii", data)
        return dt.timedelta(days=days + 30 * months, microseconds=us)
    if oid == 2950:
        return uuid.UUID(bytes=data)
    if oid == 17:
        return bytes(data)
    if oid == 3802:
        return data[1:].decode()
    return data.decode()


_NUMERIC_OIDS = {20: int, 21: int, 23: int, 26: int}
_FLOAT_OIDS = {700, 701}


def quote_string(s: str) -> str:
    """A string literal that reads back as exactly ``s`` (never unquoted text).

    Backslashes are written in an ``E''`` literal because sqlstream's tokenizer reads ``\\'``
    inside a plain literal as an escaped quote.

    >>> quote_string("it's"), quote_string("a\\\\b")
    ("'it''s'", "E'a\\\\\\\\b'")
    """
    if "\x00" in s:
        raise SqlStreamError('invalid byte sequence for encoding "UTF8": 0x00', sqlstate="22021")
    if "\\" in s:
        return "E'" + s.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + s.replace("'", "''") + "'"


def _cast(literal: str, type_: str) -> str:
    return f"CAST({literal} AS {type_.upper()})"


def to_literal(value: Any, oid: int) -> str:
    """SQL text for a bound parameter: a validated number, or a quoted literal with a cast.

    >>> to_literal("42", 20), to_literal("-1", 23), to_literal("x'; DROP", 25), to_literal(None, 20)
    ('42', '(-1)', "'x''; DROP'", 'CAST(NULL AS BIGINT)')
    """
    type_ = OID_TYPES.get(oid, "unknown")
    if value is None:
        return "NULL" if type_ in ("unknown", "text", "varchar") else _cast("NULL", type_)
    try:
        if oid in _NUMERIC_OIDS or (oid == 1700 and not isinstance(value, str)):
            number = int(value) if oid in _NUMERIC_OIDS else Decimal(value)
            return _number(number, type_)
        if oid == 1700:
            d = Decimal(value.strip())
            return _cast(quote_string(str(d)), "numeric") if not d.is_finite() else _number(d, "numeric")
        if oid in _FLOAT_OIDS:
            f = float(value) if not isinstance(value, str) else float(value.strip())
            if math.isfinite(f):
                return _number(f, type_)
            return _cast(quote_string(format_float(f)), type_)
        if oid == 16:
            if isinstance(value, str):
                b = value.strip().lower()
                if b in ("t", "true", "1", "yes", "on", "y"):
                    return "TRUE"
                if b in ("f", "false", "0", "no", "off", "n"):
                    return "FALSE"
                raise InvalidParameterValue(f'invalid input syntax for type boolean: "{value}"', sqlstate="22P02")
            return "TRUE" if value else "FALSE"
    except (ValueError, InvalidOperation):
        raise SqlStreamError(
            f'invalid input syntax for type {type_}: "{value}"', sqlstate="22P02"
        ) from None
    if type_.endswith("[]"):
        if isinstance(value, str):
            return _cast(quote_string(value), type_)
        elem_oid = next((e for e, a in ARRAY_OIDS.items() if a == oid), 25)
        return "[" + ", ".join(to_literal(x, elem_oid) for x in value) + "]"
    if oid == 17:
        raw = value if isinstance(value, bytes) else _bytea_from_text(value)
        return f"from_hex({quote_string(raw.hex())})"
    if isinstance(value, dt.datetime):
        text = format_timestamp(value, tz=value.tzinfo is not None)
    elif isinstance(value, dt.timedelta):
        text = format_interval(value)
    elif isinstance(value, str):
        text = value
    else:
        text = format_text(value, type_)
    literal = quote_string(text)
    if type_ in ("unknown", "text", "varchar", "name", "char"):
        return literal  # untyped: DuckDB casts a string literal to what it is compared with
    return _cast(literal, {"timestamptz": "timestamp with time zone", "jsonb": "json"}.get(type_, type_))


def _number(n: int | float | Decimal, type_: str) -> str:
    text = repr(n) if isinstance(n, float) else (format(n, "f") if isinstance(n, Decimal) else str(n))
    if isinstance(n, int) and type_ in ("bigint", "integer", "smallint", "oid") and not -(2**63) <= n < 2**63:
        raise SqlStreamError(f'value "{n}" is out of range for type {type_}', sqlstate="22003")
    return f"({text})" if text.startswith("-") else text


def _bytea_from_text(text: str) -> bytes:
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    return text.encode()


def describe_param_type(oid: int) -> int:
    """The OID reported in ParameterDescription for a parameter the client typed ``oid``."""
    return 25 if oid in (0, 705) else oid
