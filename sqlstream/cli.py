"""The ``sqlstream`` command."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from sqlstream import __version__
from sqlstream.config import Settings
from sqlstream.errors import SqlStreamError


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(1)


@contextmanager
def _catalog(settings: Settings) -> Iterator[str]:
    """The catalog DSN: the given one, or a private Postgres under the data directory."""
    if settings.catalog:
        yield settings.catalog
        return
    from sqlstream.checkpoint.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(settings.data_dir)
    dsn = pg.start()
    try:
        yield dsn
    finally:
        pg.stop()


class _Command(click.Command):
    """Errors reach the user as one line and a non-zero exit; --debug shows the traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SqlStreamError as e:
            if ctx.params.get("debug"):
                raise
            _fail(f"ERROR:  {e}  (SQLSTATE {e.sqlstate})")
        except KeyboardInterrupt:
            _fail("interrupted")
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
            if ctx.params.get("debug"):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            _fail(f"error: {type(e).__name__}: {first}  (run with --debug for details)")
        return None


_catalog_opt = click.option(
    "--catalog",
    envvar="SQLSTREAM_CATALOG",
    help="Postgres URL of the catalog (default: a private Postgres in the data directory).",
)
_data_dir_opt = click.option(
    "--data-dir",
    envvar="SQLSTREAM_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the private catalog Postgres and staging files live (default .sqlstream).",
)
_debug_opt = click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sqlstream")
def main() -> None:
    """sqlstream: streaming ETL in plain SQL, on DuckDB, with exactly-once checkpoints
    in Postgres.

    \b
    Quick start:
      sqlstream run examples/quickstart.sql --once
    """


@main.command(cls=_Command)
@click.argument("job", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--once", is_flag=True, help="Process what is available now, checkpoint, exit 0.")
@_catalog_opt
@_data_dir_opt
@click.option("--checkpoint-interval", help="Time between checkpoints, e.g. 1s, 500ms.")
@click.option("--batch-rows", type=int, help="Most rows read from a source per poll.")
@click.option(
    "--reset",
    "resets",
    multiple=True,
    metavar="NAME",
    help="Discard the state of object NAME whose definition changed, and start it anew.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress line.")
@_debug_opt
def run(
    job: Path,
    once: bool,
    catalog: str | None,
    data_dir: Path | None,
    checkpoint_interval: str | None,
    batch_rows: int | None,
    resets: tuple[str, ...],
    quiet: bool,
    debug: bool,
) -> None:
    """Run the statements of JOB (a .sql file) and then the pipeline it defines.

    Runs until interrupted (Ctrl-C stops after a final checkpoint) or until every source
    is exhausted. Running the same file again against the same catalog resumes from the
    last checkpoint.
    """
    from sqlstream.engine.loop import JobOptions, install_signal_handlers, run_job
    from sqlstream.output import print_result

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")
    settings = Settings.load(
        {
            "catalog": catalog,
            "data_dir": data_dir,
            "checkpoint_interval": checkpoint_interval,
            "batch_rows": batch_rows,
        }
    )
    opts = JobOptions(
        once=once,
        resets=frozenset(resets),
        progress=not quiet and sys.stderr.isatty(),
        on_result=print_result,
    )
    install_signal_handlers(opts.stop)
    with _catalog(settings) as dsn:
        run_job(settings, dsn, job.read_text(), opts)


@main.command(cls=_Command)
@_catalog_opt
@_data_dir_opt
@click.option("--limit", default=20, show_default=True, help="How many, newest first.")
@_debug_opt
def checkpoints(catalog: str | None, data_dir: Path | None, limit: int, debug: bool) -> None:
    """List the latest checkpoints of a catalog."""
    import psycopg

    from sqlstream.output import print_table

    settings = Settings.load({"catalog": catalog, "data_dir": data_dir})
    with _catalog(settings) as dsn, psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT epoch, committed_at::timestamp(0)::text AS committed_at, "
            "round(duration_ms::numeric, 1) AS duration_ms, rows_in, rows_out, state_rows "
            "FROM sqlstream.checkpoints ORDER BY epoch DESC LIMIT %s",
            [limit],
        )
        print_table([d.name for d in cur.description], cur.fetchall())


# -- the server ----------------------------------------------------------------------------------

_auth_opt = click.option(
    "--auth", type=click.Choice(["scram-sha-256", "trust"]), envvar="SQLSTREAM_AUTH",
    help="Client authentication: SCRAM-SHA-256 passwords (default) or trust (none).",
)
_user_opt = click.option(
    "--user", envvar="SQLSTREAM_USER", help="The user clients log in as (default sqlstream)."
)
_password_opt = click.option(
    "--password", envvar="SQLSTREAM_PASSWORD",
    help="Its password (prefer SQLSTREAM_PASSWORD: flags show in ps).",
)


@main.command(cls=_Command)
@click.option("--host", envvar="SQLSTREAM_HOST", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=int, help="pgwire port (default 4566, SQLSTREAM_PGWIRE_PORT).")
@click.option("--http-port", type=int,
              help="HTTP port for /health and /metrics (default 4567, SQLSTREAM_HTTP_PORT).")
@_catalog_opt
@_data_dir_opt
@click.option("--checkpoint-interval", help="Time between checkpoints, e.g. 1s, 500ms.")
@click.option("--batch-rows", type=int, help="Most rows read from a source per poll.")
@_auth_opt
@_user_opt
@_password_opt
@click.option("--tls-cert", envvar="SQLSTREAM_TLS_CERT", type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate: accept TLS (sslmode=require) with it.")
@click.option("--tls-key", envvar="SQLSTREAM_TLS_KEY", type=click.Path(exists=True, dir_okay=False),
              help="PEM private key of --tls-cert.")
@_debug_opt
def serve(
    host: str,
    port: int | None,
    http_port: int | None,
    catalog: str | None,
    data_dir: Path | None,
    checkpoint_interval: str | None,
    batch_rows: int | None,
    auth: str | None,
    user: str | None,
    password: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    debug: bool,
) -> None:
    """Serve the Postgres wire protocol (psql, drivers) and HTTP /health and /metrics.

    On start it recovers every source, view and sink from the catalog and resumes from the
    last checkpoint; SIGTERM or Ctrl-C stops it after a final checkpoint.

    \b
    Example:
      SQLSTREAM_PASSWORD=secret sqlstream serve
      psql postgresql://sqlstream:secret@127.0.0.1:4566/sqlstream
    """
    import asyncio
    import os
    import signal

    from sqlstream.server.app import Listening, ServerApp
    from sqlstream.server.config import ServerConfig

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings.load(
        {
            "catalog": catalog,
            "data_dir": data_dir,
            "checkpoint_interval": checkpoint_interval,
            "batch_rows": batch_rows,
            "pgwire_port": port,
            "http_port": http_port,
        }
    )
    config = ServerConfig.load(
        {"host": host, "auth": auth, "user": user, "password": password,
         "tls_cert": tls_cert, "tls_key": tls_key}
    )

    def ready(at: Listening) -> None:
        click.echo(
            f"sqlstream {__version__} ready: pgwire on {at.host}:{at.pgwire_port}, "
            f"HTTP on {at.host}:{at.http_port} (auth {config.auth})",
            err=True,
        )

    async def run(dsn: str) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():  # asked twice: leave now, the last checkpoint stays valid
                os._exit(130)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await ServerApp(settings, config, dsn).run(stop, on_ready=ready)

    with _catalog(settings) as dsn:
        asyncio.run(run(dsn))
    click.echo("sqlstream stopped after a final checkpoint", err=True)


@main.command(cls=_Command)
@click.option("--host", help="Server to connect to. Without it, an embedded server runs in this process.")
@click.option("--port", type=int, help="Its pgwire port (default 4566, SQLSTREAM_PGWIRE_PORT).")
@click.option("--user", envvar="SQLSTREAM_USER", help="User to log in as (default sqlstream).")
@click.option("--password", envvar="SQLSTREAM_PASSWORD",
              help="Password (or SQLSTREAM_PASSWORD, PGPASSWORD, ~/.pgpass).")
@click.option("--dbname", default="sqlstream", show_default=True, help="Database name to send.")
@_catalog_opt
@_data_dir_opt
@_debug_opt
def console(
    host: str | None,
    port: int | None,
    user: str | None,
    password: str | None,
    dbname: str,
    catalog: str | None,
    data_dir: Path | None,
    debug: bool,
) -> None:
    """An interactive SQL console: statements end with ';', \\q quits.

    \b
    Examples:
      sqlstream console                        # embedded server on the local catalog
      sqlstream console --host db1 --user me   # a running `sqlstream serve`
      sqlstream console --host db1 < job.sql   # run a script
    """
    import secrets

    from psycopg.conninfo import make_conninfo

    from sqlstream import console as con

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")
    banner = f"sqlstream {__version__} console. \\? for help, \\q to quit."
    if host:
        settings = Settings.load({"pgwire_port": port, "data_dir": data_dir})
        dsn = make_conninfo(host=host, port=settings.pgwire_port, user=user or "sqlstream",
                            dbname=dbname, **({"password": password} if password else {}))
        con.main(dsn, data_dir=data_dir, banner=banner)
        return
    from sqlstream.server.app import ServerApp, start_in_thread
    from sqlstream.server.config import ServerConfig

    settings = Settings.load({"catalog": catalog, "data_dir": data_dir, "pgwire_port": 0, "http_port": 0})
    # The embedded server listens on 127.0.0.1 only, with a password nobody else knows.
    secret = secrets.token_urlsafe(18)
    config = ServerConfig(host="127.0.0.1", user="sqlstream", password=secret)
    with _catalog(settings) as dsn:
        server = start_in_thread(ServerApp(settings, config, dsn))
        try:
            port_ = server.listening.pgwire_port
            client = make_conninfo(host="127.0.0.1", port=port_, user="sqlstream",
                                   password=secret, dbname=dbname)
            con.main(client, data_dir=settings.data_dir, banner=banner + f" (embedded server on port {port_})")
        finally:
            server.stop()
