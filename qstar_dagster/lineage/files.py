"""Checkpoint and dataset files: the one hash of a model's weights, and files written whole
or not at all (a scratch name beside the target, `.tmp-<name>-<pid>`, renamed into place
when complete; scratch that a killed process left is removed by the next writer of the same
target). Used for datasets, checkpoints and their summaries, and by `qstar serve`."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def process_alive(pid: int | None) -> bool:
    """Whether process `pid` of this host still runs (a zombie, killed but not yet reaped by
    its parent, does not)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc (not Linux): os.kill said it is there
        return True


def scratch_path(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}-{os.getpid()}")


def remove_stale_scratch(path: Path) -> list[Path]:
    """Delete the scratch copies of `path` that killed runs left (of a process no longer
    alive); a live run's scratch is left alone. Returns what was removed."""
    removed = []
    for stale in path.parent.glob(f".tmp-{path.name}-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(scratch)`, then rename the scratch file to `path`."""
    remove_stale_scratch(path)
    tmp = scratch_path(path)
    write(tmp)
    os.replace(tmp, path)


def _hash_file(h, path: Path):
    """`h` updated with the file's bytes, read in chunks (weights can be gigabytes)."""
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h


def file_sha256(path: Path) -> str:
    return _hash_file(hashlib.sha256(), path).hexdigest()


def weights_sha256(model_dir: Path) -> str:
    """One hash over a checkpoint's weight files, to tell two checkpoints at one path apart."""
    h = hashlib.sha256()
    files = sorted(p for p in model_dir.iterdir() if p.suffix in {".safetensors", ".bin", ".pt"})
    for f in files:
        h.update(f.name.encode())
        _hash_file(h, f)
    return h.hexdigest()
