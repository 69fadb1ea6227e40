"""Parse YAML safely: the one YAML parser of MeshLab.

Guards against input that is not a manifest: nesting deeper than 50 levels, alias bombs
("billion laughs": a few lines that expand to millions of values), recursive aliases and
documents of more than 100,000 values. YAML is read as kubectl reads it (YAML 1.1 scalars,
so ``on``/``yes`` are booleans), except that timestamps stay strings, as in a Kubernetes
object. libyaml does the scanning when PyYAML has it; composing (where the limits are
enforced) is always PyYAML's Python code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

MAX_DEPTH = 50
MAX_VALUES = 100_000  # scalars + collections in one document, aliases expanded


@dataclass(frozen=True)
class Document:
    source: str  # "deployments/x.yaml, document 2"
    data: Any  # plain JSON-able data (dict keys are strings)


class _LimitError(yaml.MarkedYAMLError):
    """A document broke one of the safety limits (not a syntax error)."""


class _ValueError(Exception):
    """A value that has no JSON form (a !!binary blob, a set...)."""


class _Checks(Composer, SafeConstructor):
    """Composer and constructor with a nesting limit, an alias count, duplicate-key errors
    and string timestamps."""

    depth = 0
    aliases = 0  # alias nodes composed so far
    nodes = 0  # nodes composed so far (an alias counts once)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.nodes += 1
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _LimitError(
                    problem=f"nesting is deeper than {MAX_DEPTH} levels", problem_mark=mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                if (
                    not isinstance(key_node, yaml.ScalarNode)
                    or key_node.tag == "tag:yaml.org,2002:merge"
                ):
                    continue
                key = _key_text(self.construct_object(key_node))
                if key in seen:
                    raise ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"found the key {key!r} twice",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _PureLoader(Reader, Scanner, Parser, _Checks, Resolver):
    """Everything in Python (PyYAML without libyaml)."""

    fast = False

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)


_LOADERS: list[type] = [_PureLoader]

if yaml.__with_libyaml__:  # libyaml scans and parses (~9x faster); nodes are composed here
    from yaml._yaml import CParser

    class _FastLoader(_Checks, CParser, Resolver):  # type: ignore[misc]
        fast = True

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    _LOADERS.insert(0, _FastLoader)

# Timestamps stay strings (creationTimestamp is a string in the API); drop the YAML 1.1
# "value" tag, which has no constructor. Copied, so yaml.SafeLoader itself is untouched.
_RESOLVERS = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _loader in _LOADERS:
    _loader.yaml_implicit_resolvers = _RESOLVERS


def _key_text(key: Any) -> str:
    """Mapping keys as JSON has them: ``8080`` -> ``"8080"``, ``true`` -> ``"true"``."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None:
        return "null" if key is None else str(key).lower()
    if isinstance(key, int | float):
        return str(key)
    raise _ValueError(f"a mapping key must be a plain value, got {type(key).__name__}")


def _plain(value: Any) -> Any:
    """Constructed YAML -> JSON-able data (aliases become copies; size is already bounded)."""
    if isinstance(value, dict):
        return {_key_text(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        raise _ValueError("binary values (!!binary) are not supported in a manifest")
    raise _ValueError(f"values of YAML type {type(value).__name__} are not supported in a manifest")


class _Refused(Exception):
    pass


class _TooMany(_Refused):
    pass


def _measure(root: yaml.Node, aliases: int, nodes: int) -> str | None:
    """Check the size and depth of a composed document with its aliases expanded.

    ``nodes``: how many nodes were composed. Without aliases that is the size, and the
    composer already bounded the depth; with aliases each node is measured once
    (memoized), so an alias bomb costs as much as its text, not as its expansion."""
    too_many = f"the document holds more than {MAX_VALUES:,} values"
    if not aliases:
        return too_many if nodes > MAX_VALUES else None
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, height)
    active: set[int] = set()
    too_deep = f"nesting is deeper than {MAX_DEPTH} levels once aliases are expanded"

    def walk(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known:
            if depth - 1 + known[1] > MAX_DEPTH:
                raise _Refused(too_deep)
            return known[0]
        if id(node) in active:
            raise _Refused("an alias refers to a node that contains it (a recursive structure)")
        if depth > MAX_DEPTH:
            raise _Refused(too_deep)
        active.add(id(node))
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        values, height = 1, 1
        for child in children:
            values += walk(child, depth + 1)
            height = max(height, 1 + sizes[id(child)][1])
            if values > MAX_VALUES:
                raise _TooMany(too_many)
        active.discard(id(node))
        sizes[id(node)] = (values, height)
        return values

    try:
        walk(root, 1)
    except _TooMany:
        return f"{too_many} once its {aliases} YAML aliases are expanded (an alias bomb?)"
    except _Refused as refused:
        return str(refused)
    return None


def _mark(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_error(err: yaml.YAMLError, text: str, fast: bool) -> str:
    if isinstance(err, yaml.reader.ReaderError):
        position = err.position
        if fast:  # libyaml counts UTF-8 bytes
            position = len(
                text.encode("utf-8", "surrogatepass")[:position].decode("utf-8", "ignore")
            )
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        return (
            f"invalid YAML at line {line}, column {column}: "
            f"character #x{err.character:04x} is not allowed in YAML text"
        )
    if isinstance(err, yaml.MarkedYAMLError):
        where = _mark(err.problem_mark) if err.problem_mark else "an unknown place"
        kind = "refused" if isinstance(err, _LimitError) else "invalid YAML"
        text_ = f"{kind} at {where}: {err.problem}"
        if err.context and err.context_mark:
            text_ += f" ({err.context} at {_mark(err.context_mark)})"
        return text_
    return f"invalid YAML: {err}"


def parse(text: str, label: str, fast: bool = True) -> tuple[list[Document], list[str]]:
    """Split YAML text into documents. Document numbers count every ``---`` section
    (empty ones too, though they hold no object), starting at 1. ``fast``: use libyaml
    when PyYAML has it."""
    docs: list[Document] = []
    problems: list[str] = []
    number = 0
    current = 1
    loader_class = _LOADERS[0] if fast else _PureLoader
    try:
        loader = loader_class(text)
    except yaml.YAMLError as err:
        return [], [f"{label}: {_yaml_error(err, text, loader_class.fast)}"]
    try:
        while True:
            current = number + 1
            if not loader.check_node():
                break
            number = current
            aliases_before, nodes_before = loader.aliases, loader.nodes
            node = loader.get_node()
            where = f"{label}, document {number}"
            refused = _measure(node, loader.aliases - aliases_before, loader.nodes - nodes_before)
            if refused:
                problems.append(f"{where}: refused: {refused}")
                continue
            try:
                data = _plain(loader.construct_document(node))
            except _ValueError as err:
                problems.append(f"{where}: {err}")
                continue
            if data is not None:
                docs.append(Document(where, data))
    except yaml.reader.ReaderError as err:  # about the text as a whole, not one document
        problems.append(f"{label}: {_yaml_error(err, text, loader.fast)}")
    except yaml.YAMLError as err:
        problems.append(f"{label}, document {current}: {_yaml_error(err, text, loader.fast)}")
    except RecursionError:
        problems.append(f"{label}, document {current}: refused: the YAML is nested too deeply")
    finally:
        loader.dispose()
    return docs, problems
