"""The console: statement splitting, printing, and a scripted session against a real server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from server_util import ROOT, running_server

from sqlstream.console import ConsoleCore, Quit, print_error
from sqlstream.server.sqltext import split_statements


def statements(lines: list[str]) -> list[str]:
    ran: list[str] = []
    core = ConsoleCore(ran.append)
    for line in lines:
        core.feed(line)
    core.finish()
    return ran


def test_splitting_respects_strings_comments_and_parentheses():
    script = [
        "SELECT 'a;b' AS s, \"we;ird\" FROM t; -- a trailing comment; not a statement",
        "SELECT $$dollar; quoted$$, E'it\\'s;' /* block; /* nested; */ comment */;",
        "CREATE MATERIALIZED VIEW v AS",
        "  SELECT count(*) FROM (SELECT 1; ) q",  # ';' inside parentheses does not end it
        ";",
        "SELECT 2",  # the last statement may lack its ';'
    ]
    assert statements(script) == [
        "SELECT 'a;b' AS s, \"we;ird\" FROM t",
        "SELECT $$dollar; quoted$$, E'it\\'s;' /* block; /* nested; */ comment */",
        "CREATE MATERIALIZED VIEW v AS\n  SELECT count(*) FROM (SELECT 1; ) q",
        "SELECT 2",
    ]
    assert [p.text for p in split_statements("a; ;  ;b")] == ["a", "b"]
    assert split_statements("-- nothing\n;  ") == []


def test_statement_spanning_lines_runs_when_its_semicolon_arrives():
    ran: list[str] = []
    core = ConsoleCore(ran.append)
    core.feed("SELECT 'unterminated;")
    core.feed("still inside'")
    assert ran == [] and core.pending
    core.feed("; SELECT 3")
    assert ran == ["SELECT 'unterminated;\nstill inside'"]
    assert core.pending == " SELECT 3"
    with pytest.raises(Quit):
        ConsoleCore(ran.append).feed("\\q")


def test_errors_print_with_a_caret(capsys):
    class Diag:
        severity = "ERROR"
        message_primary = 'column "nope" does not exist'
        statement_position = "18"

    class Error(Exception):
        diag = Diag()

    print_error(Error(), "SELECT 1;\nSELECT nope FROM v")
    err = capsys.readouterr().err.splitlines()
    assert err == ['ERROR:  column "nope" does not exist', "LINE 2: SELECT nope FROM v", "               ^"]


def test_scripted_session_against_a_server(pg_dsn: str):
    script = """
CREATE SOURCE s (id BIGINT, k INT) WITH (connector = 'datagen', datagen.rows.per.second = '0',
    datagen.rows.total = '300', fields.id.kind = 'sequence', fields.k.max = '2');
CREATE MATERIALIZED VIEW per_k AS
  SELECT k, count(*) AS n
  FROM s GROUP BY k;
FLUSH;
SELECT sum(n) AS total, count(*) AS groups FROM per_k;
SELECT nope FROM per_k;
SELECT 'still; here' AS msg;
\\q
SELECT 'not run after \\q';
"""
    with running_server(pg_dsn, ["--auth", "trust"]) as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SQLSTREAM_HISTORY": os.devnull}
        out = subprocess.run(
            [sys.executable, "-m", "sqlstream", "console", "--host", "127.0.0.1",
             "--port", str(server.port), "--user", "tester"],
            input=script, capture_output=True, text=True, timeout=60, env=env,
        )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "CREATE SOURCE",
        "CREATE MATERIALIZED VIEW",
        "FLUSH",
        " total | groups",
        "-------+--------",
        " 300   | 3",
        "(1 row)",
        "",
        " msg",
        "-------------",
        " still; here",
        "(1 row)",
        "",
    ]
    assert 'ERROR:  column "nope" does not exist' in out.stderr
    assert "LINE 1: SELECT nope FROM per_k" in out.stderr
    assert "not run" not in out.stdout


def test_interactive_console_with_history(tmp_path):
    """The prompt_toolkit loop, fed through a pipe instead of a terminal."""
    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from sqlstream.console import interactive

    ran: list[str] = []
    history = tmp_path / "history"
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        pipe.send_text("SELECT 1,\r  2;\rSELECT 'a;\rb';\r\\q\r")
        interactive(ran.append, history, "banner")
    assert ran == ["SELECT 1,\n  2", "SELECT 'a;\nb'"]
    assert "SELECT 1," in history.read_text()  # each line is kept for the next session
