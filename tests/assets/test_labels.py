"""The label assets in a real Dagster instance over a real DuckDB store: Monte Carlo and
binary-search labels from a trained policy, the built-in judge trained and used, the judge
behind a real OpenAI-compatible HTTP server, oracle, consensus and agreement."""

import shutil

import pytest
from dagster import DagsterInstance, materialize

from qstar_dagster.assets.labels import (
    consensus_labels,
    judge_labels,
    judge_model,
    label_agreement,
    mc_labels,
    oracle_labels,
)
from qstar_dagster.assets.policy import base_policy
from qstar_dagster.assets.prompts import prompt_set_partitions
from qstar_dagster.assets.rollouts import tot_rollouts
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.labeling import pipeline
from qstar_dagster.lineage import LineageStore
from qstar_dagster.lineage.rollouts import resolve_rollout
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.resources.compute import ComputeResource
from qstar_dagster.resources.judge import JudgeResource
from qstar_dagster.search.estimate import EstimatorSpec
from qstar_dagster.tasks.arith import generate_problems

from ..conftest import EASY_ARITH, copied_env, serve_model

ROLLOUTS = {"algorithm": "beam", "k": 2, "beam_width": 2, "step_max_tokens": 16, "max_depth": 4, "batch_size": 4}
MC = {"n": 4, "max_new_tokens": 32, "batch_trees": 3}
JUDGE = {"steps": 200, "batch_size": 8, "lr": 3e-3, "warmup": 10, "holdout": 8}


def resources(home, judge=None):
    return {"data_dir": DataDirResource(path=str(home)), "store": LineageStoreResource(path=str(home / "lineage.duckdb")),
            "compute": ComputeResource(device="cpu"), "judge": judge or JudgeResource()}


def run(env, asset, config=None, partition="arith-test", judge=None, raise_on_error=True):
    instance, home, _ = env
    return materialize([asset], instance=instance, resources=resources(home, judge), raise_on_error=raise_on_error,
                       partition_key=partition if asset.partitions_def else None,
                       run_config={"ops": {asset.node_def.name: {"config": config or {}}}})


def metadata(result, name):
    [mat] = result.asset_materializations_for_node(name)
    return {k: v.value for k, v in mat.metadata.items()}


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory, arith_policy_dir):
    """Easy built-in-domain prompt sets, the trained test policy as the base policy, rollouts
    on both sets, and the built-in judge trained on the training set's rollouts."""
    home = tmp_path_factory.mktemp("labels") / "qstar"
    home.mkdir(parents=True)
    store = LineageStore(home / "lineage.duckdb")
    with store.transaction() as con:
        store.write_prompt_set(con, "arith-test", "test", generate_problems(6, seed=11, spec=EASY_ARITH), None)
        store.write_prompt_set(con, "arith-train", "test", generate_problems(24, seed=12, spec=EASY_ARITH), None)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(prompt_set_partitions.name, ["arith-test", "arith-train"])
    env = (instance, home, store)
    run(env, base_policy, {"model_path": str(arith_policy_dir), "eval_k": 2, "eval_max_new_tokens": 32})
    run(env, tot_rollouts, ROLLOUTS)
    run(env, tot_rollouts, ROLLOUTS, partition="arith-train")
    run(env, judge_model, JUDGE)
    return home


@pytest.fixture
def env(seeded_home, tmp_path):
    return copied_env(seeded_home, tmp_path)


def labels_of(store, labeler):
    return {(r["node_id"], r["kind"]): r for r in store.records(
        "SELECT * FROM step_labels WHERE labeler = ? ORDER BY node_id, kind", [labeler])}


def step_nodes(store, prompt_set="arith-test"):
    return {r["node_id"] for r in store.records(
        "SELECT node_id FROM nodes JOIN trees USING (tree_id) WHERE prompt_set = ? AND parent_id IS NOT NULL",
        [prompt_set])}


def test_every_labeler_writes_traceable_labels_and_agreement_compares_them(env):
    _, _, store = env
    meta = metadata(run(env, mc_labels, MC), "mc_labels")
    steps = step_nodes(store)
    mc = labels_of(store, "mc")
    assert {n for n, _ in mc} == steps and meta["mc_labeled_steps"] == len(steps)
    terminal = {r["node_id"] for r in store.records("SELECT node_id FROM nodes WHERE is_terminal")}
    for (node, kind), r in mc.items():
        n = 1 if node in terminal else 4  # a finished step is its own single rollout
        assert r["n_rollouts"] == n and 0 <= r["n_correct"] <= n
        assert r["value"] == (r["n_correct"] / n if kind == "soft" else float(r["n_correct"] > 0))
    assert 0 < meta["mc_positive_rate"] < 1, "a half-right policy gives both labels"
    assert sum(r["cost_tokens"] for r in mc.values()) == meta["mc_cost_tokens"] > 0
    bs = labels_of(store, "binary_search")
    assert 0 < len(bs) < len(steps) and {k for _, k in bs} == {"hard"}
    assert meta["label_distribution"].startswith("![")

    [judge_ck] = store.records("SELECT checkpoint_id, trained_on_dataset FROM checkpoints WHERE kind = 'judge'")
    jmeta = metadata(run(env, judge_labels), "judge_labels")
    judged = labels_of(store, "judge")
    assert jmeta["judge"] == judge_ck["checkpoint_id"] and judged
    assert {r["labeler_checkpoint"] for r in judged.values()} == {judge_ck["checkpoint_id"]}
    assert all(r["value"] in (-1.0, 0.0, 1.0) for (_, k), r in judged.items() if k == "rating")
    assert jmeta["unparsed"] == sum(k == "unparsed" for _, k in judged)
    # A judge label leads back to the judge, its training data, and the nodes it learned from.
    node = next(n for n, k in judged if k == "hard")
    edges = {(e.child_id, e.relation, e.parent_id) for e in store.lineage(f"{node}/judge/hard")}
    assert (f"{node}/judge/hard", "labeled_by", judge_ck["checkpoint_id"]) in edges
    assert (judge_ck["checkpoint_id"], "trained_on", judge_ck["trained_on_dataset"]) in edges
    assert any(c == judge_ck["trained_on_dataset"] and r == "contains" for c, r, _ in edges)

    run(env, oracle_labels)
    oracle = labels_of(store, "oracle")
    assert {n for n, _ in oracle} == steps and {k for _, k in oracle} == {"hard", "prefix"}

    run(env, consensus_labels)
    consensus = labels_of(store, "consensus")
    both = {n for n, k in mc if k == "hard"} & {n for n, k in judged if k == "hard"}
    agree = {n for n in both if mc[(n, "hard")]["value"] == judged[(n, "hard")]["value"]}
    assert {n for n, _ in consensus} == agree

    ameta = metadata(run(env, label_agreement), "label_agreement")
    rows = store.records("SELECT * FROM label_agreement")
    vs_oracle = {r["labeler"]: r for r in rows if r["reference"] == "oracle"}
    assert set(vs_oracle) == {"mc", "binary_search", "judge", "consensus"}
    assert ("judge", "mc") in {(r["labeler"], r["reference"]) for r in rows}
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and sum(map(sum, eval(r["confusion"]))) == r["n_steps"]
    assert ameta["mc_accuracy"] == pytest.approx(vs_oracle["mc"]["accuracy"], abs=1e-3)
    assert ameta["confusion_matrices"].startswith("![confusion")


def test_agreement_of_a_perfect_labeler_is_one_and_compares_only_up_to_the_first_error(env):
    _, _, store = env
    run(env, oracle_labels)
    rollout = resolve_rollout(store, "arith-test")
    oracle = labels_of(store, "oracle")
    # A labeler that copies the oracle's prefix-correct labels: what a perfect Monte Carlo
    # estimate would be. It disagrees with step-correct labels only after a first error,
    # which the comparison leaves out.
    with store.transaction() as con:
        store.insert(con, "step_labels", [{"node_id": n, "labeler": "perfect", "kind": "hard", "value": r["value"]}
                                          for (n, k), r in oracle.items() if k == "prefix"])
    rows = {r["labeler"]: r for r in pipeline.agreement_rows(store, rollout) if r["reference"] == "oracle"}
    assert rows["perfect"]["accuracy"] == 1.0 and rows["perfect"]["first_error_f1"] in (1.0, None)
    assert rows["perfect"]["n_steps"] < len(step_nodes(store))  # steps after a first error are out


def test_mc_labels_rerun_writes_nothing_and_a_killed_run_resumes_to_the_same_labels(env, tmp_path):
    _, home, store = env
    other = tmp_path / "other"
    shutil.copytree(home, other)
    rollout = resolve_rollout(store, "arith-test")
    policy = store.checkpoint(None, "policy")["path"]
    spec = EstimatorSpec(n=4, max_new_tokens=32)

    class Killed(Exception):
        pass

    def kill(done, total):
        raise Killed

    loads = []

    def load():
        loads.append(1)
        return TransformersGenerator(policy)

    with pytest.raises(Killed):
        pipeline.label_monte_carlo(store, rollout, load, spec, ["mc"], batch_trees=2, on_batch=kill)
    assert len({n for n, _ in labels_of(store, "mc")}) > 0
    resumed = pipeline.label_monte_carlo(store, rollout, load, spec, ["mc"], batch_trees=2)
    assert resumed[0].n_batches_run == resumed[0].n_batches - 1

    fresh = LineageStore(other / "lineage.duckdb")
    pipeline.label_monte_carlo(fresh, rollout, load, spec, ["mc"], batch_trees=2)
    strip = {"created_run"}
    assert [{k: v for k, v in r.items() if k not in strip} for r in labels_of(store, "mc").values()] == \
        [{k: v for k, v in r.items() if k not in strip} for r in labels_of(fresh, "mc").values()]

    loads.clear()
    again = pipeline.label_monte_carlo(store, rollout, load, spec, ["mc"], batch_trees=2)
    assert again[0].n_batches_run == 0 and not loads  # nothing to do: no model loaded


def test_mc_labels_refuse_to_mix_settings_unless_replacing(env):
    _, _, store = env
    run(env, mc_labels, {**MC, "methods": ["mc"]})
    result = run(env, mc_labels, {**MC, "methods": ["mc"], "n": 2}, raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert "replace: true" in error and "n_rollouts" in error
    run(env, mc_labels, {**MC, "methods": ["mc"], "n": 2, "replace": True})
    terminal = {r["node_id"] for r in store.records("SELECT node_id FROM nodes WHERE is_terminal")}
    assert {r["n_rollouts"] for (n, _), r in labels_of(store, "mc").items() if n not in terminal} == {2}


def test_sharded_monte_carlo_labels_are_the_serial_runs_and_the_check_reads_them(env, seeded_home, tmp_path):
    from qstar_dagster.assets.labels import mc_label_rates_sane

    instance, home, store = env
    config = {**MC, "batch_trees": 2, "shards": 2}  # 6 trees: 3 batches over 2 shards
    sharded = materialize([mc_labels, mc_label_rates_sane], instance=instance, resources=resources(home),
                          partition_key="arith-test", run_config={"ops": {"mc_labels": {"config": config}}})
    steps = {e.step_key for e in sharded.all_events if e.is_step_success}
    assert {"mc_labels.label_shard[shard_0]", "mc_labels.label_shard[shard_1]"} <= steps
    meta = metadata(sharded, "mc_labels")
    assert meta["shards"] == 2 and meta["batches_labeled"] == 2 * 3  # 3 batches for each of mc and binary_search
    [check] = sharded.get_asset_check_evaluations()
    assert check.check_name == "mc_label_rates_sane" and check.passed, check.description
    assert store.records("SELECT status FROM runs WHERE asset_key = 'mc_labels'") == [{"status": "success"}]

    serial_env = copied_env(seeded_home, tmp_path / "serial")
    run(serial_env, mc_labels, {**config, "shards": 1})
    for labeler in ("mc", "binary_search"):
        strip = {"created_run", "created_at"}
        assert [{k: v for k, v in r.items() if k not in strip} for r in labels_of(store, labeler).values()] == \
            [{k: v for k, v in r.items() if k not in strip} for r in labels_of(serial_env[2], labeler).values()]
    # the same again: every shard finds its batches done
    again = metadata(run(env, mc_labels, config), "mc_labels")
    assert again["batches_labeled"] == 0 and again["batches_in_store_before"] == 6
    with pytest.raises(Exception, match="shards must be >= 1"):
        run(env, mc_labels, {**config, "shards": 0})


def test_judge_over_an_openai_compatible_server_labels_like_the_local_judge(env):
    _, _, store = env
    [ck] = store.records("SELECT checkpoint_id, path FROM checkpoints WHERE kind = 'judge'")
    run(env, judge_labels)
    for url in serve_model(ck["path"], "judge-http"):
        remote = JudgeResource(backend="openai", base_url=f"{url}/v1", model="judge-http", mode="completions")
        meta = metadata(run(env, judge_labels, {"labeler": "judge_http"}, judge=remote), "judge_labels")
    assert meta["judge"] == "openai:judge-http"
    local, http = labels_of(store, "judge"), labels_of(store, "judge_http")
    assert {k: r["value"] for k, r in local.items()} == {k: r["value"] for k, r in http.items()}  # greedy: same
    assert {r["labeler_checkpoint"] for r in http.values()} == {"openai:judge-http"}


def test_unparseable_judge_answers_are_kept_raw_and_the_check_warns(env, server):
    _, _, store = env
    untrained = JudgeResource(backend="openai", base_url=f"{server}/v1", model="tiny", mode="completions")
    result = run(env, judge_labels, {"labeler": "babbler"}, judge=untrained)
    rows = labels_of(store, "babbler")
    unparsed = [r for (_, k), r in rows.items() if k == "unparsed"]
    assert unparsed and all(r["value"] is None and r["raw"] is not None for r in unparsed)
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "judge_unparsed_rate" and not check.passed
    assert check.severity.value == "WARN"


def test_judge_resource_errors_name_the_setting(env):
    _, _, store = env
    with pytest.raises(ValueError, match="judge.backend"):
        JudgeResource(backend="gpt").resolve(store)
    with pytest.raises(ValueError, match="judge.base_url"):
        JudgeResource(backend="openai", model="m").resolve(store)
    with pytest.raises(LookupError, match="not a judge checkpoint"):
        JudgeResource(model="ck_nope").resolve(store)
