"""Stages that sample through policy servers: `tot_rollouts` with `compute.policy_servers`
pointing at real `qstar serve` processes serving the policy checkpoint under its id. Through
two servers, one SIGKILLed mid-run, the rollout ends with the same rows as through one; a
server serving another model, or other weights under the checkpoint's name, is refused."""

import shutil
import threading
import time

import pytest
import requests
from dagster import DagsterInstance, materialize

from qstar_dagster.assets.policy import base_policy
from qstar_dagster.assets.rollouts import tot_rollouts
from qstar_dagster.lineage import LineageStore
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.resources.compute import ComputeResource
from qstar_dagster.tasks.arith import generate_problems

from ..conftest import EASY_ARITH, start_server

BEST_OF_N = {"algorithm": "best_of_n", "n": 3, "step_max_tokens": 12, "max_depth": 4, "batch_size": 2}
# Beam prunes by likelihood: the same partial solution sampled twice (73 such groups in these
# trees) must tie exactly, or float noise that differs between servers reorders its copies.
BEAM = {"algorithm": "beam", "k": 2, "beam_width": 2, "step_max_tokens": 12, "max_depth": 4, "batch_size": 2}
NODES = "SELECT node_id, parent_id, text, is_terminal, is_correct FROM nodes ORDER BY node_id"
LOGPROBS = "SELECT node_id, logprob FROM nodes ORDER BY node_id"


def run(home, asset, config, servers=(), raise_on_error=True):
    instance = DagsterInstance.ephemeral()
    if asset.partitions_def:
        instance.add_dynamic_partitions("prompt_sets", ["arith-test"])
    return materialize([asset], instance=instance, partition_key="arith-test" if asset.partitions_def else None,
                       raise_on_error=raise_on_error,
                       resources={"data_dir": DataDirResource(path=str(home)),
                                  "store": LineageStoreResource(path=str(home / "lineage.duckdb")),
                                  "compute": ComputeResource(device="cpu", policy_servers=list(servers),
                                                             policy_server_concurrency=4)},
                       run_config={"ops": {asset.node_def.name: {"config": config}}})


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, arith_policy_dir):
    home = tmp_path_factory.mktemp("servers") / "qstar"
    store = LineageStore(home / "lineage.duckdb")
    with store.transaction() as con:
        store.write_prompt_set(con, "arith-test", "test", generate_problems(16, seed=4, spec=EASY_ARITH), None)
    result = run(home, base_policy, {"model_path": str(arith_policy_dir), "eval_k": 1, "eval_max_new_tokens": 8})
    [mat] = result.asset_materializations_for_node("base_policy")
    return home, mat.metadata["checkpoint_id"].value


@pytest.fixture
def servers(seeded, arith_policy_dir):
    _, checkpoint = seeded
    procs = [start_server(arith_policy_dir, checkpoint) for _ in range(2)]
    yield procs
    for proc, _ in procs:
        proc.kill()
        proc.wait()


def served_requests(url: str) -> int:
    text = requests.get(f"{url}/metrics", timeout=5).text
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("qstar_requests_total")))


@pytest.mark.parametrize("config", [BEST_OF_N, BEAM], ids=["best_of_n", "beam"])
def test_a_rollout_through_two_servers_one_killed_mid_run_ends_as_through_one(seeded, servers, tmp_path, config):
    home, _ = seeded
    (_, a), (b_proc, b) = servers
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(home, one)
    shutil.copytree(home, two)
    run(one, tot_rollouts, config, servers=[f"{a}/v1"])
    through_a = served_requests(a)

    killed = {}

    def kill_b_once_it_has_served():
        while served_requests(b) < 5:
            time.sleep(0.02)
        killed["after"] = served_requests(b)
        b_proc.kill()

    killer = threading.Thread(target=kill_b_once_it_has_served)
    killer.start()
    result = run(two, tot_rollouts, config, servers=[f"{b}/v1", f"{a}/v1"])
    killer.join(5)
    assert killed["after"] >= 5 and b_proc.poll() is not None  # B served, then died before the run ended
    [mat] = result.asset_materializations_for_node("tot_rollouts")
    per_server = mat.metadata["policy_server_requests"].value
    # B answered prompts, then its failures moved the rest to A. Not ">= 5": B counts a request
    # once its batch is generated, the client once the answer arrives, so a batch generated
    # just before the kill counts on B's side only (a fresh-clone CI run saw 4 against 5)
    assert per_server[f"{b}/v1/"] > 0 and per_server[f"{a}/v1/"] > 0 and mat.metadata["policy_server_failovers"].value >= 1
    assert served_requests(a) > through_a
    rows_one = LineageStore(one / "lineage.duckdb").query(NODES)[1]
    assert rows_one and LineageStore(two / "lineage.duckdb").query(NODES)[1] == rows_one
    # the same tokens; their log-probabilities to float noise (a server's batch pads prompts its own way)
    lp_one, lp_two = (dict(LineageStore(h / "lineage.duckdb").query(LOGPROBS)[1]) for h in (one, two))
    assert lp_two.keys() == lp_one.keys() and all(lp_two[k] == pytest.approx(v, abs=1e-4) for k, v in lp_one.items())


def test_a_server_of_another_model_is_refused(seeded, arith_policy_dir, tiny_model_dir, tmp_path):
    home, checkpoint = seeded
    other_name, url_name = start_server(arith_policy_dir, "someone-else")
    other_weights, url_weights = start_server(tiny_model_dir, checkpoint)
    try:
        shutil.copytree(home, tmp_path / "h")
        wrong_name = run(tmp_path / "h", tot_rollouts, BEST_OF_N, servers=[f"{url_name}/v1"], raise_on_error=False)
        assert f"start it with --name {checkpoint}" in wrong_name.failure_data_for_node("tot_rollouts").error.cause.message
        wrong_weights = run(tmp_path / "h", tot_rollouts, BEST_OF_N, servers=[f"{url_weights}/v1"], raise_on_error=False)
        assert "serves other weights" in wrong_weights.failure_data_for_node("tot_rollouts").error.cause.message
    finally:
        for proc in (other_name, other_weights):
            proc.kill()
            proc.wait()
