"""Pieces every schema shares: the strict base model, value checks and ``ObjectMeta``.

Models are strict, like the Kubernetes API: ``8080`` is not a string and ``"8080"`` is not a
number. Field names are the manifest's own camelCase keys, so an error path reads like YAML.
Checks raise ``PydanticCustomError`` with a finished sentence; ``problems.py`` prints it as is.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainValidator
from pydantic_core import PydanticCustomError

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

ANNOTATIONS_MAX_BYTES = 256 * 1024


class Strict(BaseModel):
    """Base of every schema: unknown fields are errors, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def fail(kind: str, message: str, field: str | tuple[str, ...] = ()) -> PydanticCustomError:
    """A validation error whose text is ``message`` exactly (braces included).

    ``field`` (a dotted path, or a tuple of keys, below the value being validated) lets a
    check point at the exact field or map key it is about.
    """
    context: dict[str, Any] = {"message": message}
    if field:
        context["field"] = tuple(field.split(".")) if isinstance(field, str) else field
    return PydanticCustomError(kind, "{message}", context)


def describe(value: Any) -> str:
    """How a YAML value reads in a message: ``an integer (1)``, ``a mapping``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` was probably meant to be (case slips and small typos)."""
    choices = list(choices)
    for choice in choices:
        if choice.lower() == word.lower():
            return choice
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.8)
    return close[0] if close else None


# ---- value checks (each returns an error sentence, or None when the value is fine) ----


def dns1123_label_problem(value: str) -> str | None:
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        return (
            f"{value!r} is not a valid DNS-1123 label: use at most 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit"
        )
    return None


def dns1035_label_problem(value: str) -> str | None:
    if len(value) > 63 or not DNS1035_LABEL.match(value):
        return (
            f"{value!r} is not a valid DNS-1035 label: use at most 63 lowercase letters, "
            "digits and '-', starting with a letter and ending with a letter or digit"
        )
    return None


def dns1123_subdomain_problem(value: str) -> str | None:
    if len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        return (
            f"{value!r} is not a valid DNS-1123 subdomain: use at most 253 lowercase "
            "letters, digits, '-' and '.', starting and ending with a letter or digit"
        )
    return None


def qualified_name_problem(key: str) -> str | None:
    """Label and annotation keys: ``[prefix/]name`` (prefix a DNS subdomain)."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or dns1123_subdomain_problem(prefix)):
        return f"key {key!r} has an invalid prefix: it must be a DNS-1123 subdomain"
    if not name or len(name) > 63 or not QUALIFIED_NAME.match(name):
        return (
            f"key {key!r} is invalid: the name part must be 1-63 letters, digits, '-', '_' "
            "or '.', starting and ending with a letter or digit"
        )
    return None


def label_value_problem(key: str, value: str) -> str | None:
    if value and (len(value) > 63 or not QUALIFIED_NAME.match(value)):
        return (
            f"label value {value!r} is invalid: use at most 63 letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit"
        )
    return None


def iana_svc_name_problem(value: str) -> str | None:
    if (
        len(value) > 15
        or not IANA_SVC_NAME.match(value)
        or "--" in value
        or not re.search(r"[a-z]", value)
    ):
        return (
            f"{value!r} is not a valid port name: use at most 15 lowercase letters, digits "
            "and '-', with at least one letter and no '--'"
        )
    return None


def port_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected a port number, got {describe(value)}"
    if not 1 <= value <= 65535:
        return f"port must be between 1 and 65535, got {value}"
    return None


# ---- annotated types ----


def one_of(*choices: str) -> Any:
    """A string enum, reported as ``'STRICTT' is not one of UNSET, DISABLE, ...``."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            hint = (
                "; YAML reads unquoted on/off/yes/no as booleans" if isinstance(value, bool) else ""
            )
            raise fail(
                "enum_type", f"expected one of {', '.join(choices)}, got {describe(value)}{hint}"
            )
        if value not in choices:
            close = suggest(value, choices)
            hint = f"; did you mean {close}?" if close else ""
            raise fail("enum", f"{value!r} is not one of {', '.join(choices)}{hint}")
        return value

    return Annotated[str, PlainValidator(check)]


def _port(value: Any) -> int:
    problem = port_problem(value)
    if problem:
        raise fail("port", problem)
    return value


def _int_or_name(value: Any) -> int | str:
    """A port given by number or by name (Kubernetes IntOrString)."""
    if isinstance(value, str):
        problem = iana_svc_name_problem(value)
        if problem:
            raise fail("port_name", problem)
        return value
    return _port(value)


def _label_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise fail(
            "dict_type", f"expected a mapping of label keys to values, got {describe(value)}"
        )
    for key, item in value.items():
        if not isinstance(item, str):
            hint = f'; quote it: "{str(item).lower() if isinstance(item, bool) else item}"'
            hint = hint if isinstance(item, int | float | bool) else ""
            raise fail("label_type", f"expected a string, got {describe(item)}{hint}", (key,))
        problem = qualified_name_problem(key) or label_value_problem(key, item)
        if problem:
            raise fail("label", problem, (key,))
    return value


def _annotation_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise fail(
            "dict_type", f"expected a mapping of annotation keys to values, got {describe(value)}"
        )
    size = 0
    for key, item in value.items():
        if not isinstance(item, str):
            hint = "; quote it" if isinstance(item, int | float | bool) else ""
            raise fail("annotation_type", f"expected a string, got {describe(item)}{hint}", (key,))
        problem = qualified_name_problem(key)
        if problem:
            raise fail("annotation", problem, (key,))
        size += len(key.encode()) + len(item.encode())
    if size > ANNOTATIONS_MAX_BYTES:
        raise fail("annotation_size", f"annotations total {size} bytes; the limit is 256 kB")
    return value


def _timestamp(value: Any) -> str:
    if not isinstance(value, str) or not RFC3339.match(value):
        raise fail(
            "timestamp",
            f"expected an RFC 3339 time such as 2024-05-01T12:00:00Z, got {describe(value)}",
        )
    return value


Port = Annotated[int, PlainValidator(_port)]
IntOrName = Annotated[int | str, PlainValidator(_int_or_name)]
LabelMap = Annotated[dict[str, str], PlainValidator(_label_map)]
AnnotationMap = Annotated[dict[str, str], PlainValidator(_annotation_map)]
Timestamp = Annotated[str, PlainValidator(_timestamp)]
Opaque = Any  # accepted as given: fields MeshLab passes through without reading them
OpaqueMap = dict[str, Any]
OpaqueList = list[Any]


class ObjectMeta(Strict):
    """``metadata``; fields the API server fills in are tolerated (a ``kubectl get -o yaml``
    dump loads), but only name, namespace, labels, annotations and creationTimestamp are kept."""

    name: str
    namespace: str | None = None
    labels: LabelMap | None = None
    annotations: AnnotationMap | None = None
    creationTimestamp: Timestamp | None = None
    generateName: str | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    generation: int | None = None
    selfLink: str | None = None
    managedFields: OpaqueList | None = None
    finalizers: list[str] | None = None
    ownerReferences: OpaqueList | None = None
    deletionTimestamp: Timestamp | None = None
    deletionGracePeriodSeconds: int | None = None


class TemplateMeta(Strict):
    """``metadata`` inside a pod template: no name needed."""

    name: str | None = None
    namespace: str | None = None
    labels: LabelMap | None = None
    annotations: AnnotationMap | None = None
    creationTimestamp: Timestamp | None = None
    generateName: str | None = None
    finalizers: list[str] | None = None


class TypeMeta(Strict):
    """What every object has; kinds add ``spec`` and friends."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
