"""The shared lineage store on a real PostgreSQL server: many writer processes at once, a
reader beside them, the same answers as a local file, the copy command, a Dagster stage."""

import multiprocessing
import time

import pytest
from click.testing import CliRunner
from dagster import DagsterInstance, materialize

from qstar_dagster.assets.prompts import prompt_set, prompt_set_partitions
from qstar_dagster.cli import main
from qstar_dagster.lineage import LineageStore
from qstar_dagster.lineage.shared import SharedStoreError
from qstar_dagster.lineage.store import utcnow
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from tests.lineage.shared_writers import (
    BATCHES,
    OWN_NODES,
    SHARED_NODES,
    read_process,
    write_all,
    write_process,
)


def _answers(store: LineageStore) -> dict:
    """What the lineage queries say about the rows `_write_all` writes."""
    return {
        "nodes": store.query("SELECT node_id, tree_id, parent_id, depth, stats FROM nodes ORDER BY node_id")[1],
        "labels": store.query("SELECT node_id, labeler, kind, value FROM step_labels ORDER BY node_id")[1],
        "prompts": store.query("SELECT prompt_set, version, idx, prompt_id FROM prompts ORDER BY ALL")[1],
        "label_stats": store.query("SELECT * FROM label_stats")[1],
        "lineage": store.lineage("n_3_w2_4/mc/soft"),
        "runs": store.query("SELECT run_id, status FROM runs ORDER BY run_id")[1],
    }


def test_eight_writers_and_a_reader_lose_nothing_and_answer_as_a_local_store(pg_url, tmp_path):
    LineageStore(pg_url)
    ctx = multiprocessing.get_context("spawn")
    errors, stop, seen = ctx.Queue(), ctx.Event(), ctx.Manager().list()
    reader = ctx.Process(target=read_process, args=(pg_url, stop, errors, seen))
    reader.start()
    writers = [ctx.Process(target=write_process, args=(pg_url, w, errors)) for w in range(8)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(240)
    stop.set()
    reader.join(60)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == [] and [p.exitcode for p in writers] == [0] * 8 and reader.exitcode == 0
    assert len(seen) > 0  # the reader answered while the writers wrote

    shared = LineageStore(pg_url)
    expected_nodes = BATCHES * (SHARED_NODES + 8 * OWN_NODES)
    assert shared.query("SELECT count(*), count(DISTINCT node_id) FROM nodes")[1] == [(expected_nodes,) * 2]
    assert shared.query("SELECT count(*) FROM step_labels")[1] == [(expected_nodes - BATCHES,)]
    assert shared.query("SELECT count(*) FROM runs WHERE status = 'success'")[1] == [(8,)]

    local = LineageStore(tmp_path / "local.duckdb")  # the same rows, written one writer after another
    for w in range(8):
        write_all(local, w)
    assert _answers(shared) == _answers(local)


def test_copy_moves_a_local_store_to_the_shared_one_and_again_adds_nothing(pg_url, tmp_path):
    path = tmp_path / "local.duckdb"
    local = LineageStore(path)
    for w in range(2):
        write_all(local, w)
    with local.transaction() as con:  # a JSON column, a list column and a timestamp
        local.insert(con, "evaluations", [{
            "eval_id": "ev_1", "checkpoint_ids": ["ck_a", "ck_b"], "prompt_set": "set-0", "method": "majority@8",
            "n": 10, "accuracy": 0.4, "details": {"stage": "evaluation", "N": 8}, "created_at": "2026-12-01 10:00:00"}])
    result = CliRunner().invoke(main, ["store", "copy", pg_url, "--from", str(path)])
    assert result.exit_code == 0, result.output
    n_nodes = BATCHES * (SHARED_NODES + 2 * OWN_NODES)
    assert f"nodes: {n_nodes} rows, {n_nodes} new" in result.output
    shared = LineageStore(pg_url)
    assert _answers(shared) == _answers(local)
    row = "SELECT checkpoint_ids, (details->>'N') AS n, created_at FROM evaluations"
    assert shared.records(row) == local.records(row)

    again = CliRunner().invoke(main, ["store", "copy", pg_url, "--from", str(path)])
    assert again.exit_code == 0 and ": 0 new rows" in again.output, again.output


def test_a_stage_materializes_into_the_shared_store_and_qstar_sql_reads_it(pg_url, tmp_path, monkeypatch):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(prompt_set_partitions.name, ["arith-test"])
    resources = {"data_dir": DataDirResource(path=str(tmp_path / "qstar")), "store": LineageStoreResource(path=pg_url)}
    for _ in range(2):  # the second run writes nothing new
        result = materialize([prompt_set], instance=instance, resources=resources, partition_key="arith-test",
                             run_config={"ops": {"prompt_set": {"config": {"n": 25}}}})
        assert result.success
    assert not (tmp_path / "qstar" / "lineage.duckdb").exists()

    monkeypatch.setenv("QSTAR_STORE", pg_url)
    monkeypatch.setenv("QSTAR_HOME", str(tmp_path / "qstar"))
    out = CliRunner().invoke(main, ["sql", "select prompt_set, count(*) as n from prompts group by 1", "--json"])
    assert out.exit_code == 0, out.output
    assert '"n": 25' in out.output and '"prompt_set": "arith-test"' in out.output
    runs = CliRunner().invoke(main, ["sql", "select status from runs", "--json"])
    assert runs.output.count('"success"') == 2
    refused = CliRunner().invoke(main, ["sql", "delete from runs"])
    assert refused.exit_code != 0 and "read-only" in refused.output.lower()
    assert LineageStore(pg_url).query("SELECT count(*) FROM runs")[1] == [(2,)]


def test_an_unreachable_shared_store_says_where_and_what_to_do():
    started = time.monotonic()
    with pytest.raises(SharedStoreError) as refused:
        LineageStore("postgresql://qstar:secret@127.0.0.1:9/nowhere")
    assert time.monotonic() - started < 30
    message = str(refused.value)
    assert message.startswith("cannot reach the shared lineage store postgresql://qstar:***@127.0.0.1:9/nowhere")
    assert "Connection refused" in message and "QSTAR_STORE" in message and "secret" not in message


def test_what_a_policy_learned_by_heart_is_found_through_its_bases_in_both_stores(pg_url, tmp_path):
    """learned_solutions walks a fine-tuned policy's `base` chain up to the base policy: a
    recursive step over a shared store's tables must see them (as the local file does)."""
    base = {"kind": "policy", "path": "/ckpt", "created_at": utcnow()}
    rows = [{**base, "checkpoint_id": "ck_base", "trained_on_prompt_set": "arith-train@v1",
             "config": {"references": 2000}},
            {**base, "checkpoint_id": "ck_rft", "base": "ck_base", "config": {"trainer": "rft"}},
            {**base, "checkpoint_id": "ck_ppo", "base": "ck_rft", "config": {"trainer": "step_ppo"}},
            {**base, "checkpoint_id": "ck_all", "trained_on_prompt_set": "arith-train@v1", "config": {}}]
    for store in (LineageStore(pg_url), LineageStore(tmp_path / "local.duckdb")):
        with store.transaction() as con:
            store.insert(con, "checkpoints", rows)
        assert [store.learned_solutions(c) for c in ("ck_base", "ck_rft", "ck_ppo", "ck_all")] == [
            ("arith-train@v1", 2000)] * 3 + [None], store.path
