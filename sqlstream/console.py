"""``sqlstream console``: an interactive SQL console over the Postgres wire protocol.

Statements may span lines and end with ``;`` (a ``;`` inside a string, a quoted name, a
comment or parentheses does not count); results print as aligned tables, errors print with
their position and the console goes on; ``\\q`` (or Ctrl-D) quits. History is kept in a
file. Line editing is prompt_toolkit's; when standard input is not a terminal the console
reads statements from it instead (``sqlstream console < job.sql``), which is also how the
core is tested without a TTY.

>>> core = ConsoleCore(run=lambda sql: print("run:", sql))
>>> for line in ["SELECT 1,", "  ';' AS x;  SELECT 2;", "SHOW JOBS"]:
...     core.feed(line)
run: SELECT 1,
  ';' AS x
run: SELECT 2
>>> core.pending
'SHOW JOBS'
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from sqlstream.output import print_table
from sqlstream.server.sqltext import split_statements

HELP = """\
Statements end with ';' and may span several lines.
  \\q        quit (or Ctrl-D)
  \\?        this help
  \\r        forget the statement being typed (or Ctrl-C)
Try: SHOW SOURCES; SHOW MATERIALIZED VIEWS; SHOW JOBS; SELECT * FROM sqlstream.checkpoints;"""


class Quit(Exception):
    """``\\q``."""


class ConsoleCore:
    """Line accumulation and statement dispatch, independent of any terminal.

    ``run`` is called with each complete statement (without its ``;``).
    """

    def __init__(self, run: Callable[[str], None]) -> None:
        self.run = run
        self.buffer: list[str] = []

    @property
    def pending(self) -> str:
        return "\n".join(self.buffer)

    def feed(self, line: str) -> None:
        """One line of input; runs every statement it completes. Raises Quit on ``\\q``."""
        if not self.buffer and line.strip().startswith("\\"):
            self.command(line.strip())
            return
        self.buffer.append(line)
        # Every piece but the last ended with a ';'; the last is still being typed.
        *done, rest = split_statements(self.pending, keep_empty=True)
        self.buffer = [] if rest.empty else [rest.text.lstrip("\n")]
        for piece in done:
            if not piece.empty:
                self.run(piece.text.strip())

    def finish(self) -> None:
        """End of input: run what is left, as psql does with a final statement without ';'."""
        text = self.pending
        self.buffer = []
        for piece in split_statements(text):
            self.run(piece.text.strip())

    def command(self, line: str) -> None:
        word = line.split()[0]
        if word in ("\\q", "\\quit"):
            raise Quit
        if word == "\\r":
            self.buffer = []
        elif word in ("\\?", "\\h", "\\help"):
            click.echo(HELP)
        else:
            click.echo(f"invalid command {word}; try \\? for help", err=True)


class Connection:
    """A psycopg connection to a sqlstream server, printing what each statement returns."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.add_notice_handler(
            lambda d: click.echo(f"{d.severity}:  {d.message_primary}", err=True)
        )

    def close(self) -> None:
        self.conn.close()

    def run(self, sql: str) -> bool:
        """Run one statement and print its outcome; False when it failed."""
        import psycopg

        try:
            cur = self.conn.execute(sql, prepare=False)
        except psycopg.Error as e:
            print_error(e, sql)
            return False
        if cur.description is not None:
            print_table([d.name for d in cur.description], cur.fetchall())
            click.echo()
        else:
            click.echo(cur.statusmessage or "")
        return True


def print_error(e: Any, sql: str) -> None:
    """A server error as psql shows it: message, then the line with a caret at the position."""
    diag = getattr(e, "diag", None)
    message = (diag.message_primary if diag and diag.message_primary else str(e)).strip()
    severity = (diag.severity if diag and diag.severity else "ERROR")
    click.echo(f"{severity}:  {message}", err=True)
    position = diag.statement_position if diag else None
    if position and position.isdigit():
        offset = int(position) - 1
        start = sql.rfind("\n", 0, offset) + 1
        end = sql.find("\n", offset)
        line_no = sql.count("\n", 0, offset) + 1
        prefix = f"LINE {line_no}: "
        click.echo(prefix + sql[start : end if end >= 0 else len(sql)], err=True)
        click.echo(" " * (len(prefix) + offset - start) + "^", err=True)


def history_path(data_dir: Path | None) -> Path:
    """Where history is kept: $SQLSTREAM_HISTORY, else the data dir (when it exists), else ~."""
    if os.environ.get("SQLSTREAM_HISTORY"):
        return Path(os.environ["SQLSTREAM_HISTORY"])
    if data_dir is not None and data_dir.is_dir():
        return data_dir / "console_history"
    return Path.home() / ".sqlstream_history"


def run_script(lines: Iterable[str], run: Callable[[str], None]) -> None:
    """The non-interactive console: every statement of ``lines``, in order."""
    core = ConsoleCore(run)
    try:
        for line in lines:
            core.feed(line.rstrip("\n"))
        core.finish()
    except Quit:
        pass


def interactive(run: Callable[[str], None], history: Path, banner: str) -> None:
    """The interactive console (prompt_toolkit: line editing, history, Ctrl-R search)."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    history.parent.mkdir(parents=True, exist_ok=True)
    session: PromptSession[str] = PromptSession(history=FileHistory(str(history)))
    core = ConsoleCore(run)
    click.echo(banner)
    while True:
        prompt = "sqlstream=> " if not core.buffer else "sqlstream-> "
        try:
            line = session.prompt(prompt)
        except KeyboardInterrupt:
            core.buffer = []
            continue
        except EOFError:
            click.echo()
            return
        try:
            core.feed(line)
        except Quit:
            return


def main(dsn: str, *, data_dir: Path | None, banner: str) -> None:
    """Connect to ``dsn`` and run the console (interactive on a terminal, else a script)."""
    conn = Connection(dsn)
    try:
        if sys.stdin.isatty():
            interactive(conn.run, history_path(data_dir), banner)
        else:
            run_script(sys.stdin, conn.run)
    finally:
        conn.close()
