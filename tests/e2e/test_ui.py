"""The code location loads in a real Dagster webserver and lists the assets (GraphQL)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_webserver(env: dict):
    """`dagster-webserver` on this repository's workspace with `env`; yields its URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("dagster-webserver")
    proc = subprocess.Popen([str(exe), "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"webserver exited: {proc.stdout.read()}")
            try:
                if requests.get(f"{url}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        else:
            pytest.fail("webserver did not start in 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def webserver(tmp_path):
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    yield from run_webserver({**os.environ, "QSTAR_HOME": str(tmp_path / "q"), "DAGSTER_HOME": str(tmp_path / "dagster")})


QUERY = """
{
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { repositories { name jobs { name } sensors { name } } }
          ... on PythonError { message }
        }
      }
    }
  }
  assetNodes { assetKey { path } groupName isPartitioned }
}
"""


def test_code_location_loads_and_lists_assets(webserver):
    deadline = time.monotonic() + 60
    while True:
        data = requests.post(f"{webserver}/graphql", json={"query": QUERY}, timeout=30).json()["data"]
        [entry] = data["workspaceOrError"]["locationEntries"]
        if entry["locationOrLoadError"] is not None or time.monotonic() > deadline:
            break
        time.sleep(1)
    location = entry["locationOrLoadError"]
    assert entry["name"] == "qstar_dagster"
    assert location["__typename"] == "RepositoryLocation", location
    [repo] = location["repositories"]
    assert "embedded_pipeline" in {j["name"] for j in repo["jobs"]}
    assert "prompt_inbox_sensor" in {s["name"] for s in repo["sensors"]}
    assets = {tuple(a["assetKey"]["path"]): a for a in data["assetNodes"]}
    assert assets[("prompt_set",)]["isPartitioned"] and assets[("prompt_set",)]["groupName"] == "prompts"
