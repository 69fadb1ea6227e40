"""The kubernetes backend: the ``Mesh`` API on a real cluster with Istio.

    mesh = meshlab.connect(backend="kubernetes", context="kind-meshlab")

Modules: ``connection`` (kubeconfig, REST), ``preconditions`` (cluster, Istio, istiod),
``apply`` (server-side apply, delete), ``rollout`` (Deployments), ``pods`` (status, which pod),
``exec`` and ``calls`` (requests from a pod), ``capture`` (tcpdump in an ephemeral container),
``certs`` and ``inforce`` (sidecar admin), ``meshconfig`` (istiod's meshConfig ConfigMap),
``images`` and ``cli`` (`meshlab images build`).
"""

from meshlab.kubernetes.client import KubernetesMesh

__all__ = ["KubernetesMesh"]
