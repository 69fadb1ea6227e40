"""Load and validate manifests: the only place MeshLab reads YAML.

    from meshlab.resources import load
    resources = load("deployments/")            # a file, a folder, a list, or YAML text
    resources = load(text, namespace="legacy")  # like kubectl apply -n legacy

``load`` is all-or-nothing: any problem in any document raises ``ResourceError`` listing
every problem found, one line each (file, document, object, field, what was expected).
"""

from __future__ import annotations

from meshlab.errors import ResourceError
from meshlab.resources.kinds import KINDS, KindInfo, resolve_kind
from meshlab.resources.loader import Source, read_documents
from meshlab.resources.resource import Resource
from meshlab.resources.schemas.common import dns1123_label_problem
from meshlab.resources.validate import validate_document

__all__ = ["KINDS", "KindInfo", "Resource", "load", "resolve_kind"]


def load(source: Source, namespace: str | None = None) -> list[Resource]:
    """Read and validate every object in ``source``.

    ``source``: a file, a folder (its ``*.yaml``/``*.yml`` files, sorted, not recursive), a
    list of those, or YAML text (a string with a newline, or starting with ``apiVersion``).
    ``namespace``: like ``kubectl -n``: the namespace of namespaced objects that name none;
    an object naming another namespace is an error. Without it they go to ``default``.
    """
    namespace = namespace or None
    if namespace is not None:
        problem = dns1123_label_problem(namespace) if isinstance(namespace, str) else "not a string"
        if problem:
            raise ResourceError([f"namespace {namespace!r}: {problem}"])
    resources: list[Resource] = []
    problems: list[str] = []
    labels: list[str] = []
    for label, documents, unreadable in read_documents(source):
        labels.append(label)
        for doc in documents:
            found, bad = validate_document(doc, namespace)
            resources += found
            problems += bad
        problems += unreadable  # a syntax error stops reading after the documents before it
    first: dict[tuple[str, str | None, str], Resource] = {}
    for resource in resources:
        other = first.setdefault(resource.key, resource)
        if other is not resource:
            ns = f"{resource.namespace}/" if resource.namespace else ""
            problems.append(
                f"{resource.source} ({resource.kind} {resource.name}): duplicate object: "
                f"{resource.kind} {ns}{resource.name} is already defined in {other.source}"
            )
    if not resources and not problems:
        where = ", ".join(label for label in labels if label) or "the input"
        problems.append(f"{where}: no objects found (empty, or only comments)")
    if problems:
        raise ResourceError(problems)
    return resources
