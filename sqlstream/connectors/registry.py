"""Connector names to classes, imported lazily so that an unused connector's dependencies
are never loaded."""

from __future__ import annotations

import importlib

from sqlstream.connectors.base import Sink, Source
from sqlstream.errors import InvalidParameterValue

SOURCES = {
    "datagen": "sqlstream.connectors.datagen.source:DatagenSource",
    "file": "sqlstream.connectors.file.source:FileSource",
    "nexmark": "sqlstream.connectors.nexmark.source:NexmarkSource",
}

SINKS = {
    "postgres": "sqlstream.connectors.postgres.sink:PostgresSink",
    "file": "sqlstream.connectors.file.sink:FileSink",
    "console": "sqlstream.connectors.console.sink:ConsoleSink",
    "blackhole": "sqlstream.connectors.blackhole.sink:BlackholeSink",
}


def _load(table: dict[str, str], name: str, what: str) -> type:
    target = table.get(name.lower())
    if target is None:
        known = ", ".join(sorted(table))
        raise InvalidParameterValue(f"unknown {what} connector '{name}' (known: {known})")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def source_class(name: str) -> type[Source]:
    return _load(SOURCES, name, "source")


def sink_class(name: str) -> type[Sink]:
    return _load(SINKS, name, "sink")
