"""URLs as they may be shown: in views, errors, logs and audit lines."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***` (`http://user:***@host`): a registration,
    a Redis URL or an audit field may carry credentials that must not be shown."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, _ = userinfo.partition(":")
    netloc = f"{user}:***@{hostport}" if sep else f"{user}@{hostport}"
    return parts._replace(netloc=netloc).geturl()
