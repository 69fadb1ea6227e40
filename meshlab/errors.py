"""Errors that MeshLab reports to learners.

Every error a user can cause by their input or environment is a ``MeshlabError``: the CLI
prints its message (no traceback) and exits non-zero; notebooks show the message.
"""

from __future__ import annotations


class MeshlabError(Exception):
    """A problem the user can act on; ``str(err)`` is the whole explanation."""

    exit_code = 1


class ResourceError(MeshlabError):
    """A manifest is invalid: bad YAML, unknown kind, bad field, ...

    ``problems`` holds one line per problem, each naming the file, the document and the field.
    """

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class NotFoundError(MeshlabError):
    """A workload, resource or capture target does not exist."""


class NotSupportedError(MeshlabError):
    """Valid for Istio, but the embedded mesh does not simulate it."""


class MeshTimeoutError(MeshlabError):
    """A change did not take effect in time (e.g. a sidecar did not load new config)."""


class DaemonError(MeshlabError):
    """The embedded mesh daemon is not running, not reachable, or failed."""


class ClusterError(MeshlabError):
    """The kubernetes backend cannot use the cluster (no kubeconfig, unreachable, no Istio...)."""
