"""Process-supervision files dropped into the inbox, in a real Dagster instance over a real
DuckDB store: the sensor asks for their prompt sets and imported labels; the factory's Monte
Carlo labels on an imported set are compared with the human ones in label_agreement; a PRM
dataset's PRM800K, ProcessBench and Math-Shepherd files load with `datasets` and come back to
the same labels through the inbox; the evaluation scores a PRM on an imported set."""

import json
import shutil
from pathlib import Path

import datasets
import pytest
from dagster import DagsterInstance, build_sensor_context, materialize

from qstar_dagster.assets.datasets import step_datasets
from qstar_dagster.assets.evaluation import evaluation
from qstar_dagster.assets.labels import imported_labels, label_agreement, mc_labels
from qstar_dagster.assets.policy import base_policy
from qstar_dagster.assets.prompts import prompt_inbox_sensor, prompt_set
from qstar_dagster.assets.training import prm_model
from qstar_dagster.labeling.agreement import agreement
from qstar_dagster.labeling.pipeline import hard_labels, solutions_of
from qstar_dagster.lineage import LineageStore
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.resources.compute import ComputeResource
from qstar_dagster.resources.judge import JudgeResource
from qstar_dagster.search.rollouts import load_trees
from qstar_dagster.tasks.arith import generate_problems
from qstar_dagster.tasks.loaders import ProblemFileError
from qstar_dagster.training.prm import PRMScorer, evaluate_prm

from ..conftest import EASY_ARITH, GSM8K_ROWS, write_jsonl
from ..process_files import MATH_SHEPHERD_ROWS, PRM800K_ROWS, PROCESSBENCH_ROWS

FILES = {"prm800k-sample": PRM800K_ROWS, "shepherd": MATH_SHEPHERD_ROWS, "pbench": PROCESSBENCH_ROWS}


def resources(home):
    return {"data_dir": DataDirResource(path=str(home)), "store": LineageStoreResource(path=str(home / "lineage.duckdb")),
            "compute": ComputeResource(device="cpu"), "judge": JudgeResource()}


def run(env, assets, partition, config=None, raise_on_error=True):
    instance, home, _ = env
    return materialize(assets, instance=instance, resources=resources(home), partition_key=partition,
                       raise_on_error=raise_on_error,
                       run_config={"ops": {a.node_def.name: {"config": (config or {}).get(a.node_def.name, {})} for a in assets}})


def metadata(result, name):
    [mat] = result.asset_materializations_for_node(name)
    return {k: v.value for k, v in mat.metadata.items()}


@pytest.fixture
def env(tmp_path):
    home = tmp_path / "qstar"
    for name, rows in FILES.items():
        write_jsonl(home / "inbox" / f"{name}.jsonl", rows)
    write_jsonl(home / "inbox" / "plain.jsonl", GSM8K_ROWS)
    instance = DagsterInstance.ephemeral()
    return instance, home, LineageStore(home / "lineage.duckdb")


def import_all(env):
    """What the inbox sensor asks for, run the way its runs would."""
    instance, home, _ = env
    result = prompt_inbox_sensor(build_sensor_context(instance=instance,
                                                      resources={"data_dir": DataDirResource(path=str(home))}))
    instance.add_dynamic_partitions("prompt_sets", result.dynamic_partitions_requests[0].partition_keys)
    asked = {r.partition_key: {k.to_user_string() for k in r.asset_selection} for r in result.run_requests}
    runs = {key: run(env, [a for a in (prompt_set, imported_labels) if a.key.to_user_string() in wanted], key)
            for key, wanted in asked.items()}
    return asked, runs


def labels_by_path(store, prompt_set, labeler):
    """(problem, step texts) -> right, of a labeler's hard labels on a prompt set's rollouts."""
    out = {}
    for rollout in {r["rollout_id"] for r in store.records(
            "SELECT rollout_id FROM trees WHERE prompt_set = ?", [prompt_set])}:
        hard = hard_labels(store, rollout).get(labeler, {})
        for t in load_trees(store, rollout):
            for n in t.nodes.values():
                if n.node_id in hard:
                    out[(t.problem.problem, tuple(x.text for x in t.path(n)[1:]))] = hard[n.node_id]
    return out


def test_dropped_files_become_prompt_sets_trees_and_labels_once(env):
    asked, runs = import_all(env)
    assert asked == {"prm800k-sample": {"prompt_set", "imported_labels"}, "shepherd": {"prompt_set", "imported_labels"},
                     "pbench": {"prompt_set", "imported_labels"}, "plain": {"prompt_set"}}
    _, _, store = env
    rows = store.records("""SELECT prompt_set, any_value(search) AS search, count(DISTINCT tree_id) AS trees
                            FROM trees GROUP BY 1 ORDER BY 1""")
    assert rows == [{"prompt_set": "pbench", "search": "import:processbench", "trees": 3},
                    {"prompt_set": "prm800k-sample", "search": "import:prm800k", "trees": 2},
                    {"prompt_set": "shepherd", "search": "import:math_shepherd", "trees": 2}]
    stats = {(r["labeler"], r["kind"]): r["n_labels"] for r in store.records("SELECT * FROM label_stats")}
    assert stats == {("prm800k", "hard"): 7, ("prm800k", "rating"): 7, ("math_shepherd", "hard"): 6,
                     ("processbench", "hard"): 5}
    # lineage: a label's node names its source lines, its tree the file and the lines' own ids
    [src] = store.records("""SELECT n.node_id, (t.spec->>'source') AS source, (n.stats->'lines') AS lines FROM nodes n
                             JOIN trees t USING (tree_id) WHERE n.text = 'Half of it is 24.'""")
    assert src["source"].endswith("pbench.jsonl") and json.loads(src["lines"]) == [2]
    edges = {(e.relation, e.parent_kind) for e in store.lineage(src["node_id"])}
    assert {("child_of", "node"), ("root_of", "tree"), ("imported_from", "source"), ("searches", "prompt"),
            ("member_of", "prompt_set")} <= edges
    # answers the file does not give (no right solution of the problem) are said by the check, not failed
    [check] = [c for c in runs["pbench"].get_asset_check_evaluations() if c.check_name == "reference_answers_parseable"]
    assert check.passed and "2 unknown (the file gives neither an answer nor a right solution)" in check.description
    # a re-run writes nothing new
    again = metadata(run(env, [imported_labels], "pbench"), "imported_labels")
    assert again["written"] is False
    assert store.query("SELECT count(*) FROM step_labels")[1] == [(25,)]
    plain = metadata(run(env, [imported_labels], "plain"), "imported_labels")
    assert plain == {"imported": False}


def test_a_bad_line_fails_the_file_and_writes_nothing(env):
    instance, home, store = env
    broken = [PROCESSBENCH_ROWS[0], {**PROCESSBENCH_ROWS[1], "label": 9}]
    write_jsonl(home / "inbox" / "broken.jsonl", broken)
    instance.add_dynamic_partitions("prompt_sets", ["broken"])
    with pytest.raises(ProblemFileError, match=r"broken.jsonl, line 2: label is 9 for 3 steps. Fix: use -1 or 0..2"):
        run(env, [prompt_set, imported_labels], "broken")
    assert store.query("SELECT count(*) FROM prompt_texts")[1] == [(0,)]
    assert store.query("SELECT count(*) FROM trees")[1] == [(0,)]


def test_factory_labels_are_scored_against_the_human_ones_and_exports_come_back(env, arith_policy_dir):
    instance, home, store = env
    import_all(env)
    with store.transaction() as con:
        store.write_prompt_set(con, "arith-test", "test", generate_problems(4, seed=11, spec=EASY_ARITH), None)
    instance.add_dynamic_partitions("prompt_sets", ["arith-test"])
    policy = metadata(run(env, [base_policy], None, {"base_policy": {
        "model_path": str(arith_policy_dir), "eval_k": 2, "eval_max_new_tokens": 16}}), "base_policy")["checkpoint_id"]

    # Monte Carlo labels need a policy to complete the steps: an imported rollout has none of its own
    failed = run(env, [mc_labels], "prm800k-sample", {"mc_labels": {"n": 2, "max_new_tokens": 16}},
                 raise_on_error=False)
    assert "name the policy to complete its steps with" in failed.failure_data_for_node("mc_labels").error.cause.message
    run(env, [mc_labels], "prm800k-sample", {"mc_labels": {"n": 2, "max_new_tokens": 16, "policy": policy}})
    meta = metadata(run(env, [label_agreement], "prm800k-sample"), "label_agreement")
    assert meta["reference"] == "prm800k"
    rows = {(r["labeler"], r["reference"]): r for r in store.records(
        "SELECT * FROM label_agreement WHERE prompt_set = 'prm800k-sample'")}
    assert set(rows) == {("mc", "prm800k"), ("binary_search", "prm800k"), ("binary_search", "mc")}
    # the figures are the agreement of the two label sets, on the steps both label
    [rollout] = {r["rollout_id"] for r in rows.values()}
    labels = hard_labels(store, rollout)
    want = agreement(labels["mc"], labels["prm800k"], solutions_of(load_trees(store, rollout)))
    assert rows[("mc", "prm800k")]["n_steps"] == want.n_steps == 7
    assert rows[("mc", "prm800k")]["accuracy"] == round(want.accuracy, 3)

    # the human labels as a PRM dataset, in every shape; each shape comes back through the inbox
    ds = metadata(run(env, [step_datasets], "prm800k-sample", {"step_datasets": {"kinds": ["prm"],
                                                                                 "labeler": "prm800k"}}),
                  "step_datasets")
    [spec] = store.records("SELECT spec FROM datasets WHERE dataset_id = ?", [ds["prm_dataset_id"]])
    files = json.loads(spec["spec"])["files"]
    assert set(files) == {"jsonl", "parquet", "math_shepherd", "prm800k", "processbench"}
    original = labels_by_path(store, "prm800k-sample", "prm800k")
    for shape in ("prm800k", "math_shepherd"):
        assert datasets.load_dataset("json", data_files=files[shape], split="train").num_rows == ds["prm_rows"]
        key = f"back-{shape}"
        shutil.copy(files[shape], home / "inbox" / f"{key}.jsonl")
        instance.add_dynamic_partitions("prompt_sets", [key])
        run(env, [prompt_set, imported_labels], key)
        assert labels_by_path(store, key, shape) == original, shape

    # a PRM (the policy's calibrated likelihood) on the ProcessBench set, with ProcessBench's metric
    prm = metadata(run(env, [prm_model], "prm800k-sample", {"prm_model": {"labeler": "prm800k"}}),
                   "prm_model")["checkpoint_id"]
    run(env, [evaluation], "prm800k-sample", {"evaluation": {
        "eval_prompt_set": "arith-test", "policies": [policy], "prms": [prm], "ns": [1, 2], "max_new_tokens": 16,
        "label_sets": ["pbench"]}})
    figures = {r["method"]: r["accuracy"] for r in store.records(
        "SELECT method, accuracy FROM evaluations WHERE prompt_set = 'pbench'")}
    [pb] = {r["rollout_id"] for r in store.records("SELECT rollout_id FROM trees WHERE prompt_set = 'pbench'")}
    reference = hard_labels(store, pb)["processbench"]
    direct = evaluate_prm(PRMScorer(store.checkpoint(prm, "prm")["path"]), load_trees(store, pb), reference=reference)
    assert figures["prm_first_error_f1"] == pytest.approx(direct["first_error_f1"])
    assert figures["prm_first_error_accuracy_erroneous"] == pytest.approx(direct["first_error_accuracy_erroneous"])
    assert direct["n_solutions"] == 3 and direct["n_steps"] == 5
    assert Path(files["processbench"]).exists()
