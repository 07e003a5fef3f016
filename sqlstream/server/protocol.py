"""Postgres frontend/backend protocol v3: framing, message parsing and message building.

Only bytes here, no policy: :mod:`sqlstream.server.pgwire` decides what to answer.

>>> command_complete("SELECT 1")
b'C\\x00\\x00\\x00\\rSELECT 1\\x00'
>>> Payload(b"ab\\x00\\x00\\x01").cstring(), Payload(b"\\x00\\x07").int16()
('ab', 7)
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable, Sequence

from sqlstream.errors import SqlStreamError

PROTOCOL_3 = 196608  # 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

MAX_STARTUP_LENGTH = 10_000  # as Postgres: a startup packet is small
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024

#: message types a client may send after startup
FRONTEND_TYPES = frozenset(b"QPBDESHCXFdcfp")


class ProtocolError(SqlStreamError):
    """The client broke the protocol: answered with a FATAL error, then the connection ends."""

    sqlstate = "08P01"


class Payload:
    """A cursor over a message body; reading past its end is a protocol error."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("invalid message format: message is shorter than its contents")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int16(self) -> int:
        return struct.unpack("!h", self._take(2))[0]

    def int32(self) -> int:
        return struct.unpack("!i", self._take(4))[0]

    def uint32(self) -> int:
        return struct.unpack("!I", self._take(4))[0]

    def byte(self) -> int:
        return self._take(1)[0]

    def bytes(self, n: int) -> bytes:
        return self._take(n)

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolError("invalid message format: unterminated string")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise SqlStreamError(
                'invalid byte sequence for encoding "UTF8"', sqlstate="22021"
            ) from None

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError("invalid message format: trailing bytes")


async def read_startup(reader: asyncio.StreamReader) -> tuple[int, Payload]:
    """The first packet of a connection: (code, body after the code)."""
    (length,) = struct.unpack("!i", await reader.readexactly(4))
    if length < 8 or length > MAX_STARTUP_LENGTH:
        raise ProtocolError("invalid length of startup packet")
    body = await reader.readexactly(length - 4)
    (code,) = struct.unpack("!i", body[:4])
    return code, Payload(body[4:])


async def read_message(reader: asyncio.StreamReader, max_length: int) -> tuple[int, Payload]:
    """One regular message: (type byte, body). Checks the type and the length before
    reading the body, so a bogus or huge length costs nothing."""
    header = await reader.readexactly(5)
    kind = header[0]
    (length,) = struct.unpack("!i", header[1:])
    if kind not in FRONTEND_TYPES:
        shown = chr(kind) if 32 <= kind < 127 else f"\\x{kind:02x}"
        raise ProtocolError(f'invalid frontend message type "{shown}"')
    if length < 4:
        raise ProtocolError(f"invalid message length {length}")
    if length - 4 > max_length:
        raise ProtocolError(
            f"message of {length - 4} bytes exceeds the limit of {max_length} bytes",
            sqlstate="54000",
        )
    return kind, Payload(await reader.readexactly(length - 4))


def parse_startup_params(body: Payload) -> dict[str, str]:
    params: dict[str, str] = {}
    while True:
        key = body.cstring()
        if not key:
            break
        params[key] = body.cstring()
    return params


# -- building ------------------------------------------------------------------------------------


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.replace("\x00", "").encode() + b"\x00"


def auth_ok() -> bytes:
    return message(b"R", struct.pack("!i", 0))


def auth_sasl(mechanisms: Sequence[str]) -> bytes:
    return message(b"R", struct.pack("!i", 10) + b"".join(_cstr(m) for m in mechanisms) + b"\x00")


def auth_sasl_continue(data: str) -> bytes:
    return message(b"R", struct.pack("!i", 11) + data.encode())


def auth_sasl_final(data: str) -> bytes:
    return message(b"R", struct.pack("!i", 12) + data.encode())


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return message(b"K", struct.pack("!iI", pid, key))


def ready_for_query(status: str) -> bytes:
    return message(b"Z", status.encode())


def command_complete(tag: str) -> bytes:
    return message(b"C", _cstr(tag))


def empty_query() -> bytes:
    return message(b"I")


def parse_complete() -> bytes:
    return message(b"1")


def bind_complete() -> bytes:
    return message(b"2")


def close_complete() -> bytes:
    return message(b"3")


def no_data() -> bytes:
    return message(b"n")


def portal_suspended() -> bytes:
    return message(b"s")


def parameter_description(oids: Sequence[int]) -> bytes:
    return message(b"t", struct.pack(f"!h{len(oids)}I", len(oids), *oids))


def row_description(fields: Iterable[tuple[str, int, int, int, int]]) -> bytes:
    """``fields``: (name, type oid, type size, type modifier, format code)."""
    fields = list(fields)
    parts = [struct.pack("!h", len(fields))]
    for name, oid, size, typmod, fmt in fields:
        parts.append(_cstr(name) + struct.pack("!IhIhih", 0, 0, oid, size, typmod, fmt))
    return message(b"T", b"".join(parts))


def data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [struct.pack("!h", len(values))]
    for v in values:
        parts.append(b"\xff\xff\xff\xff" if v is None else struct.pack("!i", len(v)) + v)
    return message(b"D", b"".join(parts))


def _fields(
    severity: str, sqlstate: str, text: str, position: int | None, detail: str | None,
    hint: str | None,
) -> bytes:
    body = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(sqlstate)
    body += b"M" + _cstr(text)
    if detail:
        body += b"D" + _cstr(detail)
    if hint:
        body += b"H" + _cstr(hint)
    if position:
        body += b"P" + _cstr(str(position))
    return body + b"\x00"


def error_response(
    sqlstate: str,
    text: str,
    *,
    severity: str = "ERROR",
    position: int | None = None,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    return message(b"E", _fields(severity, sqlstate, text, position, detail, hint))


def notice_response(text: str, *, severity: str = "NOTICE", sqlstate: str = "00000") -> bytes:
    return message(b"N", _fields(severity, sqlstate, text, None, None, None))
