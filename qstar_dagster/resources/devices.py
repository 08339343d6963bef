"""Which GPU a step uses on a machine with several: the first that no other process here
has claimed. A claim is an exclusive lock on a file per GPU, held until the process ends
(Dagster's multiprocess and k8s executors run each step in a process of its own), so steps
that start together do not all land on cuda:0; with the `gpu` pool's limit set to the
machine's GPU count (`qstar init` does), there is always one free."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

LOCK_DIR = Path(tempfile.gettempdir()) / "qstar-gpu-claims"
_claimed: dict[int, tuple[int, object]] = {}  # pid -> (GPU index, its open lock file)


def claim_gpu(n_devices: int, lock_dir: Path = LOCK_DIR) -> int:
    """This process's GPU index among `n_devices`: the one it claimed before, else the first
    unclaimed, else (every GPU claimed: more steps than the pool allows) pid modulo n."""
    if n_devices <= 1:
        return 0
    mine = _claimed.get(os.getpid())
    if mine is not None:
        return mine[0]
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index in range(n_devices):
        handle = open(lock_dir / f"cuda{index}.lock", "a+")  # noqa: SIM115  (held for the process's life)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _claimed[os.getpid()] = (index, handle)
        return index
    return os.getpid() % n_devices
