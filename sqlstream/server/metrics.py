"""Prometheus text exposition of the engine's, the engine thread's and the server's counters.

Every metric is named ``sqlstream_*``; labels name the object (view or sink), the source and
the operator. See docs/server.md for the list.

>>> print(render({"epoch": 3, "rows_in": 10, "readers": [], "pipelines": [], "sinks": []},
...              host=None, wire=None, dead_letters={}, ready=True).splitlines()[5])
sqlstream_ready 1
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlstream.server.host import HostStats
from sqlstream.server.pgwire import WireStats


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._declared: set[str] = set()

    def metric(self, name: str, kind: str, help_: str, samples: Iterable[tuple[Mapping[str, Any], Any]]) -> None:
        if name not in self._declared:
            self.lines.append(f"# HELP {name} {help_}")
            self.lines.append(f"# TYPE {name} {kind}")
            self._declared.add(name)
        for labels, value in samples:
            if value is None:
                continue
            label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{label_text}}} {_number(value)}" if label_text else f"{name} {_number(value)}")

    def one(self, name: str, kind: str, help_: str, value: Any) -> None:
        self.metric(name, kind, help_, [({}, value)])

    def summary(self, name: str, help_: str, total: float, count: int) -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} summary",
                       f"{name}_sum {_number(total)}", f"{name}_count {count}"]


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def render(
    engine: Mapping[str, Any] | None,
    *,
    host: HostStats | None,
    wire: WireStats | None,
    dead_letters: Mapping[str, int],
    ready: bool,
) -> str:
    """The /metrics page. ``engine`` is ``Engine.metrics()`` (None while recovering)."""
    w = _Writer()
    w.one("sqlstream_up", "gauge", "1 while the server process runs.", 1)
    w.one("sqlstream_ready", "gauge", "1 once recovery finished and the engine runs.", ready)
    if engine is not None:
        w.one("sqlstream_epoch", "gauge", "Epoch of the last committed checkpoint.", engine.get("epoch"))
        w.one("sqlstream_rows_in_total", "counter", "Rows read from all sources by this process.",
              engine.get("rows_in"))
        duration = engine.get("checkpoint_duration_ms")
        w.one("sqlstream_checkpoint_duration_seconds", "gauge", "Duration of the last checkpoint.",
              duration / 1000 if duration is not None else None)
        w.one("sqlstream_checkpoint_age_seconds", "gauge",
              "Seconds since the last checkpoint (checkpoint lag).", engine.get("checkpoint_age_s"))
        readers = engine.get("readers", [])
        rl = [({"object": r["object"], "source": r["source"]}, r) for r in readers]
        w.metric("sqlstream_source_rows_in_total", "counter", "Rows read per reader (view or sink, source).",
                 [(labels, r.get("rows")) for labels, r in rl])
        w.metric("sqlstream_source_late_rows_total", "counter",
                 "Rows dropped because they arrived behind the watermark.",
                 [(labels, r.get("late_rows")) for labels, r in rl])
        w.metric("sqlstream_source_skipped_rows_total", "counter",
                 "Bad records skipped (on_error = 'skip').",
                 [(labels, r.get("skipped_rows")) for labels, r in rl])
        w.metric("sqlstream_source_watermark_seconds", "gauge", "Watermark per reader (Unix time).",
                 [(labels, r["watermark_us"] / 1e6) for labels, r in rl
                  if r.get("watermark_us") is not None and r["watermark_us"] < 2**62])
        pipelines = engine.get("pipelines", [])
        w.metric("sqlstream_rows_out_total", "counter", "Changes emitted per materialized view or sink.",
                 [({"object": p["object"], "kind": p["kind"]}, p.get("rows_out")) for p in pipelines])
        w.metric("sqlstream_state_rows", "gauge", "Rows of operator state.",
                 [({"object": p["object"], "operator": op}, n)
                  for p in pipelines for op, n in (p.get("state_rows") or {}).items()])
        w.metric("sqlstream_sink_rows_total", "counter", "Rows delivered per sink.",
                 [({"sink": s["sink"]}, s.get("rows")) for s in engine.get("sinks", [])])
        w.metric("sqlstream_sink_pending_rows", "gauge", "Rows staged for the next checkpoint per sink.",
                 [({"sink": s["sink"]}, s.get("pending")) for s in engine.get("sinks", [])])
    w.metric("sqlstream_dead_letters_total", "counter", "Committed dead-lettered records per source.",
             [({"source": s}, n) for s, n in sorted(dead_letters.items())])
    if host is not None:
        w.summary("sqlstream_epoch_duration_seconds",
                  "Time spent in epochs (poll, process, checkpoint when due).",
                  host.epoch_seconds_total, host.epochs)
        w.one("sqlstream_epoch_last_duration_seconds", "gauge", "Duration of the last epoch.",
              host.last_epoch_seconds)
        w.one("sqlstream_engine_jobs_total", "counter",
              "Work run on the engine thread between epochs (statements, metrics snapshots).", host.jobs)
        w.one("sqlstream_engine_failures_total", "counter",
              "Times the engine failed and was recovered from the last checkpoint.", host.engine_failures)
    if wire is not None:
        w.one("sqlstream_pgwire_connections", "gauge", "Open pgwire connections.", wire.connections)
        w.one("sqlstream_pgwire_connections_total", "counter", "pgwire connections accepted.",
              wire.connections_total)
        w.one("sqlstream_pgwire_queries_total", "counter", "Statements answered over pgwire.", wire.queries)
        w.one("sqlstream_pgwire_errors_total", "counter", "Errors sent over pgwire.", wire.errors)
        w.one("sqlstream_pgwire_auth_failures_total", "counter", "Failed authentications.",
              wire.auth_failures)
        w.one("sqlstream_pgwire_protocol_errors_total", "counter",
              "Connections closed for breaking the protocol.", wire.protocol_errors)
    return "\n".join(w.lines) + "\n"
