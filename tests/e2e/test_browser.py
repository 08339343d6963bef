"""The Dagster UI in a real headless Chromium: the lifecycle's assets are in the asset graph
and the catalog, and materializing the prompt-set asset from the UI succeeds.

Needs Debian's `chromium` (`make test` installs it when it can: apt-get as root) and the
`playwright` Python package (dev extra; it drives the system browser, nothing is
downloaded). Screenshots go to $QSTAR_SCREENSHOTS when set, else the test's tmp dir."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qstar_dagster.lineage import LineageStore

from .test_ui import run_webserver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LIFECYCLE_GROUPS = ["prompts", "policy", "rollouts", "labels", "datasets", "training", "evaluation"]
LIFECYCLE_ASSETS = ["prompt_set", "base_policy", "tot_rollouts", "mc_labels", "judge_labels", "label_agreement",
                    "step_datasets", "prm_model", "rft_policy", "dpo_policy", "step_ppo_policy", "evaluation"]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium at /usr/bin/chromium (apt-get install "
                       "chromium; `make test` does it when run as root with apt)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install -e '.[dev]')"),
]


@pytest.fixture
def ui(tmp_path):
    """A data directory prepared by `qstar init` (built-in prompt sets registered), an
    instance that launches runs directly (no daemon needed), and `dagster-webserver` on it."""
    home, dagster_home = tmp_path / "q", tmp_path / "dagster"
    env = {**os.environ, "QSTAR_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}
    subprocess.run([str(Path(sys.executable).with_name("qstar")), "init"], env=env, check=True, capture_output=True)
    with (dagster_home / "dagster.yaml").open("a") as f:
        f.write("run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n")
    for url in run_webserver(env):
        yield url, home, dagster_home


def _dismiss_welcome(page) -> None:
    """The first page an instance shows may carry Dagster's community pop-up."""
    skip = page.get_by_role("button", name="Skip")
    page.wait_for_timeout(2000)
    if skip.count():
        skip.click()


def _is_launch(response) -> bool:
    data = response.request.post_data or ""
    return "/graphql" in response.url and "mutation" in data and "Launch" in data


def _run_ids(body) -> list[str]:
    """The ids of the runs a launch answer reports created (LaunchRunSuccess: run.id)."""
    if isinstance(body, dict):
        own = [body["run"]["id"]] if body.get("__typename") == "LaunchRunSuccess" else []
        return own + [r for v in body.values() for r in _run_ids(v)]
    if isinstance(body, list):
        return [r for v in body for r in _run_ids(v)]
    return []


def _run_status(dagster_home: Path, run_id: str) -> str:
    script = "import sys; from dagster import DagsterInstance; print(DagsterInstance.get().get_run_by_id(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", script, run_id], env={**os.environ, "DAGSTER_HOME": str(dagster_home)},
                         capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip()[-500:]


def test_lifecycle_in_the_asset_graph_and_materializing_prompts_from_the_ui(ui, tmp_path):
    url, home, dagster_home = ui
    shots = Path(os.environ.get("QSTAR_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})

        page.goto(f"{url}/asset-groups", wait_until="networkidle")
        _dismiss_welcome(page)
        for group in LIFECYCLE_GROUPS:  # every stage's group is in the lineage graph's sidebar
            page.get_by_text(group, exact=True).first.wait_for(timeout=30000)
        page.wait_for_timeout(1500)  # let the graph lay out
        page.screenshot(path=str(shots / "asset-graph.png"))

        page.goto(f"{url}/assets", wait_until="networkidle")
        for asset in LIFECYCLE_ASSETS:
            page.get_by_text(asset, exact=True).first.wait_for(timeout=30000)

        page.goto(f"{url}/assets/prompt_set", wait_until="networkidle")
        page.get_by_role("button", name="Materialize…").click()
        page.get_by_text("Select a partition or create one").click()
        page.get_by_text("arith-test", exact=True).first.click()
        # the partition list stays open over the dialog's buttons (five built-in sets): close it
        page.keyboard.press("Escape")
        # The launch is a GraphQL mutation; its answer names the run or says what went wrong.
        with page.expect_response(_is_launch, timeout=120000) as answer:
            page.get_by_role("button", name="Launch 1 run").click()
        body = answer.value.json()
        run_ids = _run_ids(body)
        if not run_ids:
            page.screenshot(path=str(shots / "launch-refused.png"))
            pytest.fail(f"the UI's launch created no run; the server answered {body}")

        # The run's own page, until it says Success (a run that ends otherwise fails the test).
        page.goto(f"{url}/runs/{run_ids[0]}", wait_until="networkidle")
        deadline = time.monotonic() + 300
        while not page.get_by_text("Success", exact=True).count():
            failed = page.get_by_text("Failure", exact=True).count()
            if failed or time.monotonic() > deadline:
                page.screenshot(path=str(shots / "run-not-succeeded.png"))
                pytest.fail(f"run {run_ids[0]} {'failed' if failed else 'did not succeed within 300 s'} (the "
                            f"instance says {_run_status(dagster_home, run_ids[0])}); its page reads: "
                            f"{page.inner_text('body')[:1500]!r}; screenshot {shots / 'run-not-succeeded.png'}")
            page.wait_for_timeout(2000)
            page.reload(wait_until="networkidle")
        page.screenshot(path=str(shots / "prompt-set-run.png"))
        browser.close()

    # The UI's run wrote the prompt set into the data directory's store.
    store = LineageStore(home / "lineage.duckdb")
    assert store.query("SELECT count(*) FROM prompts WHERE prompt_set = 'arith-test'")[1][0][0] == 200
