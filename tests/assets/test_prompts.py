import pytest
from dagster import AssetCheckSeverity, DagsterInstance, build_sensor_context, materialize

from qstar_dagster.assets.prompts import prompt_inbox_sensor, prompt_set, prompt_set_partitions
from qstar_dagster.lineage import LineageStore
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.tasks.loaders import ProblemFileError
from tests.conftest import GSM8K_ROWS, write_jsonl


@pytest.fixture
def env(tmp_path):
    instance = DagsterInstance.ephemeral()
    resources = {"data_dir": DataDirResource(path=str(tmp_path / "qstar")),
                 "store": LineageStoreResource(path=str(tmp_path / "qstar" / "lineage.duckdb"))}
    return instance, resources, tmp_path / "qstar"


def run(env, key, config=None, raise_on_error=True):
    instance, resources, _ = env
    if key not in instance.get_dynamic_partitions(prompt_set_partitions.name):
        instance.add_dynamic_partitions(prompt_set_partitions.name, [key])
    run_config = {"ops": {"prompt_set": {"config": config}}} if config else None
    return materialize([prompt_set], instance=instance, resources=resources, partition_key=key,
                       run_config=run_config, raise_on_error=raise_on_error)


def metadata(result):
    [mat] = result.asset_materializations_for_node("prompt_set")
    return {k: v.value for k, v in mat.metadata.items()}


def checks(result):
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


def test_builtin_set_materializes_into_the_store_idempotently(env):
    first = run(env, "arith-test", {"n": 40})
    meta = metadata(first)
    assert meta["n"] == 40 and meta["answer_parse_rate"] == 1.0 and meta["new_version"] is True
    assert "| 0 | Compute left to right:" in meta["preview"]
    assert all(c.passed for c in checks(first).values()) and len(checks(first)) == 3
    store = LineageStore(env[2] / "lineage.duckdb")
    assert store.query("SELECT count(*) FROM prompts WHERE prompt_set = 'arith-test'")[1] == [(40,)]

    again = metadata(run(env, "arith-test", {"n": 40}))
    assert (again["new_version"], again["n_new_prompts"], again["version"]) == (False, 0, meta["version"])
    runs = store.records("SELECT status, partition FROM runs ORDER BY started_at")
    assert [(r["status"], r["partition"]) for r in runs] == [("success", "arith-test")] * 2


def test_held_out_set_shares_no_problem_with_train(env):
    run(env, "arith-train", {"n": 4000})
    run(env, "arith-test")
    store = LineageStore(env[2] / "lineage.duckdb")
    overlap = store.query("SELECT count(*) FROM prompts a JOIN prompts b USING (prompt_id) "
                          "WHERE a.prompt_set = 'arith-train' AND b.prompt_set = 'arith-test'")[1]
    assert overlap == [(0,)]


def test_sensor_registers_inbox_files_and_builtin_sets(env):
    instance, resources, home = env
    write_jsonl(home / "inbox" / "my gsm8k.jsonl", GSM8K_ROWS)
    ctx = build_sensor_context(instance=instance, resources={"data_dir": resources["data_dir"]})
    result = prompt_inbox_sensor(ctx)
    [add] = result.dynamic_partitions_requests
    assert set(add.partition_keys) == {"arith-train", "arith-test", "countdown-train", "countdown-test", "game24",
                                       "my-gsm8k"}
    assert [r.partition_key for r in result.run_requests] == ["my-gsm8k"]

    # an unchanged file is not requested again; a changed one is
    ctx2 = build_sensor_context(instance=instance, cursor=result.cursor, resources={"data_dir": resources["data_dir"]})
    assert prompt_inbox_sensor(ctx2).run_requests == []
    write_jsonl(home / "inbox" / "my gsm8k.jsonl", GSM8K_ROWS[:1])
    ctx3 = build_sensor_context(instance=instance, cursor=result.cursor, resources={"data_dir": resources["data_dir"]})
    assert [r.partition_key for r in prompt_inbox_sensor(ctx3).run_requests] == ["my-gsm8k"]

    meta = metadata(run(env, "my-gsm8k"))
    assert meta["domain"] == "gsm8k" and meta["n"] == 1


def test_bad_inbox_file_fails_clearly_and_writes_nothing(env):
    _, _, home = env
    write_jsonl(home / "inbox" / "broken.jsonl", [GSM8K_ROWS[0], '{"question": "q", "answer": '])
    with pytest.raises(ProblemFileError, match=r"broken.jsonl, line 2: malformed JSON.*Fix:"):
        run(env, "broken")
    store = LineageStore(home / "lineage.duckdb")
    assert store.query("SELECT count(*) FROM prompt_texts")[1] == [(0,)]
    assert store.records("SELECT status FROM runs") == [{"status": "failure"}]


def test_duplicate_prompts_warn(env):
    _, _, home = env
    write_jsonl(home / "inbox" / "dups.jsonl", GSM8K_ROWS + GSM8K_ROWS[:1])
    result = checks(run(env, "dups"))
    dup = result["no_duplicate_prompts"]
    assert not dup.passed and dup.severity == AssetCheckSeverity.WARN
    assert result["reference_answers_parseable"].passed


def test_unparseable_reference_answers_fail_their_check(env):
    _, _, home = env
    write_jsonl(home / "inbox" / "odd.jsonl", [{"problem": "p1", "answer": "\\frac{1}{"}, {"problem": "p2", "answer": "3"}])
    result = checks(run(env, "odd"))
    assert not result["reference_answers_parseable"].passed
