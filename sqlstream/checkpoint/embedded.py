"""A private Postgres cluster for the catalog, kept in sqlstream's data directory (DESIGN §9).

With no ``--catalog`` URL, sqlstream runs its own Postgres from the machine's binaries:

* the cluster lives in ``<data_dir>/pg`` and is created on first use (``initdb``: UTF8,
  locale C, superuser ``postgres``, trust authentication for the Unix socket and 127.0.0.1
  only) with a database ``sqlstream``;
* it listens on 127.0.0.1 only, on a free port: the port of the previous start when it is
  still free (so the DSN stays stable), otherwise a new one from the kernel's ephemeral range
  (which never contains 5432); its Unix socket sits inside the cluster directory;
* ``max_prepared_transactions = 64`` (two-phase sinks), ``wal_level = logical`` (CDC),
  ``fsync = on`` (the checkpoints are the point of having it);
* a cluster that is already running (another sqlstream process on the same data dir) is
  reused and left running by :meth:`EmbeddedPostgres.stop`;
* a stale ``postmaster.pid`` left by a crash is handled: Postgres itself removes it when its
  process is gone; we remove it when its PID now belongs to some other process; orphaned
  server processes of a killed postmaster are waited for (and killed if they linger);
* as root, the directory is owned by the ``postgres`` OS user and the binaries run as that
  user through ``runuser`` (initdb and postgres refuse to run as root).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg

from sqlstream.errors import CatalogError

DATABASE = "sqlstream"
SUPERUSER = "postgres"
RUN_AS_USER = "postgres"  # the OS user that runs the server when sqlstream runs as root

# Written into postgresql.conf at initdb. The port and socket directory are given on the
# command line at each start instead, because they depend on the moment and on the path.
SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "max_prepared_transactions": "64",
    "wal_level": "logical",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}

# trust is safe only because nothing but this machine can connect: TCP on 127.0.0.1, and the
# Unix socket lives in the 0700 cluster directory.
PG_HBA = """\
# sqlstream embedded catalog: local connections only.
local   all          all                 trust
host    all          all   127.0.0.1/32  trust
local   replication  all                 trust
host    replication  all   127.0.0.1/32  trust
"""

_START_TIMEOUT_S = 300  # crash recovery of a big WAL can take a while
_SOCKET_PATH_MAX = 90  # sun_path holds 107 bytes, minus "/.s.PGSQL.65535"
_INSTALL_HINT = (
    "install the Postgres server binaries (e.g. apt-get install postgresql), set "
    "SQLSTREAM_PG_BIN to their bin directory, or pass --catalog postgresql://... "
    "(SQLSTREAM_CATALOG) to use an existing server"
)


def find_pg_bin(major: str | None = None) -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``SQLSTREAM_PG_BIN`` wins; else ``/usr/lib/postgresql/<major>/bin`` when an existing
    cluster needs that major version; else the highest ``/usr/lib/postgresql/*/bin``; else
    ``initdb`` on PATH.
    """
    env = os.environ.get("SQLSTREAM_PG_BIN")
    if env:
        path = Path(env)
        if not (path / "initdb").is_file() or not (path / "pg_ctl").is_file():
            raise CatalogError(f"SQLSTREAM_PG_BIN={env} holds no initdb/pg_ctl; {_INSTALL_HINT}")
        return path
    debian = Path("/usr/lib/postgresql")
    candidates: list[tuple[float, Path]] = []
    if debian.is_dir():
        for d in debian.iterdir():
            with contextlib.suppress(ValueError):
                if (d / "bin" / "initdb").is_file():
                    candidates.append((float(d.name), d / "bin"))
    if major is not None:
        for version, path in candidates:
            if version == float(major):
                return path
    if candidates:
        return max(candidates)[1]
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise CatalogError(f"no Postgres binaries found for the embedded catalog; {_INSTALL_HINT}")


@contextlib.contextmanager
def scratch_catalog(
    dsn: str | None, prefix: str, settings: Mapping[str, str] | None = None
) -> Iterator[tuple[str, Path]]:
    """A temporary working directory and a catalog for a benchmark or a tool: ``dsn`` when
    given, else a throwaway :class:`EmbeddedPostgres` inside the directory; both are gone
    afterwards.

    >>> with scratch_catalog(None, "sqlstream-bench-") as (dsn, work):  # doctest: +SKIP
    ...     engine = Engine(Settings(data_dir=work / "data"), dsn)
    """
    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o711)  # the embedded server may run as another user (postgres, when root)
    pg = None
    try:
        if dsn is None:
            pg = EmbeddedPostgres(work / "catalog", settings=settings)
            dsn = pg.start()
        yield dsn, work
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


class EmbeddedPostgres:
    """A Postgres cluster private to one sqlstream data directory.

    >>> pg = EmbeddedPostgres(Path(".sqlstream"))      # doctest: +SKIP
    >>> dsn = pg.start()        # 'postgresql://postgres@127.0.0.1:41234/sqlstream'
    >>> pg.stop()               # only if this object started it

    ``settings`` adds or overrides server settings (``-c name=value``) for starts made by this
    object; the test suite uses it, a deployment should not need it.
    """

    def __init__(self, data_dir: Path, *, settings: Mapping[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pg"
        self.settings = dict(settings or {})
        self.port: int | None = None
        self.dsn: str | None = None
        # True when this object started the server (and so stop() shuts it down).
        self.owns_server = False

    # -- public API -------------------------------------------------------------------------

    def start(self) -> str:
        """Make sure the cluster runs and has the ``sqlstream`` database; return its DSN."""
        if self.dsn is not None and self._live_postmaster() is not None:
            return self.dsn
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._flock():
            running = self._live_postmaster()
            if running is not None:
                self.port = self._wait_ready(running)
                self.owns_server = False
            else:
                self._start_server()
                self.owns_server = True
            self.dsn = self._dsn(DATABASE)
            self._ensure_database()
        return self.dsn

    def stop(self) -> None:
        """Shut the server down (fast mode) if this object started it; otherwise do nothing."""
        if not self.owns_server:
            return
        with self._flock():
            if self._live_postmaster() is not None:
                self._run(
                    [
                        self._bin("pg_ctl"),
                        "stop",
                        "-D",
                        str(self.pgdata),
                        "-m",
                        "fast",
                        "-w",
                        "-s",
                        "-t",
                        str(_START_TIMEOUT_S),
                    ],
                    what="stop the embedded catalog Postgres",
                )
        self.owns_server = False
        self.dsn = None

    def is_running(self) -> bool:
        """Whether a live server runs on this cluster (started by anyone)."""
        return self._live_postmaster() is not None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- running server detection -----------------------------------------------------------

    def _read_pidfile(self) -> list[str] | None:
        try:
            return (self.pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _live_postmaster(self) -> list[str] | None:
        """The lines of postmaster.pid if its process is this cluster's live postmaster."""
        lines = self._read_pidfile()
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        if not _alive(pid):
            return None
        # The PID may have been reused after a crash: check that it is a postgres process
        # working in our directory (a postmaster chdirs into its data directory).
        proc = Path(f"/proc/{pid}")
        if proc.is_dir():
            try:
                if not os.path.samefile(os.readlink(proc / "cwd"), self.pgdata):
                    return None
            except PermissionError:
                with contextlib.suppress(OSError):
                    if not (proc / "comm").read_text().startswith("postgres"):
                        return None
            except OSError:
                return None
        return lines

    def _wait_ready(self, lines: list[str]) -> int:
        """Wait until a running server (maybe still in crash recovery) accepts connections."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            status = lines[7].strip() if len(lines) > 7 else ""
            if status in ("ready", "standby") and lines[3].strip().isdigit():
                return int(lines[3])
            if time.monotonic() > deadline:
                raise CatalogError(f"the embedded catalog Postgres in {self.pgdata} is not ready")
            time.sleep(0.05)
            fresh = self._live_postmaster()
            if fresh is None:
                # It was shutting down (or died): start it ourselves.
                self._start_server()
                self.owns_server = True
                assert self.port is not None
                return self.port
            lines = fresh

    # -- starting ---------------------------------------------------------------------------

    def _start_server(self) -> None:
        if not (self.pgdata / "PG_VERSION").is_file():
            self._initdb()
        else:
            self._check_access(self.pgdata)
        # No live postmaster of ours runs (checked by the caller, under the flock), so lock
        # files left by a crash are stale. Postgres would ignore them if their PID were dead,
        # but refuses when the PID was reused or is a zombie (a killed postmaster whose new
        # parent, e.g. PID 1 of a container without an init, never reaps it).
        for stale in [self.pgdata / "postmaster.pid", *self.pgdata.glob(".s.PGSQL.*.lock")]:
            stale.unlink(missing_ok=True)
        log = self.pgdata / "postmaster.log"
        last_error = ""
        orphans_handled = False
        for attempt in range(5):
            port = self._pick_port(prefer_previous=attempt == 0)
            opts = ["-p", str(port)]
            sockdir = str(self.pgdata)
            if len(sockdir) > _SOCKET_PATH_MAX or any(c in sockdir for c in ',"'):
                sockdir = ""  # too long for sun_path (or unquotable): TCP only
            opts += ["-c", f"unix_socket_directories={sockdir}"]
            for name, value in self.settings.items():
                opts += ["-c", f"{name}={value}"]
            log_size = log.stat().st_size if log.exists() else 0
            # pg_ctl hands -o to a shell, hence the quoting.
            result = self._run(
                [
                    self._bin("pg_ctl"),
                    "start",
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(log),
                    "-w",
                    "-s",
                    "-t",
                    str(_START_TIMEOUT_S),
                    "-o",
                    shlex.join(opts),
                ],
                what="start the embedded catalog Postgres",
                check=False,
            )
            if result.returncode == 0:
                self.port = port
                return
            last_error = _read_from(log, log_size) or result.stdout + result.stderr
            if "Address already in use" in last_error or "could not bind" in last_error:
                continue  # someone took the port between our check and the bind
            if "pre-existing shared memory block" in last_error and not orphans_handled:
                orphans_handled = True
                self._reap_orphans()
                continue
            break
        raise CatalogError(
            f"could not start the embedded catalog Postgres in {self.pgdata}:\n"
            f"{last_error.strip()[-2000:]}\n(full log: {log})"
        )

    def _initdb(self) -> None:
        """Create the cluster in a scratch directory and rename it into place, so a crash
        during initdb never leaves a half-made cluster behind."""
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise CatalogError(
                    f"{self.pgdata} exists but is not a Postgres cluster; move it away"
                )
            self.pgdata.rmdir()
        scratch = self.data_dir / "pg.initdb"
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)
        self._check_access(scratch)
        self._run(
            [
                self._bin("initdb"),
                "-D",
                str(scratch),
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "-A",
                "trust",
            ],
            what="initialise the embedded catalog Postgres (initdb)",
        )
        with open(scratch / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# --- sqlstream embedded catalog (sqlstream/checkpoint/embedded.py) ---\n")
            for name, value in SETTINGS.items():
                f.write(f"{name} = {value}\n")
        (scratch / "pg_hba.conf").write_text(PG_HBA, encoding="utf-8")
        scratch.rename(self.pgdata)

    def _ensure_database(self) -> None:
        try:
            with psycopg.connect(
                self._dsn("postgres"), autocommit=True, connect_timeout=10
            ) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                ).fetchone()
                if not exists:
                    with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                        conn.execute(f'CREATE DATABASE "{DATABASE}"')
        except psycopg.OperationalError as e:
            raise CatalogError(f"cannot connect to the embedded catalog Postgres: {e}") from e

    def _pick_port(self, *, prefer_previous: bool) -> int:
        if prefer_previous:
            previous = self._previous_port()
            if previous is not None and previous != 5432 and _port_free(previous):
                return previous
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port != 5432:  # never the system Postgres' port, even if free now
                return port

    def _previous_port(self) -> int | None:
        """The port of the last start, from postmaster.opts (which outlives the server)."""
        try:
            opts = (self.pgdata / "postmaster.opts").read_text()
        except OSError:
            return None
        m = re.search(r'"-p" "(\d+)"', opts)
        return int(m.group(1)) if m else None

    def _reap_orphans(self) -> None:
        """Wait for server processes whose postmaster was killed; kill them if they linger.

        They still hold the shared memory, which makes a new postmaster refuse to start.
        They are identified by working in our data directory, so nothing else is touched.
        """
        deadline = time.monotonic() + 5
        while True:
            pids = _processes_in(self.pgdata)
            if not pids:
                return
            if time.monotonic() > deadline:
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
                return
            time.sleep(0.1)

    # -- running the binaries ---------------------------------------------------------------

    def _os_user(self) -> str | None:
        """The OS user to run the binaries as, or None for ourselves (when not root)."""
        if os.geteuid() != 0:
            return None
        with contextlib.suppress(FileNotFoundError):
            owner = self.pgdata.stat().st_uid
            if owner != 0:
                return pwd.getpwuid(owner).pw_name
        try:
            pwd.getpwnam(RUN_AS_USER)
        except KeyError:
            raise CatalogError(
                f"sqlstream runs as root, and Postgres refuses to: an OS user "
                f"'{RUN_AS_USER}' is needed to run the embedded catalog (or pass --catalog)"
            ) from None
        return RUN_AS_USER

    def _check_access(self, directory: Path) -> None:
        """As root: give ``directory`` to the server's user and make sure it can reach it."""
        user = self._os_user()
        if user is None:
            return
        pw = pwd.getpwnam(user)
        if directory.stat().st_uid == 0:
            os.chown(directory, pw.pw_uid, pw.pw_gid)
        probe = subprocess.run(
            ["runuser", "-u", user, "--", "test", "-w", str(directory), "-a", "-x", str(directory)],
            cwd="/",
            capture_output=True,
        )
        if probe.returncode != 0:
            blocker = _first_unreachable(directory, pw)
            raise CatalogError(
                f"the OS user '{user}' that runs the embedded catalog Postgres cannot reach "
                f"{directory}"
                + (f" ({blocker} is not searchable by it)" if blocker else "")
                + "; choose a data directory it can reach (e.g. under /var/lib or /srv), "
                "grant it search permission (chmod o+x), or pass --catalog"
            )

    def _bin(self, name: str) -> str:
        major = None
        with contextlib.suppress(OSError):
            major = (self.pgdata / "PG_VERSION").read_text().strip()
        return str(find_pg_bin(major) / name)

    def _run(
        self, cmd: list[str], *, what: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        user = self._os_user()
        if user is not None:
            cmd = ["runuser", "-u", user, "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            # cwd "/": the server's user may not be able to enter our working directory.
            result = subprocess.run(
                cmd, cwd="/", env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
            )
        except FileNotFoundError as e:
            raise CatalogError(f"cannot {what}: {e}; {_INSTALL_HINT}") from e
        if check and result.returncode != 0:
            raise CatalogError(f"cannot {what}:\n{(result.stderr or result.stdout).strip()}")
        return result

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        """Serialise start/stop between sqlstream processes sharing the data directory."""
        path = self.data_dir / "pg.lock"
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _dsn(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Postgres sets SO_REUSEADDR too, so TIME_WAIT leftovers do not count as taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _processes_in(directory: Path) -> list[int]:
    """PIDs of processes whose working directory is ``directory`` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if os.path.samefile(os.readlink(proc / "cwd"), directory):
                pids.append(int(proc.name))
    return pids


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return ""


def _first_unreachable(directory: Path, pw: pwd.struct_passwd) -> Path | None:
    """The first ancestor of ``directory`` the user cannot search, judged by mode bits."""
    groups = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    for d in [*reversed(directory.parents), directory]:
        try:
            st = d.stat()
        except OSError:
            return d
        if st.st_uid == pw.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return d
    return None
