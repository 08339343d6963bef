import multiprocessing
from datetime import datetime

import duckdb
import psycopg2.errors
import pytest

from qstar_dagster.lineage import LineageStore
from qstar_dagster.lineage.schema import LATEST_VERSION
from qstar_dagster.lineage.store import PromptSetNotFoundError
from qstar_dagster.tasks.arith import generate_problems
from qstar_dagster.tasks.problem import Problem


@pytest.fixture(params=["file", "postgres"])
def location(request, tmp_path):
    """Every test of the store's API runs on the embedded file and on a shared PostgreSQL store."""
    return tmp_path / "s.duckdb" if request.param == "file" else request.getfixturevalue("pg_url")


def counts(store):
    return {t: store.query(f"SELECT count(*) FROM {t}")[1][0][0]
            for t in ("prompt_texts", "prompt_sets", "prompt_set_members", "prompt_set_heads")}


def write(store, name, problems, run="r1"):
    with store.transaction() as con:
        return store.write_prompt_set(con, name, "test", problems, run)


def test_writing_the_same_prompt_set_twice_changes_nothing(location):
    store = LineageStore(location)
    problems = generate_problems(50, seed=1)
    first = write(store, "a", problems)
    before = counts(store)
    second = write(store, "a", problems, run="r2")
    assert counts(store) == before == {"prompt_texts": 50, "prompt_sets": 1, "prompt_set_members": 50,
                                       "prompt_set_heads": 1}
    assert (first.new_version, first.n_new_prompts) == (True, 50)
    assert (second.new_version, second.n_new_prompts, second.version) == (False, 0, first.version)


def test_a_changed_source_is_a_new_version_and_old_members_stay(location):
    store = LineageStore(location)
    problems = generate_problems(20, seed=1)
    v1 = write(store, "a", problems[:10])
    v2 = write(store, "a", problems[5:])
    assert v1.version != v2.version
    current = store.records("SELECT prompt_id FROM prompts WHERE prompt_set = 'a'")
    assert {r["prompt_id"] for r in current} == {p.prompt_id for p in problems[5:]}
    assert counts(store)["prompt_set_members"] == 25  # v1's membership kept for lineage
    assert counts(store)["prompt_texts"] == 20  # shared prompts stored once
    # the head alone (what a shipped model's fit is checked against) is the version the problems carry
    assert store.prompt_set_head("a") == v2.version == store.prompt_set_problems("a")[0]
    with pytest.raises(PromptSetNotFoundError, match="materialize the prompt_set asset for partition 'b'"):
        store.prompt_set_head("b")


def test_duplicates_are_kept_once_and_counted(location):
    store = LineageStore(location)
    p = generate_problems(3, seed=1)
    w = write(store, "a", [p[0], p[1], p[0], p[2], p[1]])
    assert (w.n, w.n_duplicates) == (3, 2)
    assert [r["idx"] for r in store.records("SELECT idx FROM prompts ORDER BY idx")] == [0, 1, 3]


def test_a_failure_mid_write_leaves_nothing(location):
    store = LineageStore(location)
    good = generate_problems(30, seed=1)
    bad_row = Problem(problem=None, reference_answer="1")  # violates NOT NULL
    with pytest.raises((duckdb.ConstraintException, psycopg2.errors.NotNullViolation)):
        write(store, "a", good[:15] + [bad_row] + good[15:])
    assert counts(store) == dict.fromkeys(counts(store), 0)
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as con:
        store.write_prompt_set(con, "a", "test", good, "r1")
        raise RuntimeError("boom")
    assert counts(store) == dict.fromkeys(counts(store), 0)


def test_an_empty_prompt_set_is_refused(location):
    store = LineageStore(location)
    with pytest.raises(ValueError, match="has no problems"):
        write(store, "a", [])


def tables(store):
    return {r[0] for r in store.query("SELECT table_name FROM information_schema.tables "
                                      "WHERE table_catalog = current_database()")[1]}


def test_an_older_store_is_migrated_with_its_data(location):
    old = LineageStore(location, target_version=1)
    assert old.schema_version() == 1
    problems = generate_problems(10, seed=4)
    write(old, "a", problems)
    assert "nodes" not in tables(old) and "prompt_texts" in tables(old)

    store = LineageStore(location)
    assert store.schema_version() == LATEST_VERSION
    assert store.query("SELECT count(*) FROM prompts WHERE prompt_set = 'a'")[1] == [(10,)]
    assert store.query("SELECT count(*) FROM nodes")[1] == [(0,)]
    applied = store.query("SELECT version FROM schema_version ORDER BY 1")[1]
    assert [v for (v,) in applied] == list(range(1, LATEST_VERSION + 1))


def test_evaluation_rows_of_an_older_store_learn_which_stage_wrote_them(location):
    from qstar_dagster.lineage.artifacts import latest_sweep

    old = LineageStore(location, target_version=5)
    rows = [{"eval_id": f"ev_{i}", "checkpoint_ids": ["ck_a"], "prompt_set": "s", "prompt_set_version": "v",
             "method": "pass@8", "n": 10, "accuracy": acc, "details": details, "created_run": None,
             "created_at": datetime(2026, 1, 1 + i)}
            for i, (acc, details) in enumerate([(0.5, {"k": 8}), (0.25, {"prompt_set": "s", "N": 8})])]
    with old.transaction() as con:
        old.insert(con, "evaluations", rows)
    store = LineageStore(location)
    stages = dict(store.query("SELECT accuracy, (details->>'stage') FROM evaluations")[1])
    assert stages == {0.5: "base_policy", 0.25: "evaluation"}
    assert [r["accuracy"] for r in latest_sweep(store, "s")] == [0.25]  # the sweep's row, not the base policy's


def test_a_store_newer_than_the_code_is_refused(location):
    store = LineageStore(location)
    with store.transaction() as con:
        con.execute("INSERT INTO schema_version VALUES (?, 'future', ?)", [LATEST_VERSION + 1, datetime(2027, 1, 1)])
    with pytest.raises(RuntimeError, match="newer than this code"):
        LineageStore(location)


def _writer(path, name, seed):
    store = LineageStore(path)
    for i in range(5):
        write(store, f"{name}{i}", generate_problems(20, seed=seed + i))


def test_two_processes_can_write_the_same_store(location):
    path = location
    LineageStore(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, n, s)) for n, s in (("x", 0), ("y", 100))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert LineageStore(path).query("SELECT count(DISTINCT prompt_set) FROM prompts")[1] == [(10,)]


def test_lineage_walks_from_a_step_label_to_its_sources(location):
    store = LineageStore(location)
    p = generate_problems(1, seed=1)[0]
    set_version = write(store, "a", [p], run="run-prompts").version
    with store.transaction() as con:
        store.insert(con, "checkpoints", [{"checkpoint_id": "ck_policy", "kind": "policy", "base": None,
                                           "path": "/x", "created_run": "run-train", "created_at": "2026-01-01"}])
        store.insert(con, "nodes", [
            {"node_id": "n_root", "tree_id": "t1", "prompt_id": p.prompt_id, "parent_id": None, "depth": 0,
             "text": "", "policy_checkpoint": None},
            {"node_id": "n_1", "tree_id": "t1", "prompt_id": p.prompt_id, "parent_id": "n_root", "depth": 1,
             "text": "1 + 2 = 3", "policy_checkpoint": "ck_policy"},
        ])
        store.insert(con, "trees", [
            {"tree_id": "t1", "rollout_id": "r1", "prompt_id": p.prompt_id, "prompt_set": "a",
             "prompt_set_version": set_version, "policy_checkpoint": "ck_policy", "search": "beam",
             "value_function": "none", "n_nodes": 2, "generated_tokens": 9, "value_tokens": 0,
             "any_correct": False, "created_run": "run-search", "created_at": "2026-01-01"},
        ])
        store.insert(con, "step_labels", [
            {"node_id": "n_1", "labeler": "mc", "kind": "soft", "value": 0.75, "n_rollouts": 4, "n_correct": 3,
             "cost_tokens": 40},
            {"node_id": "n_1", "labeler": "judge", "kind": "ternary", "value": None, "cost_tokens": 10},
        ])
    parents = {(e.child_id, e.parent_id) for e in store.lineage("n_1/mc/soft")}
    assert {("n_1/mc/soft", "n_1"), ("n_1", "n_root"), ("n_root", "t1"), ("t1", p.prompt_id),
            ("t1", "ck_policy"), ("t1", "run-search"), (p.prompt_id, f"a@{set_version}"),
            (f"a@{set_version}", "run-prompts"), ("ck_policy", "run-train")} <= parents
    stats = store.records("SELECT * FROM label_stats ORDER BY labeler")
    assert [(s["labeler"], s["n_labels"], s["n_parsed"], s["unparsed_rate"]) for s in stats] == [
        ("judge", 1, 0, 1.0), ("mc", 1, 1, 0.0)]
    assert stats[1]["mean_value"] == 0.75 and stats[1]["tokens_per_label"] == 40


def test_runs_are_recorded_start_and_end(location):
    store = LineageStore(location)
    store.begin_run("r1", "prompt_set", "a", {"n": 3}, "0.1/1")
    with store.transaction() as con:
        store.end_run(con, "r1", "prompt_set", "a", "success")
    [run] = store.records("SELECT * FROM runs")
    assert run["status"] == "success" and run["ended_at"] >= run["started_at"] and run["partition"] == "a"


def test_the_default_base_policy_is_the_one_of_the_prompt_sets_domain(location, tmp_path):
    """An arithmetic policy must not search Countdown problems: with a prompt set, the latest
    base policy trained on its domain comes first; without one, the latest of all."""
    from qstar_dagster.tasks.countdown import generate_problems as countdown_problems

    store = LineageStore(location)
    arith = write(store, "arith-x", generate_problems(2, seed=1)).version
    count = write(store, "count-x", countdown_problems(2, seed=1)).version
    write(store, "count-y", countdown_problems(2, seed=2))
    rows = []
    for ck, trained_on, at in (("ck_arith", f"arith-x@{arith}", "2026-01-01"), ("ck_count", f"count-x@{count}",
                                                                                 "2026-01-02"),
                               ("ck_given", None, "2026-01-03")):
        (tmp_path / ck).mkdir()
        rows.append({"checkpoint_id": ck, "kind": "policy", "base": None, "trained_on_prompt_set": trained_on,
                     "path": str(tmp_path / ck), "created_at": at})
    with store.transaction() as con:
        store.insert(con, "checkpoints", rows)
    assert store.checkpoint(None, "policy", prompt_set="arith-x")["checkpoint_id"] == "ck_arith"
    assert store.checkpoint(None, "policy", prompt_set="count-y")["checkpoint_id"] == "ck_count"  # same domain
    assert store.checkpoint(None, "policy")["checkpoint_id"] == "ck_given"
    assert "same_domain" not in store.checkpoint(None, "policy", prompt_set="arith-x")
    (tmp_path / "ck_count").rmdir()  # files gone: the next best
    assert store.checkpoint(None, "policy", prompt_set="count-y")["checkpoint_id"] == "ck_given"
