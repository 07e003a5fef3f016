"""The file source: JSON-lines, CSV or Parquet files appearing in a directory.

Files matching ``pattern`` in ``path`` are read in name order, each exactly once; new files
are picked up as they appear (the directory is listed at most every 100 ms, when there is
nothing left to read). Names starting with ``.`` or ``_`` are ignored: a writer writes to
such a name and renames the finished file into place, so a half-written file is never read.
Compressed files (``.gz``, ``.bz2``, ``.zst``, ``.lz4``) are decompressed by extension.

The single partition '0' has the offset ``{"done": [names], "file": name | None, "row": n}``:
the files read completely, the file being read and how many of its records (good and bad)
have been consumed. Seeking to it continues exactly after that record, so a restart from a
checkpoint neither loses nor repeats a row, provided files are not changed once in place.

>>> src = FileSource(ctx, schema, {"path": "data/orders", "pattern": "*.jsonl"},
...                  Format("plain", "json"))  # doctest: +SKIP
>>> src.poll(10_000)  # doctest: +SKIP
SourceBatch(data=pyarrow.Table ..., offsets={'0': {'done': [...], 'file': None, 'row': 0}})
"""

from __future__ import annotations

import bisect
import fnmatch
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sqlstream.connectors.base import ConnectorContext, DeadLetter, Format, Source, SourceBatch
from sqlstream.connectors.options import OptionSpec
from sqlstream.errors import DataException, InvalidParameterValue
from sqlstream.formats.decode import (
    Decoded,
    Rejected,
    check_schema,
    conform,
    decode_csv,
    decode_json,
)
from sqlstream.types import Schema, arrow_schema

PARTITION = "0"
#: how often the directory is listed at most, in seconds
LIST_INTERVAL = 0.1
#: how much of an unreadable file is kept as the raw bytes of its dead letter
RAW_LIMIT = 64 * 1024
ENCODINGS = ("json", "csv", "parquet")


class _OpenFile:
    """A decoded file and how far it has been consumed."""

    def __init__(self, name: str, decoded: Decoded, pos: int) -> None:
        self.name = name
        self.decoded = decoded
        self.pos = min(pos, decoded.records)  # next record number
        self.row = int(np.searchsorted(decoded.index, self.pos))  # next good row
        self.rej = bisect.bisect_left([r.index for r in decoded.rejected], self.pos)

    @property
    def exhausted(self) -> bool:
        return self.pos >= self.decoded.records

    def take(self, budget: int) -> tuple[pa.Table, list[Rejected]]:
        """Up to ``budget`` good rows, plus the rejected records among them."""
        d = self.decoded
        k = min(budget, len(d.index) - self.row)
        if self.row + k < len(d.index):
            new_pos = int(d.index[self.row + k - 1]) + 1
        else:  # the last good row: the bad records after it go too
            new_pos = d.records
        table = d.table.slice(self.row, k)
        rej_end = bisect.bisect_left([r.index for r in d.rejected], new_pos, lo=self.rej)
        rejected = d.rejected[self.rej : rej_end]
        self.row, self.rej, self.pos = self.row + k, rej_end, new_pos
        return table, rejected


class FileSource(Source):
    """Rows from files in a directory; see the module docstring and docs/connectors/file.md."""

    options_spec = [
        OptionSpec("path", required=True, description="directory to read files from"),
        OptionSpec("pattern", default="*", description="glob the file names must match"),
        OptionSpec(
            "csv.header",
            default="true",
            choices=("true", "false"),
            description="CSV files start with a line of column names",
        ),
        OptionSpec("csv.delimiter", default=",", description="CSV field separator"),
    ]

    def __init__(
        self, ctx: ConnectorContext, schema: Schema, options: dict[str, str], fmt: Format | None
    ) -> None:
        super().__init__(ctx, schema, options, fmt)
        self._dir = Path(self.options["path"]).expanduser()
        if self._dir.exists() and not self._dir.is_dir():
            self._bad(f"path '{self._dir}' is not a directory")
        self._pattern = self.options["pattern"]
        self._encode = self._encoding(fmt)
        check_schema(schema, self._encode)
        self._header, self._delimiter = self._csv_options(fmt)
        self._empty = arrow_schema(schema).empty_table()

        self._done: set[str] = set()
        self._file: _OpenFile | None = None
        self._resume: tuple[str, int] | None = None  # (file, row) from seek
        self._queue: list[str] = []
        self._listed_at = -float("inf")
        self._frozen: list[str] | None = None  # the listing fixed by freeze()
        self._gone: set[str] = set()  # listed, then vanished before it was opened

    # -- options
    def _bad(self, msg: str) -> None:
        raise InvalidParameterValue(f"source {self.ctx.name}: {msg}")

    def _encoding(self, fmt: Format | None) -> str:
        if fmt is None:
            self._bad("the file source needs FORMAT PLAIN ENCODE JSON | CSV | PARQUET")
        if fmt.format.lower() != "plain":
            self._bad(f"the file source reads FORMAT PLAIN only, not {fmt.format.upper()}")
        encode = fmt.encode.lower()
        if encode not in ENCODINGS:
            self._bad(f"the file source cannot read ENCODE {encode.upper()} (JSON, CSV, PARQUET)")
        return encode

    def _csv_options(self, fmt: Format | None) -> tuple[bool, str]:
        """``csv.header`` / ``csv.delimiter``, or the sink-style ``ENCODE CSV (header, delimiter)``."""
        fopts = {k.lower(): v for k, v in (fmt.options if fmt else {}).items()}
        allowed = {"header", "delimiter"} if self._encode == "csv" else set()
        unknown = set(fopts) - allowed
        if unknown:
            self._bad(
                f"unknown ENCODE {self._encode.upper()} option(s): {', '.join(sorted(unknown))}"
            )
        header = fopts.get("header", self.options["csv.header"]).lower()
        if header not in ("true", "false"):
            self._bad(f"csv header must be true or false, not '{header}'")
        delimiter = fopts.get("delimiter", self.options["csv.delimiter"])
        delimiter = {"\\t": "\t", "tab": "\t"}.get(delimiter, delimiter)
        if len(delimiter) != 1 or delimiter in ('"', "\n", "\r"):
            self._bad(f"csv delimiter must be one character other than a quote, not '{delimiter}'")
        return header == "true", delimiter

    # -- directory
    def _list(self) -> list[str] | None:
        """Names of the complete, matching files now present (None: no such directory)."""
        if self._frozen is not None:
            return self._frozen
        try:
            with os.scandir(self._dir) as it:
                names = [
                    e.name
                    for e in it
                    if not e.name.startswith((".", "_"))
                    and fnmatch.fnmatchcase(e.name, self._pattern)
                    and e.is_file()
                ]
        except (FileNotFoundError, NotADirectoryError):
            return None
        return sorted(names)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._listed_at < LIST_INTERVAL:
            return
        self._listed_at = now
        names = self._list()
        if names is None:
            return
        present = set(names)
        if self._resume and self._resume[0] not in present:
            self._resume = None  # the file being read is gone
        # forget files that left the directory, so the offset does not grow without bound
        self._done &= present
        current = self._file.name if self._file else None
        queue = [n for n in names if n not in self._done and n != current and n not in self._gone]
        if self._resume and self._resume[0] in queue:
            queue.remove(self._resume[0])
            queue.insert(0, self._resume[0])  # continue the file that was being read
        self._queue = queue

    # -- reading
    def _read(self, name: str) -> Decoded:
        path = self._dir / name
        if self._encode == "parquet":
            try:
                return _whole(conform(pq.read_table(path), self.schema), self.schema)
            except (pa.ArrowException, DataException, OSError) as e:
                if isinstance(e, FileNotFoundError):
                    raise
                return _unreadable(path, self.schema, f"unreadable Parquet file: {e}")
        try:
            with pa.input_stream(str(path), compression="detect") as stream:
                data = stream.read()
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as e:
            return _unreadable(path, self.schema, f"unreadable file: {e}")
        if self._encode == "json":
            return decode_json(data, self.schema)
        return decode_csv(data, self.schema, header=self._header, delimiter=self._delimiter)

    def _open_next(self) -> bool:
        while self._queue:
            name = self._queue.pop(0)
            try:
                decoded = self._read(name)
            except FileNotFoundError:
                self._gone.add(name)
                if self._resume and self._resume[0] == name:
                    self._resume = None
                continue
            pos = 0
            if self._resume and self._resume[0] == name:
                pos = self._resume[1]
            self._resume = None
            self._file = _OpenFile(name, decoded, pos)
            return True
        return False

    # -- Source API
    def partitions(self) -> list[str]:
        return [PARTITION]

    def seek(self, offsets: dict[str, Any]) -> None:
        off = offsets.get(PARTITION) or {}
        self._done = set(off.get("done", []))
        self._file = None
        self._resume = (off["file"], int(off.get("row", 0))) if off.get("file") else None
        self._queue = []
        self._listed_at = -float("inf")

    def _offset(self) -> dict[str, Any]:
        f = self._file
        return {
            "done": sorted(self._done),
            "file": f.name if f else (self._resume[0] if self._resume else None),
            "row": f.pos if f else (self._resume[1] if self._resume else 0),
        }

    def poll(self, max_rows: int) -> SourceBatch | None:
        budget = max(1, max_rows)
        tables: list[pa.Table] = []
        dead: list[DeadLetter] = []
        while budget > 0:
            if self._file is None:
                if not self._queue:
                    self._refresh()
                if not self._open_next():
                    break
            f = self._file
            assert f is not None
            table, rejected = f.take(budget)
            if table.num_rows:
                tables.append(table)
            budget -= table.num_rows + len(rejected)
            dead += [
                # line 0: the whole file could not be read
                DeadLetter(
                    PARTITION,
                    {"file": f.name, "line": r.line} if r.line else {"file": f.name},
                    r.raw,
                    r.reason,
                )
                for r in rejected
            ]
            if f.exhausted:
                self._done.add(f.name)
                self._file = None
        if not tables and not dead:
            return None
        data = pa.concat_tables(tables) if tables else self._empty
        return SourceBatch(data, {PARTITION: self._offset()}, dead)

    def freeze(self) -> None:
        self._frozen = None  # list the directory itself once more
        listing = self._list()
        self._frozen = listing or []
        self._refresh(force=True)

    def finished(self) -> bool:
        if self._frozen is None or self._file is not None:
            return False
        return all(n in self._done or n in self._gone for n in self._frozen)


def _whole(table: pa.Table, schema: Schema) -> Decoded:
    return Decoded(table, np.arange(table.num_rows, dtype=np.int64), [], table.num_rows)


def _unreadable(path: Path, schema: Schema, reason: str) -> Decoded:
    """A file that cannot be read at all: one rejected record holding (the start of) it."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(RAW_LIMIT + 1)
    except OSError:
        raw = b""
    if len(raw) > RAW_LIMIT:
        raw, reason = raw[:RAW_LIMIT], f"{reason} (raw bytes truncated to {RAW_LIMIT})"
    empty = Decoded.empty(schema)
    return Decoded(empty.table, empty.index, [Rejected(0, 0, raw, reason[:500])], 1)
