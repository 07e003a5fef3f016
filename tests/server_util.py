"""Starting a real ``sqlstream serve`` subprocess for the client tests.

>>> port = free_port(); 1024 < port < 65536 and port not in (4566, 4567, 5432)
True
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]

_RESERVED = {4566, 4567, 5432}


def free_port() -> int:
    """A port the kernel considers free now (never one of the well-known ones)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _RESERVED:
            return port


@dataclass
class ServerProcess:
    """A ``sqlstream serve`` child process on free ports."""

    catalog: str
    data_dir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> ServerProcess:
        self.log_path = self.data_dir / f"serve-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        cmd = [sys.executable, "-m", "sqlstream", "serve", "--catalog", self.catalog,
               "--data-dir", str(self.data_dir), "--port", str(self.port),
               "--http-port", str(self.http_port), *self.args]
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        if wait:
            self.wait_healthy(timeout)
        return self

    def health(self) -> int | None:
        """HTTP status of /health, None when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"sqlstream serve exited with {self.proc.returncode}:\n{self.log()}")
            if self.health() == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"sqlstream serve did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def dsn(self, user: str = "tester", password: str | None = None, dbname: str = "sqlstream") -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def kill(self) -> None:
        """SIGKILL: a crash, no final checkpoint."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode


# -- a raw protocol client, for the robustness tests ------------------------------------------


class RawClient:
    """Bytes on a socket, to send what no driver would."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def startup(self, user: str = "tester", database: str = "sqlstream") -> list[tuple[bytes, bytes]]:
        """Protocol 3.0 startup under trust auth; the messages up to ReadyForQuery."""
        params = f"user\0{user}\0database\0{database}\0\0".encode()
        self.send(struct.pack("!ii", 8 + len(params), 196608) + params)
        return self.until(b"Z")

    def message(self, kind: bytes, body: bytes = b"") -> None:
        self.send(kind + struct.pack("!i", len(body) + 4) + body)

    def query(self, sql: str) -> list[tuple[bytes, bytes]]:
        self.message(b"Q", sql.encode() + b"\0")
        return self.until(b"Z")

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def read(self) -> tuple[bytes, bytes] | None:
        """One backend message, or None when the server closed the connection."""
        while len(self._buf) < 5:
            if not self._fill():
                return None
        length = struct.unpack("!i", self._buf[1:5])[0]
        while len(self._buf) < 1 + length:
            if not self._fill():
                return None
        kind, body = self._buf[:1], self._buf[5 : 1 + length]
        self._buf = self._buf[1 + length :]
        return kind, body

    def until(self, kind: bytes) -> list[tuple[bytes, bytes]]:
        out = []
        while (m := self.read()) is not None:
            out.append(m)
            if m[0] == kind:
                break
        return out

    def read_all(self) -> list[tuple[bytes, bytes]]:
        """Every message until the server closes the connection."""
        out = []
        while (m := self.read()) is not None:
            out.append(m)
        return out


def error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body: {'S': 'FATAL', 'C': '08P01', ...}."""
    out = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode()
    return out


@contextmanager
def running_server(
    pg_dsn: str, args: list[str], env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """A server on a fresh catalog database of the test Postgres, stopped and dropped after."""
    from conftest import make_tmp_dir, with_dbname

    name = f"sqlstream_srv_{secrets.token_hex(6)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    data_dir = make_tmp_dir("sqlstream-srv-")
    server = ServerProcess(with_dbname(pg_dsn, name), data_dir, list(args), dict(env or {}))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        shutil.rmtree(data_dir, ignore_errors=True)
