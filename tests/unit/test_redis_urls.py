"""Redis URLs: the Sentinel form taken apart, refused clearly when malformed, accepted by every
setting that names a Redis, and shown without its passwords."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.config import collect
from meshgate.config.redis import (
    RedisUrlError,
    SentinelTarget,
    check_redis_url,
    is_redis_url,
    parse_sentinel_url,
)
from meshgate.config.settings import MeshSettings
from meshgate.config.tls import redis_options
from meshgate.urls import redact_url


def test_a_sentinel_url_names_sentinels_master_database_and_credentials() -> None:
    target = parse_sentinel_url(
        "rediss+sentinel://app:s3cret@10.0.0.1:26380,[::1]:26381,sentinel-c/orders/2"
        "?sentinel_password=other"
    )
    assert target == SentinelTarget(
        sentinels=[("10.0.0.1", 26380), ("::1", 26381), ("sentinel-c", 26379)],
        master="orders",
        db=2,
        username="app",
        password="s3cret",
        sentinel_password="other",
        tls=True,
    )
    plain = parse_sentinel_url("redis+sentinel://:pw@h:1/m")
    assert (plain.db, plain.username, plain.password, plain.tls) == (0, None, "pw", False)
    assert "s3cret" not in repr(target) and "other" not in repr(target)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://h:26379", "the master name is missing"),
        ("redis+sentinel://h:26379/", "the master name is missing"),
        ("redis+sentinel://h:port/m", "the port is not a number"),
        ("redis+sentinel://h:70000/m", "the port is not a number"),
        ("redis+sentinel://h:1,,h2:2/m", "a sentinel address is empty"),
        ("redis+sentinel://:1/m", "has no host"),
        ("redis+sentinel://h/m/zero", "database 'zero' is not a number"),
        ("redis+sentinel://h/m/0/extra", "the path is /MASTER_NAME or /MASTER_NAME/DB"),
        ("redis+sentinel://h/m?ssl=1", "unknown option 'ssl'"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_with_what_is_wrong(url: str, reason: str) -> None:
    with pytest.raises(RedisUrlError, match=reason):
        check_redis_url(url)


def test_every_redis_setting_accepts_the_sentinel_form_and_reports_a_bad_one() -> None:
    url = "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/meshgate/0"
    assert is_redis_url(url) and is_redis_url("rediss+sentinel://h/m")
    for var in ("MESHGATE_REGISTRY", "MESHGATE_QUEUE", "MESHGATE_RATE_LIMIT_STORE"):
        settings, problems = collect(None, None, environ={var: url})
        assert problems == [] and settings is not None, var
    settings, _ = collect(None, None, environ={"MESHGATE_REGISTRY": url})
    assert settings is not None and settings.rate_limit_store == url  # follows the registry
    _, problems = collect(
        None, None, environ={"MESHGATE_QUEUE": "redis+sentinel://:hunter2@h:1?x=1"}
    )
    assert [p.key for p in problems] == ["mesh.queue"]
    assert "the master name is missing" in problems[0].reason
    assert "hunter2" not in problems[0].reason


def test_passwords_in_redis_urls_are_redacted() -> None:
    assert (
        redact_url("redis+sentinel://:pw@h1:1,h2:2/m/0?sentinel_password=sp")
        == "redis+sentinel://:***@h1:1,h2:2/m/0?sentinel_password=***"
    )
    assert redact_url("rediss://user:pw@h:6380/0") == "rediss://user:***@h:6380/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_the_ca_bundle_goes_to_tls_sentinel_urls_too(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    mesh = MeshSettings(redis_ca_file=str(ca))
    assert redis_options("rediss+sentinel://h/m", mesh) == {"ssl_ca_certs": str(ca)}
    assert redis_options("rediss://h:6380/0", mesh) == {"ssl_ca_certs": str(ca)}
    assert redis_options("redis+sentinel://h/m", mesh) == {}
