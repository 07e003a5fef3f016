"""Versioned DDL for the catalog database (DESIGN §6), applied at start-up.

The files are ``V<NNN>__<name>.sql`` in ``catalog/`` and are applied in version order, each
exactly once, each in its own transaction together with its row in
``sqlstream.schema_migrations``, so a crash between two files leaves a consistent, resumable
catalog. Several processes may start at once: every transaction first takes one transaction-level
advisory lock, and re-reads what is already applied under it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import pq

from sqlstream.errors import CatalogError

# Arbitrary but fixed key of the advisory lock that serialises migrations on one database.
# Transaction-level, so a crashed migrator can never leave it held.
MIGRATION_LOCK_KEY = 0x5351_4C53_7472_6D31 & 0x7FFF_FFFF_FFFF_FFFF

_FILE_RE = re.compile(r"^V(\d+)__(\w+)\.sql$")

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS sqlstream;
CREATE TABLE IF NOT EXISTS sqlstream.schema_migrations (
    version     int PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True)
class Migration:
    """One versioned DDL file."""

    version: int
    name: str
    path: Path

    @property
    def filename(self) -> str:
        return self.path.name


def catalog_dir() -> Path:
    """The directory holding the ``V*.sql`` files.

    An installed wheel carries them as ``sqlstream/_catalog`` (force-included by
    pyproject.toml); a source checkout or editable install reads the repository's top-level
    ``catalog/`` directly, two levels above this module's package.
    """
    try:
        packaged = resources.files("sqlstream").joinpath("_catalog")
        if isinstance(packaged, Path) and packaged.is_dir():
            return packaged
    except (ModuleNotFoundError, NotImplementedError):  # pragma: no cover - exotic loaders
        pass
    checkout = Path(__file__).resolve().parents[2] / "catalog"
    if checkout.is_dir():
        return checkout
    raise CatalogError(
        "cannot find the catalog DDL: neither the installed package's sqlstream/_catalog "
        f"nor {checkout} exists; reinstall sqlstream"
    )


def migration_files(directory: Path | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default :func:`catalog_dir`), in version order."""
    directory = directory if directory is not None else catalog_dir()
    found: dict[int, Migration] = {}
    for path in directory.iterdir():
        m = _FILE_RE.match(path.name)
        if not m or not path.is_file():
            continue
        version = int(m.group(1))
        if version in found:
            raise CatalogError(
                f"two catalog migrations share version {version}: "
                f"{found[version].filename} and {path.name}"
            )
        found[version] = Migration(version, m.group(2), path)
    return [found[v] for v in sorted(found)]


def migrate(conn: psycopg.Connection, directory: Path | None = None) -> list[str]:
    """Apply the pending migrations to the database of ``conn``; return their file names.

    Idempotent (a second call returns ``[]``) and safe to run from several processes at once.
    ``conn`` may be in autocommit mode or not, but must not be inside a transaction: each
    file is committed on its own.
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise CatalogError("migrate() needs a connection that is not inside a transaction")
    migrations = migration_files(directory)

    with conn.transaction():
        _lock(conn)
        conn.execute(_BOOTSTRAP)
        applied = _applied_versions(conn)
    known = {m.version for m in migrations}
    newer = sorted(applied - known)
    if newer:
        # The catalog was upgraded by a newer sqlstream; this version cannot know what the
        # newer schema means for checkpoints, so refuse rather than corrupt it.
        raise CatalogError(
            f"the catalog has migration(s) {newer} that this sqlstream does not know "
            f"(it knows up to {max(known, default=0)}); upgrade sqlstream"
        )

    done: list[str] = []
    for mig in migrations:
        if mig.version in applied:
            continue
        sql_text = mig.path.read_text(encoding="utf-8")
        try:
            with conn.transaction():
                _lock(conn)
                # Another process may have applied it while we waited for the lock.
                if mig.version in _applied_versions(conn):
                    continue
                # No parameters: psycopg sends the text as one simple query, so a file may
                # hold many statements (and '%' is not a placeholder).
                conn.execute(sql_text)  # type: ignore[arg-type]
                conn.execute(
                    "INSERT INTO sqlstream.schema_migrations (version, name) VALUES (%s, %s)",
                    (mig.version, mig.name),
                )
        except psycopg.Error as e:
            raise CatalogError(f"catalog migration {mig.filename} failed: {e}") from e
        done.append(mig.filename)
    return done


def _lock(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))


def _applied_versions(conn: psycopg.Connection) -> set[int]:
    rows = conn.execute("SELECT version FROM sqlstream.schema_migrations").fetchall()
    return {r[0] for r in rows}
