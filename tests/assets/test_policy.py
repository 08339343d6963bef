import json

import pytest
from dagster import DagsterInstance, materialize

from qstar_dagster.assets.policy import base_policy
from qstar_dagster.assets.prompts import prompt_set, prompt_set_partitions
from qstar_dagster.lineage import LineageStore
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.resources.compute import ComputeResource

TINY = {"shipped": False, "hidden": 32, "layers": 1, "heads": 2, "steps": 40, "batch_size": 16, "lr": 1e-2, "warmup": 5,
        "eval_every": 20, "eval_k": 4, "eval_max_new_tokens": 48}


@pytest.fixture
def env(tmp_path):
    instance = DagsterInstance.ephemeral()
    home = tmp_path / "qstar"
    resources = {"data_dir": DataDirResource(path=str(home)),
                 "store": LineageStoreResource(path=str(home / "lineage.duckdb")),
                 "compute": ComputeResource(device="cpu", threads=1)}
    return instance, resources, home


SIZES = {"arith-train": 300, "arith-test": 12}


def load_prompt_sets(env, sizes=None):
    instance, resources, _ = env
    for key, n in (sizes or SIZES).items():
        instance.add_dynamic_partitions(prompt_set_partitions.name, [key])
        materialize([prompt_set], instance=instance, resources=resources, partition_key=key,
                    run_config={"ops": {"prompt_set": {"config": {"n": n}}}})


def run_policy(env, config, raise_on_error=True):
    instance, resources, _ = env
    return materialize([base_policy], instance=instance, resources=resources, raise_on_error=raise_on_error,
                       run_config={"ops": {"base_policy": {"config": config}}})


def metadata(result):
    [mat] = result.asset_materializations_for_node("base_policy")
    return {k: v.value for k, v in mat.metadata.items()}


def test_trains_records_and_reuses_the_base_policy(env):
    load_prompt_sets(env)
    meta = metadata(run_policy(env, TINY))
    store = LineageStore(env[2] / "lineage.duckdb")
    [ck] = store.records("SELECT * FROM checkpoints")
    assert ck["checkpoint_id"] == meta["checkpoint_id"] and ck["kind"] == "policy"
    assert ck["trained_on_prompt_set"].startswith("arith-train@")
    assert meta["reused"] is False and meta["n_train_examples"] == 300
    assert meta["training_curves"].startswith("![training loss")
    evals = {r["method"]: r for r in store.records("SELECT * FROM evaluations")}
    assert set(evals) == {"greedy", "pass@4", "majority@4"}
    assert evals["greedy"]["accuracy"] == meta["greedy_accuracy"] and evals["greedy"]["n"] == 12
    assert 0 <= meta["majority_at_4"] <= meta["pass_at_4"] <= 1
    edges = {(e.relation, e.parent_id.split("@")[0]) for e in store.lineage(ck["checkpoint_id"])}
    assert ("trained_on", "arith-train") in edges
    edges = {(e.relation, e.parent_id) for e in store.lineage(evals["greedy"]["eval_id"])}
    assert ("evaluates", ck["checkpoint_id"]) in edges

    weights = env[2] / "checkpoints" / ck["checkpoint_id"] / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = metadata(run_policy(env, TINY))
    assert again["reused"] is True and again["greedy_accuracy"] == meta["greedy_accuracy"]
    assert weights.stat().st_mtime_ns == mtime
    assert store.query("SELECT count(*) FROM checkpoints")[1] == [(1,)]
    assert store.query("SELECT count(*) FROM evaluations")[1] == [(3,)]

    # Another evaluation of the same checkpoint adds evaluations, not a checkpoint or training.
    hotter = metadata(run_policy(env, {**TINY, "eval_temperature": 1.0}))
    assert hotter["checkpoint_id"] == meta["checkpoint_id"] and hotter["reused"] is False
    assert hotter["greedy_accuracy"] == meta["greedy_accuracy"] and weights.stat().st_mtime_ns == mtime
    assert store.query("SELECT count(*) FROM checkpoints")[1] == [(1,)]
    assert store.query("SELECT count(*) FROM evaluations")[1] == [(6,)]

    # A different config is a different checkpoint; the first one stays.
    metadata(run_policy(env, {**TINY, "seed": 1}))
    assert store.query("SELECT count(*) FROM checkpoints")[1] == [(2,)]

    # Fewer written solutions: another checkpoint, its config saying how many it learned.
    fewer = metadata(run_policy(env, {**TINY, "references": 100}))
    assert fewer["n_train_examples"] == 100 and fewer["checkpoint_id"] != meta["checkpoint_id"]
    assert json.loads(store.checkpoint(fewer["checkpoint_id"])["config"])["references"] == 100


def test_a_run_killed_after_training_resumes_without_retraining(env):
    load_prompt_sets(env)
    first = metadata(run_policy(env, TINY))
    store = LineageStore(env[2] / "lineage.duckdb")
    with store.transaction() as con:  # as if the run died between saving the weights and recording them
        con.execute("DELETE FROM checkpoints")
        con.execute("DELETE FROM evaluations")
    weights = env[2] / "checkpoints" / first["checkpoint_id"] / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = metadata(run_policy(env, TINY))
    assert again["reused"] is False and again["checkpoint_id"] == first["checkpoint_id"]
    assert again["train_seconds"] == first["train_seconds"]  # the saved summary, not a new training run
    assert weights.stat().st_mtime_ns == mtime
    assert store.query("SELECT count(*) FROM checkpoints")[1] == [(1,)]


def test_a_given_model_is_evaluated_and_recorded_without_training(env, tiny_model_dir):
    load_prompt_sets(env, {"arith-test": 6})
    meta = metadata(run_policy(env, {"model_path": str(tiny_model_dir), "eval_k": 2, "eval_max_new_tokens": 16}))
    store = LineageStore(env[2] / "lineage.duckdb")
    [ck] = store.records("SELECT * FROM checkpoints")
    assert ck["base"] == str(tiny_model_dir) and ck["path"] == str(tiny_model_dir)
    assert ck["trained_on_prompt_set"] is None and len(ck["sha256"]) == 64
    assert "train_seconds" not in meta and not list((env[2] / "checkpoints").iterdir())


def test_missing_prompt_set_says_what_to_materialize(env):
    result = run_policy(env, TINY, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.to_string()
    assert "prompt set 'arith-test' is not in the lineage store" in message
    assert "materialize the prompt_set asset for partition 'arith-test'" in message
    store = LineageStore(env[2] / "lineage.duckdb")
    assert store.records("SELECT status FROM runs") == [{"status": "failure"}]


def test_missing_model_is_a_clear_error(env, tmp_path):
    load_prompt_sets(env, {"arith-test": 6})
    result = run_policy(env, {"model_path": str(tmp_path / "nope")}, raise_on_error=False)
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "neither a local directory nor in the Hugging Face cache" in failure.step_failure_data.error.to_string()


def test_unknown_backend_fails_before_any_work(env):
    load_prompt_sets(env)
    result = run_policy(env, {**TINY, "backend": "tgi"}, raise_on_error=False)
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "backend must be transformers or vllm, got 'tgi'" in failure.step_failure_data.error.to_string()
    assert not (env[2] / "checkpoints").exists() or not list((env[2] / "checkpoints").iterdir())


def test_more_references_than_problems_fails_before_any_work(env):
    load_prompt_sets(env)
    result = run_policy(env, {**TINY, "references": 301}, raise_on_error=False)
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "references=301, but the training prompt set has 300 problems" in failure.step_failure_data.error.to_string()
    assert not (env[2] / "checkpoints").exists() or not list((env[2] / "checkpoints").iterdir())


def test_a_countdown_base_policy_is_trained_and_measured_without_votes(env):
    """The same asset on the Countdown domain: its problems and reference solutions train the
    policy, its grader measures it, and no majority@k is recorded (votes mean nothing there)."""
    load_prompt_sets(env, {"countdown-train": 300, "countdown-test": 8})
    meta = metadata(run_policy(env, {**TINY, "train_prompt_set": "countdown-train",
                                     "eval_prompt_set": "countdown-test", "eval_max_new_tokens": 96}))
    store = LineageStore(env[2] / "lineage.duckdb")
    [ck] = store.records("SELECT * FROM checkpoints")
    assert ck["trained_on_prompt_set"].startswith("countdown-train@")
    assert 300 + 100 <= meta["n_train_examples"] <= 300 + 200  # the reference solutions and ~150 practice walks
    evals = {r["method"]: r["accuracy"] for r in store.records("SELECT * FROM evaluations")}
    assert set(evals) == {"greedy", "pass@4"} and meta["majority_at_4"] is None
    assert 0 <= meta["greedy_accuracy"] <= meta["pass_at_4"] <= 1
    assert metadata(run_policy(env, {**TINY, "train_prompt_set": "countdown-train",
                                     "eval_prompt_set": "countdown-test", "eval_max_new_tokens": 96}))["reused"]
