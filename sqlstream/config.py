"""Settings: command-line flags > ``SQLSTREAM_*`` environment variables > defaults.

>>> s = Settings.load({"checkpoint_interval": "250ms"}, env={"SQLSTREAM_BATCH_ROWS": "1000"})
>>> s.checkpoint_interval, s.batch_rows
(0.25, 1000)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from sqlstream.errors import InvalidParameterValue

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str | float) -> float:
    """Seconds from '1s', '250ms', '2m', '1.5' (seconds).

    >>> parse_duration("250ms"), parse_duration("2m"), parse_duration(3)
    (0.25, 120.0, 3.0)
    """
    if isinstance(text, int | float):
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise InvalidParameterValue(f"invalid duration '{text}' (use e.g. 500ms, 1s, 2m)")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


@dataclass
class Settings:
    #: libpq URL of the catalog database; None = a private Postgres under data_dir
    catalog: str | None = None
    #: where the private catalog Postgres and file-sink staging live
    data_dir: Path = Path(".sqlstream")
    #: seconds between checkpoints
    checkpoint_interval: float = 1.0
    #: most rows taken from one source in one poll; large batches amortise DuckDB's fixed cost
    batch_rows: int = 1_000_000
    #: seconds an idle epoch loop sleeps before polling again
    idle_sleep: float = 0.02
    pgwire_port: int = 4566
    http_port: int = 4567

    @classmethod
    def load(
        cls, flags: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        env = os.environ if env is None else env
        flags = flags or {}
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = flags.get(f.name)
            if raw is None:
                raw = env.get(f"SQLSTREAM_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _convert(f.name, raw)
        return cls(**values)  # type: ignore[arg-type]


def _convert(name: str, raw: object) -> object:
    if name == "data_dir":
        return Path(str(raw))
    if name in ("checkpoint_interval", "idle_sleep"):
        return parse_duration(raw)  # type: ignore[arg-type]
    if name in ("batch_rows", "pgwire_port", "http_port"):
        try:
            return int(raw)  # type: ignore[call-overload]
        except ValueError:
            raise InvalidParameterValue(f"{name} must be an integer, not '{raw}'") from None
    return raw
