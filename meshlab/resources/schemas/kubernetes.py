"""The part of the Kubernetes API this project uses: Namespace, ServiceAccount, Service and
Deployment (with its pod template).

Fields MeshLab reads are typed; common fields it only passes through (resources,
securityContext, tolerations...) are accepted as given; anything else is an unknown field,
as with ``kubectl apply --validate=strict``.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from meshlab.resources.schemas.common import (
    IntOrName,
    LabelMap,
    Opaque,
    OpaqueList,
    OpaqueMap,
    Port,
    Strict,
    TemplateMeta,
    TypeMeta,
    dns1123_label_problem,
    dns1123_subdomain_problem,
    fail,
    iana_svc_name_problem,
    one_of,
)

PROTOCOLS = ("TCP", "UDP", "SCTP")


# ---- Namespace, ServiceAccount ----


class NamespaceSpec(Strict):
    finalizers: list[str] | None = None


class NamespaceObject(TypeMeta):
    spec: NamespaceSpec | None = None
    status: Opaque = None


class ServiceAccountObject(TypeMeta):
    automountServiceAccountToken: bool | None = None
    imagePullSecrets: OpaqueList | None = None
    secrets: OpaqueList | None = None


# ---- Service ----


class ServicePort(Strict):
    name: str | None = None
    protocol: one_of(*PROTOCOLS) | None = None
    appProtocol: str | None = None
    port: Port
    targetPort: IntOrName | None = None
    nodePort: Port | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        problem = value and dns1123_label_problem(value)
        if problem:
            raise fail("port_name", problem)
        return value


class ServiceSpec(Strict):
    selector: LabelMap | None = None
    ports: list[ServicePort] | None = None
    type: one_of("ClusterIP", "NodePort", "LoadBalancer", "ExternalName") | None = None
    clusterIP: str | None = None
    clusterIPs: list[str] | None = None
    externalName: str | None = None
    externalIPs: list[str] | None = None
    sessionAffinity: one_of("None", "ClientIP") | None = None
    sessionAffinityConfig: OpaqueMap | None = None
    externalTrafficPolicy: one_of("Cluster", "Local") | None = None
    internalTrafficPolicy: one_of("Cluster", "Local") | None = None
    ipFamilies: list[str] | None = None
    ipFamilyPolicy: str | None = None
    loadBalancerIP: str | None = None
    loadBalancerSourceRanges: list[str] | None = None
    loadBalancerClass: str | None = None
    allocateLoadBalancerNodePorts: bool | None = None
    healthCheckNodePort: int | None = None
    publishNotReadyAddresses: bool | None = None
    trafficDistribution: str | None = None

    @model_validator(mode="after")
    def _ports(self) -> ServiceSpec:
        headless = self.clusterIP == "None"
        if not self.ports:
            if self.type != "ExternalName" and not headless:
                raise fail("ports", "a Service needs at least one port", field="ports")
            return self
        names = [p.name for p in self.ports]
        if len(self.ports) > 1 and not all(names):
            raise fail(
                "ports", "every port needs a name when a Service has several ports", field="ports"
            )
        duplicates = sorted({n for n in names if n and names.count(n) > 1})
        if duplicates:
            raise fail("ports", f"duplicate port name {duplicates[0]!r}", field="ports")
        return self


class ServiceObject(TypeMeta):
    spec: ServiceSpec
    status: Opaque = None


# ---- Deployment and its pod template ----


class ContainerPort(Strict):
    containerPort: Port
    name: str | None = None
    protocol: one_of(*PROTOCOLS) | None = None
    hostPort: Port | None = None
    hostIP: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        problem = value is not None and iana_svc_name_problem(value)
        if problem:
            raise fail("port_name", problem)
        return value


class EnvVar(Strict):
    name: str
    value: str | None = None
    valueFrom: OpaqueMap | None = None


class HTTPGetAction(Strict):
    path: str | None = None
    port: IntOrName
    host: str | None = None
    scheme: one_of("HTTP", "HTTPS") | None = None
    httpHeaders: OpaqueList | None = None


class TCPSocketAction(Strict):
    port: IntOrName
    host: str | None = None


class ExecAction(Strict):
    command: list[str] | None = None


class GRPCAction(Strict):
    port: Port
    service: str | None = None


class Probe(Strict):
    httpGet: HTTPGetAction | None = None
    tcpSocket: TCPSocketAction | None = None
    exec: ExecAction | None = None
    grpc: GRPCAction | None = None
    initialDelaySeconds: int | None = Field(default=None, ge=0)
    periodSeconds: int | None = Field(default=None, ge=0)
    timeoutSeconds: int | None = Field(default=None, ge=0)
    successThreshold: int | None = Field(default=None, ge=0)
    failureThreshold: int | None = Field(default=None, ge=0)
    terminationGracePeriodSeconds: int | None = None

    @model_validator(mode="after")
    def _one_handler(self) -> Probe:
        handlers = [h for h in ("httpGet", "tcpSocket", "exec", "grpc") if getattr(self, h)]
        if len(handlers) != 1:
            raise fail(
                "probe",
                "a probe needs exactly one of httpGet, tcpSocket, exec, grpc"
                + (f" (found {', '.join(handlers)})" if handlers else ""),
            )
        return self


class Container(Strict):
    name: str
    image: str
    imagePullPolicy: one_of("Always", "IfNotPresent", "Never") | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    workingDir: str | None = None
    ports: list[ContainerPort] | None = None
    env: list[EnvVar] | None = None
    envFrom: OpaqueList | None = None
    readinessProbe: Probe | None = None
    livenessProbe: Probe | None = None
    startupProbe: Probe | None = None
    resources: OpaqueMap | None = None
    resizePolicy: OpaqueList | None = None
    securityContext: OpaqueMap | None = None
    volumeMounts: OpaqueList | None = None
    volumeDevices: OpaqueList | None = None
    lifecycle: OpaqueMap | None = None
    restartPolicy: str | None = None
    terminationMessagePath: str | None = None
    terminationMessagePolicy: str | None = None
    stdin: bool | None = None
    stdinOnce: bool | None = None
    tty: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        problem = dns1123_label_problem(value)
        if problem:
            raise fail("container_name", problem)
        return value


class PodSpec(Strict):
    containers: list[Container] = Field(min_length=1)
    initContainers: list[Container] | None = None
    serviceAccountName: str | None = None
    serviceAccount: str | None = None  # deprecated alias of serviceAccountName
    automountServiceAccountToken: bool | None = None
    restartPolicy: one_of("Always", "OnFailure", "Never") | None = None
    terminationGracePeriodSeconds: int | None = Field(default=None, ge=0)
    activeDeadlineSeconds: int | None = None
    volumes: OpaqueList | None = None
    nodeSelector: LabelMap | None = None
    nodeName: str | None = None
    tolerations: OpaqueList | None = None
    affinity: OpaqueMap | None = None
    topologySpreadConstraints: OpaqueList | None = None
    securityContext: OpaqueMap | None = None
    imagePullSecrets: OpaqueList | None = None
    dnsPolicy: str | None = None
    dnsConfig: OpaqueMap | None = None
    hostname: str | None = None
    subdomain: str | None = None
    hostAliases: OpaqueList | None = None
    hostNetwork: bool | None = None
    hostPID: bool | None = None
    hostIPC: bool | None = None
    hostUsers: bool | None = None
    shareProcessNamespace: bool | None = None
    priorityClassName: str | None = None
    priority: int | None = None
    preemptionPolicy: str | None = None
    schedulerName: str | None = None
    runtimeClassName: str | None = None
    enableServiceLinks: bool | None = None
    readinessGates: OpaqueList | None = None
    overhead: OpaqueMap | None = None
    os: OpaqueMap | None = None
    setHostnameAsFQDN: bool | None = None
    schedulingGates: OpaqueList | None = None
    resourceClaims: OpaqueList | None = None
    resources: OpaqueMap | None = None
    ephemeralContainers: OpaqueList | None = None

    @field_validator("serviceAccountName", "serviceAccount")
    @classmethod
    def _service_account(cls, value: str | None) -> str | None:
        problem = value and dns1123_subdomain_problem(value)
        if problem:
            raise fail("service_account", problem)
        return value

    @property
    def service_account(self) -> str:
        """The pod's service account: ``default`` when none is named, as in Kubernetes."""
        return self.serviceAccountName or self.serviceAccount or "default"


class PodTemplateSpec(Strict):
    metadata: TemplateMeta | None = None
    spec: PodSpec


class LabelSelector(Strict):
    matchLabels: LabelMap | None = None
    matchExpressions: OpaqueList | None = None


class DeploymentSpec(Strict):
    replicas: int | None = Field(default=None, ge=0)
    selector: LabelSelector
    template: PodTemplateSpec
    strategy: OpaqueMap | None = None
    revisionHistoryLimit: int | None = Field(default=None, ge=0)
    minReadySeconds: int | None = Field(default=None, ge=0)
    progressDeadlineSeconds: int | None = Field(default=None, ge=0)
    paused: bool | None = None

    @model_validator(mode="after")
    def _selector_matches(self) -> DeploymentSpec:
        wanted = self.selector.matchLabels or {}
        if not wanted and not self.selector.matchExpressions:
            raise fail(
                "selector", "an empty selector is invalid for a Deployment", field="selector"
            )
        labels = (self.template.metadata.labels if self.template.metadata else None) or {}
        missing = {k: v for k, v in wanted.items() if labels.get(k) != v}
        if missing:
            shown = ", ".join(f"{k}={v}" for k, v in missing.items())
            raise fail(
                "selector",
                f"the selector does not match the template labels (missing {shown})",
                field="template.metadata.labels",
            )
        if self.template.spec.restartPolicy not in (None, "Always"):
            raise fail(
                "restart_policy",
                f"a Deployment only allows 'Always', got {self.template.spec.restartPolicy!r}",
                field="template.spec.restartPolicy",
            )
        return self


class DeploymentObject(TypeMeta):
    spec: DeploymentSpec
    status: Opaque = None
