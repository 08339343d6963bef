"""Dagster configs derived from the stages' specs (`qstar_dagster/spec.py`): one field per spec
field, with its type, default and help text, plus what only the asset needs (which rollout,
which backend). `to_spec` builds the spec back, so its validation runs before any work."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

import pydantic
from dagster import Config
from pydantic import Field

S = TypeVar("S")


def _config_type(tp: Any) -> Any:
    """Dagster config has lists, not tuples: tuple[X, ...] -> list[X] (to_spec converts back)."""
    if typing.get_origin(tp) is tuple:
        return list[typing.get_args(tp)[0]]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
        [inner] = [a for a in typing.get_args(tp) if a is not type(None)]
        return _config_type(inner) | None
    return tp


def spec_config(spec: type, *, base: type[Config] = Config, exclude: tuple[str, ...] = (),
                prefix: str = "") -> type[Config]:
    """A subclass of `base` with `spec`'s fields (less `exclude`; named `prefix` + the spec's
    name, when two specs share a config)."""
    hints = typing.get_type_hints(spec)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        if f.name in exclude:
            continue
        default = f.default
        if default is dataclasses.MISSING:
            raise TypeError(f"{spec.__name__}.{f.name} has no default: a stage's config needs one")
        default = list(default) if isinstance(default, tuple) else default
        fields[prefix + f.name] = (_config_type(hints[f.name]), Field(default, description=f.metadata.get("help")))
    return pydantic.create_model(f"{spec.__name__}Fields", __base__=base, **fields)


def every_step(*steps: str):
    """A graph-backed asset's config mapping: the asset's one config, given to each of its steps."""
    def config_fn(outer: dict) -> dict:
        return {name: {"config": outer} for name in steps}
    return config_fn


def to_spec(config: Config, spec: type[S], *, prefix: str = "", **overrides: Any) -> S:
    """The spec from the config's fields of its names (lists back to tuples), with `overrides`."""
    hints = typing.get_type_hints(spec)
    values = {}
    for f in dataclasses.fields(spec):
        if f.name in overrides or not hasattr(config, prefix + f.name):
            continue
        value = getattr(config, prefix + f.name)
        values[f.name] = tuple(value) if typing.get_origin(hints[f.name]) is tuple and value is not None else value
    return spec(**values, **overrides)
