"""The lineage store (a DuckDB file, or a shared PostgreSQL database): schema, migrations,
writes and lineage queries."""

from qstar_dagster.lineage.store import (
    Edge,
    LineageStore,
    PromptSetNotFoundError,
    PromptSetWrite,
    copy_store,
)

__all__ = ["Edge", "LineageStore", "PromptSetNotFoundError", "PromptSetWrite", "copy_store"]
