"""The lineage store: the factory's system of record. Embedded (the default): one DuckDB
file. Shared: a PostgreSQL database that many processes on many machines write at once
(a `postgresql://` URL; lineage/shared.py), read with the same DuckDB SQL and views.

Every write goes through `transaction()`: it commits whole or not at all. Rows have
content-hash or otherwise deterministic keys and are inserted with ON CONFLICT DO NOTHING,
so writing the same rows twice changes nothing and a killed run that is re-run adds only
what is missing.

DuckDB lets one process at a time open a file for writing, and Dagster runs steps in
separate processes, so the file store holds a connection only for the length of one
transaction and waits (with backoff) while another process has the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from qstar_dagster.lineage.files import process_alive
from qstar_dagster.lineage.schema import LATEST_VERSION, MIGRATIONS, POSTGRES_MIGRATIONS, VIEWS
from qstar_dagster.lineage.shared import (
    CATALOG,
    CONNECTIONS,
    Transaction,
    display,
    duckdb_reader,
    is_shared,
    migration_lock,
)
from qstar_dagster.tasks.problem import Problem

log = logging.getLogger(__name__)

# Columns holding JSON: Python values are serialized on the way in.
_JSON_COLUMNS = {"config", "meta", "stats", "metrics", "spec", "details"}


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Edge:
    child_kind: str
    child_id: str
    parent_kind: str
    parent_id: str
    relation: str
    depth: int


class LineageStore:
    def __init__(self, path: str | Path, *, lock_timeout_s: float = 120.0, target_version: int | None = None):
        """`path`: a DuckDB file, or a postgresql:// URL of a shared store."""
        self.shared = is_shared(path)
        self.url = str(path) if self.shared else None
        # where it is, for messages: the file, or the URL without its password
        self.path = display(self.url) if self.shared else Path(path)
        self.lock_timeout_s = lock_timeout_s
        if not self.shared:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.migrate(target_version)

    # --- connections and transactions ----------------------------------------------

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection for reading (and, on a file, writing). On a shared store it is
        attached read-only: its writes go through `transaction()`."""
        if self.shared:
            con = CONNECTIONS.reader(self.url, _make_views)
            try:
                yield con
            except duckdb.ConnectionException:
                CONNECTIONS.drop("reader", self.url)
                raise
            return
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as e:  # another process holds the file's lock
                if "lock" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection | Transaction]:
        """All writes inside commit together; any exception rolls every one of them back."""
        if self.shared:
            con = CONNECTIONS.writer(self.url)
            try:
                yield Transaction(con)
            except BaseException:
                try:
                    con.rollback()
                except Exception:  # noqa: BLE001  (a broken connection: drop it, raise the cause)
                    CONNECTIONS.drop("writer", self.url)
                raise
            con.commit()
            return
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # --- schema -----------------------------------------------------------------------

    def schema_version(self) -> int:
        with self.connect() as con:
            return _applied_version(con)

    def migrate(self, target: int | None = None) -> None:
        target = LATEST_VERSION if target is None else target
        if not self.shared:
            with self.connect() as con:
                self._migrate(con, target)
                if target == LATEST_VERSION:
                    for view, sql in VIEWS.items():
                        con.execute(f"CREATE OR REPLACE VIEW {view} AS {sql}")
            return
        with self.connect() as con:
            current = _applied_version(con)
        if current >= target:
            _refuse_newer(self.path, current)
            return
        # The tables are made through DuckDB's extension, which maps DuckDB's types to
        # PostgreSQL's, so the migrations are one text for both; the views stay DuckDB-side.
        with migration_lock(self.url):
            con = duckdb_reader(self.url, read_only=False)
            try:
                self._migrate(con, target)
            finally:
                con.close()
        CONNECTIONS.drop("reader", self.url)  # it knew the old tables (and made no views)

    def _migrate(self, con: duckdb.DuckDBPyConnection, target: int) -> None:
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)"
        )
        current = _applied_version(con)
        _refuse_newer(self.path, current)
        for version, name, sql in MIGRATIONS:
            if current < version <= target:
                con.execute("BEGIN TRANSACTION")
                try:
                    if self.shared and version in POSTGRES_MIGRATIONS:
                        con.execute(f"CALL postgres_execute('{CATALOG}', "
                                    f"'{POSTGRES_MIGRATIONS[version].replace(chr(39), chr(39) * 2)}')")
                    else:
                        con.execute(sql)
                    con.execute("INSERT INTO schema_version VALUES (?, ?, ?)", [version, name, utcnow()])
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
                log.info("lineage store %s: applied migration %d (%s)", self.path, version, name)

    # --- generic writes and reads -------------------------------------------------------

    def insert(self, con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[dict[str, Any]]) -> int:
        """Insert rows, skipping those whose key is already there; returns how many were new.
        Values of JSON columns are serialized here."""
        if not rows:
            return 0
        columns = list(dict.fromkeys(c for r in rows for c in r))  # a column a row lacks is NULL there
        if isinstance(con, Transaction):  # PostgreSQL takes the JSON columns as JSON values
            return con.insert_json(table, columns, [{c: r.get(c) for c in columns} for r in rows])
        data = {
            c: [json.dumps(r[c], sort_keys=True, default=str) if c in _JSON_COLUMNS and r.get(c) is not None
                else r.get(c) for r in rows]
            for c in columns
        }
        staged = pa.table(data)  # noqa: F841  (read by name in the SQL below)
        cols = ", ".join(columns)
        # DuckDB answers an INSERT with the rows it inserted, conflicts skipped
        return con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM staged ON CONFLICT DO NOTHING"
                           ).fetchone()[0]

    def query(self, sql: str, params: Sequence[Any] | None = None) -> tuple[list[str], list[tuple]]:
        with self.connect() as con:
            cur = con.execute(sql, params or [])
            columns = [d[0] for d in cur.description] if cur.description else []
            return columns, cur.fetchall()

    def records(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        columns, rows = self.query(sql, params)
        return [dict(zip(columns, r)) for r in rows]

    # --- runs ---------------------------------------------------------------------------

    def begin_run(self, run_id: str, asset_key: str, partition: str | None, config: dict | None,
                  code_version: str | None) -> int:
        """Record a run as started by this process; first mark this asset and partition's
        earlier runs whose process on this host has died (killed, not failed) `interrupted`.
        Returns how many were."""
        host, me = socket.gethostname(), os.getpid()
        with self.transaction() as con:
            dead = [run for run, pid in con.execute(
                "SELECT run_id, pid FROM runs WHERE asset_key = ? AND partition = ? AND status = 'started' AND host = ? "
                "AND run_id <> ? AND pid IS NOT NULL", [asset_key, partition or "", host, run_id]).fetchall()
                if not process_alive(pid)]
            if dead:
                con.execute("UPDATE runs SET status = 'interrupted', ended_at = ? WHERE asset_key = ? AND partition = ? "
                            "AND run_id IN (SELECT unnest(?))", [utcnow(), asset_key, partition or "", dead])
            con.execute(
                "INSERT INTO runs (run_id, asset_key, partition, config, code_version, started_at, status, host, pid) "
                "VALUES (?, ?, ?, ?, ?, ?, 'started', ?, ?) ON CONFLICT (run_id, asset_key, partition) DO UPDATE SET "
                "started_at = excluded.started_at, status = 'started', ended_at = NULL, host = excluded.host, "
                "pid = excluded.pid",
                [run_id, asset_key, partition or "", json.dumps(config or {}, default=str), code_version, utcnow(),
                 host, me],
            )
        return len(dead)

    def has_run(self, run_id: str, asset_key: str, partition: str | None) -> bool:
        return bool(self.records("SELECT 1 FROM runs WHERE run_id = ? AND asset_key = ? AND partition = ?",
                                 [run_id, asset_key, partition or ""]))

    def end_run(self, con: duckdb.DuckDBPyConnection, run_id: str, asset_key: str, partition: str | None,
                status: str = "success") -> None:
        con.execute(
            "UPDATE runs SET ended_at = ?, status = ? WHERE run_id = ? AND asset_key = ? AND partition = ?",
            [utcnow(), status, run_id, asset_key, partition or ""],
        )

    # --- prompt sets ----------------------------------------------------------------------

    def write_prompt_set(self, con: duckdb.DuckDBPyConnection, prompt_set: str, source: str,
                         problems: Iterable[Problem], run_id: str | None) -> PromptSetWrite:
        """Record one version of a prompt set and make it the set's current version.
        The version is the hash of its prompts in order, so an unchanged source is a no-op."""
        problems = list(problems)
        if not problems:
            raise ValueError(f"prompt set {prompt_set!r} from {source} has no problems; refusing to write it")
        members, seen = [], set()
        for idx, p in enumerate(problems):
            if p.prompt_id not in seen:
                seen.add(p.prompt_id)
                members.append((idx, p))
        version = prompt_set_version(problems)
        domains = sorted({p.domain for p in problems})
        n_new_prompts = self.insert(con, "prompt_texts", [
            {"prompt_id": p.prompt_id, "domain": p.domain, "problem": p.problem,
             "reference_answer": p.reference_answer, "reference_solution": p.reference_solution,
             "meta": p.meta, "created_run": run_id}
            for _, p in members
        ])
        new_version = self.insert(con, "prompt_sets", [{
            "prompt_set": prompt_set, "version": version, "source": source, "domain": ",".join(domains),
            "n": len(members), "n_duplicates": len(problems) - len(members), "created_run": run_id,
            "created_at": utcnow(),
        }]) == 1
        self.insert(con, "prompt_set_members", [
            {"prompt_set": prompt_set, "version": version, "idx": idx, "prompt_id": p.prompt_id}
            for idx, p in members
        ])
        con.execute(
            "INSERT INTO prompt_set_heads VALUES (?, ?) ON CONFLICT (prompt_set) DO UPDATE SET version = excluded.version",
            [prompt_set, version],
        )
        return PromptSetWrite(prompt_set, version, len(members), len(problems) - len(members),
                              n_new_prompts, new_version)

    def _prompt_set_not_found(self, prompt_set: str) -> PromptSetNotFoundError:
        return PromptSetNotFoundError(
            f"prompt set {prompt_set!r} is not in the lineage store {self.path}; materialize the "
            f"prompt_set asset for partition {prompt_set!r} first (`make demo` does it for the built-in sets)"
        )

    def prompt_set_head(self, prompt_set: str) -> str:
        """The current version of `prompt_set`, without reading its problems."""
        rows = self.records("SELECT version FROM prompt_set_heads WHERE prompt_set = ?", [prompt_set])
        if not rows:
            raise self._prompt_set_not_found(prompt_set)
        return rows[0]["version"]

    def prompt_set_problems(self, prompt_set: str) -> tuple[str, list[Problem]]:
        """The current version of `prompt_set` and its problems in source order."""
        rows = self.records(
            "SELECT version, domain, problem, reference_answer, reference_solution, meta FROM prompts "
            "WHERE prompt_set = ? ORDER BY idx", [prompt_set],
        )
        if not rows:
            raise self._prompt_set_not_found(prompt_set)
        problems = [Problem(r["problem"], r["reference_answer"], r["reference_solution"], r["domain"],
                            json.loads(r["meta"]) if r["meta"] else {}) for r in rows]
        return rows[0]["version"], problems

    def checkpoint(self, checkpoint_id: str | None = None, kind: str = "policy",
                   prompt_set: str | None = None) -> dict[str, Any]:
        """A recorded checkpoint of `kind` whose files are on disk: the one named, else the
        latest (for policies: the latest base policy, not one trained from it; with
        `prompt_set`, one trained on that set's domain first); a clear error when there is none."""
        if checkpoint_id is None:
            found = self.latest_checkpoint(kind, base_only=kind == "policy", prompt_set=prompt_set)
            if found is None:
                raise LookupError(f"no {kind} checkpoint in the lineage store {self.path}; materialize "
                                  f"{'base_policy' if kind == 'policy' else f'a {kind} checkpoint'} first")
            return found
        rows = self.records("SELECT * FROM checkpoints WHERE checkpoint_id = ?", [checkpoint_id])
        if not rows or rows[0]["kind"] != kind:
            raise LookupError(f"{checkpoint_id!r} is not a {kind} checkpoint in {self.path}; list them with "
                              f"qstar sql \"select checkpoint_id, created_at from checkpoints where kind = '{kind}'\"")
        if not rows[0]["path"] or not Path(rows[0]["path"]).exists():
            raise FileNotFoundError(f"checkpoint {checkpoint_id} is recorded but its files are gone from "
                                    f"{rows[0]['path']}; materialize it again")
        return rows[0]

    def learned_solutions(self, checkpoint_id: str) -> tuple[str, int] | None:
        """('set@version', N) when the policy descends (by `base`) from a base policy that learned
        the written solutions of only the first N problems of that set (`references`), else None:
        a search of those problems finds what the policy learned by heart."""
        rows = self.records("""
            -- materialized once, as in lineage(): a recursive step that scanned a shared store's
            -- table itself saw nothing after its first step
            WITH RECURSIVE ck AS MATERIALIZED (SELECT checkpoint_id, base, config, trained_on_prompt_set
                                               FROM checkpoints),
            up(checkpoint_id, base, config, trained_on_prompt_set, depth) AS (
                SELECT checkpoint_id, base, config, trained_on_prompt_set, 0 FROM ck WHERE checkpoint_id = ?
                UNION ALL
                SELECT c.checkpoint_id, c.base, c.config, c.trained_on_prompt_set, up.depth + 1
                FROM ck c JOIN up ON c.checkpoint_id = up.base WHERE up.depth < 1000)
            SELECT trained_on_prompt_set, TRY_CAST(config->>'references' AS INTEGER) AS n
            FROM up ORDER BY depth DESC LIMIT 1""", [checkpoint_id])
        if not rows or not rows[0]["n"] or not rows[0]["trained_on_prompt_set"]:
            return None
        return rows[0]["trained_on_prompt_set"], rows[0]["n"]

    def latest_checkpoint(self, kind: str = "policy", base_only: bool = False,
                          prompt_set: str | None = None) -> dict[str, Any] | None:
        """The most recently recorded checkpoint of `kind` whose files are still on disk;
        `base_only`: among those made by no trainer (base policies); `prompt_set`: those trained
        on a prompt set of the same domain as `prompt_set` first (an arithmetic policy does not
        search Countdown problems), then the rest."""
        rows = self.records(f"""
            SELECT c.*, coalesce((SELECT any_value(t.domain) FROM prompts t
                                  WHERE t.prompt_set = split_part(c.trained_on_prompt_set, '@', 1))
                                 = (SELECT any_value(domain) FROM prompts WHERE prompt_set = ?), false) AS same_domain
            FROM checkpoints c WHERE kind = ? {"AND (config->>'trainer') IS NULL" if base_only else ""}
            ORDER BY same_domain DESC, created_at DESC""", [prompt_set, kind])
        found = next((r for r in rows if r["path"] and Path(r["path"]).exists()), None)
        return found and {k: v for k, v in found.items() if k != "same_domain"}

    # --- lineage ------------------------------------------------------------------------------

    def lineage(self, artifact_id: str, max_depth: int = 50) -> list[Edge]:
        """Every edge on the way from an artifact (or a row's id) up to its sources."""
        sql = """
            -- edges materialized once: DuckDB's postgres extension scans a table once per
            -- query, so a recursive step over a shared store's tables saw nothing the second time
            WITH RECURSIVE edges AS MATERIALIZED (SELECT * FROM lineage_edges),
            walk(child_kind, child_id, parent_kind, parent_id, relation, depth) AS (
                SELECT child_kind, child_id, parent_kind, parent_id, relation, 1
                FROM edges WHERE child_id = ?
                UNION
                SELECT e.child_kind, e.child_id, e.parent_kind, e.parent_id, e.relation, w.depth + 1
                FROM edges e JOIN walk w ON e.child_id = w.parent_id
                WHERE w.depth < ?
            )
            SELECT child_kind, child_id, parent_kind, parent_id, relation, min(depth) AS depth
            FROM walk GROUP BY ALL ORDER BY depth, child_id, relation, parent_id
        """
        _, rows = self.query(sql, [artifact_id, max_depth])
        return [Edge(*r) for r in rows]

    def kind_of(self, artifact_id: str) -> str | None:
        _, rows = self.query(
            "SELECT child_kind FROM lineage_edges WHERE child_id = ? UNION "
            "SELECT parent_kind FROM lineage_edges WHERE parent_id = ? LIMIT 1",
            [artifact_id, artifact_id],
        )
        return rows[0][0] if rows else None


def copy_store(source: LineageStore, target: LineageStore, batch_rows: int = 20_000,
               progress=None) -> dict[str, tuple[int, int]]:
    """Copy every row of `source` into `target` (for example a local file into a shared
    store); rows whose key `target` already has are skipped, so copying again adds nothing.
    Each batch commits on its own: a copy that dies resumes where it stopped when re-run.
    Returns table -> (rows read, rows new)."""
    if str(source.path) == str(target.path):
        raise ValueError(f"copying the lineage store {source.path} onto itself")
    with source.connect(read_only=True) as con:
        tables = [t for (t,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
            "AND table_type = 'BASE TABLE' AND table_name <> 'schema_version' ORDER BY table_name").fetchall()]
    done = {}
    for table in tables:
        read = new = 0
        with source.connect(read_only=True) as con:
            result = con.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in result.description]
            while batch := result.fetchmany(batch_rows):
                rows = [{c: json.loads(v) if c in _JSON_COLUMNS and isinstance(v, str) else v
                         for c, v in zip(columns, r)} for r in batch]
                with target.transaction() as out:
                    new += target.insert(out, table, rows)
                read += len(rows)
                if progress:
                    progress(table, read, new)
        done[table] = (read, new)
    return done


class PromptSetNotFoundError(LookupError):
    pass


@dataclass(frozen=True)
class PromptSetWrite:
    prompt_set: str
    version: str
    n: int
    n_duplicates: int
    n_new_prompts: int
    new_version: bool


def prompt_set_version(problems: Iterable[Problem]) -> str:
    """A prompt set's version: the hash of its prompts in order (what `write_prompt_set` records)."""
    return hashlib.sha256("\n".join(p.prompt_id for p in problems).encode()).hexdigest()[:12]


def _refuse_newer(where, version: int) -> None:
    if version > LATEST_VERSION:
        raise RuntimeError(f"{where} has schema version {version}, newer than this code's {LATEST_VERSION}; "
                           "upgrade qstar-dagster to open it")


def _make_views(con: duckdb.DuckDBPyConnection) -> None:
    """A shared store's views, made on each new reader as temporary views (PostgreSQL cannot
    hold DuckDB SQL), once its schema is the one they are written for."""
    if _applied_version(con) == LATEST_VERSION:
        for view, sql in VIEWS.items():
            con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS {sql}")


def _applied_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version' "
        "AND table_catalog = current_database()"
    ).fetchone()[0]
    if not exists:
        return 0
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
