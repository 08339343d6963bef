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
                    "step_datasets", "prm_model", "rft_policy", "dpo_policy", "evaluation"]
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
        yield url, home


def _dismiss_welcome(page) -> None:
    """The first page an instance shows may carry Dagster's community pop-up."""
    skip = page.get_by_role("button", name="Skip")
    page.wait_for_timeout(2000)
    if skip.count():
        skip.click()


def test_lifecycle_in_the_asset_graph_and_materializing_prompts_from_the_ui(ui, tmp_path):
    url, home = ui
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
        launch = page.get_by_role("button", name="Launch 1 run")
        launch.click()
        # The dialog closes once the launch mutation has answered; leaving the page before
        # that (under load) cancels the launch.
        launch.wait_for(state="detached", timeout=120000)

        page.goto(f"{url}/runs", wait_until="networkidle")
        deadline = time.monotonic() + 300
        while not page.get_by_text("Success", exact=True).count():
            failed = page.get_by_text("Failure", exact=True).count()
            if failed or time.monotonic() > deadline:
                page.screenshot(path=str(shots / "runs-not-succeeded.png"))
                pytest.fail(f"the run {'failed' if failed else 'did not succeed within 300 s'}; the runs page "
                            f"reads: {page.inner_text('body')[:1500]!r}; screenshot {shots / 'runs-not-succeeded.png'}")
            page.wait_for_timeout(2000)
            page.reload(wait_until="networkidle")
        page.screenshot(path=str(shots / "prompt-set-run.png"))
        browser.close()

    # The UI's run wrote the prompt set into the data directory's store.
    store = LineageStore(home / "lineage.duckdb")
    assert store.query("SELECT count(*) FROM prompts WHERE prompt_set = 'arith-test'")[1][0][0] == 200
