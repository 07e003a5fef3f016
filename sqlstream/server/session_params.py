"""Per-connection run-time parameters, as a Postgres session has them.

Drivers set and read a handful of Postgres parameters (``application_name``,
``extra_float_digits``, ``DateStyle``, ``search_path`` ...). These belong to the
connection, not to the engine, so ``SET``/``SHOW``/``RESET`` of them are answered here; any
other ``SET`` goes to the engine (which accepts unknown settings with a notice).

>>> p = SessionParams(user="alice", version="15.0 (sqlstream 0.1.0)")
>>> parse_set("SET TIME ZONE 'Europe/Paris'"), parse_set("set application_name to 'x'")
(('timezone', 'Europe/Paris'), ('application_name', 'x'))
>>> p.set("application_name", "x"), p.show("application_name")
(('application_name', 'x'), 'x')
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field

from sqlstream.errors import FeatureNotSupported, InvalidParameterValue

#: parameters a client may set, with their defaults (keys lower-case)
SETTABLE: dict[str, str] = {
    "application_name": "",
    "client_encoding": "UTF8",
    "datestyle": "ISO, MDY",
    "timezone": "UTC",
    "intervalstyle": "postgres",
    "extra_float_digits": "1",
    "search_path": '"$user", public',
    "statement_timeout": "0",
    "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
    "idle_session_timeout": "0",
    "client_min_messages": "notice",
    "standard_conforming_strings": "on",
    "bytea_output": "hex",
    "default_transaction_isolation": "read committed",
    "transaction_isolation": "read committed",
    "default_transaction_read_only": "off",
    "transaction_read_only": "off",
    "synchronous_commit": "on",
    "jit": "off",
    "geqo": "on",
    "row_security": "on",
    "lc_monetary": "C",
    "lc_numeric": "C",
    "lc_time": "C",
}

#: parameters reported with ParameterStatus (Postgres's GUC_REPORT set), by display name
REPORTED = {
    "application_name": "application_name",
    "client_encoding": "client_encoding",
    "datestyle": "DateStyle",
    "default_transaction_read_only": "default_transaction_read_only",
    "in_hot_standby": "in_hot_standby",
    "integer_datetimes": "integer_datetimes",
    "intervalstyle": "IntervalStyle",
    "is_superuser": "is_superuser",
    "server_encoding": "server_encoding",
    "server_version": "server_version",
    "session_authorization": "session_authorization",
    "standard_conforming_strings": "standard_conforming_strings",
    "timezone": "TimeZone",
}

_UTF8 = {"utf8", "utf-8", "unicode"}
_SET = re.compile(
    r"^\s*SET\s+(?:SESSION\s+|LOCAL\s+)?(?:(TIME\s+ZONE)|(\"[^\"]+\"|[A-Za-z_][\w.]*))\s*(?:(?:TO|=)\s*)?(.*?)\s*;?\s*$",
    re.I | re.S,
)


def parse_set(text: str) -> tuple[str, str] | None:
    """(name, value) of ``SET [SESSION|LOCAL] name {TO|=} value`` (quotes removed)."""
    m = _SET.match(text)
    if not m:
        return None
    name = "timezone" if m.group(1) else m.group(2).strip('"').lower()
    return name, unquote(m.group(3))


def unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if value.upper().startswith("E'") and value.endswith("'"):
        return value[2:-1].replace("''", "'").replace("\\\\", "\\")
    return value


@dataclass
class SessionParams:
    user: str
    version: str
    values: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = {**SETTABLE, **{k.lower(): v for k, v in self.values.items()}}

    def fixed(self) -> dict[str, str]:
        """Read-only parameters of the server."""
        return {
            "server_version": self.version,
            "server_version_num": "150000",
            "server_encoding": "UTF8",
            "integer_datetimes": "on",
            "is_superuser": "on",
            "session_authorization": self.user,
            "in_hot_standby": "off",
            "max_identifier_length": "63",
            "block_size": "8192",
            "lc_collate": "C",
            "lc_ctype": "C",
            "lc_messages": "C",
            "max_connections": "1000",
        }

    def known(self, name: str) -> bool:
        name = name.lower()
        return name in self.values or name in self.fixed() or name in (
            "transaction isolation level", "transaction_isolation",
        )

    def show(self, name: str) -> str:
        name = name.lower()
        if name == "transaction isolation level":
            name = "transaction_isolation"
        if name in self.fixed():
            return self.fixed()[name]
        return self.values[name]

    def set(self, name: str, value: str) -> tuple[str, str] | None:
        """Set a parameter; returns (display name, value) when clients must be told
        (ParameterStatus), else None. Raises for a value sqlstream cannot honour."""
        name = name.lower()
        if name in self.fixed():
            raise InvalidParameterValue(f'parameter "{name}" cannot be changed', sqlstate="55P02")
        if value.upper() == "DEFAULT" or value == "":
            value = SETTABLE.get(name, "")
        if name == "client_encoding" and value.lower() not in _UTF8:
            raise FeatureNotSupported("sqlstream speaks UTF8 only; set client_encoding to UTF8")
        if name == "client_encoding":
            value = "UTF8"
        if name == "datestyle" and not value.upper().startswith("ISO"):
            raise FeatureNotSupported("sqlstream writes dates in the ISO style only (DateStyle 'ISO, MDY')")
        if name == "standard_conforming_strings" and value.lower() not in ("on", "true", "1"):
            raise FeatureNotSupported("standard_conforming_strings cannot be turned off")
        if name == "timezone":
            value = _check_timezone(value)
        self.values[name] = value
        return (REPORTED[name], value) if name in REPORTED else None

    def reset(self, name: str) -> tuple[str, str] | None:
        return self.set(name, "DEFAULT")

    def reported(self) -> list[tuple[str, str]]:
        """Every parameter to announce after authentication."""
        merged = {**self.values, **self.fixed()}
        return [(display, merged[key]) for key, display in REPORTED.items()]

    @property
    def timezone(self) -> zoneinfo.ZoneInfo:
        return _zone(self.values["timezone"])


def _zone(name: str) -> zoneinfo.ZoneInfo:
    if name.upper() in ("UTC", "GMT", "Z", "ZULU"):
        return zoneinfo.ZoneInfo("UTC")
    return zoneinfo.ZoneInfo(name)


def _check_timezone(value: str) -> str:
    try:
        _zone(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidParameterValue(f'invalid value for parameter "TimeZone": "{value}"') from None
    return value
