"""The Postgres wire-protocol (v3) server: connections, startup, authentication, cancel.

A connection starts with an optional ``SSLRequest`` (answered ``N``, or TLS when a
certificate is configured) or ``GSSENCRequest`` (``N``), then the startup packet; a
``CancelRequest`` arrives on a connection of its own. Authentication is SCRAM-SHA-256
(:mod:`sqlstream.server.scram`) or, when explicitly configured, trust. Then a
:class:`~sqlstream.server.session.Session` serves the connection.

Every connection is its own asyncio task: a broken, slow or malicious client ends (or waits
on) its own connection only. A protocol violation -- bad length, unknown message type,
truncated body, oversized message -- gets a FATAL ErrorResponse (08P01, or 54000 for size)
and the connection is closed.

>>> SERVER_VERSION.startswith("15.0 (sqlstream")
True
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from dataclasses import dataclass

from sqlstream import __version__
from sqlstream.errors import SqlStreamError
from sqlstream.server import protocol as pq
from sqlstream.server.config import ServerConfig
from sqlstream.server.host import EngineHost
from sqlstream.server.introspection import Introspection
from sqlstream.server.scram import MECHANISM, AuthFailed, ScramSecret, ScramServer
from sqlstream.server.session import Session
from sqlstream.server.session_params import SETTABLE, SessionParams

log = logging.getLogger("sqlstream.server")

#: what drivers parse: a Postgres version first (15 is the dialect sqlstream follows)
SERVER_VERSION = f"15.0 (sqlstream {__version__})"
VERSION_TEXT = f"PostgreSQL {SERVER_VERSION} on x86_64-pc-linux-gnu, streaming SQL on DuckDB, 64-bit"

STARTUP_TIMEOUT_S = 60.0  # as Postgres's authentication_timeout
_AUTH_MESSAGE_MAX = 64 * 1024


@dataclass
class WireStats:
    """Counters of the wire server (exported as metrics)."""

    connections: int = 0
    connections_total: int = 0
    queries: int = 0
    errors: int = 0
    auth_failures: int = 0
    protocol_errors: int = 0


class PgWireServer:
    def __init__(self, host: EngineHost, introspection: Introspection, config: ServerConfig) -> None:
        self.host = host
        self.introspection = introspection
        self.config = config
        self.stats = WireStats()
        self.sessions: dict[int, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._next_pid = 1000
        self._secret = ScramSecret.from_password(config.password) if config.password else None
        self._ssl: ssl.SSLContext | None = None
        if config.tls_cert and config.tls_key:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(str(config.tls_cert), str(config.tls_key))

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, host, port, limit=2**16)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop accepting, end every session (57P01) and wait for their tasks."""
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            try:
                session.writer.write(pq.error_response(
                    "57P01", "terminating connection due to administrator command", severity="FATAL"))
                session.writer.close()
            except Exception:  # noqa: BLE001 - the client may be gone already
                pass
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    # -- one connection ---------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        self.stats.connections_total += 1
        try:
            await self._connection(reader, writer)
        except pq.ProtocolError as e:
            self.stats.protocol_errors += 1
            await _fatal(writer, e.sqlstate, e.message)
        except AuthFailed as e:
            self.stats.auth_failures += 1
            await _fatal(writer, e.sqlstate, e.message)
        except SqlStreamError as e:
            await _fatal(writer, e.sqlstate, e.message)
        except TimeoutError:
            await _fatal(writer, "08P01", "timeout while waiting for the startup packet or authentication")
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass  # the client went away (or the server stops): nothing to answer
        except Exception:  # noqa: BLE001 - one broken connection must not take the server down
            log.exception("connection failed")
        finally:
            self.stats.connections -= 1
            self._tasks.discard(task)
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            startup = await self._startup(reader, writer)
            if startup is None:
                return  # a cancel request, handled
            user = startup.get("user")
            if not user:
                raise SqlStreamError("no PostgreSQL user name specified in startup packet",
                                     sqlstate="28000")
            database = startup.get("database") or user
            await self._authenticate(reader, writer, user)
        params = SessionParams(user=user, version=SERVER_VERSION)
        for key, value in startup.items():
            if key.lower() in SETTABLE:
                try:
                    params.set(key, value)
                except SqlStreamError:
                    pass  # e.g. a client_encoding we do not speak: we answer in UTF8 anyway
        self._next_pid += 1
        pid, secret = self._next_pid, secrets.randbits(31)
        session = Session(self, reader, writer, user=user, database=database, params=params,
                          pid=pid, secret=secret)
        self.sessions[pid] = session
        try:
            await session.run()
        finally:
            self.sessions.pop(pid, None)
            try:
                await session.flush()
            except Exception:  # noqa: BLE001 - the client may be gone
                pass

    async def _startup(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, str] | None:
        """The startup packet's parameters, after any SSL/GSS negotiation; None for a
        CancelRequest."""
        negotiated = False
        while True:
            code, body = await pq.read_startup(reader)
            if code == pq.SSL_REQUEST and not negotiated:
                negotiated = True
                if self._ssl is None:
                    writer.write(b"N")
                    await writer.drain()
                else:
                    writer.write(b"S")
                    await writer.drain()
                    await writer.start_tls(self._ssl)
                continue
            if code == pq.GSSENC_REQUEST and not negotiated:
                writer.write(b"N")
                await writer.drain()
                continue
            if code == pq.CANCEL_REQUEST:
                pid, key = body.int32(), body.uint32()
                session = self.sessions.get(pid)
                if session is not None and secrets.compare_digest(
                    session.secret.to_bytes(4, "big"), key.to_bytes(4, "big")
                ):
                    session.cancel()
                return None
            if code != pq.PROTOCOL_3:
                major, minor = code >> 16, code & 0xFFFF
                raise SqlStreamError(
                    f"unsupported frontend protocol {major}.{minor}: server supports 3.0",
                    sqlstate="0A000",
                )
            return pq.parse_startup_params(body)

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str
    ) -> None:
        if self.config.auth == "trust":
            writer.write(pq.auth_ok())
            return
        failed = AuthFailed(f'password authentication failed for user "{user}"')
        writer.write(pq.auth_sasl([MECHANISM]))
        await writer.drain()
        kind, body = await pq.read_message(reader, _AUTH_MESSAGE_MAX)
        if kind != ord("p"):
            raise pq.ProtocolError(f"expected SASL response, got message type \"{chr(kind)}\"")
        mechanism = body.cstring()
        size = body.int32()
        initial = body.bytes(size) if size >= 0 else b""
        if mechanism != MECHANISM:
            raise SqlStreamError("client selected an invalid SASL authentication mechanism",
                                 sqlstate="28000")
        scram = ScramServer(self._secret if user == self.config.user else None)
        writer.write(pq.auth_sasl_continue(scram.first(initial.decode(errors="replace"))))
        await writer.drain()
        kind, body = await pq.read_message(reader, _AUTH_MESSAGE_MAX)
        if kind != ord("p"):
            raise pq.ProtocolError(f"expected SASL response, got message type \"{chr(kind)}\"")
        try:
            final = scram.final(body.rest().decode(errors="replace"))
        except AuthFailed:
            raise failed from None
        writer.write(pq.auth_sasl_final(final) + pq.auth_ok())


async def _fatal(writer: asyncio.StreamWriter, sqlstate: str, message: str) -> None:
    try:
        writer.write(pq.error_response(sqlstate, message, severity="FATAL"))
        await asyncio.wait_for(writer.drain(), 5)
    except Exception:  # noqa: BLE001 - the client may be gone
        pass
