"""URLs as they may be shown: in views, errors, logs and audit lines."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***` (`http://user:***@host`, and the value of a
    query option whose name says password, as `?sentinel_password=***`): a registration, a
    Redis URL or an audit field may carry credentials that must not be shown."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc and "password" not in parts.query.lower():
        return url
    if "password" in parts.query.lower():
        query = [
            (k, "***" if "password" in k.lower() else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    if "@" in parts.netloc:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if sep else f"{user}@{hostport}"
        parts = parts._replace(netloc=netloc)
    return parts.geturl()
