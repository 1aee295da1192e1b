"""A throw-away PostgreSQL cluster for tests and the demo.

``initdb`` into a temporary directory, ``wal_level=logical``, a free port on
127.0.0.1 with password (SCRAM) authentication and a private unix socket
directory with trust for the superuser. When the caller is root the server
runs as an unprivileged user, since postgres refuses to run as root. The
postmaster is our child, in its own process group, so ``kill()`` can SIGKILL
the whole server the way a crash would.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from time import monotonic
from types import TracebackType
from typing import Any, Literal

import psycopg
from psycopg.conninfo import make_conninfo

__all__ = ["Cluster", "ClusterError", "find_bindir", "free_port"]

logger = logging.getLogger("pgsupervisor.testing")

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "postgres-superuser-pw"

DEFAULT_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "fsync": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}


class ClusterError(RuntimeError):
    """The throw-away cluster could not be created, started or stopped."""


def _has_server(bindir: str | Path) -> bool:
    return all(os.access(Path(bindir, b), os.X_OK) for b in ("initdb", "postgres"))


def find_bindir() -> Path:
    """Where ``initdb`` and ``postgres`` live: ``$PGSUPERVISOR_PG_BINDIR``, PATH,
    ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin`` (newest first), or
    the binaries bundled by the ``pgserver`` wheel."""
    candidates: list[str] = []
    if env := os.environ.get("PGSUPERVISOR_PG_BINDIR"):
        candidates.append(env)
    if found := shutil.which("initdb"):
        candidates.append(str(Path(found).resolve().parent))
    if pg_config := shutil.which("pg_config"):
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.append(out)
        except (OSError, subprocess.CalledProcessError):
            pass
    candidates.extend(
        sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: (
                int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0
            ),
            reverse=True,
        )
    )
    for candidate in candidates:
        if _has_server(candidate):
            return Path(candidate)
    # Last: importing pgserver has side effects (a RuntimeDirWarning without
    # XDG_RUNTIME_DIR), so only when no system server was found.
    try:
        import pgserver  # noqa: PLC0415

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if _has_server(bundled):
            return bundled
    except ImportError:
        pass
    raise ClusterError(
        "no PostgreSQL server binaries found (looked on PATH, in pg_config --bindir,"
        " /usr/lib/postgresql/*/bin and the pgserver package): install PostgreSQL,"
        " or `pip install pgsupervisor[embedded]`"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """The direct children of *pid* (Linux /proc), empty if unknown."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    """True while *pid* runs; a zombie counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as, or None if we are not root."""
    if os.geteuid() != 0:
        return None
    for name in (os.environ.get("PGSUPERVISOR_PG_USER"), "postgres", "nobody"):
        if name:
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
    raise ClusterError("running as root and no unprivileged user to run postgres as")


def _reachable_by_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _usable_bindir(bindir: Path, user: pwd.struct_passwd | None) -> Path:
    """*bindir*, or a copy of its installation that *user* can execute.

    Run as root, a virtualenv under /root (mode 700) holds binaries the
    unprivileged server user cannot reach: copy the installation once into a
    world-readable cache, keeping the wheel's layout (``pgserver/pginstall``
    beside ``pgserver.libs``) so the binaries' relative RPATH still resolves.
    """
    if user is None or _reachable_by_others(bindir):
        return bindir
    install = bindir.parent
    package = install.parent
    digest = hashlib.sha1(str(install).encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir(), f"pgsupervisor-pginstall-{digest}")
    relative_bin = Path(package.name, install.name, "bin")
    if not (cache / relative_bin / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="pgsupervisor-pginstall-"))
        tree = staging / "tree"
        shutil.copytree(install, tree / package.name / install.name, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, tree / libs.name, symlinks=True)
        for root, dirs, _ in os.walk(staging):
            for name in dirs:
                Path(root, name).chmod(0o755)
        with contextlib.suppress(OSError):  # another process won the race
            tree.rename(cache)
        shutil.rmtree(staging, ignore_errors=True)
    return cache / relative_bin


class Cluster:
    """One throw-away PostgreSQL server. Use as a context manager, or call
    `start()` and `cleanup()`."""

    def __init__(
        self,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        bindir: str | Path | None = None,
        template: Path | None = None,
    ):
        self._user = _server_user()
        self.bindir = _usable_bindir(
            Path(bindir) if bindir else find_bindir(), self._user
        )
        self.port = port or free_port()
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.base = Path(tempfile.mkdtemp(prefix="pgsupervisor-"))
        self.datadir = self.base / "data"
        self.sockdir = self.base / "sock"
        self.logfile = self.base / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._template = template
        self._initialised = False

    # --- life cycle ---------------------------------------------------------

    def _as_server_user(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {
            "user": self._user.pw_uid,
            "group": self._user.pw_gid,
            "extra_groups": [],
        }

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def init(self) -> None:
        """initdb (or copy the template data directory) and write the config."""
        self._chown(self.base)
        self.sockdir.mkdir()
        self._chown(self.sockdir)
        if self._template is not None:
            shutil.copytree(self._template, self.datadir, symlinks=True)
            if self._user is not None:
                for root, dirs, files in os.walk(self.datadir):
                    for name in [*dirs, *files]:
                        self._chown(Path(root, name))
            self._chown(self.datadir)
            self.datadir.chmod(0o700)
        else:
            pwfile = self.base / "pwfile"
            pwfile.write_text(SUPERUSER_PASSWORD + "\n")
            self._chown(pwfile)
            initdb = subprocess.Popen(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # Ctrl-C is ours to handle, not initdb's
                **self._as_server_user(),
            )
            try:
                stdout, stderr = initdb.communicate()
            except BaseException:
                # Interrupted: end initdb and the bootstrap backend it runs, and
                # wait for them, so that nothing writes files cleanup() removes.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(initdb.pid, signal.SIGKILL)
                initdb.wait()
                raise
            pwfile.unlink()
            if initdb.returncode != 0:
                raise ClusterError(f"initdb failed:\n{stdout}\n{stderr}")
        self.write_config()
        self._initialised = True

    def write_config(self) -> None:
        settings = {
            **self.settings,
            "port": str(self.port),
            "listen_addresses": self.settings.get("listen_addresses", "127.0.0.1"),
            "unix_socket_directories": str(self.sockdir),
        }
        lines = [f"{k} = '{v}'" for k, v in settings.items()]
        conf = self.datadir / "postgresql.auto.conf"
        conf.write_text("\n".join(lines) + "\n")
        self._chown(conf)
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "local replication all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
            "host replication all ::1/128 scram-sha-256\n"
        )
        self._chown(hba)

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and return once it accepts connections."""
        if not self._initialised:
            self.init()
        if self.running:
            return
        log = open(self.logfile, "ab")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.datadir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._as_server_user(),
            )
        finally:
            log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Wait for postmaster.pid to say "ready", as pg_ctl -w does."""
        assert self._proc is not None
        pidfile = self.datadir / "postmaster.pid"
        deadline = monotonic() + timeout
        pause = threading.Event()
        while monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise ClusterError(f"postgres exited at start:\n{self.log_tail()}")
            try:
                lines = pidfile.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if (
                len(lines) >= 8
                and lines[0].strip() == str(self._proc.pid)
                and (lines[7].strip() == "ready")
            ):
                return
            pause.wait(0.01)
        raise ClusterError(f"postgres not ready after {timeout} s:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while running."""
        return self._proc.pid if self.running and self._proc else None

    def stop(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        """Shut the server down (``smart``, ``fast`` or ``immediate``)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(_STOP_SIGNALS[mode])
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._proc = None

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the postmaster and every backend, like a crash.

        Backends call setsid(), so the postmaster's process group does not
        reach them: they are found through /proc and killed one by one, and
        the call returns once they are gone (so a restart never meets their
        shared memory)."""
        if self._proc is None:
            return
        children = _children(self._proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._proc.wait()
        self._proc = None
        deadline = monotonic() + timeout
        pause = threading.Event()
        while any(_alive(pid) for pid in children) and monotonic() < deadline:
            pause.wait(0.01)

    def restart(self, mode: StopMode = "fast") -> None:
        self.stop(mode)
        self.start()

    def reload(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGHUP)

    def cleanup(self) -> None:
        """Stop the server and delete every file it had."""
        try:
            self.stop("immediate", timeout=10)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Cluster port={self.port} {state} {self.base}>"

    # --- using it -----------------------------------------------------------

    def dsn(
        self,
        user: str = SUPERUSER,
        password: str | None = SUPERUSER_PASSWORD,
        dbname: str = "postgres",
        **params: Any,
    ) -> str:
        """A TCP conninfo (password authentication) for *user*; *params* add to
        or override it (``port=`` of a proxy, say)."""
        base: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": user,
            "password": password,
            "dbname": dbname,
        }
        return make_conninfo(**{**base, **params})

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """A unix-socket conninfo for the superuser (trust, no password)."""
        return make_conninfo(
            host=str(self.sockdir), port=self.port, user=SUPERUSER, dbname=dbname
        )

    def execute(
        self, query: str, params: Any = None, *, dbname: str = "postgres"
    ) -> list[Any]:
        """Run *query* as the superuser; return its rows (or [])."""
        with psycopg.connect(self.admin_dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def create_user(
        self,
        name: str,
        password: str,
        *,
        replication: bool = False,
        database: str | None = None,
    ) -> str:
        """Create a login role (and a database it owns); return its TCP DSN."""
        from psycopg import sql  # noqa: PLC0415

        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} {}").format(
                    sql.Identifier(name),
                    sql.Literal(password),
                    sql.SQL("REPLICATION" if replication else "NOREPLICATION"),
                )
            )
            if database:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(name)
                    )
                )
        return self.dsn(name, password, database or "postgres")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(
                self.logfile.read_text(errors="replace").splitlines()[-lines:]
            )
        except FileNotFoundError:
            return "(no log)"
