"""A throw-away certificate authority for tests and benchmarks: a CA, a server certificate for
127.0.0.1 and localhost, and client certificates, written as PEM files."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class CertFiles:
    """One certificate's PEM files: the chain and its private key."""

    cert: Path
    key: Path


class TestCA:
    """A CA whose files live in `directory`."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "meshgate test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._ca = trustme.CA(organization_name=name)
        self.ca_file = directory / f"{name.replace(' ', '-')}.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, name: str, *identities: str, common_name: str | None = None) -> CertFiles:
        """A certificate for `identities` (host names, IP addresses, e-mail addresses)."""
        cert = self._ca.issue_cert(*(identities or (name,)), common_name=common_name)
        files = CertFiles(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        cert.private_key_and_cert_chain_pem.write_to_path(str(files.cert))
        cert.private_key_pem.write_to_path(str(files.key))
        return files

    def server(self) -> CertFiles:
        """A certificate for the gateway on loopback."""
        return self.issue("server", "127.0.0.1", "localhost")

    def client_context(self, client: CertFiles | None = None) -> ssl.SSLContext:
        """A client's context trusting this CA, presenting `client` if given."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client is not None:
            ctx.load_cert_chain(client.cert, client.key)
        return ctx
