"""The engine thread: one :class:`~sqlstream.engine.engine.Engine`, its epochs, and a queue of
work submitted by client sessions.

The Engine is not thread-safe, so exactly one thread touches it. Sessions (asyncio) call
:meth:`EngineHost.submit` with a function of the engine and await the returned
``concurrent.futures.Future``; the thread runs queued work between epochs, so a slow client
never stalls the engine, and a long epoch never blocks the event loop.

Between two epochs the thread runs the work that was waiting when it looked, not work that
arrives meanwhile, so a flood of statements cannot starve the epochs (and the epochs, which
are bounded by ``batch_rows``, cannot starve the statements).

If the catalog database goes away (or an epoch fails), the engine is dropped and a new one is
recovered from the last checkpoint once the catalog answers again, as ``sqlstream run`` does.

>>> host = EngineHost(factory=lambda: _FakeEngine())
>>> host.start(); host.wait_ready(5)
True
>>> host.submit(lambda e: e.name).result(5)
'fake'
>>> host.stop(); host.join(5)
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from sqlstream.errors import CatalogError, SqlStreamError

log = logging.getLogger("sqlstream.server")

T = TypeVar("T")


class EngineUnavailable(SqlStreamError):
    """Work submitted while the engine is recovering or shutting down."""

    sqlstate = "57P03"


class ShuttingDown(SqlStreamError):
    sqlstate = "57P01"


def _is_catalog_failure(e: BaseException) -> bool:
    return isinstance(e, psycopg.OperationalError | psycopg.InterfaceError | CatalogError)


@dataclass
class HostStats:
    """Counters of the engine thread (exported as metrics)."""

    epochs: int = 0
    epoch_seconds_total: float = 0.0
    last_epoch_seconds: float = 0.0
    jobs: int = 0
    engine_failures: int = 0
    recoveries: int = 0


class EngineHost:
    """Owns the engine thread. ``factory`` builds (and thereby recovers) an engine."""

    def __init__(self, factory: Callable[[], Any], *, idle_sleep: float = 0.02) -> None:
        self._factory = factory
        self._idle_sleep = idle_sleep
        self._queue: queue.Queue[tuple[Callable[[Any], Any], cf.Future[Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._started = threading.Event()  # the first recovery finished (or failed)
        self._thread = threading.Thread(target=self._main, name="sqlstream-engine", daemon=True)
        self.engine: Any = None
        #: the error that ended the first recovery (the server cannot start)
        self.startup_error: BaseException | None = None
        self.stats = HostStats()
        self.state = "starting"
        self._current: cf.Future[Any] | None = None
        self._lock = threading.Lock()
        self._closed = False  # the thread ended: nothing will run what is submitted

    # -- control (any thread) -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def ready(self) -> bool:
        """Recovery finished and the engine runs (what /health reports)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the first recovery; True when the engine runs."""
        self._started.wait(timeout)
        return self._ready.is_set()

    def stop(self) -> None:
        """Ask the thread to finish: pending work fails, then a final epoch and checkpoint."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def interrupt(self, job: cf.Future[Any]) -> bool:
        """Interrupt ``job`` if it is running now (a CancelRequest for a long ad-hoc query).

        Needs ``Engine.interrupt_query()``: a thread-safe call that stops the ad-hoc query
        running on the engine thread, if any, and does nothing otherwise (never an epoch).
        Without it, the query runs to its end and only its result is dropped.
        """
        interrupt = getattr(self.engine, "interrupt_query", None)
        if interrupt is None or self._current is not job:
            return False
        interrupt()
        return True

    def submit(self, fn: Callable[[Any], T]) -> cf.Future[T]:
        """Run ``fn(engine)`` on the engine thread."""
        future: cf.Future[T] = cf.Future()
        with self._lock:
            if self._stop.is_set() or self._closed:
                future.set_exception(ShuttingDown("the server is shutting down"))
            elif self._started.is_set() and not self._ready.is_set():
                future.set_exception(
                    EngineUnavailable("the engine is recovering (catalog database unavailable); try again")
                )
            else:
                self._queue.put((fn, future))
        return future

    # -- the thread ---------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._serve()
        finally:
            with self._lock:
                self._closed = True
            self._fail_pending(ShuttingDown("the server is shutting down"))

    def _serve(self) -> None:
        try:
            self.engine = self._factory()
        except BaseException as e:  # noqa: BLE001 - reported to the caller of wait_ready
            self.startup_error = e
            self.state = "failed"
            self._started.set()
            self._fail_pending(e)
            return
        self._ready.set()
        self.state = "ready"
        self._started.set()
        while not self._stop.is_set():
            try:
                self._run_engine()
            except BaseException as e:  # noqa: BLE001 - the engine broke: rebuild it
                self.stats.engine_failures += 1
                if self._stop.is_set():
                    break
                self._recover(e)
        self._shutdown()

    def _run_engine(self) -> None:
        engine = self.engine
        while not self._stop.is_set():
            self._run_jobs(block=False)
            started = time.monotonic()
            rows = engine.run_epoch()
            if engine.checkpoint_due():
                engine.checkpoint(wait=False)
            took = time.monotonic() - started
            self.stats.epochs += 1
            self.stats.epoch_seconds_total += took
            self.stats.last_epoch_seconds = took
            if rows == 0:
                self._run_jobs(block=True)

    def _run_jobs(self, *, block: bool) -> None:
        try:
            first = self._queue.get(timeout=self._idle_sleep) if block else self._queue.get_nowait()
        except queue.Empty:
            return
        waiting = self._queue.qsize()
        self._run_job(*first)
        for _ in range(waiting):
            try:
                self._run_job(*self._queue.get_nowait())
            except queue.Empty:
                break

    def _run_job(self, fn: Callable[[Any], Any], future: cf.Future[Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return  # cancelled (CancelRequest) before it started
        self.stats.jobs += 1
        self._current = future
        try:
            result = fn(self.engine)
        except BaseException as e:  # noqa: BLE001 - every error goes back to the session
            future.set_exception(e)
            if _is_catalog_failure(e) or self.engine.broken is not None:
                raise  # the catalog is gone, or a checkpoint failed: rebuild the engine
            return
        finally:
            self._current = None
        future.set_result(result)

    def _recover(self, error: BaseException) -> None:
        """Drop the broken engine; build a new one from the last checkpoint, with backoff."""
        self._ready.clear()
        self.state = "recovering"
        if _is_catalog_failure(error):
            log.warning("catalog database unavailable (%s); recovering when it returns", error)
        else:
            log.error("the engine failed (%s: %s); recovering from the last checkpoint",
                      type(error).__name__, error, exc_info=error)
        self._close_engine()
        self._fail_pending(EngineUnavailable(f"the engine is recovering: {error}"))
        backoff = 0.5
        while not self._stop.wait(backoff):
            try:
                self.engine = self._factory()
            except BaseException as e:  # noqa: BLE001 - keep trying until stopped
                log.warning("recovery failed (%s); retrying in %.1fs", e, backoff)
                self._fail_pending(EngineUnavailable(f"the engine is recovering: {e}"))
                backoff = min(backoff * 2, 10.0)
                continue
            self.stats.recoveries += 1
            self._ready.set()
            self.state = "ready"
            log.warning("recovered from the last checkpoint")
            return

    def _shutdown(self) -> None:
        self._ready.clear()
        self.state = "stopping"
        self._fail_pending(ShuttingDown("the server is shutting down"))
        if self.engine is not None:
            try:
                # Like `sqlstream run`: one more epoch, then a final checkpoint.
                self.engine.run_epoch()
                self.engine.checkpoint()
            except Exception as e:  # noqa: BLE001 - the last checkpoint stays valid
                log.error("final checkpoint failed: %s", e)
            self._close_engine()
        self.state = "stopped"

    def _close_engine(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            try:
                engine.close()
            except Exception:  # noqa: BLE001 - its connection may already be gone
                pass

    def _fail_pending(self, error: BaseException) -> None:
        while True:
            try:
                _, future = self._queue.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(error)


class _FakeEngine:
    """A stand-in engine for the doctest."""

    name = "fake"

    def run_epoch(self) -> int:
        return 0

    def checkpoint_due(self) -> bool:
        return False

    def checkpoint(self) -> None:
        pass

    def close(self) -> None:
        pass
