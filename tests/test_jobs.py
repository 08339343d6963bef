"""The refresh schedule and sensor decide from a real instance's event log."""

from dagster import (
    AssetMaterialization,
    DefaultScheduleStatus,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
    materialize,
)

from qstar_dagster.assets.prompts import prompt_set, prompt_set_partitions
from qstar_dagster.definitions import make_definitions
from qstar_dagster.jobs import (
    REFRESH_ASSETS,
    prompt_set_refresh_sensor,
    refresh_schedule,
    stale_prompt_sets,
)
from qstar_dagster.resources import DataDirResource, LineageStoreResource


def test_refresh_runs_for_prompt_sets_newer_than_their_rollouts(tmp_path):
    with instance_for_test() as instance:
        _check_refresh(instance, tmp_path)


def _check_refresh(instance, tmp_path):
    instance.add_dynamic_partitions(prompt_set_partitions.name, ["arith-test", "arith-train"])
    resources = {"data_dir": DataDirResource(path=str(tmp_path)),
                 "store": LineageStoreResource(path=str(tmp_path / "lineage.duckdb"))}
    materialize([prompt_set], instance=instance, resources=resources, partition_key="arith-test",
                run_config={"ops": {"prompt_set": {"config": {"n": 5}}}})
    assert [k for k, _ in stale_prompt_sets(instance)] == ["arith-test"]  # arith-train was never materialized

    requests = list(refresh_schedule(build_schedule_context(instance=instance)))
    assert [(r.partition_key, r.job_name or "refresh") for r in requests] == [("arith-test", "refresh")]

    sensor_requests = list(prompt_set_refresh_sensor(build_sensor_context(instance=instance)))
    assert [r.partition_key for r in sensor_requests] == ["arith-test"]

    instance.report_runless_asset_event(AssetMaterialization("tot_rollouts", partition="arith-test"))
    assert stale_prompt_sets(instance) == []
    materialize([prompt_set], instance=instance, resources=resources, partition_key="arith-test",
                run_config={"ops": {"prompt_set": {"config": {"n": 6}}}})  # the prompts changed
    assert [k for k, _ in stale_prompt_sets(instance)] == ["arith-test"]


def test_orchestration_is_registered_and_ships_turned_off():
    defs = make_definitions()
    job = defs.resolve_job_def("refresh")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == set(REFRESH_ASSETS)
    assert job.op_retry_policy is not None and job.op_retry_policy.max_retries == 2
    assert refresh_schedule.default_status == DefaultScheduleStatus.STOPPED and refresh_schedule.cron_schedule
    assert defs.resolve_job_def("expert_iteration_round")
    graph = defs.resolve_asset_graph()
    gpu_assets = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).pools == {"gpu"}}
    assert {"tot_rollouts", "mc_labels", "judge_labels", "prm_model", "rft_policy", "dpo_policy"} <= gpu_assets
