"""The resumable batch loop that rollouts and labeling share: each batch's rows are written in
one transaction, so a batch is in the store whole or not at all, and the caller skips the
batches already there. A killed run therefore resumes at its first missing batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from qstar_dagster.lineage.store import LineageStore

log = logging.getLogger(__name__)

B = TypeVar("B")

# work(batch) -> ({table: rows}, a note for the progress line)
Work = Callable[[B], tuple[dict[str, list[dict]], str]]


def write_batches(store: LineageStore, todo: Sequence[B], work: Work, label: str,
                  on_batch: Callable[[int, int], None] | None = None) -> list[dict[str, int]]:
    """Run `work` on each batch of `todo` and insert the rows it returns, tables in the order
    given, one transaction per batch; log progress with an ETA; call `on_batch(done, total)`
    after each (tests stop runs with it). Returns the rows newly written per batch and table."""
    written = []
    started = time.monotonic()
    for i, batch in enumerate(todo, 1):
        rows, note = work(batch)
        with store.transaction() as con:
            written.append({table: store.insert(con, table, r) for table, r in rows.items()})
        elapsed = time.monotonic() - started
        log.info("%s: batch %d/%d (%s), ETA %.0fs", label, i, len(todo), note, elapsed / i * (len(todo) - i))
        if on_batch:
            on_batch(i, len(todo))
    return written
