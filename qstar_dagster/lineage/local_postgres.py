"""A throwaway PostgreSQL server on this machine, for the shared store's tests and
benchmarks and for trying the shared store without a database administrator: Debian's
(or any installed) server binaries, a fresh cluster in a temporary folder, loopback only,
trust authentication. Not for production: point QSTAR_STORE at a real server there."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


class NoPostgres(RuntimeError):
    """No PostgreSQL server binaries here (the message says how to get them)."""


def server_binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    if not found and shutil.which("pg_config"):
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        found = [p for p in [f"{bindir}/postgres"] if os.path.exists(p)]
    if not found and shutil.which("postgres"):
        found = [shutil.which("postgres")]
    if not found:
        raise NoPostgres("no PostgreSQL server binaries (initdb, postgres) on this machine; `make test` installs "
                         "Debian's postgresql where it can (root and apt), or install PostgreSQL yourself")
    return Path(found[0]).parent


@dataclass
class LocalPostgres:
    port: int
    folder: Path
    bindir: Path
    user: str = "qstar"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "qstar") -> str:
        """A new empty database; its URL."""
        import psycopg2

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        con = psycopg2.connect(self.url())
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        con.close()
        return self.url(name)

    def stop(self) -> None:
        _as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop"],
                  check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def start(durable: bool = True) -> LocalPostgres:
    """Start a fresh server on a free loopback port. `durable=False` turns fsync off (tests:
    nothing there must outlive the machine), True keeps PostgreSQL's defaults (benchmarks)."""
    bindir = server_binaries()
    if os.geteuid() == 0:
        try:
            import pwd

            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise NoPostgres("running as root with no `postgres` user to run the server as") from None
    folder = Path(tempfile.mkdtemp(prefix="qstar-postgres-"))
    if os.geteuid() == 0:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    init = _as_owner([str(bindir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "qstar",
                      "-E", "UTF8", "--no-sync"], check=False)
    if init.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        raise NoPostgres(f"initdb failed: {init.stderr.strip()[-500:]}")
    port = _free_port()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    run = _as_owner([str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-o", options,
                     "-l", str(folder / "server.log"), "-w", "-t", "60", "start"], check=False)
    server = LocalPostgres(port, folder, bindir)
    if run.returncode:
        log = (folder / "server.log").read_text()[-1000:] if (folder / "server.log").exists() else ""
        server.stop()
        raise NoPostgres(f"PostgreSQL did not start: {run.stderr.strip()[-500:]} {log}")
    deadline = time.monotonic() + 30
    while True:  # pg_ctl -w waits for the socket; a TCP connection can lag a moment behind
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise NoPostgres(f"PostgreSQL started but does not answer on 127.0.0.1:{port}") from None
            time.sleep(0.1)
