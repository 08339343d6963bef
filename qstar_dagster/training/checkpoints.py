"""Training a checkpoint from a recorded dataset, the same way for every kind: named by what
makes it (kind, starting checkpoint, dataset, config), trained into a scratch directory and
renamed into place when complete, reused when recorded and still on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qstar_dagster.lineage.artifacts import checkpoint_row
from qstar_dagster.lineage.store import LineageStore, utcnow
from qstar_dagster.tasks.problem import content_id

log = logging.getLogger(__name__)

SUMMARY = "training.json"


def weights_sha256(model_dir: Path) -> str:
    """One hash over a checkpoint's weight files, to tell two checkpoints at one path apart."""
    h = hashlib.sha256()
    files = sorted(p for p in model_dir.iterdir() if p.suffix in {".safetensors", ".bin", ".pt"})
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def read_summary(path: Path) -> dict | None:
    """The trainer's summary saved with a finished checkpoint; None when there is none."""
    f = path / SUMMARY
    return json.loads(f.read_text()) if f.is_file() else None


def train_atomically(path: Path, train: Callable[[Path], dict]) -> dict:
    """`train(dir)` into a scratch directory, save its summary there and rename it to `path`
    when complete, so a killed run never leaves a half-written checkpoint under the name."""
    scratch = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    summary = train(scratch)
    (scratch / SUMMARY).write_text(json.dumps(summary))
    try:
        os.replace(scratch, path)
    except OSError:  # a concurrent run finished the same checkpoint first; theirs is identical in kind
        shutil.rmtree(scratch, ignore_errors=True)
    return summary


@dataclass
class CheckpointBuild:
    checkpoint_id: str
    path: Path
    reused: bool
    training: dict  # the trainer's summary (curves included)
    metrics: dict  # evaluation figures
    row: dict | None = None  # the checkpoints row to record (None when reused)


def build_checkpoint(store: LineageStore, checkpoints_dir: Path, kind: str, base: dict, dataset_id: str,
                     config: dict, train: Callable[[Path], dict], evaluate: Callable[[Path], dict],
                     run_id: str | None = None) -> CheckpointBuild:
    """`base`: the starting checkpoint's row; `train(dir)` trains into dir and returns its
    summary; `evaluate(dir)` returns metrics."""
    checkpoint_id = content_id("ck", kind, base["checkpoint_id"], dataset_id, config)
    path = checkpoints_dir / checkpoint_id
    recorded = checkpoint_row(store, checkpoint_id)
    if recorded and path.is_dir():
        metrics = json.loads(recorded["metrics"] or "{}")
        return CheckpointBuild(checkpoint_id, path, True, read_summary(path) or {}, metrics.get("evaluation", {}))
    summary = read_summary(path) or train_atomically(path, train)
    metrics = evaluate(path)
    log.info("%s %s: %s", kind, checkpoint_id, ", ".join(f"{k} {v}" for k, v in metrics.items()
                                                          if isinstance(v, (int, float))))
    row = {"checkpoint_id": checkpoint_id, "kind": kind, "base": base["checkpoint_id"], "path": str(path),
           "sha256": weights_sha256(path), "trained_on_dataset": dataset_id,
           # a kind with its own prompt (the judge) records that one; the rest, their base's
           "config": {"template": json.loads(base.get("config") or "{}").get("template"), **config},
           "metrics": {"evaluation": metrics,
                       "training": {k: v for k, v in summary.items() if k not in {"loss_curve", "accuracy_curve"}}},
           "created_run": run_id, "created_at": utcnow()}
    return CheckpointBuild(checkpoint_id, path, False, summary, metrics, row)
