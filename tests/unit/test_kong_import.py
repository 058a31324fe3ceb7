"""`meshgate import kong`: Kong declarative files (written from Kong's documentation, in
tests/unit/kong/) converted to meshgate.toml fragments that meshgate's own loader accepts;
every construct without an equivalent listed; bad files refused with where they went wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.config import Settings, collect
from meshgate.config.kong import KongError, convert
from meshgate.config.kong_toml import Fragment

KONG = Path(__file__).parent / "kong"


def imported(name: str) -> Fragment:
    path = KONG / name
    return convert(path.read_text(), str(path))


def loaded(fragment: Fragment, tmp_path: Path) -> Settings:
    """The settings meshgate loads from the fragment's TOML (no problem at all, not even a
    warning)."""
    toml = tmp_path / "meshgate.toml"
    toml.write_text(fragment.to_toml())
    settings, problems = collect(None, toml, environ={})
    assert problems == [], [str(p) for p in problems]
    assert settings is not None
    return settings


def noted(fragment: Fragment, key: str, words: str) -> bool:
    return any(n.key == key and words in n.message for n in fragment.notes)


def test_a_service_and_its_route(tmp_path: Path) -> None:
    f = imported("minimal.yml")
    assert f.notes == []
    settings = loaded(f, tmp_path)
    (reg,) = settings.mesh.services
    assert (reg.name, reg.url, reg.check.type) == ("example-service", "http://httpbin.org", "tcp")
    (route,) = settings.edge.routes
    assert (route.name, route.service, route.paths) == (
        "example-route",
        "example-service",
        ("/mock",),
    )
    assert route.strip_path is True and route.preserve_host is False  # Kong's defaults
    policy = settings.service_policies["example-service"]
    assert policy.call_timeout_s == 120.0  # Kong's 60 s connect + 60 s read
    assert policy.retry.max_attempts == 6  # Kong's 5 retries


def test_an_upstream_with_weighted_targets_and_an_active_check(tmp_path: Path) -> None:
    f = imported("upstream_checks.yml")
    assert [str(n) for n in f.notes] == [
        "upstreams[0]: (service orders) the check GETs /v1/status: meshgate checks under the "
        "instance's URL, which has the service's path /v1"
    ]
    settings = loaded(f, tmp_path)
    regs = settings.mesh.services
    assert [(r.url, r.weight) for r in regs] == [
        ("http://10.0.0.11:8080/v1", 300),
        ("http://10.0.0.12:8080/v1", 100),
    ]
    check = regs[0].check
    assert (check.type, check.path, check.interval_s, check.timeout_s) == ("http", "/status", 5, 2)
    # Kong takes a target out at whichever failure count comes first.
    assert (check.unhealthy_after, check.healthy_after) == (2, 2)
    policy = settings.service_policies["orders"]
    assert policy.strategy == "weighted"
    assert policy.call_timeout_s == 20.0 and policy.retry.max_attempts == 3
    (route,) = settings.edge.routes
    assert route.hosts == ("api.example.com",) and route.methods == ("GET", "POST")


def test_every_construct(tmp_path: Path) -> None:
    f = imported("everything.yml")
    settings = loaded(f, tmp_path)
    regs = {(r.name, r.url): r for r in settings.mesh.services}
    assert set(regs) == {
        ("billing", "http://billing-1.internal:9000/api"),
        ("billing", "http://billing-2.internal:8000/api"),  # Kong's default target port
        ("search", "https://10.1.0.5:8080"),
        ("search", "https://10.1.0.6:8080"),
        ("reports", "http://10.2.0.7:80"),
        ("reports", "http://10.2.0.8:80"),  # a top-level target
        ("Legacy-Service", "http://legacy.internal:8081"),
    }
    billing = regs[("billing", "http://billing-1.internal:9000/api")]
    assert (billing.weight, billing.check.type, billing.check.interval_s) == (50, "tcp", 2)
    assert billing.check.unhealthy_after == 2
    # 65000 and 7000 scaled into meshgate's 1..1000, in proportion.
    assert regs[("reports", "http://10.2.0.7:80")].weight == 1000
    assert regs[("reports", "http://10.2.0.8:80")].weight == 108
    policies = settings.service_policies
    assert policies["billing"].strategy == "least_connections"
    assert policies["billing"].breaker.failure_threshold == 5  # the passive check
    assert policies["billing"].retry.max_attempts == 10
    assert (policies["search"].strategy, policies["search"].hash_key) == (
        "consistent_hash",
        "client_ip",
    )
    assert policies["search"].call_timeout_s == 65.0
    assert policies["reports"].strategy == "p2c"
    routes = {r.name: r for r in settings.edge.routes}
    assert set(routes) == {"billing-public", "billing-admin", "reports-route", "legacy-route"}
    admin = routes["billing-admin"]
    assert admin.hosts == ("*.admin.example.com",) and admin.methods == ("GET",)
    assert admin.strip_path is False and admin.preserve_host is True
    assert routes["legacy-route"].hosts == ("legacy.example.com",)
    # /api/reports is meshgate's own path: the routes get a port of their own.
    edge = settings.edge.edge
    assert (edge.port, edge.on_main_port) == (8000, False)
    limits = {(x.match, x.rate_per_s, x.burst, x.per) for x in settings.security.limits}
    assert limits == {
        ("http:billing", 2.0, 120, "principal"),
        ("http:billing", 3000 / 3600, 3000, "principal"),
        ("http:reports", 5.0, 5, "principal"),
    }
    assert settings.mesh.max_body_bytes == 8 * 1024 * 1024
    assert f.auth == ["key-auth", "jwt"]
    for key, words in [
        ("consumers", "meshgate keys create"),
        ("upstreams[0].targets[2]", "weight 0"),
        ("upstreams[0].healthchecks.active", "every 2 s"),
        ("upstreams[3]", "used by no service"),
        ("services[0].retries", "at most 10"),
        ("services[0].routes[1].https_redirect_status_code", "no redirect"),
        ("services[1].routes[0].paths", "regex path"),
        ("services[1].routes[1].headers", "headers is not supported"),
        ("services[3]", "protocol 'grpc'"),
        ("services[4]", "'Legacy-Service'"),
        ("routes[1].hosts", "trailing wildcard"),
        ("routes[2]", "its service is not imported"),
        ("plugins[1]", "cors"),
        ("plugins[2]", "/metrics"),
        ("plugins[3]", "[auth]"),
        ("plugins[4]", "limit_by ip"),
        ("plugins[5]", "disabled"),
        ("plugins[6]", "not imported, nor is it"),  # its route was not
    ]:
        assert noted(f, key, words), (key, words, [str(n) for n in f.notes])
    text = f.to_toml()
    for note in f.notes:  # every note is in the output too, as a comment
        assert note.key in text


def test_the_json_form(tmp_path: Path) -> None:
    f = convert((KONG / "everything.json").read_text(), "kong.json")
    settings = loaded(f, tmp_path)
    regs = settings.mesh.services
    assert [(r.url, r.weight, r.check.path) for r in regs] == [
        ("http://127.0.0.1:9001", 10, "/healthz"),
        ("http://[::1]:9002", 100, "/healthz"),
    ]
    policy = settings.service_policies["orders"]
    assert (policy.strategy, policy.hash_key) == ("consistent_hash", "arg:customer")
    (limit,) = settings.security.limits
    assert (limit.match, limit.per, limit.rate_per_s) == ("http:orders", "target", 10.0)
    (route,) = settings.edge.routes
    assert route.strip_path is False


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("bad_version.yml", "bad_version.yml:1: _format_version: '1.1' is not supported"),
        (
            "unknown_service.yml",
            "unknown_service.yml:6: routes[0].service: no service named 'payments'",
        ),
        ("syntax_error.yml", "syntax_error.yml:8:1: invalid YAML"),
    ],
)
def test_bad_files_say_where(name: str, words: str) -> None:
    with pytest.raises(KongError) as e:
        imported(name)
    assert words in e.value.detail, e.value.detail


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("services: []\n", "_format_version: missing"),
        ('{"_format_version": "3.0",\n "services": [}', "kong.json:2:15: invalid JSON"),
        ("- a\n- b\n", "expected a mapping"),
        ('_format_version: "3.0"\nservices: {a: 1}\n', "services: expected a list"),
        ('_format_version: "3.0"\nservices:\n- name: x\n', "services[0]: a service gives url"),
        (
            '_format_version: "3.0"\ntargets:\n- target: a:1\n  upstream: nowhere\n',
            "targets[0].upstream: no upstream named 'nowhere'",
        ),
        (
            '_format_version: "3.0"\nservices:\n- {name: a, url: "http://a", connect_timeout: x}\n',
            "services[0].connect_timeout: expected milliseconds",
        ),
        (
            '_format_version: "3.0"\nplugins:\n- {name: cors, route: nowhere}\n',
            "kong.yml:3: plugins[0].route: no route named 'nowhere' in this file",
        ),
        (
            '_format_version: "3.0"\nplugins:\n- {name: rate-limiting, config: {minute: -1}}\n',
            "plugins[0]: plugins[0].config.minute: expected a positive number",
        ),
    ],
)
def test_bad_content_is_refused(text: str, words: str) -> None:
    with pytest.raises(KongError) as e:
        convert(text, "kong.json" if text.startswith("{") else "kong.yml")
    assert words in e.value.detail, e.value.detail
