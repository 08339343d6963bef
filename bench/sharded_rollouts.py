"""Benchmark: one prompt set's rollouts serial (shards=1) against sharded (shards=4), side by
side in one run, each a real Dagster run with the multiprocess executor on a real instance (forkserver start
method, the heavy modules preloaded, for both).

Setup: a data directory with --problems problems of arith-train and a small base policy
trained here. Then the same `tot_rollouts` config runs twice, each on its own copy of that
store: serial (one search step, torch on --threads threads) and sharded (--shards search
steps at once, one torch thread each). Printed: each run's wall time (run start to end, the
processes' start-up included), the ratio, and whether the two rollouts' trees are identical
(every node's id, parent, text and grade). Last line: JSON.

    python bench/sharded_rollouts.py --problems 96 --shards 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagster import (
    DagsterInstance,
    Definitions,
    define_asset_job,
    execute_job,
    materialize,
    multiprocess_executor,
    reconstructable,
)

from qstar_dagster.assets.policy import base_policy
from qstar_dagster.assets.prompts import prompt_set, prompt_set_partitions
from qstar_dagster.assets.rollouts import tot_rollouts, trees_sound
from qstar_dagster.lineage import LineageStore
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.resources.compute import ComputeResource

SET = "arith-train"
POLICY = {"hidden": 64, "layers": 2, "heads": 2, "steps": 150, "batch_size": 32, "lr": 5e-3, "warmup": 10,
          "eval_every": 150, "eval_k": 2, "eval_max_new_tokens": 32}
# The step processes fork from a server that has imported these once (Dagster's forkserver
# start method): a fresh process per step otherwise spends ~10 s importing torch and Dagster.
PRELOAD = ["torch", "transformers", "qstar_dagster.assets.rollouts"]
ROLLOUTS = {"algorithm": "beam", "k": 3, "beam_width": 2, "step_max_tokens": 24, "max_depth": 6, "batch_size": 8}


def rollouts_job():
    """The job each measured run executes (module level: the run's processes rebuild it)."""
    job = define_asset_job("bench_rollouts", selection=[tot_rollouts.key], partitions_def=prompt_set_partitions,
                           executor_def=multiprocess_executor)
    return Definitions(assets=[prompt_set, base_policy, tot_rollouts], asset_checks=[trees_sound], jobs=[job],
                       resources={"store": LineageStoreResource(), "data_dir": DataDirResource(),
                                  "compute": ComputeResource(device="cpu")}).resolve_job_def("bench_rollouts")


def setup(home: Path, problems: int, instance) -> None:
    resources = {"store": LineageStoreResource(path=str(home / "lineage.duckdb")),
                 "data_dir": DataDirResource(path=str(home)), "compute": ComputeResource(device="cpu")}
    for key, n in {SET: problems, "arith-test": 12}.items():  # the base policy is evaluated on arith-test
        instance.add_dynamic_partitions(prompt_set_partitions.name, [key])
        materialize([prompt_set], instance=instance, resources=resources, partition_key=key,
                    run_config={"ops": {"prompt_set": {"config": {"n": n}}}})
    materialize([base_policy], instance=instance, resources=resources,
                run_config={"ops": {"base_policy": {"config": POLICY}}})


def trees(store_path: Path) -> list[tuple]:
    return LineageStore(store_path).query(
        "SELECT node_id, tree_id, parent_id, depth, text, is_terminal, is_correct FROM nodes ORDER BY node_id")[1]


def measured(home: Path, store_path: Path, instance, shards: int, threads: int, concurrency: int) -> dict:
    # (in run config, not the environment: the forkserver keeps the environment it started with)
    config = {"ops": {"tot_rollouts": {"config": {**ROLLOUTS, "shards": shards}}},
              "resources": {"compute": {"config": {"device": "cpu", "threads": threads}},
                            "store": {"config": {"path": str(store_path)}}, "data_dir": {"config": {"path": str(home)}}},
              "execution": {"config": {"max_concurrent": concurrency, "start_method": {"forkserver": {
                  "preload_modules": PRELOAD}}}}}
    started = time.perf_counter()
    with execute_job(reconstructable(rollouts_job), instance=instance, run_config=config,
                     tags={"dagster/partition": SET}) as result:
        seconds = time.perf_counter() - started
        assert result.success, f"the {shards}-shard run failed"
        [mat] = result.asset_materializations_for_node("tot_rollouts")
        meta = {k: v.value for k, v in mat.metadata.items()}
        # each search step's own time, start to success (its process's start-up is before it)
        starts, searches = {}, []
        for record in instance.all_logs(result.run_id):
            event = record.dagster_event
            if event is None or "search_rollout_shard" not in (event.step_key or ""):
                continue
            if event.event_type_value == "STEP_START":
                starts[event.step_key] = record.timestamp
            elif event.event_type_value == "STEP_SUCCESS":
                searches.append(record.timestamp - starts[event.step_key])
    return {"shards": shards, "threads": threads, "seconds": round(seconds, 1), "trees": meta["trees"],
            "nodes": meta["nodes"], "batches": meta["batches_searched"], "rollout_id": meta["rollout_id"],
            "search_step_seconds": sorted(round(x, 1) for x in searches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=96)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads of the serial run")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="qstar-bench-shards-"))
    try:
        home = folder / "qstar"
        os.environ["DAGSTER_HOME"] = str(folder / "dagster")
        (folder / "dagster").mkdir()
        (folder / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        instance = DagsterInstance.get()
        setup(home, args.problems, instance)
        for name in ("serial", "sharded"):
            shutil.copy(home / "lineage.duckdb", folder / f"{name}.duckdb")
        serial = measured(home, folder / "serial.duckdb", instance, 1, args.threads, 1)
        sharded = measured(home, folder / "sharded.duckdb", instance, args.shards, 1, args.shards)
        same = trees(folder / "serial.duckdb") == trees(folder / "sharded.duckdb")
        ratio = serial["seconds"] / sharded["seconds"]
        print(f"{args.problems} problems of {SET}, beam k={ROLLOUTS['k']} width={ROLLOUTS['beam_width']}, "
              f"batches of {ROLLOUTS['batch_size']}, {os.cpu_count()} cores")
        for r in (serial, sharded):
            print(f"  shards={r['shards']} (torch threads {r['threads']}): {r['seconds']:6.1f} s  "
                  f"{r['trees']} trees, {r['nodes']} nodes, {r['batches']} batches searched; search steps "
                  f"{', '.join(f'{x:.1f}' for x in r['search_step_seconds'])} s")
        print(f"sharded is {ratio:.2f}x the serial run's speed; identical trees: {same}")
        print(json.dumps({"bench": "sharded_rollouts", "problems": args.problems, "cores": os.cpu_count(),
                          "serial": serial, "sharded": sharded, "speedup": round(ratio, 2), "identical_trees": same}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
