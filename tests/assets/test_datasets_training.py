"""Datasets from labeled rollouts and the checkpoints trained on them, in a real Dagster
instance over a real DuckDB store with a trained policy."""

import json
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize
from safetensors.torch import load_file

from qstar_dagster.assets.datasets import step_datasets
from qstar_dagster.assets.labels import mc_labels, oracle_labels
from qstar_dagster.assets.policy import base_policy
from qstar_dagster.assets.prompts import prompt_set_partitions
from qstar_dagster.assets.rollouts import tot_rollouts
from qstar_dagster.assets.training import dpo_policy, prm_model, rft_policy, step_ppo_policy
from qstar_dagster.datasets.build import STEP_TAG
from qstar_dagster.generation.base import SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.generation.openai_http import OpenAICompatibleGenerator
from qstar_dagster.lineage import LineageStore
from qstar_dagster.tasks.arith import generate_problems
from qstar_dagster.training.prm import PRMScorer

from ..conftest import EASY_ARITH, copied_env, serve_model
from .test_labels import ROLLOUTS, metadata, resources


def run(env, asset, config=None, partition="arith-train"):
    instance, home, _ = env
    return materialize([asset], instance=instance, resources=resources(home),
                       partition_key=partition if asset.partitions_def else None,
                       run_config={"ops": {asset.node_def.name: {"config": config or {}}}})


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory, arith_policy_dir):
    """Easy prompt sets, the trained test policy, rollouts on both sets, Monte Carlo labels
    on the training set and oracle labels on both."""
    home = tmp_path_factory.mktemp("datasets") / "qstar"
    home.mkdir(parents=True)
    store = LineageStore(home / "lineage.duckdb")
    with store.transaction() as con:
        store.write_prompt_set(con, "arith-test", "test", generate_problems(12, seed=21, spec=EASY_ARITH), None)
        store.write_prompt_set(con, "arith-train", "test", generate_problems(40, seed=22, spec=EASY_ARITH), None)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(prompt_set_partitions.name, ["arith-test", "arith-train"])
    env = (instance, home, store)
    run(env, base_policy, {"model_path": str(arith_policy_dir), "eval_k": 2, "eval_max_new_tokens": 32})
    for key in ("arith-test", "arith-train"):
        run(env, tot_rollouts, ROLLOUTS, key)
        run(env, oracle_labels, None, key)
    run(env, mc_labels, {"n": 4, "max_new_tokens": 32, "methods": ["mc"]})
    return home


@pytest.fixture
def env(seeded_home, tmp_path):
    return copied_env(seeded_home, tmp_path)


def rows_of(store, dataset_id):
    [d] = store.records("SELECT * FROM datasets WHERE dataset_id = ?", [dataset_id])
    return d, [json.loads(x) for x in Path(d["path"]).read_text().splitlines()]


def test_datasets_trace_to_nodes_and_labels_and_load_with_datasets(env):
    from datasets import load_dataset

    _, _, store = env
    meta = metadata(run(env, step_datasets, {"labeler": "mc"}), "step_datasets")
    hard = {r["node_id"]: r["value"] > 0.5 for r in store.records(
        "SELECT node_id, value FROM step_labels WHERE labeler = 'mc' AND kind = 'hard'")}
    nodes = {r["node_id"]: r for r in store.records("SELECT * FROM nodes")}

    d, rft = rows_of(store, meta["rft_dataset_id"])
    assert rft and d["n_rows"] == len(rft)
    per_problem = {}
    for r in rft:
        leaf = nodes[r["node_ids"][-1]]
        assert leaf["is_correct"] and r["completion"].endswith(leaf["text"])
        per_problem.setdefault(r["prompt_id"], []).append(r["completion"])
    assert all(len(v) == len(set(v)) <= 4 for v in per_problem.values())  # deduplicated, capped

    d_prm, prm = rows_of(store, meta["prm_dataset_id"])
    for r in prm:
        assert r["labels"] == [hard[n] for n in r["node_ids"]]
        assert r["completions"] == [nodes[n]["text"] for n in r["node_ids"]]
        assert all(0 <= s <= 1 for s in r["soft_labels"])
    shepherd_file = Path(json.loads(d_prm["spec"])["files"]["math_shepherd"])
    shepherd = [json.loads(x) for x in shepherd_file.read_text().splitlines()]
    assert shepherd[0]["input"].count(STEP_TAG) == len(prm[0]["completions"])
    assert shepherd[0]["label"].count(" +") + shepherd[0]["label"].count(" -") >= len(prm[0]["completions"])

    _, step_pairs = rows_of(store, meta["step_pairs_dataset_id"])
    assert step_pairs
    def ended(n):  # the policy ended its solution with this step (not a budget)
        stats = n["stats"] if isinstance(n["stats"], dict) else json.loads(n["stats"] or "{}")
        return n["is_terminal"] and not stats.get("truncated", False)

    for r in step_pairs:
        [c], [x] = r["chosen_ids"], r["rejected_ids"]
        assert hard[c] and not hard[x] and nodes[c]["parent_id"] == nodes[x]["parent_id"]
        assert r["prompt"].endswith("\n")
        for side, n in (("chosen", nodes[c]), ("rejected", nodes[x])):  # a last step ends bare
            assert r[side] == n["text"] + ("" if ended(n) else "\n")

    _, pairs = rows_of(store, meta["pairs_dataset_id"])
    for r in pairs:
        assert nodes[r["chosen_ids"][-1]]["is_correct"] and not nodes[r["rejected_ids"][-1]]["is_correct"]

    members = store.records("SELECT role, count(*) AS n FROM dataset_members WHERE dataset_id = ? GROUP BY 1",
                            [meta["step_pairs_dataset_id"]])
    assert {m["role"]: m["n"] for m in members} == {"chosen": len(step_pairs), "rejected": len(step_pairs)}
    for kind in ("rft", "prm", "step_pairs", "pairs"):
        path = str(meta[f"{kind}_path"])
        if not meta[f"{kind}_rows"]:  # datasets 5 refuses an empty file; the export is one all the same
            assert Path(path).read_text() == ""
            continue
        assert len(load_dataset("json", data_files=path, split="train")) == meta[f"{kind}_rows"]
        assert len(load_dataset("parquet", data_files=path.replace(".jsonl", ".parquet"), split="train")) == \
            meta[f"{kind}_rows"]

    # Unchanged inputs: the same datasets, nothing new recorded.
    before = store.query("SELECT count(*) FROM datasets")[1][0][0]
    again = metadata(run(env, step_datasets, {"labeler": "mc"}), "step_datasets")
    assert again["prm_dataset_id"] == meta["prm_dataset_id"]
    assert store.query("SELECT count(*) FROM datasets")[1][0][0] == before


def test_a_prm_trained_on_oracle_labels_beats_chance_on_held_out_steps(env):
    _, _, store = env
    run(env, step_datasets, {"labeler": "oracle", "kinds": ["prm"]})
    meta = metadata(run(env, prm_model, {"labeler": "oracle"}), "prm_model")  # the default design
    # it ranks held-out right steps above wrong ones, and it is no worse than calling every step right
    # (most steps of this policy's rollouts are right, so accuracy alone says little)
    assert meta["step_auc"] >= 0.75 and meta["step_accuracy"] >= meta["chance_accuracy"], meta
    [ck] = store.records("SELECT * FROM checkpoints WHERE kind = 'prm'")
    scorer = PRMScorer(ck["path"])
    [problem] = generate_problems(1, seed=99, spec=EASY_ARITH)
    steps = problem.reference_solution.split("\n")
    scores = scorer.score_steps(problem.problem, steps)
    assert len(scores) == len(steps) and all(0 <= s <= 1 for s in scores)
    # checkpoint -> dataset -> labels -> nodes -> ... -> prompt, and -> the policy it started from
    edges = {(e.child_kind, e.relation, e.parent_kind) for e in store.lineage(ck["checkpoint_id"])}
    for edge in [("checkpoint", "trained_on", "dataset"), ("dataset", "labeled_by", "step_label"),
                 ("step_label", "labels", "node"), ("node", "root_of", "tree"), ("tree", "searches", "prompt"),
                 ("tree", "sampled_by", "checkpoint"), ("checkpoint", "fine_tuned_from", "checkpoint")]:
        assert edge in edges, edge


def test_the_prm_reads_steps_with_the_shipped_verifier_where_one_fits(env, tiny_model_dir, tmp_path, monkeypatch):
    """backbone auto: the verifier shipped for the training prompt set (here a stand-in, shipped
    for this store's arith-train) is the LM the PRM reads steps with, and part of its identity;
    a verifier for another version of the set is passed over (auto) or refused (verifier)."""
    from qstar_dagster.training import shipped

    _, _, store = env
    run(env, step_datasets, {"labeler": "oracle", "kinds": ["prm"]})
    version, _ = store.prompt_set_problems("arith-train")
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", tmp_path / "policies")

    def ship(train_version):
        return shipped.write_shipped(tiny_model_dir, tmp_path / "policies" / "arith-verifier", domain="arith",
                                     train_prompt_set="arith-train", train_version=train_version,
                                     config={"architecture": "char-llama"}, metrics={}, trained_by="a test",
                                     role="verifier")

    def weights(checkpoint_id):
        [ck] = store.records("SELECT * FROM checkpoints WHERE checkpoint_id = ?", [checkpoint_id])
        return ck, load_file(f"{ck['path']}/model.safetensors")

    ship("another-version")
    own = metadata(run(env, prm_model, {"labeler": "oracle"}), "prm_model")["checkpoint_id"]
    ck, own_weights = weights(own)
    _, policy_weights = weights(ck["base"])
    assert all((own_weights[k] == policy_weights[k]).all() for k in policy_weights)  # no verifier fits: the policy
    with pytest.raises(Exception, match="rebuild it with"):
        run(env, prm_model, {"labeler": "oracle", "backbone": "verifier"})

    verifier = ship(version)
    read = metadata(run(env, prm_model, {"labeler": "oracle"}), "prm_model")
    ck, read_weights = weights(read["checkpoint_id"])
    assert read["checkpoint_id"] != own and read["backbone"] == str(verifier.path)
    shipped_weights = load_file(f"{verifier.path}/model.safetensors")
    assert read_weights.keys() == shipped_weights.keys()
    assert all((read_weights[k] == shipped_weights[k]).all() for k in shipped_weights)
    assert json.loads(ck["config"])["backbone"] == {"verifier": "arith",
                                                    "sha256": verifier.files["model.safetensors"]}
    # still the PRM of the policy whose samples it judges: the report and step-PPO find it from that policy
    assert ck["base"] == weights(own)[0]["base"]
    assert metadata(run(env, prm_model, {"labeler": "oracle", "backbone": "policy"}), "prm_model")[
        "checkpoint_id"] == own


@pytest.mark.parametrize("asset, config", [(rft_policy, {"steps": 30}), (dpo_policy, {"steps": 8, "lr": 1e-4})])
def test_rft_and_dpo_change_the_policy_and_keep_it_loadable(env, asset, config):
    _, _, store = env
    run(env, step_datasets, {"labeler": "mc"})
    meta = metadata(run(env, asset, config), asset.node_def.name)
    [new] = store.records("SELECT * FROM checkpoints WHERE checkpoint_id = ?", [meta["checkpoint_id"]])
    [base] = store.records("SELECT * FROM checkpoints WHERE checkpoint_id = ?", [new["base"]])
    before, after = load_file(f"{base['path']}/model.safetensors"), load_file(f"{new['path']}/model.safetensors")
    assert before.keys() == after.keys() and any(not (before[k] == after[k]).all() for k in before)
    assert 0 <= meta["greedy"] <= 1 and meta["final_loss"] is not None
    config = json.loads((Path(new["path"]) / "generation_config.json").read_text())
    assert config["eos_token_id"] == json.loads((Path(base["path"]) / "generation_config.json").read_text())[
        "eos_token_id"]  # a trainer's stand-in end of sequence must not leak into the checkpoint
    prompt, params = ["Compute left to right: 1 + 2 - 3\n"], SamplingParams(max_new_tokens=16, temperature=0)
    local = TransformersGenerator(new["path"]).generate(prompt, params)
    assert local[0][0].n_tokens > 0
    for url in serve_model(new["path"], "trained"):  # the OpenAI-compatible path serves it as it is
        served = OpenAICompatibleGenerator(f"{url}/v1", "trained").generate(prompt, params)
    assert served[0][0].text == local[0][0].text


def test_step_ppo_learns_from_the_prm_and_walks_back_to_it(env):
    from qstar_dagster.lineage.artifacts import latest_base_policy_id

    _, _, store = env
    with pytest.raises(Exception, match="needs a PRM trained from"):
        run(env, step_ppo_policy, {"iterations": 1})
    run(env, step_datasets, {"labeler": "mc", "kinds": ["prm"]})
    prm = metadata(run(env, prm_model, {}), "prm_model")["checkpoint_id"]
    config = {"iterations": 2, "problems_per_iteration": 4, "group_size": 2, "max_new_tokens": 32, "lr": 1e-4,
              "eval_every": 1, "curve_problems": 4}
    meta = metadata(run(env, step_ppo_policy, config), "step_ppo_policy")
    assert meta["reward_checkpoint"] == prm and not meta["reused"]
    assert meta["curves"].startswith("![") and 0 <= meta["greedy"] <= 1 and meta["final_kl"] >= 0
    [new] = store.records("SELECT * FROM checkpoints WHERE checkpoint_id = ?", [meta["checkpoint_id"]])
    assert new["kind"] == "policy" and new["trained_on_prompt_set"].startswith("arith-train@")
    before, after = (load_file(f"{p}/model.safetensors") for p in (store.checkpoint(new["base"])["path"], new["path"]))
    assert any(not (before[k] == after[k]).all() for k in before)
    # it is no base policy: the stages that default to the base policy still find the base
    assert store.checkpoint(None, "policy")["checkpoint_id"] == new["base"] == latest_base_policy_id(store)
    edges = {(r["relation"], r["parent_id"]) for r in store.records(
        "SELECT relation, parent_id FROM lineage_edges WHERE child_id = ?", [new["checkpoint_id"]])}
    assert {("rewarded_by", prm), ("fine_tuned_from", new["base"])} <= edges
    rounds = {r["id"]: r["round"] for r in store.records("SELECT * FROM rounds")}
    assert rounds[new["checkpoint_id"]] == 1 and rounds[new["base"]] == 0
    # the same inputs again train nothing
    n = store.query("SELECT count(*) FROM checkpoints")[1][0][0]
    assert metadata(run(env, step_ppo_policy, config), "step_ppo_policy")["reused"]
    assert store.query("SELECT count(*) FROM checkpoints")[1][0][0] == n


def test_evaluation_records_every_policy_with_every_prm_and_report_reads_it(env, monkeypatch):
    from click.testing import CliRunner

    from qstar_dagster.assets.evaluation import evaluation
    from qstar_dagster.cli import main

    _, home, store = env
    run(env, step_datasets, {"labeler": "mc"})
    run(env, prm_model, {"steps": 40})
    run(env, rft_policy, {"steps": 20})
    ppo = metadata(run(env, step_ppo_policy, {"iterations": 1, "problems_per_iteration": 4, "group_size": 2,
                                              "max_new_tokens": 32}), "step_ppo_policy")["checkpoint_id"]
    meta = metadata(run(env, evaluation, {"ns": [1, 2, 4], "max_new_tokens": 32}), "evaluation")
    assert meta["policies"] == 3 and meta["prms"] == 1
    rows = store.records("SELECT checkpoint_ids, method, accuracy FROM evaluations WHERE (details->>'stage') = 'evaluation'")
    methods = {(len(r["checkpoint_ids"]), r["method"]) for r in rows}
    assert {(1, "greedy"), (1, "pass@4"), (1, "majority@2"), (2, "prm_best_of_4:min"), (2, "prm_best_of_2:prod"),
            (2, "prm_vote@4"), (1, "prm_first_error_f1")} <= methods
    by = {(tuple(r["checkpoint_ids"]), r["method"]): r["accuracy"] for r in rows}
    for ids in {k for k, _ in by if len(k) == 1 and by.get((k, "pass@1")) is not None}:
        assert by[(ids, "pass@1")] <= by[(ids, "pass@2")] <= by[(ids, "pass@4")]
        assert by[(ids, "majority@1")] == by[(ids, "pass@1")]  # one sample: its answer is the majority
        assert by[(ids, "random@1")] == by[(ids, "pass@1")] and by[(ids, "random@4")] <= by[(ids, "pass@4")]
    assert meta["accuracy_vs_n"].startswith("![")

    before = store.query("SELECT count(*) FROM evaluations")[1][0][0]
    run(env, evaluation, {"ns": [1, 2, 4], "max_new_tokens": 32})
    assert store.query("SELECT count(*) FROM evaluations")[1][0][0] == before  # nothing new to evaluate

    # the test set searched again from the base policy, valued by the PRM
    guided = metadata(run(env, tot_rollouts, {**ROLLOUTS, "value": "prm"}, "arith-test"), "tot_rollouts")
    monkeypatch.setenv("QSTAR_HOME", str(home))
    result = CliRunner().invoke(main, ["report", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    liked = store.records("SELECT avg(CASE WHEN selected_correct THEN 1.0 ELSE 0.0 END) AS a FROM trees "
                          "WHERE prompt_set = 'arith-test' AND value_function = 'likelihood'")[0]["a"]
    assert figures["search_likelihood"] == liked and figures["search_prm"] == guided["selected_accuracy"]
    assert figures["search_prm_nodes_per_tree"] > 1 and figures["base_random_sample"] is None  # ns stop at 4
    assert figures["base_greedy"] == by[((figures["base_checkpoint"],), "greedy")]
    assert figures["round1_checkpoint"] and figures["round1_greedy"] is not None
    assert "base_majority_at_8" in figures and "label_agreement" in figures
    assert figures["round1_step_ppo_checkpoint"] == ppo and figures["round1_step_ppo_greedy"] is not None
    assert "round1_step_ppo_pass_at_8" in figures and "round1_step_ppo_majority_at_8" in figures
    text = CliRunner().invoke(main, ["report"]).output
    assert "round 1 (RFT)" in text and "round 1 (step-PPO)" in text


def test_two_expert_iteration_rounds_chain_policy_and_prm(env):
    from dagster import DagsterEventType, RunsFilter

    from qstar_dagster.definitions import make_definitions
    from qstar_dagster.rounds import (
        ROUND_ASSETS,
        ROUND_JOB,
        ROUND_TAG,
        RoundSpec,
        round_policy,
        run_round,
    )

    instance, home, store = env
    job = make_definitions(str(home)).resolve_job_def(ROUND_JOB)
    small = {"rollouts": ROLLOUTS, "labels": {"n": 4, "max_new_tokens": 32}, "train_problems": 40,
             "training": {"prm_model": {"steps": 20}, "rft_policy": {"steps": 10}, "dpo_policy": {"steps": 4},
                          "step_ppo_policy": {"iterations": 1, "problems_per_iteration": 4, "group_size": 2,
                                              "max_new_tokens": 32}},
             "evaluation": {"ns": [1, 2], "max_new_tokens": 32}}
    one = run_round(store, job, instance, RoundSpec(round=1, **small), log_level="WARNING")
    # the round is one ordinary run of the round job: tagged, partitioned, materializing every stage
    [run] = instance.get_runs(RunsFilter(tags={ROUND_TAG: "1"}))
    assert run.run_id == one["run_id"] and run.job_name == ROUND_JOB and run.tags["dagster/partition"] == "arith-train"
    made = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    assert {(r.asset_key.to_user_string(), r.partition_key) for r in made} == {(a, "arith-train") for a in ROUND_ASSETS}
    base, _ = round_policy(store, 0)
    assert one["policy"] == base and one["prm"] is None
    policy1, prm1 = round_policy(store, 1)
    assert policy1 == one["rft_policy"]["checkpoint_id"] and prm1 == one["prm_model"]["checkpoint_id"]
    # the round labels its rollout with its labeler only (Monte Carlo by default), and the PRM learns those labels
    labelers = store.records("SELECT DISTINCT l.labeler FROM step_labels l JOIN nodes n USING (node_id) "
                             "JOIN trees t USING (tree_id) WHERE t.rollout_id = ? AND l.labeler IN ('mc', "
                             "'binary_search')", [one["rollouts"]["rollout_id"]])
    assert labelers == [{"labeler": "mc"}]
    [prm_data] = store.records("SELECT (d.spec->>'labeler') AS labeler FROM checkpoints c JOIN datasets d "
                               "ON d.dataset_id = c.trained_on_dataset WHERE c.checkpoint_id = ?", [prm1])
    assert prm_data == {"labeler": "mc"}
    with pytest.raises(ValueError, match="mc or binary_search"):
        RoundSpec(round=1, labeler="judge")
    with pytest.raises(ValueError, match="keyed by prm_model"):
        RoundSpec(round=1, training={"prm": {"steps": 1}})

    two = run_round(store, job, instance, RoundSpec(round=2, **small), log_level="WARNING")
    assert (two["policy"], two["prm"]) == (policy1, prm1)
    assert two["rollouts"]["value_function"] == f"prm:{prm1}"  # round 2 searches with round 1's PRM
    [tree] = store.records("SELECT DISTINCT policy_checkpoint, value_function FROM trees WHERE rollout_id = ?",
                           [two["rollouts"]["rollout_id"]])
    assert tree == {"policy_checkpoint": policy1, "value_function": f"prm:{prm1}"}
    rounds = {(r["kind"], r["id"]): r["round"] for r in store.records("SELECT * FROM rounds")}
    assert rounds[("policy", base)] == 0 and rounds[("policy", policy1)] == 1 and rounds[("prm", prm1)] == 1
    assert rounds[("policy", two["rft_policy"]["checkpoint_id"])] == 2
    assert rounds[("rollout", one["rollouts"]["rollout_id"])] == 1 and rounds[("rollout", two["rollouts"]["rollout_id"])] == 2
    assert rounds[("dataset:rft", two["datasets"]["rft_dataset_id"])] == 2
    with pytest.raises(LookupError, match="run round 3 first"):
        run_round(store, job, instance, RoundSpec(round=4, **small))


def test_step_dpo_learns_the_pairs_of_its_labeler_not_the_latest_ones(env):
    mc = metadata(run(env, step_datasets, {"labeler": "mc", "kinds": ["step_pairs"]}), "step_datasets")
    oracle = metadata(run(env, step_datasets, {"labeler": "oracle", "kinds": ["step_pairs"]}), "step_datasets")
    assert mc["step_pairs_dataset_id"] != oracle["step_pairs_dataset_id"]  # the oracle's pairs are the latest
    for labeler, built in (("mc", mc), ("oracle", oracle)):
        meta = metadata(run(env, dpo_policy, {"labeler": labeler, "steps": 1}), "dpo_policy")
        assert meta["trained_on_dataset"] == built["step_pairs_dataset_id"]
    with pytest.raises(LookupError, match="from judge labels"):
        run(env, dpo_policy, {"labeler": "judge", "steps": 1})


def test_a_stage_works_on_the_rollout_its_partition_last_made_even_when_that_one_was_reused(env):
    # rollout A, then B (the store's latest), then A again: A's rows are reused, not rewritten,
    # so only the instance's materialization says the partition's rollout is A now
    a = metadata(run(env, tot_rollouts, ROLLOUTS), "tot_rollouts")["rollout_id"]
    b = metadata(run(env, tot_rollouts, {**ROLLOUTS, "k": 1, "max_problems": 4}), "tot_rollouts")["rollout_id"]
    again = metadata(run(env, tot_rollouts, ROLLOUTS), "tot_rollouts")
    assert again["rollout_id"] == a != b and again["batches_searched"] == 0
    assert metadata(run(env, oracle_labels), "oracle_labels")["rollout_id"] == a
    built = metadata(run(env, step_datasets, {"labeler": "oracle", "kinds": ["prm"]}), "step_datasets")
    assert built["rollout_id"] == a
    assert metadata(run(env, prm_model, {"labeler": "oracle", "steps": 1}), "prm_model")["trained_on_dataset"] == \
        built["prm_dataset_id"]
