"""The HTTP endpoint: ``GET /health`` and ``GET /metrics`` (Prometheus text format).

A few lines of asyncio rather than a framework: two read-only pages, one request per
connection. ``/health`` answers 200 only once recovery has finished and the engine runs
(503 before, and while it recovers from a catalog outage), so an orchestrator can wait for it.

>>> parse_request_line(b"GET /metrics?x=1 HTTP/1.1")
('GET', '/metrics')
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("sqlstream.server")

_MAX_HEADER = 16 * 1024
_TIMEOUT_S = 10.0

Page = Callable[[], Awaitable[tuple[int, str, str]]]  # () -> (status, content type, body)

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
            500: "Internal Server Error", 503: "Service Unavailable"}


def parse_request_line(line: bytes) -> tuple[str, str]:
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError("bad request line")
    return parts[0].upper(), parts[1].split("?", 1)[0]


class HttpServer:
    def __init__(self, pages: dict[str, Page]) -> None:
        self.pages = pages
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEADER:
                raise ValueError("headers too large")
            method, path = parse_request_line(head.split(b"\r\n", 1)[0])
            if path not in self.pages:
                status, ctype, body = 404, "text/plain", "not found\n"
            elif method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", "only GET\n"
            else:
                try:
                    status, ctype, body = await self.pages[path]()
                except Exception as e:  # noqa: BLE001 - a page error is a 500, not a crash
                    log.exception("HTTP %s failed", path)
                    status, ctype, body = 500, "text/plain", f"error: {e}\n"
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else data)
            )
            await writer.drain()
        except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            try:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
            except Exception:  # noqa: BLE001
                pass
        except (TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
