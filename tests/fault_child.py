"""A stage run in its own process for tests/test_faults.py, to be SIGKILLed there.

    python -m tests.fault_child ASSET HOME CONFIG_JSON [--hang-in-transaction K | --hang-before-rename]
    python -m tests.fault_child write HOME WRITER N      (N prompt sets, one transaction each)
    python -m tests.fault_child read HOME SECONDS       (queries in a loop)

`--hang-in-transaction K` stops inside the K-th batch's transaction, after its first rows
are inserted and before it commits; `--hang-before-rename` stops after a checkpoint is
trained into its scratch directory, before it is renamed into place. Either writes
HOME/hanging first, so the test knows when to kill."""

import json
import sys
import time
from pathlib import Path

from dagster import DagsterInstance, materialize

from qstar_dagster.lineage import LineageStore
from qstar_dagster.tasks.arith import generate_problems


def hang(home: Path) -> None:
    (home / "hanging").write_text("now")
    time.sleep(600)


def run_asset(name: str, home: Path, config: dict, flags: list[str]) -> None:
    from qstar_dagster.assets.labels import mc_labels
    from qstar_dagster.assets.policy import base_policy
    from qstar_dagster.assets.rollouts import tot_rollouts
    from qstar_dagster.resources import DataDirResource, LineageStoreResource
    from qstar_dagster.resources.compute import ComputeResource

    if "--hang-in-transaction" in flags:
        k = int(flags[flags.index("--hang-in-transaction") + 1])
        original, calls = LineageStore.insert, []

        def insert(self, con, table, rows):
            n = original(self, con, table, rows)
            if table in ("nodes", "step_labels"):
                calls.append(table)
                if len(calls) == k:
                    hang(home)  # rows inserted, transaction open
            return n

        LineageStore.insert = insert
    if "--hang-before-rename" in flags:
        from qstar_dagster.training import checkpoints

        original_train = checkpoints.train_atomically

        def train_atomically(path, train):
            return original_train(path, lambda d: (train(d), hang(home))[0])

        checkpoints.train_atomically = train_atomically
    asset = {"tot_rollouts": tot_rollouts, "mc_labels": mc_labels, "base_policy": base_policy}[name]
    instance = DagsterInstance.ephemeral()
    partition = "arith-test" if asset.partitions_def else None
    if partition:
        instance.add_dynamic_partitions("prompt_sets", [partition])
    materialize([asset], instance=instance, partition_key=partition,
                resources={"data_dir": DataDirResource(path=str(home)),
                           "store": LineageStoreResource(path=str(home / "lineage.duckdb")),
                           "compute": ComputeResource(device="cpu")},
                run_config={"ops": {name: {"config": config}}})


def write(home: Path, writer: int, n: int) -> None:
    store = LineageStore(home / "lineage.duckdb")
    for k in range(n):
        with store.transaction() as con:
            store.write_prompt_set(con, f"w{writer}-{k}", "test", generate_problems(3, seed=1000 * writer + k), None)


def read(home: Path, seconds: float) -> None:
    store = LineageStore(home / "lineage.duckdb")
    deadline, reads = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        store.query("SELECT count(*) FROM prompts")
        reads += 1
    print(json.dumps({"reads": reads}))


if __name__ == "__main__":
    what, home = sys.argv[1], Path(sys.argv[2])
    if what == "write":
        write(home, int(sys.argv[3]), int(sys.argv[4]))
    elif what == "read":
        read(home, float(sys.argv[3]))
    else:
        run_asset(what, home, json.loads(sys.argv[3]), sys.argv[4:])
