"""Pydantic's validation errors as the one line our errors are: the key, the value and what is allowed."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, ValidationError

from lift_dist.errors import ConfigError


class Strict(BaseModel):
    """Base of every settings model: unknown keys are errors, NaN/inf are never numbers, assignments are
    checked too (a program that sets `cfg.optim.lr = x` gets the same checks as a YAML file)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, validate_default=True)


_TYPE_TAG = re.compile(r"^([\w-]+\[.*\]|str|int|float|bool|list|dict|tuple|none)$")  # union members in a loc


def _key(prefix: str, loc: tuple) -> str:
    parts = [prefix] if prefix else []
    for p in loc:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        elif not _TYPE_TAG.match(str(p)):
            parts.append(str(p))
    return ".".join(parts)


def _fields_of(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The valid keys at the section `loc[:-1]` of `model` (for an unknown-key message)."""
    for p in loc[:-1]:
        if model is None:
            return []
        field = model.model_fields.get(str(p))
        ann = getattr(field, "annotation", None)
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return sorted(model.model_fields) if model is not None else []


def config_error(e: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> ConfigError:
    """The first problem of a ValidationError as a ConfigError of one line."""
    err = e.errors(include_url=False)[0]
    key = _key(prefix, tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        valid = _fields_of(model, tuple(err["loc"]))
        return ConfigError(f"unknown setting '{key}'" + (f"; valid: {', '.join(valid)}" if valid else ""))
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    more = len(e.errors()) - 1
    tail = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
    if "input" in err and err["type"] != "missing":
        return ConfigError(f"{key}={err['input']!r} is not valid: {msg}{tail}")
    return ConfigError(f"{key}: {msg}{tail}")


def validate(model: type[BaseModel], data, prefix: str = ""):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise config_error(e, prefix, model) from None
