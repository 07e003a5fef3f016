"""Broken and hostile clients on raw sockets: each gets an ErrorResponse or a closed
connection, and a normal client (connected before, and kept open throughout) keeps working,
as do the engine's epochs."""

from __future__ import annotations

import os
import socket
import struct
import time

import psycopg
import pytest
from server_util import RawClient, ServerProcess, error_fields, running_server

BIG = 100_000


@pytest.fixture(scope="module")
def server(pg_dsn: str):
    with running_server(pg_dsn, ["--auth", "trust", "--checkpoint-interval", "100ms"]) as s:
        with psycopg.connect(s.dsn(), autocommit=True) as conn:
            conn.execute(
                "CREATE SOURCE nums (id BIGINT, v DOUBLE PRECISION, label VARCHAR) WITH (connector = "
                f"'datagen', datagen.rows.per.second = '0', datagen.rows.total = '{BIG}', "
                "fields.id.kind = 'sequence')"
            )
            conn.execute("CREATE MATERIALIZED VIEW everything AS SELECT * FROM nums")
            conn.execute("FLUSH")
        yield s


@pytest.fixture(scope="module")
def bystander(server: ServerProcess):
    """A well-behaved client, connected for the whole module."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        yield conn


def still_fine(server: ServerProcess, bystander: psycopg.Connection) -> None:
    assert bystander.execute("SELECT count(*) FROM everything").fetchone() == (BIG,)
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT max(id) FROM everything").fetchone() == (BIG - 1,)
    assert server.health() == 200
    assert server.proc is not None and server.proc.poll() is None


def fatal(messages: list[tuple[bytes, bytes]]) -> dict[str, str]:
    errors = [error_fields(body) for kind, body in messages if kind == b"E"]
    assert errors, messages
    return errors[-1]


def test_garbage_startup_packets(server, bystander):
    for garbage in (
        b"\x00\x00\x00\x04",  # a length shorter than any packet
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # HTTP to the pgwire port: an absurd length
        b"\x00\x00\x00\x10" + os.urandom(12),  # right length, random protocol code
        struct.pack("!ii", 8, 131072),  # protocol 2.0
    ):
        c = RawClient(server.port)
        c.send(garbage)
        messages = c.read_all()  # the server closes the connection
        c.close()
        if messages:
            e = fatal(messages)
            assert e["S"] == "FATAL" and e["C"] in ("08P01", "0A000"), e
    c = RawClient(server.port)
    c.send(struct.pack("!i", 100) + b"short")  # a truncated startup packet, then EOF
    c.sock.shutdown(socket.SHUT_WR)
    assert c.read_all() == []
    c.close()
    still_fine(server, bystander)


def test_ssl_and_gss_requests_are_refused_cleanly(server, bystander):
    for code in (80877103, 80877104):
        c = RawClient(server.port)
        c.send(struct.pack("!ii", 8, code))
        assert c.sock.recv(1) == b"N"
        messages = c.startup()
        assert messages[-1] == (b"Z", b"I")
        assert [k for k, _ in c.query("SELECT 1")] == [b"T", b"D", b"C", b"Z"]
        c.close()
    still_fine(server, bystander)


def test_bad_messages_after_startup(server, bystander):
    cases = [
        (b"Q" + struct.pack("!i", 2), "08P01"),  # a length below its own size
        (b"z" + struct.pack("!i", 4), "08P01"),  # an unknown message type
        (b"Q" + struct.pack("!i", 0x7FFFFFFF), "54000"),  # 2 GiB announced: refused unread
        (b"P" + struct.pack("!i", 7) + b"abc", "08P01"),  # Parse without its terminators
        (b"B" + struct.pack("!i", 6) + b"\x00\x00", "08P01"),  # Bind cut short inside
    ]
    for data, state in cases:
        c = RawClient(server.port)
        c.startup()
        started = time.monotonic()
        c.send(data)
        messages = c.read_all()
        assert time.monotonic() - started < 5
        e = fatal(messages)
        assert (e["S"], e["C"]) == ("FATAL", state), (data, e)
        c.close()
    still_fine(server, bystander)


def test_truncated_message_then_eof(server, bystander):
    c = RawClient(server.port)
    c.startup()
    c.send(b"Q" + struct.pack("!i", 100) + b"SELECT 1")  # 92 bytes promised, 8 sent
    still_fine(server, bystander)  # a half-sent message blocks nobody
    c.sock.shutdown(socket.SHUT_WR)
    assert c.read_all() == []
    c.close()
    still_fine(server, bystander)


def test_errors_in_the_extended_protocol_skip_to_sync(server, bystander):
    c = RawClient(server.port)
    c.startup()
    c.message(b"B", b"\x00nope\x00" + struct.pack("!hhh", 0, 0, 0))  # Bind to a missing statement
    c.message(b"E", b"\x00" + struct.pack("!i", 0))  # discarded after the error
    c.message(b"S")
    messages = c.until(b"Z")
    assert [k for k, _ in messages] == [b"E", b"Z"]
    assert error_fields(messages[0][1])["C"] == "26000"
    c.message(b"P", b"\x00SELECT count(*) FROM everything\x00" + struct.pack("!h", 0))
    c.message(b"B", b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
    c.message(b"E", b"\x00" + struct.pack("!i", 0))
    c.message(b"S")
    messages = c.until(b"Z")
    assert [k for k, _ in messages] == [b"1", b"2", b"D", b"C", b"Z"]
    assert messages[2][1].endswith(str(BIG).encode())
    # an empty query, and several statements in one Query message
    assert [k for k, _ in c.query("")] == [b"I", b"Z"]
    assert [k for k, _ in c.query("SELECT 1; SELECT nope FROM everything; SELECT 2")] == [
        b"T", b"D", b"C", b"E", b"Z"]
    c.close()
    still_fine(server, bystander)


def test_disconnect_mid_query(server, bystander):
    for reset in (False, True):
        c = RawClient(server.port)
        c.startup()
        c.message(b"Q", b"SELECT * FROM everything\x00")
        if reset:  # an abrupt RST rather than a FIN
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    c = RawClient(server.port)
    c.startup()
    c.message(b"Q", b"FLUSH\x00")
    c.close()
    still_fine(server, bystander)


def test_slow_reader_stalls_neither_others_nor_the_engine(server, bystander):
    epoch = bystander.execute("SELECT max(epoch) FROM sqlstream.checkpoints").fetchone()[0]
    slow = RawClient(server.port)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.startup()
    for _ in range(3):  # megabytes of rows it never reads
        slow.message(b"Q", b"SELECT * FROM everything\x00")
    started = time.monotonic()
    for _ in range(20):
        assert bystander.execute("SELECT count(*) FROM everything").fetchone() == (BIG,)
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 10
    while bystander.execute("SELECT max(epoch) FROM sqlstream.checkpoints").fetchone()[0] < epoch + 3:
        assert time.monotonic() < deadline, "checkpoints stopped while a client did not read"
        time.sleep(0.1)
    slow.close()
    still_fine(server, bystander)


def test_cancel_requests(server, bystander):
    c = RawClient(server.port)
    messages = c.startup()
    pid, key = struct.unpack("!iI", next(body for kind, body in messages if kind == b"K"))
    for bad_pid, bad_key in ((pid, key ^ 1), (pid + 10_000, key)):
        canceller = RawClient(server.port)
        canceller.send(struct.pack("!iiiI", 16, 80877102, bad_pid, bad_key))
        assert canceller.read_all() == []  # no answer, the connection just ends
        canceller.close()
    # A real cancel of an idle session is harmless too.
    canceller = RawClient(server.port)
    canceller.send(struct.pack("!iiiI", 16, 80877102, pid, key))
    assert canceller.read_all() == []
    canceller.close()
    assert [k for k, _ in c.query("SELECT 1")] == [b"T", b"D", b"C", b"Z"]
    c.close()
    still_fine(server, bystander)


class _SlowEngine:
    """An engine whose queries take a while: what a CancelRequest is for."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def execute(self, stmt):  # noqa: ANN001, ANN201 - the Engine's duck type
        from sqlstream.engine.engine import Result
        from sqlstream.types import Column

        self.ran.append(stmt.text)
        time.sleep(1.5)
        return Result("SELECT 1", [Column("x", "integer")], [(1,)])

    def run_epoch(self) -> int:
        return 0

    def checkpoint_due(self) -> bool:
        return False

    def checkpoint(self) -> None:
        pass

    def metrics(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def test_cancel_request_stops_a_running_or_queued_query(catalog_dsn: str):
    import threading

    from sqlstream.config import Settings
    from sqlstream.server.app import ServerApp, start_in_thread
    from sqlstream.server.config import ServerConfig

    engine = _SlowEngine()
    app = ServerApp(Settings(pgwire_port=0, http_port=0), ServerConfig(auth="trust"), catalog_dsn,
                    engine_factory=lambda: engine)
    server = start_in_thread(app)
    try:
        dsn = f"postgresql://tester@127.0.0.1:{server.listening.pgwire_port}/sqlstream"
        with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
            errors: dict[str, BaseException] = {}

            def run(name: str, conn: psycopg.Connection) -> None:
                try:
                    conn.execute(f"SELECT * FROM slow_{name}")
                except psycopg.Error as e:
                    errors[name] = e

            ta = threading.Thread(target=run, args=("a", a))
            ta.start()
            time.sleep(0.3)  # a runs on the engine thread; b queues behind it
            tb = threading.Thread(target=run, args=("b", b))
            tb.start()
            time.sleep(0.3)
            started = time.monotonic()
            # cancel_safe: the blocking libpq cancel would hold the GIL this in-process server needs
            a.cancel_safe()
            b.cancel_safe()
            ta.join(5)
            tb.join(5)
            assert time.monotonic() - started < 1.0  # neither waited for the slow query
            assert isinstance(errors.get("a"), psycopg.errors.QueryCanceled)
            assert isinstance(errors.get("b"), psycopg.errors.QueryCanceled)
            time.sleep(1.5)
            assert engine.ran == ["SELECT * FROM slow_a"]  # b was dropped before it ran
            assert a.execute("SELECT 1").fetchone() == (1,)  # both sessions go on
    finally:
        server.stop()
