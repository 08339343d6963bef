"""The shared lineage store: PostgreSQL, written by PostgreSQL, read by DuckDB.

Many processes on many machines write one store at once, so the keys have to be enforced
where the rows live. Writes go to PostgreSQL itself (psycopg2, a real transaction, a real
`INSERT ... ON CONFLICT DO NOTHING`); reads (`query`, `records`, `qstar sql`, the views)
stay DuckDB SQL over DuckDB's `postgres` extension, attached read-only. Writing through
that extension instead is not safe with concurrent writers: it checks conflicts on its
side and then COPYs, so two writers of the same key fail with duplicate-key errors
(bench/shared_store.py measures it, and DuckLake, which has no keys at all).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import duckdb

SCHEMES = ("postgresql://", "postgres://")
CATALOG = "lineage"  # the attached PostgreSQL database's name inside DuckDB


class SharedStoreError(RuntimeError):
    pass


def is_shared(location: str | Path) -> bool:
    return str(location).startswith(SCHEMES)


def display(url: str) -> str:
    """The URL without its password, for messages and metadata."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def extension_path() -> str:
    """DuckDB's postgres extension from its PyPI package (extensions cannot be downloaded at
    run time); it must be built for the DuckDB that is installed."""
    try:
        import duckdb_extension_postgres_scanner as package
    except ImportError:
        raise SharedStoreError("a postgresql:// lineage store needs DuckDB's postgres extension: "
                               "pip install 'qstar-dagster[shared]'") from None
    path = Path(package.__file__).parent / "extensions" / f"v{duckdb.__version__}" / "postgres_scanner.duckdb_extension"
    if not path.exists():
        built = sorted(p.name for p in (Path(package.__file__).parent / "extensions").iterdir())
        raise SharedStoreError(f"DuckDB's postgres extension package has builds for {built}, not for the "
                               f"installed DuckDB v{duckdb.__version__}; install the matching versions: "
                               f"pip install 'qstar-dagster[shared]'")
    return str(path)


def _unreachable(url: str, error: Exception) -> SharedStoreError:
    reason = str(error).strip().replace(url, display(url))  # the driver's message repeats the URL
    password = urlsplit(url).password
    if password:
        reason = reason.replace(password, "***")
    return SharedStoreError(f"cannot reach the shared lineage store {display(url)}: {reason}; check that "
                            "PostgreSQL is running there and that QSTAR_STORE (or the store resource's path) names it")


def duckdb_reader(url: str, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the PostgreSQL database attached as the default catalog."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"LOAD '{extension_path()}'")
        con.execute(f"ATTACH '{url}' AS {CATALOG} (TYPE postgres{', READ_ONLY' if read_only else ''})")
    except duckdb.Error as e:
        con.close()
        raise _unreachable(url, e) from None
    con.execute(f"USE {CATALOG}")
    return con


def connect_writer(url: str):
    import psycopg2

    try:
        return psycopg2.connect(url)
    except psycopg2.OperationalError as e:
        raise _unreachable(url, e) from None


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """Processes opening a store at once apply its migrations one after the other: a
    PostgreSQL advisory lock held for the length of the migration."""
    con = connect_writer(url)
    try:
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtext('qstar lineage migrations'))")
        yield
    finally:
        con.close()  # releases the lock


class Cursor:
    """A DuckDB-like result: rows of a query, or (rows affected,) of a write, as DuckDB answers."""

    def __init__(self, cur):
        self._cur = cur
        self.description = cur.description
        self._rows = None if cur.description else [(cur.rowcount,)]

    def fetchone(self):
        return self._rows.pop(0) if self._rows is not None else self._cur.fetchone()

    def fetchall(self):
        return self._rows if self._rows is not None else self._cur.fetchall()


class Transaction:
    """One PostgreSQL transaction with DuckDB's calling convention (`?` parameters,
    `execute(...).fetchone()`), so the store's writers run unchanged on either backend."""

    def __init__(self, con):
        self.con = con

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Cursor:
        cur = self.con.cursor()
        cur.execute(_placeholders(sql), list(params or []))
        return Cursor(cur)

    def insert_json(self, table: str, columns: list[str], rows: list[dict[str, Any]]) -> int:
        """Insert rows (JSON-able dicts), skipping keys already there; returns how many were
        new. One statement whatever the count; rows go in key order, so two writers of
        overlapping keys wait for each other instead of deadlocking."""
        cols = ", ".join(columns)
        order = ", ".join(primary_key(self.con, table)) or "1"
        cur = self.con.cursor()
        cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::{table}, %s) "
                    f"ORDER BY {order} ON CONFLICT DO NOTHING",
                    [json.dumps([{c: _finite(v) for c, v in r.items()} for r in rows], sort_keys=True, default=str)])
        return cur.rowcount


def _finite(value):
    """JSON has no NaN or infinity; PostgreSQL reads them from strings into a float column."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


_KEYS: dict[str, list[str]] = {}
_KEYS_LOCK = threading.Lock()


def primary_key(con, table: str) -> list[str]:
    with _KEYS_LOCK:
        if table not in _KEYS:
            with con.cursor() as cur:
                cur.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
                            "ORDER BY array_position(i.indkey, a.attnum)", [table])
                _KEYS[table] = [r[0] for r in cur.fetchall()]
        return _KEYS[table]


def _placeholders(sql: str) -> str:
    """DuckDB's `?` to psycopg2's `%s` (a literal % doubled first)."""
    return re.sub(r"\?", "%s", sql.replace("%", "%%"))


class Connections:
    """One writer and one reader per process and thread, opened on first use: a Dagster step
    opens many LineageStore objects, and attaching costs a fifth of a second."""

    def __init__(self):
        self._local = threading.local()

    def _get(self, kind: str, url: str, make):
        cache = self._local.__dict__.setdefault(os.getpid(), {})
        con = cache.get((kind, url))
        if con is None:
            con = cache[(kind, url)] = make()
        return con

    def drop(self, kind: str, url: str) -> None:
        con = self._local.__dict__.get(os.getpid(), {}).pop((kind, url), None)
        if con is not None:
            with suppress(Exception):  # broken, or outdated by a migration: closing is best effort
                con.close()

    def reader(self, url: str, setup: Callable[[duckdb.DuckDBPyConnection], None]) -> duckdb.DuckDBPyConnection:
        """The read-only reader, `setup` run on it once when it is made."""
        def make():
            con = duckdb_reader(url, read_only=True)
            setup(con)
            return con
        return self._get("reader", url, make)

    def writer(self, url: str):
        return self._get("writer", url, lambda: connect_writer(url))


CONNECTIONS = Connections()
