"""Istio MeshLab: a hands-on Istio mutual TLS lab.

``meshlab.connect()`` returns a ``Mesh`` (the embedded local mesh by default, or your own
cluster with ``connect("kubernetes")``); see ``meshlab.api``.
"""

from meshlab.api import ApplyResult, CallResult, Mesh, MeshStatus, PodStatus, connect

__all__ = ["ApplyResult", "CallResult", "Mesh", "MeshStatus", "PodStatus", "connect"]
