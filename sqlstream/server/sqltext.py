"""Lexical helpers over SQL text: statement splitting, ``$n`` placeholders, keyword peeking.

The wire server and the console both need to cut a script into statements without parsing
it (psql's catalog queries are not in sqlstream's dialect, and a console must know whether a
buffer is complete while the user is still typing). The lexer follows Postgres: ``'...'``
strings (``''`` doubled), ``E'...'`` strings with backslash escapes, ``"..."`` identifiers,
``$tag$...$tag$`` strings, ``--`` and nested ``/* */`` comments. As in psql, a ``;`` inside
parentheses does not end a statement.

>>> [p.text for p in split_statements("SELECT ';'; /* ; */ SELECT 2 -- ;\\n;")]
["SELECT ';'", ' /* ; */ SELECT 2 -- ;\\n']
>>> placeholders("SELECT $1, '$2', a$3 FROM t WHERE x = $2")
[1, 2]
>>> first_words("  -- hi\\n begin ISOLATION LEVEL serializable", 2)
['BEGIN', 'ISOLATION']
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*)?\$")
_PLACEHOLDER = re.compile(r"\$(\d+)")
_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9$]*")


@dataclass(frozen=True)
class Segment:
    """A run of the text: ``kind`` is 'code', 'string', 'ident', 'comment' or 'open' (a
    string, identifier or comment the text leaves unterminated)."""

    kind: str
    start: int
    end: int


def _ident_char(c: str) -> bool:
    return c.isalnum() or c in "_$" or ord(c) >= 0x80


def segments(sql: str) -> Iterator[Segment]:
    """Cut ``sql`` into code, literal and comment segments (a lexer, not a parser)."""
    i, n, code_start = 0, len(sql), 0

    def flush(upto: int) -> Iterator[Segment]:
        if upto > code_start:
            yield Segment("code", code_start, upto)

    while i < n:
        c = sql[i]
        nxt = sql[i + 1] if i + 1 < n else ""
        if c == "-" and nxt == "-":
            yield from flush(i)
            end = sql.find("\n", i)
            end = n if end < 0 else end + 1
            yield Segment("comment", i, end)
            i = code_start = end
        elif c == "/" and nxt == "*":
            yield from flush(i)
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            yield Segment("comment" if depth == 0 else "open", i, j)
            i = code_start = j
        elif c == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _ident_char(sql[i - 2]))
            start = i - 1 if escapes else i
            yield from flush(start)
            j, closed = i + 1, False
            while j < n:
                if escapes and sql[j] == "\\":
                    j += 2
                elif sql[j] == "'":
                    if j + 1 < n and sql[j + 1] == "'":
                        j += 2
                    else:
                        closed, j = True, j + 1
                        break
                else:
                    j += 1
            j = min(j, n)
            yield Segment("string" if closed else "open", start, j)
            i = code_start = j
        elif c == '"':
            yield from flush(i)
            j, closed = i + 1, False
            while j < n:
                if sql[j] == '"':
                    if j + 1 < n and sql[j + 1] == '"':
                        j += 2
                    else:
                        closed, j = True, j + 1
                        break
                else:
                    j += 1
            yield Segment("ident" if closed else "open", i, j)
            i = code_start = j
        elif c == "$" and not (i > 0 and _ident_char(sql[i - 1])) and (m := _DOLLAR_TAG.match(sql, i)):
            yield from flush(i)
            tag = m.group(0)
            end = sql.find(tag, m.end())
            if end < 0:
                yield Segment("open", i, n)
                i = code_start = n
            else:
                yield Segment("string", i, end + len(tag))
                i = code_start = end + len(tag)
        else:
            i += 1
    yield from flush(n)


@dataclass(frozen=True)
class Piece:
    """One statement of a script: its text (without the ``;``) and where it starts."""

    text: str
    start: int

    @property
    def empty(self) -> bool:
        """Only whitespace and comments."""
        return not code_only(self.text).strip()


def split_statements(sql: str, *, keep_empty: bool = False) -> list[Piece]:
    """Cut a script at the ``;`` that end statements (outside literals, comments, parens)."""
    pieces: list[Piece] = []
    start, depth = 0, 0
    for seg in segments(sql):
        if seg.kind != "code":
            continue
        for i in range(seg.start, seg.end):
            c = sql[i]
            if c == "(":
                depth += 1
            elif c == ")":
                depth = max(0, depth - 1)
            elif c == ";" and depth == 0:
                pieces.append(Piece(sql[start:i], start))
                start = i + 1
    pieces.append(Piece(sql[start:], start))
    return [p for p in pieces if keep_empty or not p.empty]


def code_only(sql: str) -> str:
    """``sql`` with every literal, quoted identifier and comment replaced by spaces (same
    length, so offsets still match): what keyword searches should look at.

    >>> code_only("SELECT 'x' -- c")
    'SELECT         '
    """
    out = []
    for seg in segments(sql):
        text = sql[seg.start : seg.end]
        out.append(text if seg.kind == "code" else " " * len(text))
    return "".join(out)


def placeholders(sql: str) -> list[int]:
    """The distinct ``$n`` parameter numbers used in ``sql``, sorted."""
    return sorted({n for n, _, _ in _placeholder_spans(sql)})


def _placeholder_spans(sql: str) -> Iterator[tuple[int, int, int]]:
    for seg in segments(sql):
        if seg.kind != "code":
            continue
        for m in _PLACEHOLDER.finditer(sql, seg.start, seg.end):
            if m.start() > 0 and _ident_char(sql[m.start() - 1]):
                continue  # part of an identifier such as a$1
            yield int(m.group(1)), m.start(), m.end()


def substitute(sql: str, literals: dict[int, str]) -> str:
    """Replace each ``$n`` by ``literals[n]`` (already-quoted SQL literals).

    >>> substitute("SELECT $1, '$1' WHERE a = $2", {1: "'it''s'", 2: "(-5)"})
    "SELECT 'it''s', '$1' WHERE a = (-5)"
    """
    out, last = [], 0
    for n, start, end in _placeholder_spans(sql):
        out.append(sql[last:start])
        out.append(literals[n])
        last = end
    out.append(sql[last:])
    return "".join(out)


def first_words(sql: str, count: int = 1) -> list[str]:
    """The first ``count`` words of the statement, upper-cased, skipping comments."""
    return [m.group(0).upper() for m in _WORD.finditer(code_only(sql))][:count]
