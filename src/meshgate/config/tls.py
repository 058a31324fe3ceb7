"""The TLS contexts the settings describe: the listener's (HTTPS, client certificates) and the
one every https upstream and `rediss://` connection is made with. Built once at start-up, so
that an unreadable or mismatched file is a clear start-up error rather than a failed call."""

from __future__ import annotations

import ssl
from pathlib import Path

from meshgate.config.settings import MeshSettings
from meshgate.errors import ConfigError


def _readable(setting: str, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{setting}: {path} is not a file")
    try:
        with p.open("rb"):
            pass
    except OSError as e:
        raise ConfigError(f"{setting}: cannot read {path}: {e.strerror}") from None


def _load_pair(ctx: ssl.SSLContext, cert_setting: str, cert: str, key: str) -> None:
    key_setting = cert_setting.replace("cert", "key")
    _readable(cert_setting, cert)
    _readable(key_setting, key)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        # OpenSSL says KEY_VALUES_MISMATCH for a key of another certificate, PEM_lib or
        # similar for a file that is not PEM.
        why = (
            "the key does not belong to the certificate"
            if "KEY_VALUES_MISMATCH" in str(e)
            else f"not a PEM certificate and key ({e.reason or e})"
        )
        raise ConfigError(f"{cert_setting}/{key_setting}: {cert}, {key}: {why}") from None


def _load_ca(ctx: ssl.SSLContext, setting: str, path: str) -> None:
    _readable(setting, path)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as e:
        raise ConfigError(f"{setting}: {path} is not a PEM CA bundle ({e.reason or e})") from None


def server_context(mesh: MeshSettings) -> ssl.SSLContext | None:
    """The listener's context, or None when the gateway serves plain HTTP."""
    if mesh.tls_cert is None or mesh.tls_key is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pair(ctx, "tls_cert", mesh.tls_cert, mesh.tls_key)
    if mesh.tls_client_ca is not None:
        _load_ca(ctx, "tls_client_ca", mesh.tls_client_ca)
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if mesh.tls_client_cert == "required" else ssl.CERT_OPTIONAL
        )
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def upstream_context(mesh: MeshSettings) -> ssl.SSLContext | None:
    """The context https upstreams are called with, or None when no setting changes the
    default (the system's trust store, no client certificate)."""
    if mesh.upstream_ca_file is None and mesh.upstream_client_cert is None:
        return None
    ctx = ssl.create_default_context()
    if mesh.upstream_ca_file is not None:
        _load_ca(ctx, "upstream_ca_file", mesh.upstream_ca_file)
    if mesh.upstream_client_cert is not None and mesh.upstream_client_key is not None:
        _load_pair(ctx, "upstream_client_cert", mesh.upstream_client_cert, mesh.upstream_client_key)
    return ctx


def redis_options(url: str, mesh: MeshSettings) -> dict[str, str]:
    """Keyword arguments `config.redis.redis_client` needs for `url`: the CA bundle of a
    `rediss://` or `rediss+sentinel://` URL (for `rediss://`, a `ssl_ca_certs=` in the URL's
    query wins, as redis-py reads it)."""
    if not url.startswith(("rediss://", "rediss+sentinel://")) or mesh.redis_ca_file is None:
        return {}
    _readable("redis_ca_file", mesh.redis_ca_file)
    return {"ssl_ca_certs": mesh.redis_ca_file}
