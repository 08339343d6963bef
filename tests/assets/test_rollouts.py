"""The tot_rollouts asset in a real Dagster instance, writing to a real DuckDB store."""


import logging
from dataclasses import replace

import pytest
from dagster import DagsterInstance, materialize

from qstar_dagster.assets.policy import base_policy
from qstar_dagster.assets.prompts import prompt_set, prompt_set_partitions
from qstar_dagster.assets.rollouts import RolloutsConfig, tot_rollouts, trees_sound
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.lineage import LineageStore
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.resources.compute import ComputeResource
from qstar_dagster.search.rollouts import plan_rollout, run_rollout

from ..conftest import copied_env
from .test_policy import TINY

ROLLOUTS = {"algorithm": "beam", "k": 2, "beam_width": 2, "step_max_tokens": 24, "max_depth": 5,
            "batch_size": 3, "max_problems": 7}


def resources(home):
    return {"data_dir": DataDirResource(path=str(home)), "store": LineageStoreResource(path=str(home / "lineage.duckdb")),
            "compute": ComputeResource(device="cpu", threads=1)}


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory):
    """A data directory with the built-in prompt sets (small) and a tiny trained base policy."""
    home = tmp_path_factory.mktemp("rollouts") / "qstar"
    instance = DagsterInstance.ephemeral()
    for key, n in {"arith-train": 300, "arith-test": 12}.items():
        instance.add_dynamic_partitions(prompt_set_partitions.name, [key])
        materialize([prompt_set], instance=instance, resources=resources(home), partition_key=key,
                    run_config={"ops": {"prompt_set": {"config": {"n": n}}}})
    materialize([base_policy], instance=instance, resources=resources(home),
                run_config={"ops": {"base_policy": {"config": TINY}}})
    return home


@pytest.fixture
def env(seeded_home, tmp_path):
    return copied_env(seeded_home, tmp_path)


def rollouts(env, config=None, raise_on_error=True, partition="arith-test"):
    instance, home, _ = env
    return materialize([tot_rollouts, trees_sound], instance=instance, resources=resources(home),
                       partition_key=partition, raise_on_error=raise_on_error,
                       run_config={"ops": {"tot_rollouts": {"config": {**ROLLOUTS, **(config or {})}}}})


def metadata(result):
    [mat] = result.asset_materializations_for_node("tot_rollouts")
    return {k: v.value for k, v in mat.metadata.items()}


def counts(store):
    return store.query("SELECT (SELECT count(*) FROM nodes), (SELECT count(*) FROM trees)")[1][0]


def test_rollouts_write_traceable_trees_and_rerunning_writes_nothing(env):
    _, _, store = env
    result = rollouts(env)
    meta = metadata(result)
    [policy] = store.records("SELECT checkpoint_id FROM checkpoints WHERE kind = 'policy'")
    assert meta["trees"] == 7 and meta["batches_searched"] == 3 and meta["algorithm"] == "beam"
    assert meta["policy_checkpoint"] == policy["checkpoint_id"]
    assert meta["nodes"] == counts(store)[0] and meta["generated_tokens"] > 0 and meta["tokens_per_second"] > 0
    assert 0 <= meta["selected_accuracy"] <= meta["pass_at_k"] <= 1
    assert meta["tree_shape"].startswith("![nodes per depth")
    [check] = result.get_asset_check_evaluations()
    assert check.passed, check.metadata

    # Every node carries its prompt, policy and run; every tree's prompt is in the set.
    rows = store.records("SELECT n.*, t.rollout_id FROM nodes n JOIN trees t USING (tree_id)")
    assert {r["policy_checkpoint"] for r in rows} == {policy["checkpoint_id"]}
    assert {r["created_run"] for r in rows} == {result.run_id}
    test_prompts = {r["prompt_id"] for r in store.records("SELECT prompt_id FROM prompts WHERE prompt_set='arith-test'")}
    assert {r["prompt_id"] for r in rows} <= test_prompts and len({r["prompt_id"] for r in rows}) == 7

    # qstar sql can walk a tree from root to leaf; the steps are the nodes' texts in order.
    [path] = store.records("SELECT * FROM rollout_paths WHERE selected LIMIT 1")
    nodes = {r["node_id"]: r for r in rows}
    assert [nodes[i]["text"] for i in path["step_node_ids"]] == path["steps"]
    assert nodes[path["step_node_ids"][0]]["depth"] == 1 and path["step_node_ids"][-1] == path["node_id"]
    assert store.query("SELECT count(*) FROM rollout_paths")[1][0][0] == sum(r["is_terminal"] for r in rows)

    # Lineage of a leaf reaches its prompt, the prompt set and the policy checkpoint.
    edges = store.lineage(path["node_id"])
    relations = {(e.relation, e.parent_kind) for e in edges}
    assert {("child_of", "node"), ("root_of", "tree"), ("searches", "prompt"), ("member_of", "prompt_set"),
            ("sampled_by", "checkpoint")} <= relations

    # The same config and seed again: nothing searched, nothing written, same figures.
    again = metadata(rollouts(env))
    assert again["batches_searched"] == 0 and again["batches_in_store_before"] == 3
    assert counts(store) == (meta["nodes"], 7)
    assert again["selected_accuracy"] == meta["selected_accuracy"]
    # Another seed is another rollout beside the first.
    other = metadata(rollouts(env, {"seed": 1}))
    assert other["rollout_id"] != meta["rollout_id"] and counts(store)[1] == 14


def test_a_killed_rollout_resumes_per_batch_without_duplicates(env, seeded_home):
    _, home, store = env
    policy = store.checkpoint(None, "policy")
    version, problems = store.prompt_set_problems("arith-test")
    spec = RolloutsConfig(**ROLLOUTS).spec()
    plan = plan_rollout("arith-test", version, problems[:7], policy["checkpoint_id"], spec, batch_size=3)
    gen = TransformersGenerator(policy["path"])

    class Killed(Exception):
        pass

    def kill_after_two(done, total):
        if done == 2:
            raise Killed

    with pytest.raises(Killed):
        run_rollout(store, plan, lambda: gen, on_batch=kill_after_two)
    assert counts(store)[1] == 6  # two whole batches, nothing of the third
    resumed = run_rollout(store, plan, lambda: gen)
    assert resumed.n_batches_run == 1 and resumed.n_trees_written == 1

    # The same trees as a run that was never interrupted.
    fresh = LineageStore(home.parent / "fresh.duckdb")
    run_rollout(fresh, plan, lambda: gen)
    query = "SELECT node_id, text, is_correct FROM nodes ORDER BY node_id"
    assert store.records(query) == fresh.records(query)
    assert store.query("SELECT count(*), count(DISTINCT node_id) FROM nodes")[1] == [(len(store.records(query)),) * 2]


def test_bad_config_and_missing_policy_fail_clearly_before_any_work(env, tmp_path):
    result = rollouts(env, {"algorithm": "dfs"}, raise_on_error=False)
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "search algorithm must be one of" in failure.step_failure_data.error.to_string()
    result = rollouts(env, {"policy_checkpoint": "ck_nope"}, raise_on_error=False)
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "'ck_nope' is not a policy checkpoint" in failure.step_failure_data.error.to_string()
    assert counts(env[2]) == (0, 0)

    empty = tmp_path / "empty"
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(prompt_set_partitions.name, ["arith-test"])
    materialize([prompt_set], instance=instance, resources=resources(empty), partition_key="arith-test",
                run_config={"ops": {"prompt_set": {"config": {"n": 5}}}})
    result = materialize([tot_rollouts, trees_sound], instance=instance, resources=resources(empty),
                         partition_key="arith-test", raise_on_error=False)
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "no policy checkpoint in the lineage store" in failure.step_failure_data.error.to_string()
    assert "materialize base_policy first" in failure.step_failure_data.error.to_string()


def test_skipping_problems_searches_a_window_with_the_whole_searchs_trees(env, seeded_home, tmp_path):
    """skip_problems (past the problems a base policy learned by heart) searches the later
    problems only, and their trees are node for node those of a search from the first problem."""
    _, _, store = env
    meta = metadata(rollouts(env, {"skip_problems": 3, "max_problems": 3}))
    _, problems = store.prompt_set_problems("arith-test")
    searched = {r["prompt_id"] for r in store.records("SELECT prompt_id FROM trees")}
    assert meta["trees"] == 3 and searched == {p.prompt_id for p in problems[3:6]}

    whole_env = copied_env(seeded_home, tmp_path / "whole")
    whole = metadata(rollouts(whole_env))
    assert whole["rollout_id"] == meta["rollout_id"]  # a window of the same rollout
    query = ("SELECT n.node_id, n.tree_id, n.parent_id, n.text, n.is_correct FROM nodes n JOIN trees t USING (tree_id) "
             f"WHERE t.prompt_id IN ({', '.join(repr(p) for p in sorted(searched))}) ORDER BY n.node_id")
    assert store.records(query) == whole_env[2].records(query) != []

    for skip in (2, 12):  # not a batch boundary; past the set's end
        result = rollouts(env, {"skip_problems": skip}, raise_on_error=False)
        [failure] = [e for e in result.all_events if e.is_step_failure]
        assert (f"skip_problems={skip}: prompt set 'arith-test' has 12 problems, searched in batches of 3; give a "
                "multiple of batch_size below 12") in failure.step_failure_data.error.to_string()


def test_a_search_of_problems_the_base_learned_by_heart_is_flagged(env):
    """A base that learned the written solutions of the first N problems (`references`), and
    the policies trained from it, find those problems' solutions by heart: the rollout warns
    when its window overlaps them, naming the skip_problems that searches past them."""
    instance, home, store = env
    materialize([base_policy], instance=instance, resources=resources(home),
                run_config={"ops": {"base_policy": {"config": {**TINY, "references": 5}}}})
    base = store.latest_checkpoint("policy", base_only=True)
    version = store.prompt_set_head("arith-train")
    with store.transaction() as con:  # a policy fine-tuned from it, as RFT records one
        store.insert(con, "checkpoints", [{**base, "checkpoint_id": "ck_child", "base": base["checkpoint_id"],
                                           "trained_on_prompt_set": None,
                                           "config": {"trainer": "rft", "template": "{problem}\n"}}])
    assert store.learned_solutions("ck_child") == store.learned_solutions(base["checkpoint_id"]) == (
        f"arith-train@{version}", 5)
    assert [store.learned_solutions(c["checkpoint_id"]) for c in store.records(
        "SELECT checkpoint_id FROM checkpoints WHERE (config->>'references') IS NULL AND base IS NULL")] == [None]

    def warnings(result):  # what the run's log says at warning level
        return [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]

    inside = rollouts(env, {"max_problems": 3, "policy_checkpoint": "ck_child"}, partition="arith-train")
    assert any(f"3 of the 3 problems searched are among the first 5 of arith-train@{version}, whose written "
               "solutions policy ck_child (or its base) learned by heart" in m and "set skip_problems to 6" in m
               for m in warnings(inside))
    past = rollouts(env, {"max_problems": 3, "skip_problems": 6}, partition="arith-train")
    assert not [m for m in warnings(past) if "learned by heart" in m]
    assert not [m for m in warnings(rollouts(env)) if "learned by heart" in m]  # another prompt set


def test_sharded_rollouts_make_the_serial_runs_trees_and_each_shard_resumes_on_its_own(env, seeded_home, tmp_path):
    _, _, store = env
    sharded = rollouts(env, {"shards": 2})
    meta = metadata(sharded)
    steps = {e.step_key for e in sharded.all_events if e.is_step_success}
    assert {"tot_rollouts.search_rollout_shard[shard_0]", "tot_rollouts.search_rollout_shard[shard_1]"} <= steps
    assert meta["shards"] == 2 and meta["batches_searched"] == 3 and meta["trees"] == 7
    [check] = sharded.get_asset_check_evaluations()
    assert check.passed
    assert store.records("SELECT status FROM runs WHERE asset_key = 'tot_rollouts'") == [{"status": "success"}]

    serial_env = copied_env(seeded_home, tmp_path / "serial")
    serial = metadata(rollouts(serial_env))
    query = "SELECT node_id, tree_id, parent_id, text, is_terminal, is_correct FROM nodes ORDER BY node_id"
    assert serial["rollout_id"] == meta["rollout_id"] and serial["shards"] == 1
    assert store.records(query) == serial_env[2].records(query)  # the same trees, node for node
    logprobs = "SELECT logprob FROM nodes WHERE logprob IS NOT NULL ORDER BY node_id"
    # (a model instance of its own per shard: the same samples, log-probabilities to float noise)
    assert [r[0] for r in store.query(logprobs)[1]] == pytest.approx(
        [r[0] for r in serial_env[2].query(logprobs)[1]], rel=1e-6)

    # more shards than batches: one shard per batch, none empty
    assert metadata(rollouts(env, {"shards": 9}))["shards"] == 3
    with pytest.raises(Exception, match="shards must be >= 1"):
        rollouts(env, {"shards": 0})

    # a shard written before (a run that died after it): the re-run searches only the rest
    half = copied_env(seeded_home, tmp_path / "half")
    run_rollout_shard_only(half, shard=1, of=2)
    again = metadata(rollouts(half, {"shards": 2}))
    assert again["batches_in_store_before"] == 1 and again["batches_searched"] == 2
    assert half[2].records(query) == serial_env[2].records(query)


def run_rollout_shard_only(env, shard: int, of: int) -> None:
    """Write what shard `shard` of `of` would, through the core, as a run that died after it."""
    _, _, store = env
    policy = store.checkpoint(None, "policy")
    version, problems = store.prompt_set_problems("arith-test")
    config = RolloutsConfig(**ROLLOUTS)
    plan = plan_rollout("arith-test", version, problems[: config.max_problems], policy["checkpoint_id"],
                        config.spec(), config.batch_size)
    mine = replace(plan, batches=tuple(b for b in plan.batches if b.index % of == shard))
    run_rollout(store, mine, lambda: TransformersGenerator(policy["path"]))


def _rollouts_job():
    """tot_rollouts as a job over $QSTAR_TEST_HOME, reconstructable (re-execution loads it again)."""
    import os
    from pathlib import Path

    from dagster import Definitions, define_asset_job, in_process_executor

    home = Path(os.environ["QSTAR_TEST_HOME"])
    return Definitions(assets=[tot_rollouts], asset_checks=[trees_sound], resources=resources(home),
                       jobs=[define_asset_job("rollouts", selection=[tot_rollouts], partitions_def=prompt_set_partitions)],
                       executor=in_process_executor).resolve_job_def("rollouts")


def test_a_run_re_executed_from_its_failure_is_recorded_and_finishes_the_rollout(env, tmp_path, monkeypatch):
    """Re-executing a failed sharded run runs only the failed shard and the record step; the
    plan step that records the run is not among them, so the later steps record it."""
    import os

    from dagster import ReexecutionOptions, execute_job, reconstructable

    _, home, store = env
    monkeypatch.setenv("QSTAR_TEST_HOME", str(home))
    (tmp_path / "instance").mkdir()
    instance = DagsterInstance.local_temp(str(tmp_path / "instance"))
    instance.add_dynamic_partitions(prompt_set_partitions.name, ["arith-test"])
    weights = store.checkpoint(None, "policy")["path"] + "/model.safetensors"
    moved = tmp_path / "model.safetensors"
    os.replace(weights, moved)  # the shards cannot load the policy; the plan step does not load it
    run_config = {"ops": {"tot_rollouts": {"config": {**ROLLOUTS, "shards": 2}}}}
    job = reconstructable(_rollouts_job)
    with execute_job(job, instance, run_config=run_config, tags={"dagster/partition": "arith-test"}) as first:
        assert not first.success
    os.replace(moved, weights)
    with execute_job(job, instance, tags={"dagster/partition": "arith-test"},
                     reexecution_options=ReexecutionOptions.from_failure(first.run_id, instance)) as second:
        failures = [e.step_failure_data.error.to_string() for e in second.all_events if e.is_step_failure]
        assert second.success, failures
        ran = {e.step_key for e in second.all_events if e.is_step_success}
    assert "tot_rollouts.plan_rollout_shards" not in ran and "tot_rollouts.record_rollout" in ran
    runs = {r["run_id"]: r["status"] for r in store.records("SELECT run_id, status FROM runs WHERE asset_key = 'tot_rollouts'")}
    assert runs == {first.run_id: "failure", second.run_id: "success"}
    assert store.records("SELECT count(*) AS n FROM trees")[0]["n"] == ROLLOUTS["max_problems"]
