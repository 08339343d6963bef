"""Faults as they happen: a stage run in its own process and SIGKILLed, inside a write
transaction or before its checkpoint is renamed into place, then run again; several writer
processes and a reader on one store at once. The child process is tests/fault_child.py."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from qstar_dagster.assets.policy import base_policy
from qstar_dagster.lineage import LineageStore
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.resources.compute import ComputeResource
from qstar_dagster.tasks.arith import generate_problems

from .conftest import EASY_ARITH

ROOT = Path(__file__).resolve().parents[1]
ROLLOUTS = {"algorithm": "beam", "k": 2, "beam_width": 2, "step_max_tokens": 8, "max_depth": 3, "batch_size": 4}
MC = {"n": 2, "max_new_tokens": 8, "batch_trees": 4}
TRAIN = {"shipped": False, "train_prompt_set": "arith-test", "hidden": 32, "layers": 1, "heads": 2, "steps": 20, "batch_size": 4,
         "warmup": 2, "eval_every": 0, "eval_k": 1, "eval_max_new_tokens": 8}


def child(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.fault_child", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run_child(*args: str) -> str:
    proc = child(*args)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    return out


def kill_when_hanging(proc: subprocess.Popen, home: Path) -> None:
    """SIGKILL the child once it says it is where the test wants it."""
    marker = home / "hanging"
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the child never reached the point to be killed at"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    marker.unlink()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_model_dir):
    """12 problems and the untrained tiny model as the base policy."""
    home = tmp_path_factory.mktemp("faults") / "qstar"
    store = LineageStore(home / "lineage.duckdb")
    with store.transaction() as con:
        store.write_prompt_set(con, "arith-test", "test", generate_problems(12, seed=7, spec=EASY_ARITH), None)
    materialize([base_policy], instance=DagsterInstance.ephemeral(),
                resources={"data_dir": DataDirResource(path=str(home)),
                           "store": LineageStoreResource(path=str(home / "lineage.duckdb")),
                           "compute": ComputeResource(device="cpu")},
                run_config={"ops": {"base_policy": {"config": {"model_path": str(tiny_model_dir), "eval_k": 1,
                                                               "eval_max_new_tokens": 8}}}})
    return home


@pytest.fixture(scope="module")
def rolled(seeded, tmp_path_factory):
    home = tmp_path_factory.mktemp("rolled") / "qstar"
    shutil.copytree(seeded, home)
    run_child("tot_rollouts", str(home), json.dumps(ROLLOUTS))
    return home


# per stage: its rows, and how many of them repeat another's key
TABLES = {
    "tot_rollouts": ("SELECT node_id, tree_id, parent_id, depth, text, is_terminal, is_correct FROM nodes ORDER BY 1",
                     "SELECT count(*) - count(DISTINCT node_id) FROM nodes"),
    "mc_labels": ("SELECT node_id, labeler, kind, value, n_rollouts, n_correct FROM step_labels ORDER BY 1, 2, 3",
                  "SELECT count(*) - count(DISTINCT (node_id, labeler, kind)) FROM step_labels"),
}


@pytest.mark.parametrize("asset,config,base", [("tot_rollouts", ROLLOUTS, "seeded"), ("mc_labels", MC, "rolled")])
def test_a_stage_killed_inside_a_transaction_resumes_to_the_rows_of_an_uninterrupted_run(
        request, tmp_path, asset, config, base):
    start = request.getfixturevalue(base)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    shutil.copytree(start, killed)
    shutil.copytree(start, clean)
    run_child(asset, str(clean), json.dumps(config))

    proc = child(asset, str(killed), json.dumps(config), "--hang-in-transaction", "2")
    kill_when_hanging(proc, killed)
    store = LineageStore(killed / "lineage.duckdb")
    rows, duplicates = TABLES[asset]
    # the first batch committed; the second, killed with its rows inserted, left nothing
    first = store.query(rows)[1]
    assert 0 < len(first) < len(LineageStore(clean / "lineage.duckdb").query(rows)[1])
    assert [r["status"] for r in store.records("SELECT status FROM runs WHERE asset_key = ?", [asset])] == ["started"]

    run_child(asset, str(killed), json.dumps(config))
    assert store.query(rows)[1] == LineageStore(clean / "lineage.duckdb").query(rows)[1]
    assert store.query(duplicates)[1] == [(0,)]
    # the run that died is marked by the next run of the asset, and qstar sql shows it
    statuses = store.records("SELECT status FROM runs WHERE asset_key = ? ORDER BY started_at", [asset])
    assert [r["status"] for r in statuses] == ["interrupted", "success"]
    shown = subprocess.run([str(Path(sys.executable).with_name("qstar")), "sql",
                            "select asset_key, status from runs where status = 'interrupted'"],
                           env={**os.environ, "QSTAR_HOME": str(killed)}, capture_output=True, text=True, check=True)
    assert asset in shown.stdout and "interrupted" in shown.stdout


def test_a_training_killed_before_its_checkpoint_is_in_place_leaves_no_orphan(seeded, tmp_path):
    home = tmp_path / "qstar"
    shutil.copytree(seeded, home)
    proc = child("base_policy", str(home), json.dumps(TRAIN), "--hang-before-rename")
    kill_when_hanging(proc, home)
    checkpoints = home / "checkpoints"
    [orphan] = list(checkpoints.glob(".tmp-*"))  # trained whole, killed before the rename
    store = LineageStore(home / "lineage.duckdb")
    built_in = "SELECT checkpoint_id, path FROM checkpoints WHERE (config->>'architecture') = 'char-llama'"
    assert store.records(built_in) == []

    run_child("base_policy", str(home), json.dumps(TRAIN))
    assert not orphan.exists() and list(checkpoints.glob(".tmp-*")) == []
    [row] = store.records(built_in)
    assert Path(row["path"]).is_dir() and (Path(row["path"]) / "config.json").exists()
    statuses = [r["status"] for r in store.records("SELECT status FROM runs WHERE asset_key = 'base_policy' "
                                                   "ORDER BY started_at")]
    assert statuses == ["success", "interrupted", "success"]  # the fixture's, the killed one, the rerun


def test_writers_and_a_reader_in_parallel_lose_nothing(tmp_path):
    home = tmp_path / "qstar"
    LineageStore(home / "lineage.duckdb")  # created and migrated once
    writers = [child("write", str(home), str(w), "8") for w in range(3)]
    reader = child("read", str(home), "8")
    outs = [p.communicate(timeout=600)[0] for p in [*writers, reader]]
    assert all(p.returncode == 0 for p in [*writers, reader]), outs
    assert json.loads(outs[-1].strip().splitlines()[-1])["reads"] > 0
    store = LineageStore(home / "lineage.duckdb")
    assert store.query("SELECT count(*) FROM prompt_sets")[1] == [(24,)]
    assert store.query("SELECT count(DISTINCT prompt_set) FROM prompts")[1] == [(24,)]
