"""The ``SqlStream`` sqlglot dialect: RisingWave's streaming DDL plus what sqlstream adds.

sqlglot's RisingWave dialect already parses ``CREATE SOURCE ... (WATERMARK FOR ...) WITH (...)
FORMAT ... ENCODE ...``. The hooks here add ``CREATE MATERIALIZED VIEW ... EMIT ON WINDOW
CLOSE``, ``CREATE SINK name FROM name | AS query``, ``SHOW``, ``SET``, ``FLUSH``, ``EXPLAIN``,
``START TRANSACTION``/``ABORT``, multi-name ``DROP`` and Flink's windowing table functions
(normalised to RisingWave's ``TUMBLE(t, ts, size)``/``HOP(t, ts, slide, size)``).

The dialect is strict: where sqlglot would fall back to an ``exp.Command`` for text it cannot
parse, this parser raises a ``ParseError`` at the offending token (its ``token`` attribute).
Only statements led by one of sqlglot's command keywords (``CALL``, ``VACUUM``, ...) still come
back as ``exp.Command``; the caller treats them as recognised but unsupported.

>>> import sqlglot
>>> sqlglot.parse_one("FLUSH", read=SqlStream).sql(SqlStream)
'FLUSH'
>>> e = sqlglot.parse_one(
...     "SELECT * FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE))", read=SqlStream)
>>> e.sql(SqlStream)
"SELECT * FROM TUMBLE(t, ts, INTERVAL '1 MINUTE')"
>>> sqlglot.parse_one("SHOW MATERIALIZED VIEWS", read=SqlStream).sql(SqlStream)
'SHOW materialized views'
"""

from __future__ import annotations

from typing import Any

from sqlglot import exp
from sqlglot.dialects.risingwave import RisingWave
from sqlglot.errors import ParseError
from sqlglot.generators.risingwave import RisingWaveGenerator
from sqlglot.parsers.risingwave import RisingWaveParser
from sqlglot.tokens import Token, TokenType

WINDOW_FUNCTIONS = ("TUMBLE", "HOP")

# SHOW targets that are object lists rather than settings (multi-word ones first).
SHOW_LISTS = (
    ("MATERIALIZED", "VIEWS"),
    ("SOURCES",),
    ("TABLES",),
    ("SINKS",),
    ("JOBS",),
    ("CHECKPOINTS",),
    ("ALL",),
)
# Postgres spells a few settings with several words.
MULTIWORD_SETTINGS = {
    ("TIME", "ZONE"): "timezone",
    ("TRANSACTION", "ISOLATION", "LEVEL"): "transaction_isolation",
}


class Flush(exp.Expression):
    """``FLUSH``: wait until everything ingested so far is committed and visible."""

    arg_types: dict[str, bool] = {}


class Explain(exp.Expression):
    """``EXPLAIN <statement>``."""

    arg_types = {"this": True}


class EmitOnWindowCloseProperty(exp.Property):
    """``EMIT ON WINDOW CLOSE`` after a materialized view's query."""

    arg_types: dict[str, bool] = {}


class SqlStreamParser(RisingWaveParser):
    """RisingWave's parser with sqlstream's statements and no silent ``exp.Command``."""

    STATEMENT_PARSERS = {
        **RisingWaveParser.STATEMENT_PARSERS,
        TokenType.SHOW: lambda self: self._parse_show_statement(),
        TokenType.SET: lambda self: self._parse_set_statement(),
    }

    # Statements led by a plain word (not a sqlglot keyword).
    WORD_STATEMENTS = {
        "FLUSH": lambda self: self.expression(Flush()),
        "EXPLAIN": lambda self: self._parse_explain(),
        "START": lambda self: self._parse_start_transaction(),
        "ABORT": lambda self: self._parse_abort(),
        **{
            word: lambda self: self._parse_unsupported()
            for word in (
                "DISCARD",
                "LISTEN",
                "NOTIFY",
                "UNLISTEN",
                "SAVEPOINT",
                "RELEASE",
                "DEALLOCATE",
                "CHECKPOINT",
                "REINDEX",
                "CLUSTER",
            )
        },
    }

    # Token types that may begin a statement; anything else is a syntax error right there.
    STATEMENT_START_TOKENS = {
        *STATEMENT_PARSERS,
        TokenType.SELECT,
        TokenType.WITH,
        TokenType.VALUES,
        TokenType.L_PAREN,
        TokenType.TABLE,
    } - {TokenType.PIVOT, TokenType.UNPIVOT, TokenType.SEMICOLON}

    FUNCTION_PARSERS = {
        **RisingWaveParser.FUNCTION_PARSERS,
        "TUMBLE": lambda self: self._parse_window_tvf("TUMBLE"),
        "HOP": lambda self: self._parse_window_tvf("HOP"),
        "TABLE": lambda self: self._parse_flink_table_function(),
    }

    PROPERTY_PARSERS = {
        **{
            k: v for k, v in RisingWaveParser.PROPERTY_PARSERS.items() if k not in ("ENCODE", "KEY")
        },
        "FORMAT": lambda self: self._parse_format_encode(),
    }

    # -- errors -----------------------------------------------------------------------------

    def raise_error(self, message: str, token: Token | None = None) -> None:
        """Raise at ``token`` (default: the current one; None when input ran out).

        The offending token, or None for "end of input", is kept on the error as ``token``.
        """
        at = token or self._curr
        try:
            super().raise_error(message, at or self._prev)
        except ParseError as error:  # annotated for sqlstream.sql.parser
            error.token = at or None  # type: ignore[attr-defined]
            raise

    def _warn_unsupported(self) -> None:
        """Silent: commands are refused upstream (0A000), not logged here."""

    def _parse_as_command(self, start: Token) -> exp.Command:
        self.raise_error("Unsupported syntax")
        return exp.Command(this=start.text)  # only reached with a non-raising error level

    def _expect(self, *words: str) -> None:
        for word in words:
            if not self._match_text_seq(word):
                self.raise_error(f"Expecting {word}")

    # -- statements -------------------------------------------------------------------------

    def _parse_statement(self) -> exp.Expr | None:
        if not self._curr:
            return None
        word = self._curr.text.upper() if self._curr.token_type == TokenType.VAR else None
        if word in self.WORD_STATEMENTS:
            self._advance()
            return self.WORD_STATEMENTS[word](self)
        starts = self._curr.token_type
        if (
            starts not in self.STATEMENT_START_TOKENS
            and starts not in self.dialect.tokenizer_class.COMMANDS
        ):
            self.raise_error("Invalid statement")
        return super()._parse_statement()

    def _parse_unsupported(self) -> exp.Command:
        """A Postgres statement sqlstream recognises but does not run (0A000 upstream)."""
        word = self._prev.text.upper()
        while self._curr:
            self._advance()
        return exp.Command(this=word)

    def _parse_explain(self) -> Explain:
        statement = self._parse_statement()
        if statement is None:
            self.raise_error("Expecting a statement")
        return self.expression(Explain(this=statement))

    def _parse_start_transaction(self) -> exp.Transaction:
        self._expect("TRANSACTION")
        return self.expression(exp.Transaction())

    def _parse_abort(self) -> exp.Rollback:
        self._match_texts(("TRANSACTION", "WORK"))
        return self.expression(exp.Rollback())

    def _parse_words(self, table: Any) -> Any:
        """Match one of the word sequences in ``table`` (a dict or tuple of tuples)."""
        for words in table:
            if self._match_text_seq(*words):
                return words
        return None

    def _parse_setting_name(self) -> str:
        words = self._parse_words(MULTIWORD_SETTINGS)
        if words:
            return MULTIWORD_SETTINGS[words]
        parts = []
        while True:
            if not self._curr or self._curr.token_type in (TokenType.EQ, TokenType.DOT):
                self.raise_error("Expecting a setting name")
            parts.append(self._curr.text.lower())
            self._advance()
            if not self._match(TokenType.DOT):
                return ".".join(parts)

    def _parse_show_statement(self) -> exp.Show:
        words = self._parse_words(SHOW_LISTS)
        what = " ".join(words).lower() if words else self._parse_setting_name()
        return self.expression(exp.Show(this=what))

    def _parse_setting_value(self) -> exp.Expr:
        if self._match_set((TokenType.DASH, TokenType.PLUS)):
            sign = self._prev.text
            if not self._match(TokenType.NUMBER):
                self.raise_error("Expecting a number")
            return exp.Literal.number(sign.replace("+", "") + self._prev.text)
        if self._match_set((TokenType.STRING, TokenType.NUMBER)):
            token = self._prev
            return exp.Literal(this=token.text, is_string=token.token_type == TokenType.STRING)
        if not self._curr or self._curr.token_type in (TokenType.COMMA, TokenType.R_PAREN):
            self.raise_error("Expecting a value")
        self._advance()
        return exp.var(self._prev.text)

    def _parse_set_statement(self) -> exp.Set:
        kind = self._prev.text.upper() if self._match_texts(("SESSION", "LOCAL")) else None
        if self._match_text_seq("CHARACTERISTICS", "AS", "TRANSACTION", "ISOLATION", "LEVEL"):
            name, value = "default_transaction_isolation", self._parse_rest_as_words()
        elif self._match_text_seq("TRANSACTION", "ISOLATION", "LEVEL"):
            name, value = "transaction_isolation", self._parse_rest_as_words()
        else:
            words = self._parse_words(MULTIWORD_SETTINGS)
            if words:
                name = MULTIWORD_SETTINGS[words]
            else:
                name = self._parse_setting_name()
                if not (self._match(TokenType.EQ) or self._match_text_seq("TO")):
                    self.raise_error("Expecting = or TO")
            values = self._parse_csv(self._parse_setting_value)
            value = values[0] if len(values) == 1 else exp.Tuple(expressions=values)
        item = exp.SetItem(this=exp.EQ(this=exp.var(name), expression=value), kind=kind)
        return self.expression(exp.Set(expressions=[item]))

    def _parse_rest_as_words(self) -> exp.Literal:
        """The remaining words, lower-cased (``READ COMMITTED``)."""
        words = []
        while self._curr:
            words.append(self._curr.text.lower())
            self._advance()
        if not words:
            self.raise_error("Expecting a value")
        return exp.Literal.string(" ".join(words))

    # -- CREATE / DROP ----------------------------------------------------------------------

    def _parse_create(self) -> exp.Create | exp.Command:
        if self._prev.token_type == TokenType.CREATE:
            if self._match(TokenType.SINK):
                return self._parse_create_sink()
            if self._match_text_seq("MATERIALIZED", "VIEW"):
                return self._parse_create_materialized_view()
        return super()._parse_create()

    def _parse_create_sink(self) -> exp.Create:
        exists = self._parse_exists(not_=True)
        name = self._parse_table_parts(schema=True)
        if self._match(TokenType.FROM):
            source: exp.Expr | None = self._parse_table_parts()
        elif self._match(TokenType.ALIAS):
            source = self._parse_ddl_select()
            if source is None:
                self.raise_error("Expecting a query")
        else:
            self.raise_error("Expecting FROM or AS")
            source = None
        return self.expression(
            exp.Create(
                this=name,
                kind="SINK",
                exists=exists,
                expression=source,
                properties=self._parse_properties(),
            )
        )

    def _parse_create_materialized_view(self) -> exp.Create:
        exists = self._parse_exists(not_=True)
        name = self._parse_table_parts(schema=True)
        self._expect("AS")
        query = self._parse_ddl_select()
        if query is None:
            self.raise_error("Expecting a query")
        props: list[exp.Expr] = [exp.MaterializedProperty()]
        if self._match_text_seq("EMIT"):
            self._expect("ON", "WINDOW", "CLOSE")
            props.append(EmitOnWindowCloseProperty())
        return self.expression(
            exp.Create(
                this=name,
                kind="VIEW",
                exists=exists,
                expression=query,
                properties=exp.Properties(expressions=props),
            )
        )

    def _parse_drop(self, exists: bool = False, kind: str | None = None) -> exp.Drop | exp.Command:
        index = self._index
        if self._match_text_seq("MATERIALIZED", "VIEW"):
            kind = "MATERIALIZED VIEW"
        elif self._match_set((TokenType.SOURCE, TokenType.SINK, TokenType.TABLE, TokenType.VIEW)):
            kind = self._prev.text.upper()
        else:
            self._retreat(index)
            return super()._parse_drop(exists=exists)  # other objects: 0A000 upstream
        if_exists = exists or self._parse_exists()
        names = self._parse_csv(lambda: self._parse_table_parts(schema=True))
        action = self._match_texts(("CASCADE", "RESTRICT")) and self._prev.text.upper()
        return self.expression(
            exp.Drop(
                exists=if_exists,
                tables=names,
                kind=kind.replace("MATERIALIZED ", ""),
                materialized=kind.startswith("MATERIALIZED"),
                cascade=action == "CASCADE",
                restrict=action == "RESTRICT",
            )
        )

    # -- WITH (...) options and FORMAT ... ENCODE ... ---------------------------------------

    def _parse_wrapped_properties(self) -> list[exp.Expr | list[exp.Expr]]:
        return self._parse_wrapped_csv(self._parse_option)

    def _parse_option(self) -> exp.Property:
        """``key = value``; the key may be dotted or quoted, the value a literal or a word."""
        parts = []
        while True:
            if not self._curr or self._curr.token_type in (
                TokenType.EQ,
                TokenType.COMMA,
                TokenType.R_PAREN,
                TokenType.DOT,
            ):
                self.raise_error("Expecting an option name")
            parts.append(self._curr.text)
            self._advance()
            if not self._match(TokenType.DOT):
                break
        if not self._match(TokenType.EQ):
            self.raise_error("Expecting =")
        value = self._parse_setting_value()
        if isinstance(value, exp.Var) and value.name.upper() in ("TRUE", "FALSE"):
            value = exp.Boolean(this=value.name.upper() == "TRUE")
        return self.expression(exp.Property(this=exp.var(".".join(parts)), value=value))

    def _parse_format_encode(self) -> list[exp.Expr]:
        """``FORMAT <format> ENCODE <encode> [(options)]``, always both."""
        fmt = self._parse_var_or_string()
        if fmt is None:
            self.raise_error("Expecting a format")
        self._expect("ENCODE")
        encode = self._parse_var_or_string()
        if encode is None:
            self.raise_error("Expecting an encoding")
        options = None
        if self._match(TokenType.L_PAREN, advance=False):
            options = exp.Properties(expressions=self._parse_wrapped_properties())
        return [
            self.expression(exp.FileFormatProperty(this=fmt)),
            self.expression(exp.EncodeProperty(this=encode, properties=options)),
        ]

    # -- aliases: never swallow EMIT (of EMIT ON WINDOW CLOSE) or alias a bare * ------------

    def _at_emit(self) -> bool:
        return bool(
            self._curr
            and self._curr.text.upper() == "EMIT"
            and self._next
            and self._next.token_type == TokenType.ON
        )

    def _parse_alias(self, this: exp.Expr | None, explicit: bool = False) -> exp.Expr | None:
        if self._at_emit() or isinstance(this, exp.Star):
            return this
        return super()._parse_alias(this, explicit)

    def _parse_table_alias(self, alias_tokens: Any = None) -> exp.TableAlias | None:
        if self._at_emit():
            return None
        return super()._parse_table_alias(alias_tokens)

    # -- windowing table functions ----------------------------------------------------------

    def _parse_window_tvf(self, name: str) -> exp.Anonymous:
        """RisingWave ``TUMBLE(t, ts, ...)`` or Flink ``TUMBLE(TABLE t, DESCRIPTOR(ts), ...)``."""

        def argument() -> exp.Expr | None:
            if self._match(TokenType.TABLE):
                return self._parse_column()
            if (
                self._curr
                and self._curr.text.upper() == "DESCRIPTOR"
                and self._next
                and self._next.token_type == TokenType.L_PAREN
            ):
                self._advance()
                return self._parse_wrapped(self._parse_column)
            return self._parse_lambda()

        return self.expression(exp.Anonymous(this=name, expressions=self._parse_csv(argument)))

    def _parse_flink_table_function(self) -> exp.Expr | None:
        """Flink's ``TABLE(TUMBLE(...))`` wrapper: only the windowing functions, unwrapped."""
        if not self._curr or self._curr.text.upper() not in WINDOW_FUNCTIONS:
            self.raise_error("Expecting TUMBLE or HOP")
        return self._parse_function()


class SqlStreamGenerator(RisingWaveGenerator):
    """Prints the nodes the parser adds."""

    PROPERTIES_LOCATION = {
        **RisingWaveGenerator.PROPERTIES_LOCATION,
        EmitOnWindowCloseProperty: exp.Properties.Location.POST_EXPRESSION,
    }

    # Custom node classes are not in sqlglot's registry, so they print through TRANSFORMS.
    TRANSFORMS = {
        **RisingWaveGenerator.TRANSFORMS,
        Flush: lambda self, e: "FLUSH",
        Explain: lambda self, e: f"EXPLAIN {self.sql(e, 'this')}",
        EmitOnWindowCloseProperty: lambda self, e: "EMIT ON WINDOW CLOSE",
    }

    def show_sql(self, expression: exp.Show) -> str:
        return f"SHOW {expression.name}"

    def create_sql(self, expression: exp.Create) -> str:
        source = expression.expression
        if expression.kind != "SINK" or not isinstance(source, exp.Table):
            return super().create_sql(expression)
        # CREATE SINK name FROM relation WITH (...)
        bare = expression.copy()
        bare.set("expression", None)
        sql = super().create_sql(bare)
        head = f"CREATE SINK{' IF NOT EXISTS' if expression.args.get('exists') else ''} "
        head += self.sql(expression, "this")
        return f"{head} FROM {self.sql(source)}{sql[len(head) :]}"


class SqlStream(RisingWave):
    """RisingWave + sqlstream statements (see the module docstring)."""

    class Tokenizer(RisingWave.Tokenizer):
        # SHOW and EXPLAIN get real parsers instead of swallowing the statement as text.
        KEYWORDS = {k: v for k, v in RisingWave.Tokenizer.KEYWORDS.items() if k != "EXPLAIN"}
        COMMANDS = RisingWave.Tokenizer.COMMANDS - {TokenType.SHOW}

    Parser = SqlStreamParser
    Generator = SqlStreamGenerator
