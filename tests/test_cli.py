import json

import pytest
import yaml
from click.testing import CliRunner

from qstar_dagster.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QSTAR_HOME", str(tmp_path / "q"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "q" / "dagster"))
    return tmp_path / "q"


# A base policy small enough to train in seconds; the default one takes minutes.
TINY_POLICY = json.dumps({"shipped": False, "hidden": 32, "layers": 1, "heads": 2, "steps": 20, "batch_size": 8, "eval_every": 0,
                          "eval_k": 2, "eval_max_new_tokens": 40})
TINY_ROLLOUTS = json.dumps({"max_problems": 10, "k": 2, "beam_width": 2, "step_max_tokens": 24})
TINY_ROUND = json.dumps({"training": {"prm_model": {"steps": 2, "measure": False}, "rft_policy": {"steps": 2},
                                      "dpo_policy": {"steps": 1, "measure": False},
                                      "step_ppo_policy": {"iterations": 1, "problems_per_iteration": 2,
                                                          "group_size": 2, "max_new_tokens": 16}},
                         "evaluation": {"ns": [1, 2], "max_new_tokens": 16}})
DEMO = ["demo", "--domain", "arith", "--policy-config", TINY_POLICY, "--rollout-config", TINY_ROLLOUTS,
        "--label-config", json.dumps({"n": 2, "max_new_tokens": 16}), "--round-config", TINY_ROUND]
TINY_JUDGE = ["--judge-config", json.dumps({"steps": 3, "batch_size": 4})]


def test_demo_then_sql_and_lineage(home):
    runner = CliRunner()
    out = runner.invoke(main, DEMO)
    assert out.exit_code == 0, out.output
    # It ends with the base policy's metrics on the held-out set, then the rollouts'.
    assert "greedy" in out.output and "pass@2" in out.output and "majority@2" in out.output
    assert "on arith-test: beam (value likelihood), 10 trees" in out.output
    assert "on arith-test, PRM-guided: beam (value prm:ck_" in out.output and "by the PRM" in out.output
    assert "FROM label_agreement" in out.output and "summary (qstar report" in out.output
    assert (home / "lineage.duckdb").exists() and (home / "dagster" / "dagster.yaml").exists()
    assert "enabled: false" in (home / "dagster" / "dagster.yaml").read_text()

    out = runner.invoke(main, ["sql", "select prompt_set, count(*) as n from prompts group by 1 order by 1", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == [{"prompt_set": "arith-test", "n": 200}, {"prompt_set": "arith-train", "n": 60000}]

    table = runner.invoke(main, ["sql", "select prompt_set from prompts limit 1"])
    assert "prompt_set" in table.output and "arith-" in table.output

    query = "select prompt_id from prompts where prompt_set='arith-test' limit 1"
    pid = json.loads(runner.invoke(main, ["sql", query, "--json"]).output)[0]["prompt_id"]
    out = runner.invoke(main, ["lineage", pid])
    assert out.exit_code == 0, out.output
    assert f"{pid} (prompt)" in out.output and "member_of → arith-test@" in out.output
    assert "loaded_from → builtin:arith-test (source)" in out.output and "created_by →" in out.output

    # the demo is idempotent: a second run adds no prompt, tree, label, dataset or checkpoint, except
    # what its new option asks for: the judge is optional, so this run with it adds the judge and
    # its labels and relabels nothing else (this 3-step judge writes unparseable ratings, stored as
    # unparsed: so it has no agreement row)
    count = "select (select count(*) from prompt_texts) + (select count(*) from trees) + (select count(*) from " \
            "step_labels where labeler <> 'judge') + (select count(*) from datasets where kind <> 'judge_sft') + " \
            "(select count(*) from checkpoints where kind <> 'judge') as n"
    kinds = "select kind, count(*) as n from checkpoints group by 1 order by 1"
    assert {k["kind"] for k in json.loads(runner.invoke(main, ["sql", kinds, "--json"]).output)} == {"policy", "prm"}
    labelers = "select distinct labeler from label_agreement order by 1"
    assert [r["labeler"] for r in json.loads(runner.invoke(main, ["sql", labelers, "--json"]).output)] == \
        ["binary_search", "consensus", "mc"]
    before = runner.invoke(main, ["sql", count, "--json"]).output
    out = runner.invoke(main, DEMO + TINY_JUDGE)
    assert out.exit_code == 0, out.output
    assert "judge ck_" in out.output and runner.invoke(main, ["sql", count, "--json"]).output == before
    assert {k["kind"] for k in json.loads(runner.invoke(main, ["sql", kinds, "--json"]).output)} == \
        {"policy", "prm", "judge"}
    judged = json.loads(runner.invoke(main, ["sql", "select count(*) as n from step_labels where labeler = 'judge'",
                                             "--json"]).output)
    assert judged[0]["n"] > 0  # and the judge's training set: its one dataset
    assert json.loads(runner.invoke(main, ["sql", "select kind from datasets where kind = 'judge_sft'",
                                           "--json"]).output) == [{"kind": "judge_sft"}]
    # every demo ran round 1 as one run of the round job, which starts from the base policy
    from dagster import DagsterInstance, RunsFilter

    from qstar_dagster.rounds import ROUND_JOB, ROUND_TAG
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs(RunsFilter(tags={ROUND_TAG: "1"}))
    assert len(runs) == 2 and {(r.job_name, r.tags["dagster/partition"]) for r in runs} == {(ROUND_JOB, "arith-train")}
    out = runner.invoke(main, ["round", "--round", "1", "--print-config"])
    assert out.exit_code == 0, out.output
    config = yaml.safe_load(out.output)["ops"]
    query = "select checkpoint_id from checkpoints where kind = 'policy' and (config->>'trainer') is null"
    [base] = [r["checkpoint_id"] for r in json.loads(runner.invoke(main, ["sql", query, "--json"]).output)]
    assert config["tot_rollouts"]["config"]["policy_checkpoint"] == base == config["rft_policy"]["config"][
        "base_checkpoint"] and f"{ROUND_TAG}=1" in out.output and runs[0].tags["qstar/policy"] == base
    # --round-config overrides the round's stages (here: a window past the first 64 training problems)
    overrides = {"rollouts": {"skip_problems": 64}, "training": {"step_ppo_policy": {"iterations": 300}}}
    out = runner.invoke(main, ["round", "--round", "1", "--print-config", "--round-config", json.dumps(overrides)])
    assert out.exit_code == 0, out.output
    config = yaml.safe_load(out.output)["ops"]
    assert config["tot_rollouts"]["config"]["skip_problems"] == 64 and config["tot_rollouts"]["config"][
        "max_problems"] == 384 and config["step_ppo_policy"]["config"]["iterations"] == 300
    out = runner.invoke(main, ["round", "--round", "1", "--print-config", "--round-config", '{"trainin": {}}'])
    assert out.exit_code == 2 and "--round-config" in out.output and "'trainin'" in out.output
    # this tiny policy solves nothing, so round 1 made no RFT policy: round 1 run again with the demo's
    # config (nothing new to train) says so, and round 2 says what is missing
    out = runner.invoke(main, ["round", "--round", "1", "--labeler", "binary_search", "--round-config", json.dumps(
        {"rollouts": json.loads(TINY_ROLLOUTS), "labels": {"n": 2, "max_new_tokens": 16}, **json.loads(TINY_ROUND)})])
    assert out.exit_code == 0, out.output
    assert "round 1: policy none (dataset ds_" in out.output and "has no rows: nothing to learn from)" in out.output
    out = runner.invoke(main, ["round", "--round", "2", "--print-config"])
    assert out.exit_code == 1 and "round 1 has no RFT policy yet" in out.output
    trees = json.loads(runner.invoke(main, ["sql", "select prompt_set, count(*) as n from trees group by 1 order by 1",
                                            "--json"]).output)
    # `measure: false` (the PRM) skips a checkpoint's own look at the held-out set; the
    # rest measure it; the evaluation asset measures them all
    measured = "select json_extract_string(config, '$.trainer') as trainer, json_extract(metrics, '$.evaluation') " \
               "as e from checkpoints where kind = 'prm' or json_extract_string(config, '$.trainer') is not null"
    looks = {r["trainer"]: json.loads(r["e"]) for r in json.loads(runner.invoke(main, ["sql", measured, "--json"]).output)}
    assert looks["qstar.prm"] == {} and "greedy" in looks["step_ppo"]  # (no step pairs here: no DPO policy)
    # the test set twice: beam valued by likelihood, then by round 1's PRM
    assert trees == [{"prompt_set": "arith-test", "n": 20}, {"prompt_set": "arith-train", "n": 10}]
    assert runner.invoke(main, ["report", "--json"]).exit_code == 0
    leaf = json.loads(runner.invoke(main, ["sql", "select node_id from rollout_paths limit 1", "--json"]).output)
    out = runner.invoke(main, ["lineage", leaf[0]["node_id"]])
    assert out.exit_code == 0 and "root_of → t_" in out.output and "searches → p_" in out.output
    assert "sampled_by → ck_" in out.output and "member_of → arith-test@" in out.output


def test_demo_rejects_bad_config(home):
    out = CliRunner().invoke(main, ["demo", "--policy-config", "{steps: 3}"])
    assert out.exit_code != 0 and "--policy-config" in out.output and "not JSON" in out.output
    out = CliRunner().invoke(main, ["demo", "--rollout-config", "[1"])
    assert out.exit_code != 0 and "--rollout-config" in out.output and "not JSON" in out.output
    assert not (home / "lineage.duckdb").exists()  # refused before any work


def test_errors_are_clear(home):
    runner = CliRunner()
    out = runner.invoke(main, ["sql", "select 1"])
    assert out.exit_code != 0 and "no lineage store" in out.output and "make demo" in out.output
    runner.invoke(main, ["init"])
    out = runner.invoke(main, ["sql", "select * from no_such_table"])
    assert out.exit_code != 0 and "no_such_table" in out.output
    out = runner.invoke(main, ["sql", "delete from prompt_texts"])
    assert out.exit_code != 0 and "read-only" in out.output.lower()
    out = runner.invoke(main, ["lineage", "p_nothing"])
    assert out.exit_code != 0 and "no recorded lineage" in out.output


def test_ship_policy_rebuilds_a_shipped_policy_through_the_asset(home, tmp_path):
    """`qstar ship-policy` trains through base_policy and writes a policy the loader accepts:
    every file hashed in its manifest, trained on the built-in set's version."""
    from qstar_dagster.lineage.store import prompt_set_version
    from qstar_dagster.tasks.prompt_sets import builtin_problems
    from qstar_dagster.training import shipped

    dest = tmp_path / "policies" / "arith"
    tiny = json.dumps({"hidden": 32, "layers": 1, "heads": 2, "steps": 3, "batch_size": 4, "eval_every": 0,
                       "eval_k": 1, "eval_max_new_tokens": 8})
    out = CliRunner().invoke(main, ["ship-policy", "--domain", "arith", "--policy-config", tiny, "--dest", str(dest)])
    assert out.exit_code == 0, out.output
    assert f"to {dest}" in out.output and "commit that directory" in out.output
    [policy] = shipped.shipped_policies(dest.parent).values()
    shipped.verify(policy)
    assert policy.domain == "arith" and policy.config["hidden"] == 32 and policy.config["steps"] == 3
    assert policy.train_version == prompt_set_version(builtin_problems("arith-train"))
    assert "qstar ship-policy --domain arith --policy-config" in policy.manifest["trained_by"]
    assert set(policy.files) >= {"model.safetensors", "config.json", "tokenizer.json"}
