"""The cluster deployment, checked as far as this machine can: the instance config and Helm
values load against Dagster's own schemas, the GPU assets ask Kubernetes for a GPU, the k8s
executor is chosen by QSTAR_EXECUTOR, `qstar init` puts the instance on PostgreSQL, steps on
a multi-GPU machine claim different GPUs, and the image builds where Docker runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from qstar_dagster.resources.compute import GPU_POOL

ROOT = Path(__file__).resolve().parents[1]


def test_every_gpu_asset_asks_kubernetes_for_one_gpu():
    from qstar_dagster.definitions import make_definitions

    graph = make_definitions().resolve_asset_graph()
    gpu_nodes = [n for n in graph.asset_nodes if n.pools == {GPU_POOL}]
    assert len(gpu_nodes) >= 8  # base policy, rollouts, labels, training, evaluation
    gpu_ops = cpu_ops = 0
    for node in graph.asset_nodes:
        for op in node.assets_def.node_def.iterate_op_defs():  # a graph-backed asset has several
            config = op.tags.get("dagster-k8s/config")
            if op.pool != GPU_POOL:
                assert config is None, f"{op.name} of {node.key} asks for a GPU outside the gpu pool"
                cpu_ops += 1
                continue
            config = yaml.safe_load(config) if isinstance(config, str) else config
            resources = config["container_config"]["resources"]
            assert resources["limits"]["nvidia.com/gpu"] == "1" == resources["requests"]["nvidia.com/gpu"], node.key
            gpu_ops += 1
    assert gpu_ops >= len(gpu_nodes) and cpu_ops > 0


def test_qstar_executor_k8s_runs_each_step_as_a_kubernetes_job(monkeypatch):
    from qstar_dagster.definitions import make_definitions

    monkeypatch.setenv("QSTAR_EXECUTOR", "k8s")
    assert make_definitions().resolve_job_def("refresh").executor_def.name == "k8s"
    monkeypatch.delenv("QSTAR_EXECUTOR")
    assert make_definitions().resolve_job_def("refresh").executor_def.name == "multi_or_in_process_executor"
    monkeypatch.setenv("QSTAR_EXECUTOR", "kubernetes")
    with pytest.raises(ValueError, match="QSTAR_EXECUTOR must be k8s"):
        make_definitions()


def test_the_example_instance_config_loads_against_dagsters_schemas(tmp_path, monkeypatch):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher

    shutil.copy(ROOT / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("QSTAR_DAGSTER_POSTGRES_URL", "postgresql+psycopg2://dagster@db/dagster")
    monkeypatch.setenv("QSTAR_IMAGE", "registry.example.com/qstar-dagster:0.1.0")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "QSTAR_DAGSTER_POSTGRES_URL"}
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    checked = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert checked.success, checked.errors
    assert checked.value["job_image"] == "registry.example.com/qstar-dagster:0.1.0"
    assert config["concurrency"]["pools"]["default_limit"] >= 1


def test_the_helm_values_run_the_factorys_code_location_on_k8s():
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    module = args[args.index("-m") + 1]
    assert module == "qstar_dagster.definitions"
    __import__(module)
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["QSTAR_EXECUTOR"] == "k8s" and env["QSTAR_HOME"] == "/data"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    assert values["concurrency"]["pools"]["defaultLimit"] >= 1
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'"-m", "{module}"' in dockerfile and "ARG EXTRAS=shared,k8s" in dockerfile
    for copied in ("pyproject.toml", "README.md", "workspace.yaml", "qstar_dagster"):
        assert (ROOT / copied).exists()


def test_the_image_builds_where_a_docker_engine_runs():
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "info"], capture_output=True, check=False).returncode:
        pytest.skip("no Docker engine on this machine (the client alone cannot build); "
                    "docs/DEPLOYMENT.md: docker build -t qstar-dagster .")
    subprocess.run([docker, "build", "-q", "-t", "qstar-dagster:test", str(ROOT)], check=True, timeout=1800)
    out = subprocess.run([docker, "run", "--rm", "qstar-dagster:test", "qstar", "--help"], capture_output=True,
                         text=True, check=True)
    assert "qstar-dagster" in out.stdout


def test_qstar_init_puts_the_instance_on_postgresql_with_the_gpu_pool_limit(postgres, tmp_path, monkeypatch):
    from dagster import DagsterInstance, materialize

    from qstar_dagster.assets.prompts import prompt_set, prompt_set_partitions
    from qstar_dagster.cli import main
    from qstar_dagster.resources import DataDirResource, LineageStoreResource

    monkeypatch.setenv("QSTAR_HOME", str(tmp_path / "qstar"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("QSTAR_DAGSTER_POSTGRES_URL", postgres.new_database("dagster"))
    monkeypatch.setenv("QSTAR_STORE", postgres.new_database("lineage"))
    refused = CliRunner().invoke(main, ["init", "--gpus", "3"])  # SQLAlchemy would take psycopg 3
    assert refused.exit_code != 0 and "postgresql+psycopg2://" in refused.output
    monkeypatch.setenv("QSTAR_DAGSTER_POSTGRES_URL",
                       os.environ["QSTAR_DAGSTER_POSTGRES_URL"].replace("postgresql://", "postgresql+psycopg2://"))
    out = CliRunner().invoke(main, ["init", "--gpus", "3"])
    assert out.exit_code == 0, out.output
    assert "PostgresRunStorage; gpu pool limit 3" in out.output and "lineage store postgresql://" in out.output
    config = yaml.safe_load((tmp_path / "dagster" / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 3

    instance = DagsterInstance.get()
    assert "arith-test" in instance.get_dynamic_partitions(prompt_set_partitions.name)
    result = materialize([prompt_set], instance=instance, partition_key="arith-test",
                         resources={"data_dir": DataDirResource(), "store": LineageStoreResource()},
                         run_config={"ops": {"prompt_set": {"config": {"n": 5}}}})
    assert result.success
    # the run is in PostgreSQL: a second instance on the same database sees it
    again = DagsterInstance.from_config(str(tmp_path / "dagster"))
    assert again.get_run_by_id(result.run_id).is_success
    assert again.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 3


_CLAIM = """
import sys, time
from pathlib import Path
from qstar_dagster.resources.devices import claim_gpu
first = claim_gpu(int(sys.argv[1]), Path(sys.argv[2]))
assert claim_gpu(int(sys.argv[1]), Path(sys.argv[2])) == first  # a process keeps its GPU
print(first, flush=True)
time.sleep(float(sys.argv[3]))
"""


def test_steps_on_a_machine_with_several_gpus_claim_different_ones(tmp_path):
    def start(n, hold):
        return subprocess.Popen([sys.executable, "-c", _CLAIM, str(n), str(tmp_path), str(hold)],
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})

    holders = [start(3, 30) for _ in range(3)]
    held = {int(p.stdout.readline()): p for p in holders}
    assert sorted(held) == [0, 1, 2]
    extra = start(3, 0)  # every GPU taken: it shares one rather than fail
    assert int(extra.stdout.readline()) in (0, 1, 2)
    extra.wait(30)
    held[1].kill()  # a step that ends (even killed) frees its GPU for the next
    held[1].wait(10)
    later = start(3, 0)
    assert int(later.stdout.readline()) == 1
    later.wait(30)
    for p in holders:
        p.kill()
        p.wait(10)
