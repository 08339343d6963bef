"""The DuckDB lineage store: schema, migrations, writes and lineage queries."""

from qstar_dagster.lineage.store import Edge, LineageStore, PromptSetNotFoundError, PromptSetWrite

__all__ = ["Edge", "LineageStore", "PromptSetNotFoundError", "PromptSetWrite"]
