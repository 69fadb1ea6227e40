"""Turn validation failures into one readable line each.

A line names where (``file, document N (Kind name)``), the field path
(``spec.template.spec.containers[0].ports[0].containerPort``) and what was expected, in plain
words: no pydantic vocabulary reaches the user.
"""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from meshlab.resources.schemas.common import describe, suggest

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean (true or false)",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}
_LIMITS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def where(source: str, kind: str | None = None, name: str | None = None) -> str:
    """``deployments/x.yaml, document 2 (PeerAuthentication strict-mtls)``."""
    if kind and name:
        return f"{source} ({kind} {name})"
    if kind:
        return f"{source} ({kind})"
    return source


def format_path(loc: typing.Sequence[str | int]) -> str:
    """``("spec", "ports", 0, "port")`` -> ``spec.ports[0].port``; odd keys get quotes."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated so a field's model (or list/dict of models) shows."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _model_at(model: type[BaseModel], loc: typing.Sequence[str | int]) -> type[BaseModel] | None:
    """The model class found by following ``loc`` from ``model``; None if it leads elsewhere."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif origin is list and isinstance(part, int):
            current = typing.get_args(current)[0]
        elif origin is dict:
            current = typing.get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _message(error: dict[str, Any], model: type[BaseModel]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if "message" in ctx:
        return str(ctx["message"])
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        field = json.dumps(str(error["loc"][-1]))  # quoted; invisible characters escaped
        parent = _model_at(model, error["loc"][:-1])
        if parent is None:
            return f"unknown field {field}"
        close = suggest(str(error["loc"][-1]), parent.model_fields)
        if close:
            return f"unknown field {field}; did you mean {close}?"
        return f"unknown field {field} (known fields here: {', '.join(parent.model_fields)})"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}"
    if kind in _LIMITS:
        sign, key = _LIMITS[kind]
        return f"must be {sign} {ctx.get(key)}, got {describe(value)}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    return f"invalid value: {describe(value)}"  # no library wording reaches the user


def pydantic_problems(err: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    """(field path, message) for each error in ``err`` (raised by ``model``)."""
    out = []
    for error in err.errors(include_url=False):
        loc = list(error["loc"])
        loc += list((error.get("ctx") or {}).get("field") or ())
        out.append((format_path(loc) or "(object)", _message(error, model)))
    return out
