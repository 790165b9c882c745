"""Commands built from the config dataclasses, so each option is declared once (kdcli/config.py):
its flag, default and help come from the field, and the values typed come back as the field's
type (KEY=VALUE pairs as a dict, comma-separated names as a tuple)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from typing import Annotated

import typer

from kdcli.errors import ConfigError


def _is_collection(typ, kind: type) -> bool:
    return typing.get_origin(typ) is kind or typ is kind


def option_fields(config_cls, stage: str | None = None) -> list[dataclasses.Field]:
    """The fields a command of `stage` offers as options."""
    return [f for f in dataclasses.fields(config_cls) if f.metadata.get("cli", True)
            and (stage is None or stage in (f.metadata.get("stages") or (stage,)))]


def option_parameters(config_cls, stage: str | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per option, annotated for typer."""
    hints = typing.get_type_hints(config_cls)
    params = []
    for f in option_fields(config_cls, stage):
        typ, meta = hints[f.name], f.metadata
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        decls = [flag] if typ is bool else flag.split("/")  # a bool's "/" pairs --x/--no-x
        default = None if f.default is dataclasses.MISSING else f.default
        if _is_collection(typ, dict) or _is_collection(typ, tuple):
            typ, default = list[str] | None, None  # repeatable; None: the config's default
        option = typer.Option(*decls, help=meta.get("help", ""), show_default=default is not None)
        if meta.get("required"):
            default = inspect.Parameter.empty  # typer: a required option
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[typ, option]))
    return params


def config_values(config_cls, values: dict, stage: str | None = None) -> dict:
    """The config's keyword arguments from the values typer parsed (options not given as a
    repeatable list are left to the config's default)."""
    hints = typing.get_type_hints(config_cls)
    out = {}
    for f in option_fields(config_cls, stage):
        value, typ = values[f.name], hints[f.name]
        flag = (f.metadata.get("flag") or "--" + f.name.replace("_", "-")).split("/")[0]
        if _is_collection(typ, dict):
            out[f.name] = parse_kv(value, flag)
        elif _is_collection(typ, tuple):
            names = parse_names(value)
            if names:
                out[f.name] = names
        else:
            out[f.name] = value
    return out


def parse_kv(items: list[str] | None, flag: str) -> dict:
    """KEY=VALUE pairs; values are read as JSON when they parse (numbers, lists), else as text."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def parse_names(items: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Repeated flags and comma-separated lists both work: --layers-a a,b --layers-a c."""
    return tuple(part.strip() for item in items or () for part in item.split(",") if part.strip())


def register(app: typer.Typer, name: str, handler, params: list[inspect.Parameter], doc: str) -> None:
    """Register `kdcli NAME` calling handler(**values) with the given parameters."""

    def command(**values) -> None:
        handler(**values)

    command.__signature__ = inspect.Signature(params)
    command.__name__ = name.replace("-", "_")
    command.__doc__ = doc
    app.command(name)(command)
