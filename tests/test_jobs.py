"""The refresh job, and the automation conditions that refresh a prompt set's rollouts,
labels and datasets, evaluated tick by tick against a real instance's event log."""

from dagster import (
    AssetKey,
    AssetMaterialization,
    DefaultSensorStatus,
    evaluate_automation_conditions,
    instance_for_test,
    materialize,
)

from qstar_dagster.assets.prompts import prompt_set, prompt_set_partitions
from qstar_dagster.automation import REFRESH_ASSETS, refresh_automation
from qstar_dagster.definitions import make_definitions
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.rounds import ROUND_ASSETS, ROUND_JOB


def _requested(result, asset: str) -> set[str]:
    return set(result.get_requested_partitions(AssetKey(asset)))


def test_rollouts_follow_a_prompt_set_whose_content_changed_and_labels_follow_rollouts(tmp_path):
    defs = make_definitions(str(tmp_path))
    resources = {"data_dir": DataDirResource(path=str(tmp_path)),
                 "store": LineageStoreResource(path=str(tmp_path / "lineage.duckdb"))}

    def prompts(instance, n: int) -> None:
        materialize([prompt_set], instance=instance, resources=resources, partition_key="arith-test",
                    run_config={"ops": {"prompt_set": {"config": {"n": n}}}})

    with instance_for_test() as instance:
        instance.add_dynamic_partitions(prompt_set_partitions.name, ["arith-test", "arith-train"])
        tick = evaluate_automation_conditions(defs=defs, instance=instance)
        assert tick.total_requested == 0  # nothing materialized yet

        prompts(instance, 5)
        tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert _requested(tick, "tot_rollouts") == set()  # no base policy yet: wait for it
        instance.report_runless_asset_event(AssetMaterialization("base_policy"))
        tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        # one request for the whole Monte Carlo path (arith-train has no prompts); the judge
        # stages wait for an explicit run
        for asset in REFRESH_ASSETS:
            assert _requested(tick, asset) == {"arith-test"}, asset
        assert _requested(tick, "judge_labels") == _requested(tick, "consensus_labels") == set()

        for asset in REFRESH_ASSETS:  # that run done
            instance.report_runless_asset_event(AssetMaterialization(asset, partition="arith-test"))
        tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert tick.total_requested == 0
        prompts(instance, 5)  # the same prompts again: same content hash, no new GPU work
        tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert tick.total_requested == 0
        prompts(instance, 6)  # the prompts changed
        tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert _requested(tick, "tot_rollouts") == _requested(tick, "step_datasets") == {"arith-test"}


def test_orchestration_is_registered_and_ships_turned_off():
    defs = make_definitions()
    job = defs.resolve_job_def("refresh")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == set(REFRESH_ASSETS)
    assert job.op_retry_policy is not None and job.op_retry_policy.max_retries == 2
    assert refresh_automation.default_status == DefaultSensorStatus.STOPPED
    round_job = defs.resolve_job_def(ROUND_JOB)  # a round is one run of an asset job, partitioned by training set
    assert {k.to_user_string() for k in round_job.asset_layer.executable_asset_keys} == set(ROUND_ASSETS)
    assert round_job.partitions_def == prompt_set_partitions
    graph = defs.resolve_asset_graph()
    gpu_assets = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).pools == {"gpu"}}
    assert {"tot_rollouts", "mc_labels", "judge_labels", "prm_model", "rft_policy", "dpo_policy",
            "step_ppo_policy"} <= gpu_assets
    automated = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    assert automated == set(REFRESH_ASSETS)
