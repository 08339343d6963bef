"""Benchmark: writers in parallel against the lineage store's backends, side by side in one run.

Backends, each on the same rows:
- file: the embedded default, one DuckDB file (writers wait for its lock in turn);
- postgres: the shared store as built (lineage/shared.py): PostgreSQL writes the rows itself
  (INSERT ... ON CONFLICT DO NOTHING), DuckDB reads them through its postgres extension;
- pg-extension: the same PostgreSQL tables written *through* DuckDB's postgres extension
  (the obvious design, rejected: its ON CONFLICT is checked on DuckDB's side, then COPYed;
  it cannot write a JSON column at all, varchar into json, so it writes these rows without
  their `stats`, and its COPY sends NULL for a column left out instead of its default);
- ducklake: DuckLake with a PostgreSQL catalog and Parquet files (no keys: inserts skip
  existing ids with an anti-join; a commit that conflicts is retried, up to 20 times).

For 1, 2, 4 and 8 writer processes plus one reader: each writer commits --batches
transactions of --rows nodes, half of them ids that every writer writes (workers labeling
the same steps), half its own. The reader loops a count and a group-by until the writers
end. Printed per backend and writer count: wall seconds, distinct rows/s, errors (a
transaction that failed for good), lost rows (expected distinct ids missing), duplicated
rows (more rows than distinct ids), the 95th percentile commit latency, reader queries/s.
Last line: JSON.

    python bench/shared_store.py --batches 20 --rows 200
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qstar_dagster.lineage import LineageStore, local_postgres, shared

BACKENDS = ["file", "postgres", "pg-extension", "ducklake"]
COLUMNS = ["node_id", "tree_id", "prompt_id", "parent_id", "depth", "text", "is_terminal", "stats"]


def batch_rows(writer: int, batch: int, rows: int) -> list[dict]:
    common = [f"n_{batch}_{i}" for i in range(rows // 2)]
    own = [f"n_{batch}_w{writer}_{i}" for i in range(rows - rows // 2)]
    return [{"node_id": i, "tree_id": f"t_{batch}", "prompt_id": "p", "parent_id": None, "depth": 1,
             "text": f"step {i} " * 8, "is_terminal": False, "stats": {"value": 0.5}} for i in common + own]


def expected_ids(writers: int, batches: int, rows: int) -> int:
    return batches * (rows // 2 + writers * (rows - rows // 2))


def _ext(name: str) -> str:
    module = __import__(f"duckdb_extension_{name}")
    return str(Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension")


def _ducklake(location: dict) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET enable_progress_bar = false")
    con.execute(f"LOAD '{_ext('postgres_scanner')}'")
    con.execute(f"LOAD '{_ext('ducklake')}'")
    con.execute(f"ATTACH 'ducklake:postgres:{location['url']}' AS lake (DATA_PATH '{location['data']}')")
    con.execute("USE lake")
    return con


class Writer:
    """One backend's write of one batch, as a transaction; returns nothing, raises on failure."""

    def __init__(self, backend: str, location: dict):
        self.backend, self.location = backend, location
        if backend in ("file", "postgres"):
            self.store = LineageStore(location["url"])
        elif backend == "pg-extension":
            self.con = shared.duckdb_reader(location["url"], read_only=False)
        else:
            self.con = _ducklake(location)

    def write(self, rows: list[dict]) -> int:
        """Commits the batch; returns how many attempts it took."""
        if self.backend in ("file", "postgres"):
            with self.store.transaction() as con:
                self.store.insert(con, "nodes", rows)
            return 1
        staged = pa.table({c: [json.dumps(r[c]) if c == "stats" else r[c] for r in rows]  # noqa: F841
                           for c in COLUMNS})
        cols = ", ".join(c for c in COLUMNS if c != "stats" or self.backend == "ducklake")
        for attempt in range(1, 21):
            try:
                self.con.execute("BEGIN TRANSACTION")
                if self.backend == "pg-extension":
                    self.con.execute(f"INSERT INTO nodes ({cols}) SELECT {cols} FROM staged ON CONFLICT DO NOTHING")
                else:
                    self.con.execute(f"INSERT INTO nodes ({cols}) SELECT {cols} FROM staged "
                                     "WHERE node_id NOT IN (SELECT node_id FROM nodes)")
                self.con.execute("COMMIT")
                return attempt
            except duckdb.Error:
                with contextlib.suppress(duckdb.Error):  # a failed commit has ended the transaction
                    self.con.execute("ROLLBACK")
                if self.backend == "pg-extension" or attempt == 20:  # a key error does not go away
                    raise
                time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")


def writer_process(backend, location, writer, batches, rows, start, results) -> None:
    out = {"errors": 0, "retries": 0, "latencies": [], "first_error": None}
    w = Writer(backend, location)
    start.wait()
    for b in range(batches):
        t = time.perf_counter()
        try:
            out["retries"] += w.write(batch_rows(writer, b, rows)) - 1
        except Exception as e:  # noqa: BLE001  (counted: the measurement is how often it happens)
            out["errors"] += 1
            out["first_error"] = out["first_error"] or f"{type(e).__name__}: {str(e)[:160]}"
        out["latencies"].append(time.perf_counter() - t)
    results.put(out)


def reader_process(backend, location, start, stop, results) -> None:
    queries = errors = 0
    if backend == "ducklake":
        con = _ducklake(location)
        run = con.execute
    elif backend == "file":
        store = LineageStore(location["url"])
        run = store.query
    else:
        con = shared.duckdb_reader(location["url"])
        run = con.execute
    start.wait()
    t0 = time.perf_counter()
    while not stop.is_set():
        try:
            run("SELECT count(*), count(DISTINCT node_id) FROM nodes")
            run("SELECT tree_id, count(*) FROM nodes GROUP BY 1")
            queries += 2
        except Exception:  # noqa: BLE001
            errors += 1
    results.put({"reader_qps": queries / (time.perf_counter() - t0), "reader_errors": errors})


def prepare(backend: str, server, folder: Path) -> dict:
    if backend == "file":
        path = folder / f"{time.monotonic_ns()}.duckdb"
        LineageStore(path)
        return {"url": str(path)}
    url = server.new_database("bench")
    if backend in ("postgres", "pg-extension"):
        LineageStore(url)  # the store's own migrations: the same tables, keys and indexes
        return {"url": url}
    data = folder / f"lake-{time.monotonic_ns()}"
    data.mkdir()
    location = {"url": url, "data": str(data) + "/"}
    con = _ducklake(location)
    con.execute("CREATE TABLE nodes (node_id VARCHAR NOT NULL, tree_id VARCHAR NOT NULL, prompt_id VARCHAR NOT NULL, "
                "parent_id VARCHAR, depth INTEGER NOT NULL, text VARCHAR NOT NULL, is_terminal BOOLEAN, stats JSON)")
    con.close()
    return location


def count(backend: str, location: dict) -> tuple[int, int]:
    sql = "SELECT count(*), count(DISTINCT node_id) FROM nodes"
    if backend == "ducklake":
        return _ducklake(location).execute(sql).fetchone()
    if backend == "file":
        return LineageStore(location["url"]).query(sql)[1][0]
    return shared.duckdb_reader(location["url"]).execute(sql).fetchone()


def run(backend: str, writers: int, batches: int, rows: int, server, folder: Path) -> dict:
    location = prepare(backend, server, folder)
    ctx = multiprocessing.get_context("spawn")
    start, stop, results = ctx.Barrier(writers + 2), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=writer_process, args=(backend, location, w, batches, rows, start, results))
             for w in range(writers)]
    reader = ctx.Process(target=reader_process, args=(backend, location, start, stop, results))
    for p in [*procs, reader]:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    outs = [results.get(timeout=900) for _ in procs]
    seconds = time.perf_counter() - t0
    stop.set()
    read = results.get(timeout=120)
    for p in [*procs, reader]:
        p.join(60)
    n, distinct = count(backend, location)
    latencies = sorted(x for o in outs for x in o["latencies"])
    expected = expected_ids(writers, batches, rows)
    return {"backend": backend, "writers": writers, "seconds": round(seconds, 2),
            "rows_per_s": round(distinct / seconds), "errors": sum(o["errors"] for o in outs),
            "retries": sum(o["retries"] for o in outs), "lost": expected - distinct, "duplicated": n - distinct,
            "commit_p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
            "commit_p50_ms": round(1000 * statistics.median(latencies), 1), **read,
            "first_error": next((o["first_error"] for o in outs if o["first_error"]), None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=20, help="transactions per writer")
    ap.add_argument("--rows", type=int, default=200, help="nodes per transaction (half shared by all writers)")
    ap.add_argument("--writers", default="1,2,4,8")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    args = ap.parse_args()
    server = local_postgres.start(durable=True)  # PostgreSQL's defaults: commits are fsynced
    folder = Path(tempfile.mkdtemp(prefix="qstar-bench-store-"))
    results = []
    try:
        print(f"{'backend':<13}{'writers':>8}{'seconds':>9}{'rows/s':>9}{'errors':>8}{'retries':>8}{'lost':>7}"
              f"{'dup':>6}{'p50 ms':>8}{'p95 ms':>8}{'reader q/s':>11}", flush=True)
        for backend in args.backends.split(","):
            for writers in map(int, args.writers.split(",")):
                r = run(backend, writers, args.batches, args.rows, server, folder)
                results.append(r)
                print(f"{backend:<13}{writers:>8}{r['seconds']:>9.2f}{r['rows_per_s']:>9}{r['errors']:>8}"
                      f"{r['retries']:>8}{r['lost']:>7}{r['duplicated']:>6}{r['commit_p50_ms']:>8}"
                      f"{r['commit_p95_ms']:>8}{r['reader_qps']:>11.1f}", flush=True)
        for r in results:
            if r["first_error"]:
                print(f"{r['backend']} x{r['writers']}: {r['first_error']}".replace("\n", " "))
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({"bench": "shared_store", "batches": args.batches, "rows": args.rows, "cpus": os.cpu_count(),
                      "results": results}))


if __name__ == "__main__":
    main()
