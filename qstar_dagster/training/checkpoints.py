"""Making a checkpoint, the same way for every kind (the base policy, a PRM, a fine-tuned
policy, the judge): named by what makes it, trained into a scratch directory and renamed
into place when complete, reused when recorded and still on disk."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qstar_dagster.lineage.artifacts import checkpoint_row
from qstar_dagster.lineage.files import remove_stale_scratch, scratch_path, weights_sha256
from qstar_dagster.lineage.store import LineageStore, utcnow
from qstar_dagster.tasks.problem import content_id

log = logging.getLogger(__name__)

SUMMARY = "training.json"


def read_summary(path: Path) -> dict | None:
    """The trainer's summary saved with a finished checkpoint; None when there is none."""
    f = path / SUMMARY
    return json.loads(f.read_text()) if f.is_file() else None


def train_atomically(path: Path, train: Callable[[Path], dict]) -> dict:
    """`train(dir)` into a scratch directory, save its summary there and rename it to `path`
    when complete, so a killed run never leaves a half-written checkpoint under the name."""
    scratch = scratch_path(path)
    remove_stale_scratch(path)
    shutil.rmtree(scratch, ignore_errors=True)
    summary = train(scratch)
    (scratch / SUMMARY).write_text(json.dumps(summary))
    try:
        os.replace(scratch, path)
    except OSError:  # a concurrent run finished the same checkpoint first; theirs is identical in kind
        shutil.rmtree(scratch, ignore_errors=True)
    return summary


CURVES = {"loss_curve", "accuracy_curve", "curves", "config"}  # in the summary on disk, not in the row


def name_checkpoint(kind: str, identity: Sequence[Any]) -> str:
    """A checkpoint's id: what makes it (the kind and everything its training depends on)."""
    return content_id("ck", kind, *identity)


def progress_path(checkpoints_dir: Path, checkpoint_id: str) -> Path:
    """Where a long training keeps the state of its finished iterations until the checkpoint
    is complete, so a killed run resumes there (not in the scratch directory, which is per process)."""
    return checkpoints_dir / f".progress-{checkpoint_id}"


@dataclass
class CheckpointBuild:
    checkpoint_id: str
    path: Path
    reused: bool
    training: dict  # the trainer's summary (curves included); {} for a model made elsewhere
    metrics: dict  # evaluation figures
    row: dict | None = None  # the checkpoints row to record (None when reused)


def build_checkpoint(store: LineageStore, checkpoints_dir: Path, kind: str, identity: Sequence[Any],
                     record: dict, *, train: Callable[[Path], dict] | None, evaluate: Callable[[Path], dict],
                     given: Path | None = None, evaluated: Callable[[dict], dict | None] | None = None,
                     evaluated_on: str | None = None, run_id: str | None = None) -> CheckpointBuild:
    """The one way a checkpoint is made: named `content_id("ck", kind, *identity)` by what
    makes it; trained by `train(dir)` (returns its summary) into a scratch directory and
    renamed into place, or `given` (a model made elsewhere, recorded where it is); measured
    by `evaluate(path)`; reused, with nothing trained or measured, when it is recorded, on
    disk, and `evaluated(row)` finds its figures (default: the row's own). `record`: the row's
    lineage columns (base, trained_on_dataset or trained_on_prompt_set, config)."""
    checkpoint_id = name_checkpoint(kind, identity)
    path = given or checkpoints_dir / checkpoint_id
    recorded = checkpoint_row(store, checkpoint_id)
    if recorded and path.is_dir():
        metrics = evaluated(recorded) if evaluated else json.loads(recorded["metrics"] or "{}").get("evaluation", {})
        if metrics is not None:
            return CheckpointBuild(checkpoint_id, path, True, {} if given else read_summary(path) or {}, metrics)
    # a summary on disk: finished by a run killed before recording
    summary = {} if given else read_summary(path) or train_atomically(path, train)
    metrics = evaluate(path)
    log.info("%s %s: %s", kind, checkpoint_id, ", ".join(f"{k} {v}" for k, v in metrics.items()
                                                          if isinstance(v, (int, float))))
    row = {"checkpoint_id": checkpoint_id, "kind": kind, "path": str(path), "sha256": weights_sha256(path),
           **record,
           "metrics": {"evaluation": metrics, **({"evaluated_on": evaluated_on} if evaluated_on else {}),
                       "training": {k: v for k, v in summary.items() if k not in CURVES}},
           "created_run": run_id, "created_at": utcnow()}
    return CheckpointBuild(checkpoint_id, path, False, summary, metrics, row)


def fine_tune(store: LineageStore, checkpoints_dir: Path, kind: str, base: dict, dataset_id: str, config: dict,
              train: Callable[[Path], dict], evaluate: Callable[[Path], dict],
              run_id: str | None = None) -> CheckpointBuild:
    """A checkpoint trained from `base` (the starting checkpoint's row) on a recorded dataset."""
    # a kind with its own prompt (the judge) records that one; the rest, their base's
    template = json.loads(base.get("config") or "{}").get("template")
    return build_checkpoint(store, checkpoints_dir, kind, (base["checkpoint_id"], dataset_id, config),
                            {"base": base["checkpoint_id"], "trained_on_dataset": dataset_id,
                             "config": {"template": template, **config}},
                            train=train, evaluate=evaluate, run_id=run_id)
