"""The one configuration style: strict pydantic models, and one translator from their validation errors to
the one-line UserError (what is wrong, where, and how to fix it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import UserError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base of every configuration: unknown keys are errors, and a validated configuration is frozen (a changed one
    is a new copy, `with_values`), so every stage reads the configuration the run resolved."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Frozen(BaseModel):
    """Base of a command's settings, fixed once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def with_values(model: M, values: dict[str, Any]) -> M:
    """A copy of `model` with its dotted keys ('student.kd.teacher_scale') set to `values`; `model` is unchanged."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    return model.model_copy(update={**direct, **{k: with_values(getattr(model, k), v) for k, v in nested.items()}})


def one_of(what: str, values: Iterable[str], known: Iterable[str]) -> None:
    """A validator's check that each of `values` is `known`: the first that is not is an error naming the choices."""
    known = tuple(known)
    for value in values:
        if value not in known:
            raise ValueError(f"unknown {what} '{value}' (choose from {', '.join(known)})")


def describe(err: ValidationError) -> tuple[str, str]:
    """The first validation error as (message, hint)."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if not isinstance(p, int)) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{where}'", "see recipes/digits.yaml for the known keys"
    message = first["msg"].removeprefix("Value error, ")
    return f"'{where}' {message[0].lower()}{message[1:]}", f"fix the value of {where}"


def validate(cls: type[M], data: Any, context: str = "", hint: str | None = None) -> M:
    """`cls.model_validate(data)`, its first error as one UserError (after `context`, with `hint` if given)."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        message, default_hint = describe(e)
        raise UserError(f"{context}: {message}" if context else message, hint or default_hint) from None


def field_help(cls: type[BaseModel], name: str) -> str:
    """A field's description, `name` dotted through nested models ('data.name'): the CLI's help text, written
    once in the model."""
    *parents, leaf = name.split(".")
    for parent in parents:
        cls = cls.model_fields[parent].annotation
    return cls.model_fields[leaf].description or ""


def field_default(cls: type[BaseModel], name: str) -> Any:
    """A field's default: the CLI's default, written once in the model."""
    return cls.model_fields[name].get_default(call_default_factory=True)
