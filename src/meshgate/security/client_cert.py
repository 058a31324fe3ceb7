"""The client certificate a request came with, read from the ASGI scope's `tls` extension
(the listener fills it in; see api/listener.py). Authentication maps it to a principal."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClientCert:
    """A verified client certificate: what identifies its holder."""

    subject: str
    """The subject as an RFC 4514 string, e.g. `CN=agent-1,O=Example`."""
    common_name: str | None
    sans: tuple[str, ...]
    """Subject alternative names as `TYPE:value`, e.g. `DNS:agent.example`,
    `URI:spiffe://example/agent`, `email:a@example`, `IP Address:10.0.0.1`."""
    fingerprint_sha256: str
    """SHA-256 of the certificate's DER bytes, lower-case hex: pins one certificate."""


def client_certificate(scope: Mapping[str, Any]) -> ClientCert | None:
    """The verified client certificate of the connection `scope` came over, or None (plain
    HTTP, or TLS without a client certificate)."""
    tls = scope.get("extensions", {}).get("tls")
    if not isinstance(tls, Mapping) or tls.get("client_cert_error") is not None:
        return None
    subject = tls.get("client_cert_name")
    fingerprint = tls.get("client_cert_fingerprint")
    if not isinstance(subject, str) or not isinstance(fingerprint, str):
        return None
    return ClientCert(
        subject=subject,
        common_name=tls.get("client_cert_common_name"),
        sans=tuple(tls.get("client_cert_sans", ())),
        fingerprint_sha256=fingerprint,
    )
