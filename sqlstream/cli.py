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
