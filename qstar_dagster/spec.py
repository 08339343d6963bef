"""One spec per stage: a frozen dataclass whose fields carry their default and help text, and
whose `__post_init__` validates. The stage's Dagster config is derived from it
(`assets/_config.py`), so a default or a help text is written once."""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any, help: str, *, added: bool = False) -> Any:
    """A spec field with its help text (shown in the Dagster launchpad and in the config schema).
    `added`: the field came after artifacts named by the spec were made; at its default it is
    left out of `id_settings`, so those artifacts keep their ids."""
    return dataclasses.field(default=default, metadata={"help": help, "added": added})


def id_settings(spec: Any) -> dict:
    """The spec's settings as they enter an artifact's id: every field but an `added` one at
    its default, which makes what the spec made before the field existed."""
    values = dataclasses.asdict(spec)
    return {f.name: values[f.name] for f in dataclasses.fields(spec)
            if not (f.metadata.get("added") and values[f.name] == f.default)}


def help_of(spec: type, name: str) -> str | None:
    return next((f.metadata.get("help") for f in dataclasses.fields(spec) if f.name == name), None)
