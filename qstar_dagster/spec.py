"""One spec per stage: a frozen dataclass whose fields carry their default and help text, and
whose `__post_init__` validates. The stage's Dagster config is derived from it
(`assets/_config.py`), so a default or a help text is written once."""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any, help: str) -> Any:
    """A spec field with its help text (shown in the Dagster launchpad and in the config schema)."""
    return dataclasses.field(default=default, metadata={"help": help})


def help_of(spec: type, name: str) -> str | None:
    return next((f.metadata.get("help") for f in dataclasses.fields(spec) if f.name == name), None)
