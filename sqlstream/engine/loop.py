"""Running a job: epochs until stopped, checkpoints on cadence, a clean final checkpoint.

``run_job`` also owns the answer to a catalog that goes away: the engine is dropped, and once
the catalog answers again a new one is recovered from the last checkpoint. Sources replay
from the committed offsets, so nothing is lost and, thanks to the commit protocol, nothing
is delivered twice.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from sqlstream.config import Settings
from sqlstream.engine.engine import Engine, Result
from sqlstream.errors import CatalogError

log = logging.getLogger("sqlstream")


@dataclass
class JobOptions:
    once: bool = False
    resets: frozenset[str] = frozenset()
    progress: bool = False
    #: called with each statement's result (the CLI prints them)
    on_result: Callable[[Result], None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    #: seconds to keep retrying a lost catalog before giving up (None = forever)
    catalog_retry_limit: float | None = None


def _progress_line(engine: Engine, started: float, rows_at_start: tuple[int, int]) -> str:
    elapsed = max(time.monotonic() - started, 1e-9)
    out = sum(p.rows_out for p in engine.pipelines.values())
    rate_in = (engine.rows_in - rows_at_start[0]) / elapsed
    rate_out = (out - rows_at_start[1]) / elapsed
    ckpt = engine.last_checkpoint
    last = (
        f"checkpoint {ckpt.epoch} ({ckpt.duration_ms:.0f} ms, "
        f"{time.monotonic() - engine.last_checkpoint_at:.1f}s ago)"
        if ckpt
        else "no checkpoint yet"
    )
    return (
        f"rows in {engine.rows_in:,} ({rate_in:,.0f}/s) | rows out {out:,} ({rate_out:,.0f}/s) "
        f"| {last}"
    )


def run_engine(engine: Engine, opts: JobOptions) -> None:
    """Epochs until stopped (or, with ``once``, until the input available now is read)."""
    if opts.once:
        engine.freeze()
    started = time.monotonic()
    rows_at_start = (engine.rows_in, sum(p.rows_out for p in engine.pipelines.values()))
    last_progress = 0.0
    while not opts.stop.is_set():
        rows = engine.run_epoch()
        if engine.checkpoint_due():
            engine.checkpoint(wait=False)
        if opts.progress and time.monotonic() - last_progress > 0.5:
            last_progress = time.monotonic()
            sys.stderr.write("\r\x1b[K" + _progress_line(engine, started, rows_at_start))
            sys.stderr.flush()
        if rows == 0:
            if engine.finished():
                break
            opts.stop.wait(engine.settings.idle_sleep)
    # Bounded input ends with every window closed: one more epoch moves the watermarks.
    engine.run_epoch()
    engine.checkpoint()
    if opts.progress:
        sys.stderr.write("\r\x1b[K" + _progress_line(engine, started, rows_at_start) + "\n")


def run_job(settings: Settings, catalog_dsn: str, job_sql: str, opts: JobOptions) -> None:
    """Run a job file's statements, then the graph, surviving catalog outages."""
    outage_since: float | None = None
    backoff = 0.5
    while True:
        try:
            engine = Engine(settings, catalog_dsn, resets=opts.resets)
        except CatalogError as e:
            if "another sqlstream" in str(e) or outage_since is None:
                raise
            outage_since = _wait(outage_since, backoff, opts, e)
            backoff = min(backoff * 2, 10)
            continue
        try:
            outage_since, backoff = None, 0.5
            for result in engine.execute_script(job_sql, resets=opts.resets):
                if opts.on_result:
                    opts.on_result(result)
            opts.resets = frozenset()  # a reset applies to the first start only
            run_engine(engine, opts)
            return
        except psycopg.OperationalError as e:
            log.warning("catalog database unavailable (%s); recovering when it returns", e)
            outage_since = _wait(time.monotonic(), backoff, opts, e)
        finally:
            try:
                engine.close()
            except Exception:  # noqa: BLE001 - the connection may already be gone
                pass


def _wait(since: float, backoff: float, opts: JobOptions, error: Exception) -> float:
    if opts.catalog_retry_limit is not None and time.monotonic() - since > opts.catalog_retry_limit:
        raise CatalogError(f"catalog database unavailable for too long: {error}") from error
    if opts.stop.wait(backoff):
        raise KeyboardInterrupt
    return since


def install_signal_handlers(stop: threading.Event) -> None:
    """Ctrl-C and SIGTERM finish the current epoch, checkpoint, and exit."""

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():  # a second Ctrl-C: leave now
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
