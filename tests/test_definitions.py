"""The code location loads as Dagster loads it, and its asset graph is what we think it is.

The snapshot (tests/snapshots/asset_graph.json) names every asset with its dependencies,
partitions, pools, checks (and whether they block), automation condition and code version,
and every job, schedule and sensor with its default status. A change to the graph shows up
as a diff of that file in review; regenerate it with

    QSTAR_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest tests/test_definitions.py
"""

import json
import os
from pathlib import Path

from dagster import Definitions

from qstar_dagster import definitions
from qstar_dagster.definitions import make_definitions

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def graph_snapshot(defs: Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        checks = sorted((graph.get_check_spec(c) for c in node.check_keys), key=lambda s: s.name)
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": partitions and f"{type(partitions).__name__}:{getattr(partitions, 'name', None)}",
            "group": node.group_name,
            "pools": sorted(node.pools or ()),
            "kinds": sorted(node.kinds),
            "code_version": node.code_version,
            "automation_condition": node.automation_condition and node.automation_condition.get_label(),
            "checks": {c.name: {"blocking": c.blocking} for c in checks},
        }
    jobs = {}
    for job in sorted(defs.resolve_all_job_defs(), key=lambda j: j.name):
        if job.name.startswith("__"):
            continue
        jobs[job.name] = {"assets": sorted(k.to_user_string() for k in job.asset_layer.executable_asset_keys),
                          "partitions": bool(job.partitions_def)}
    return {
        "assets": assets,
        "jobs": jobs,
        "schedules": {s.name: {"job": s.job_name, "cron": s.cron_schedule, "default": s.default_status.value}
                      for s in sorted(defs.schedules or [], key=lambda s: s.name)},
        "sensors": {s.name: {"default": s.default_status.value} for s in sorted(defs.sensors or [], key=lambda s: s.name)},
    }


def test_the_code_location_loads():
    Definitions.validate_loadable(definitions.defs)
    Definitions.validate_loadable(make_definitions("/tmp/qstar-elsewhere"))


def test_the_asset_graph_matches_its_snapshot():
    snapshot = graph_snapshot(definitions.defs)
    text = json.dumps(snapshot, indent=2, sort_keys=True) + "\n"
    if os.environ.get("QSTAR_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.exists(), f"no {SNAPSHOT}; write it with QSTAR_UPDATE_SNAPSHOT=1"
    assert json.loads(SNAPSHOT.read_text()) == snapshot, (
        f"the asset graph changed; if that is intended, regenerate {SNAPSHOT.name} (see this module's docstring) "
        "and review its diff")


def test_the_snapshot_sees_what_it_claims():
    """Deps, partitions, pools and checks are really read (a snapshot of nothing would pass)."""
    s = graph_snapshot(definitions.defs)["assets"]
    assert "prompt_set" in s["tot_rollouts"]["deps"]
    assert s["tot_rollouts"]["partitions"].startswith("DynamicPartitionsDefinition")
    assert s["tot_rollouts"]["pools"] == ["gpu"]
    assert "trees_sound" in s["tot_rollouts"]["checks"]
