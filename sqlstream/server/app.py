"""``sqlstream serve``: the engine thread, the pgwire listener and the HTTP listener together.

Start-up order: both listeners open at once (``/health`` answers 503 until the engine has
recovered every object from the catalog; statements sent meanwhile wait for it), then the
engine thread recovers. Shut-down (SIGTERM, Ctrl-C): stop accepting, end the sessions, run a
last epoch and a final checkpoint, exit 0.

The same app runs in a background thread for ``sqlstream console`` without ``--host``
(:func:`start_in_thread`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlstream.config import Settings
from sqlstream.server.config import ServerConfig
from sqlstream.server.host import EngineHost
from sqlstream.server.http import HttpServer
from sqlstream.server.introspection import Introspection
from sqlstream.server.metrics import render
from sqlstream.server.pgwire import VERSION_TEXT, PgWireServer

log = logging.getLogger("sqlstream.server")

_METRICS_TIMEOUT_S = 10.0


@dataclass
class Listening:
    host: str
    pgwire_port: int
    http_port: int


def _engine_factory(settings: Settings, catalog_dsn: str) -> Callable[[], Any]:
    def build() -> Any:
        from sqlstream.engine.engine import Engine

        return Engine(settings, catalog_dsn)

    return build


class ServerApp:
    def __init__(
        self,
        settings: Settings,
        config: ServerConfig,
        catalog_dsn: str,
        *,
        engine_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.host = EngineHost(
            engine_factory or _engine_factory(settings, catalog_dsn), idle_sleep=settings.idle_sleep
        )
        self.introspection = Introspection(
            catalog_dsn, version=VERSION_TEXT, engine_metrics=self._engine_metrics_blocking
        )
        self.wire = PgWireServer(self.host, self.introspection, config)
        self.http = HttpServer({"/health": self._health, "/metrics": self._metrics})

    # -- pages ---------------------------------------------------------------------------------

    def _engine_metrics_blocking(self) -> dict[str, Any] | None:
        """Engine.metrics() from a thread other than the engine's (introspection's)."""
        if not self.host.ready:
            return None
        try:
            return self.host.submit(lambda e: e.metrics()).result(timeout=_METRICS_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - metrics are best effort while the engine recovers
            return None

    async def _health(self) -> tuple[int, str, str]:
        if self.host.ready:
            return 200, "text/plain", "ok\n"
        return 503, "text/plain", f"{self.host.state}\n"

    async def _metrics(self) -> tuple[int, str, str]:
        engine = None
        if self.host.ready:
            try:
                engine = await asyncio.wait_for(
                    asyncio.wrap_future(self.host.submit(lambda e: e.metrics())), _METRICS_TIMEOUT_S
                )
            except Exception:  # noqa: BLE001 - report what we have
                engine = None
        try:
            dead = await self.introspection.call(lambda i: i.dead_letter_counts())
        except Exception:  # noqa: BLE001 - the catalog may be down: the rest still helps
            dead = {}
        text = render(engine, host=self.host.stats, wire=self.wire.stats, dead_letters=dead,
                      ready=self.host.ready)
        return 200, "text/plain; version=0.0.4; charset=utf-8", text

    # -- running ---------------------------------------------------------------------------------

    async def run(
        self,
        stop: asyncio.Event,
        *,
        on_listening: Callable[[Listening], None] | None = None,
        on_ready: Callable[[Listening], None] | None = None,
    ) -> None:
        """Serve until ``stop`` is set. Raises the recovery error if the engine cannot start."""
        host = self.config.host
        try:
            pg_port = await self.wire.start(host, self.settings.pgwire_port)
            http_port = await self.http.start(host, self.settings.http_port)
        except BaseException:
            await self.wire.close()
            self.introspection.close()
            raise
        listening = Listening(host, pg_port, http_port)
        if on_listening:
            on_listening(listening)
        self.host.start()
        try:
            while not self.host.wait_ready(0) and self.host.startup_error is None:
                if self.host.state != "starting" or stop.is_set():
                    break
                await asyncio.sleep(0.05)
            if self.host.startup_error is not None:
                raise self.host.startup_error
            if on_ready and not stop.is_set():
                on_ready(listening)
            await stop.wait()
        finally:
            await self.wire.close()
            await self.http.close()
            self.host.stop()
            await asyncio.get_running_loop().run_in_executor(None, self.host.join)
            self.introspection.close()


@dataclass
class Embedded:
    """A server running in a background thread (``sqlstream console`` without --host)."""

    listening: Listening
    _loop: asyncio.AbstractEventLoop
    _stop: asyncio.Event
    _thread: threading.Thread

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()


def start_in_thread(app: ServerApp, *, timeout: float = 300.0) -> Embedded:
    """Run ``app`` in a thread; returns once the engine has recovered (or raises its error)."""
    started = threading.Event()
    box: dict[str, Any] = {}

    def main() -> None:
        async def body() -> None:
            box["loop"] = asyncio.get_running_loop()
            box["stop"] = stop = asyncio.Event()

            def ready(listening: Listening) -> None:
                box["listening"] = listening
                started.set()

            await app.run(stop, on_ready=ready)

        try:
            asyncio.run(body())
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e
        finally:
            started.set()

    thread = threading.Thread(target=main, name="sqlstream-embedded-server", daemon=True)
    thread.start()
    started.wait(timeout)
    if "error" in box:
        raise box["error"]
    if "listening" not in box:
        raise TimeoutError("the embedded server did not start in time")
    return Embedded(box["listening"], box["loop"], box["stop"], thread)
