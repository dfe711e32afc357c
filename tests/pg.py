"""A throwaway PostgreSQL server for tests: `with postgres_server() as url: ...`.

Uses Debian's PostgreSQL binaries (`/usr/lib/postgresql/*/bin`), installing the `postgresql` package with apt-get
when they are missing. The server runs from a temporary data folder as the `postgres` user (PostgreSQL refuses to
run as root), listens on a free loopback port only, and is stopped and deleted on exit.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from debian import apt_install

ROLE = "lamin"
DATABASE = "lamin"
INSTALL_TIMEOUT = 300  # seconds for apt-get (a cold install downloads ~50 MB of packages)


class PostgresUnavailable(RuntimeError):
    "No PostgreSQL server could be installed or started here; a test should `pytest.skip` with this message."


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit()) or (0,)


def _find_bindir() -> Path | None:
    "The `bin` folder of the newest Debian PostgreSQL with both initdb and pg_ctl."
    found = [str(Path(p).parent) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
             if Path(p).with_name("pg_ctl").exists()]
    return Path(max(found, key=_version_key)) if found else None


def _apt_install() -> None:
    apt_install(["postgresql"], "PostgreSQL", PostgresUnavailable, INSTALL_TIMEOUT)


def postgres_bindir(install: bool = True) -> Path:
    "Debian's PostgreSQL `bin` folder, installing the package when it is missing and `install` is true."
    bindir = _find_bindir()
    if bindir is None and install:
        _apt_install()
        bindir = _find_bindir()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL could not be installed: no /usr/lib/postgresql/*/bin/initdb "
                                  "after installing the postgresql package")
    return bindir


def postgres_version(bindir: Path | None = None) -> str:
    "The server version, e.g. `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`."
    bindir = bindir or postgres_bindir(install=False)
    return subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _server_user() -> str | None:
    "The user that runs the server: `postgres` when we are root, `None` (ourselves) otherwise."
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresUnavailable("no 'postgres' (or 'nobody') user to run the server as; PostgreSQL refuses root")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    def __init__(self, bindir: Path, base: Path, user: str | None) -> None:
        self.bindir, self.base, self.user = bindir, base, user
        self.data, self.sockets, self.logfile = base / "data", base / "sockets", base / "server.log"

    def run(self, program: str, *args: str, input: str | None = None, timeout: float = 60) -> str:
        command = [str(self.bindir / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        try:
            done = subprocess.run(command, cwd=self.base, input=input, capture_output=True, text=True,
                                  timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise PostgresUnavailable(f"{program} timed out after {timeout:.0f} s{self._log_tail()}") from None
        if done.returncode != 0:
            raise PostgresUnavailable(f"{program} failed (exit {done.returncode}): "
                                      f"{(done.stderr or done.stdout).strip()}{self._log_tail()}")
        return done.stdout

    def _log_tail(self) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return ("\nserver log:\n" + "\n".join(lines[-10:])) if lines else ""

    def initdb(self) -> None:
        # trust on the Unix socket in our private folder (to create the role), passwords over TCP
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions")

    def start(self, port: int) -> None:
        options = " ".join([
            f"-p {port}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={self.sockets}",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",  # a test server: speed first
            "-c max_connections=50", "-c shared_buffers=32MB",
        ])
        self.run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "30", "-o", options)

    def stop(self) -> None:
        self.run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30")

    def sql(self, port: int, statements: str) -> None:
        "Run SQL as the bootstrap superuser over the private Unix socket (SQL on stdin, never on a command line)."
        self.run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.sockets), "-p", str(port),
                 "-U", "postgres", "-d", "postgres", input=statements)


_running: dict[str, tuple["_Server", int]] = {}  # url -> its server and port, while `postgres_server` runs


@contextmanager
def stopped(url: str) -> Iterator[None]:
    "The server of `url` stopped for the block (what a compute node that cannot reach it sees), then started again."
    server, port = _running[url]
    server.stop()
    try:
        yield
    finally:
        server.start(port)


@contextmanager
def postgres_server(install: bool = True) -> Iterator[str]:
    """Start a private PostgreSQL server; yield `postgresql://USER:PASSWORD@127.0.0.1:PORT/DB`; stop and delete it.

    Raises `PostgresUnavailable` (with the reason) when the server cannot be installed or started."""
    bindir = postgres_bindir(install=install)
    user = _server_user()
    base = Path(tempfile.mkdtemp(prefix="lamin-lightning-pg-"))
    server = _Server(bindir, base, user)
    started = False
    try:
        server.sockets.mkdir()
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (base, server.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(base, 0o700)
        server.initdb()
        for attempt in range(3):  # another process may take the free port between our check and the server's bind
            port = _free_port()
            try:
                server.start(port)
                break
            except PostgresUnavailable:
                if attempt == 2:
                    raise
        started = True
        password = secrets.token_hex(16)  # hex: nothing to escape in the URL or in SQL
        server.sql(port, f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{password}';\n"
                         f"CREATE DATABASE {DATABASE} OWNER {ROLE};\n")
        url = f"postgresql://{ROLE}:{password}@127.0.0.1:{port}/{DATABASE}"
        _running[url] = (server, port)
        yield url
    finally:
        _running.pop(locals().get("url", ""), None)
        try:
            if started:
                server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


@contextmanager
def postgres_or_skip() -> Iterator[str]:
    "`postgres_server()`; the calling test is skipped, with the reason, when no server can be installed or started."
    import pytest

    try:
        server = postgres_server()
        url = server.__enter__()
    except PostgresUnavailable as error:
        pytest.skip(f"PostgreSQL server unavailable: {error}")
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


def child_env(settings: Path, url_variable: str, url: str, **extra: str) -> dict[str, str]:
    "The environment of a test's child process: LaminDB settings of its own, the database URL, this repo importable."
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMIN_")}
    env |= {"LAMIN_SETTINGS_DIR": str(settings), "LAMIN_LIGHTNING_TEST": str(settings), url_variable: url, **extra,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), env.get("PYTHONPATH")]))}
    return env
