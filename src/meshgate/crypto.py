"""Encryption at rest: the cipher that seals task data and secret registration metadata.

Values are sealed with Fernet (AES-128-CBC with HMAC-SHA256, from `cryptography`) under
MultiFernet: the first configured key seals, every configured key opens, which is the whole
rotation story. A sealed value is text starting with `mgenc1:`; anything else is a value
written before a key was configured and is read as it is, so a store holds mixed data
safely. A value sealed with a key that is no longer configured raises `Undecryptable` for
that value alone; the stores turn it into a clear error on that record.

Secret registration metadata is marked by its key: a metadata key starting with `secret_`
(`secret_token`, `secret_api_key`) is sealed at rest and shown as "[secret]" by the API.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from meshgate.errors import ConfigError, Undecryptable

__all__ = [
    "MASK",
    "PLAIN",
    "SEALED",
    "SECRET_PREFIX",
    "Cipher",
    "Undecryptable",
    "check_key",
    "generate_key",
    "is_secret",
    "mask",
    "read_key_file",
]

SEALED = "mgenc1:"
SECRET_PREFIX = "secret_"
MASK = "[secret]"


def generate_key() -> str:
    """A new random key, as `encryption_keys` takes it (32 bytes, URL-safe base64)."""
    return Fernet.generate_key().decode()


def read_key_file(path: str | Path) -> list[str]:
    """The keys of a key file: one a line, the first seals; blank lines and `#` comments are
    skipped. ConfigError when it cannot be read."""
    try:
        text = Path(path).expanduser().read_text()
    except OSError as e:
        raise ConfigError(f"encryption key file {path} cannot be read: {e.strerror or e}") from None
    keys = [line.strip() for line in text.splitlines()]
    return [k for k in keys if k and not k.startswith("#")]


def check_key(key: str, where: str) -> None:
    """ConfigError (which never repeats the key) when `key` is not a Fernet key."""
    try:
        Fernet(key.encode())
    except (ValueError, TypeError):
        raise ConfigError(
            f"{where} is not an encryption key: a key is 32 random bytes in URL-safe base64 "
            "(44 characters); `meshgate encryption-key` prints a new one"
        ) from None


class Cipher:
    """Seals and opens stored values; without keys it stores values as they are."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        keys = list(keys)
        for n, key in enumerate(keys, 1):
            check_key(key, f"encryption key {n}")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys]) if keys else None
        self.key_count = len(keys)

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def seal(self, text: str) -> str:
        """`text` sealed with the first key (as it is without keys). A value sealed already
        (one that could not be opened when it was read) is kept as it is, not sealed twice."""
        if self._fernet is None or text.startswith(SEALED):
            return text
        return SEALED + self._fernet.encrypt(text.encode()).decode()

    def open(self, stored: str) -> str:
        """The text of a stored value; a value stored in the clear is returned as it is."""
        if not stored.startswith(SEALED):
            return stored
        if self._fernet is None:
            raise Undecryptable("the value is encrypted and no encryption key is configured")
        try:
            return self._fernet.decrypt(stored[len(SEALED) :].encode()).decode()
        except InvalidToken:
            raise Undecryptable(
                "the value is encrypted with a key that is not among the configured encryption keys"
            ) from None

    def seal_json(self, value: Any) -> str:
        return self.seal(json.dumps(value))

    def open_json(self, stored: str) -> Any:
        return json.loads(self.open(stored))

    def rotate(self, stored: str) -> str:
        """`stored` sealed anew with the first key (a clear value is sealed); for re-encrypting
        stores after a key is added."""
        return self.seal(self.open(stored))

    # -- secret registration metadata ----------------------------------------------------------

    def seal_metadata(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """Metadata with each secret value sealed (as JSON text); as it is without keys."""
        if self._fernet is None:
            return dict(metadata)
        return {
            k: self.seal_json(v) if is_secret(k) and not _sealed(v) else v
            for k, v in metadata.items()
        }

    def open_metadata(self, metadata: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """(metadata with secret values opened, the keys whose values could not be opened:
        those stay sealed)."""
        out: dict[str, Any] = {}
        failed: list[str] = []
        for k, v in metadata.items():
            if is_secret(k) and isinstance(v, str) and v.startswith(SEALED):
                try:
                    v = self.open_json(v)
                except Undecryptable:
                    failed.append(k)
            out[k] = v
        return out, failed


PLAIN = Cipher()
"""The cipher of a gateway without keys: values are stored as they are."""


def _sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SEALED)


def is_secret(key: str) -> bool:
    """Whether a metadata key marks a secret value."""
    return key.startswith(SECRET_PREFIX)


def mask(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata as the API shows it: every secret value replaced by "[secret]"."""
    return {k: MASK if is_secret(k) else v for k, v in metadata.items()}
