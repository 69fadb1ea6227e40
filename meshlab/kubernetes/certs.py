"""The workload certificate a sidecar holds, read from its Envoy admin config dump.

On a cluster the sidecar's ``pilot-agent request GET config_dump?resource=dynamic_active_secrets``
answers what ``istioctl proxy-config secret`` reads: the SDS secrets ``default`` (the
workload's certificate chain, private key redacted) and ``ROOTCA`` (the mesh root).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from meshlab.errors import NotFoundError

SECRETS_DUMP = "config_dump?resource=dynamic_active_secrets"


def config_dump_argv(resource: str = "") -> list[str]:
    """The command that prints a sidecar's config dump (run in the istio-proxy container)."""
    path = "config_dump" if not resource else f"config_dump?resource={resource}"
    return ["pilot-agent", "request", "GET", path]


def _secrets(dump: dict[str, Any]) -> list[dict[str, Any]]:
    """Every active dynamic secret, from a full dump or a ``?resource=`` one."""
    found: list[dict[str, Any]] = []
    for config in dump.get("configs") or []:
        kind = str(config.get("@type", ""))
        if kind.endswith("SecretsConfigDump"):
            found += list(config.get("dynamic_active_secrets") or [])
        elif kind.endswith("SecretsConfigDump.DynamicSecret"):
            found.append(config)
    return found


def _data_source(source: dict[str, Any], what: str) -> bytes:
    if "inline_bytes" in source:
        try:
            return base64.b64decode(source["inline_bytes"], validate=True)
        except (binascii.Error, ValueError) as err:
            raise NotFoundError(f"{what}: inline_bytes is not base64 ({err})") from None
    if "inline_string" in source:
        return str(source["inline_string"]).encode()
    if "filename" in source:
        raise NotFoundError(f"{what} is read from the file {source['filename']} inside the proxy")
    raise NotFoundError(f"{what} has no certificate data")


def secret_pem(dump: dict[str, Any], name: str = "default") -> bytes:
    """The PEM of SDS secret ``name``: the certificate chain of ``default``, the trusted CA of
    ``ROOTCA``. Raises ``NotFoundError`` when the sidecar has no such secret (yet)."""
    names = []
    for entry in _secrets(dump):
        names.append(str(entry.get("name", "")))
        if entry.get("name") != name:
            continue
        secret = entry.get("secret") or {}
        if "tls_certificate" in secret:
            chain = (secret["tls_certificate"] or {}).get("certificate_chain") or {}
            return _data_source(chain, f"secret {name!r}")
        if "validation_context" in secret:
            trusted = (secret["validation_context"] or {}).get("trusted_ca") or {}
            return _data_source(trusted, f"secret {name!r}")
        raise NotFoundError(f"secret {name!r} holds neither a certificate nor a CA")
    have = ", ".join(names) if names else "none"
    raise NotFoundError(f"the sidecar has no active SDS secret {name!r} (its secrets: {have})")
