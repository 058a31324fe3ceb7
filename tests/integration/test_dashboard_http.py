"""The dashboard's files and what its page relies on, over plain HTTP against a real gateway:
the files served to anyone under a strict policy (they hold no data), the data behind them
only with a credential, conditional reads (ETag, 304), and the page's own writes (cancel,
retry) passing the cross-site guard as same-origin requests while another site's do not."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from meshgate.api import dashboard
from meshgate.testing.gateway import create_key
from tests.gateway import Gateway, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
POLICY = """
[auth]

[roles.viewer]
allow = ["mesh:discover"]
"""


@dataclass
class Secured:
    gw: Gateway
    admin: str
    viewer: str


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("dashboard_auth")
    with run_gateway(tmp, {"fault": fault_server()}, POLICY) as gw:
        data = tmp / "data"
        yield Secured(
            gw,
            admin=create_key(data, "ops", "--role", "admin"),
            viewer=create_key(data, "viewer", "--role", "viewer"),
        )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_page_and_its_files_are_served_to_anyone_and_hold_no_data(secured: Secured) -> None:
    http = secured.gw.http
    r = http.get("/ui")
    assert r.status_code in (307, 308) and r.headers["location"].endswith("/ui/")
    page = http.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    # Everything the page loads comes from here: no other origin, no inline script or style.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
    assert "<script>" not in page.text and " style=" not in page.text
    files = dashboard.load()
    assert {"index.html", "app.js", "app.css"} <= set(files)
    kinds = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name in files:
        asset = http.get(f"/ui/{name}")
        assert asset.status_code == 200, name
        kind = kinds.get(Path(name).suffix, "text/html")
        assert asset.headers["content-type"].startswith(kind), name
        # Nothing of the page is fetched from elsewhere, whatever file asks for it (an SVG
        # namespace is a name, not an address).
        text = asset.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), name
        assert "import(" not in asset.text and "eval(" not in asset.text, name
    # The data is not: the same API as every client, with the same credential.
    assert http.get(f"{API}/services").status_code == 401
    assert http.get(f"{API}/services", headers=bearer(secured.viewer)).status_code == 200


def test_only_the_page_s_own_files_are_served(secured: Secured) -> None:
    http = secured.gw.http
    for path in (
        "/ui/nothing.js",
        "/ui/..%2fdashboard.py",
        "/ui/%2e%2e/dashboard.py",
        "/ui/__init__.py",
        "/ui/.hidden",
    ):
        r = http.get(path)
        assert r.status_code in (401, 404), (path, r.status_code)
        assert "import" not in r.text and "def " not in r.text
    r = http.get("/ui/nothing.js")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert "nothing.js" in r.json()["detail"]
    # Paths beside the page's tree are not opened by its exemption from credentials.
    assert http.get("/uix").status_code in (401, 404)
    assert http.get("/ui-admin/").status_code in (401, 404)


def test_the_files_revalidate_with_a_304(secured: Secured) -> None:
    http = secured.gw.http
    first = http.get("/ui/app.js")
    tag = first.headers["etag"]
    again = http.get("/ui/app.js", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    assert http.get("/ui/app.js", headers={"If-None-Match": '"other"'}).status_code == 200


def test_reads_carry_an_etag_and_answer_304_while_unchanged(secured: Secured) -> None:
    http, key = secured.gw.http, bearer(secured.admin)
    first = http.get(f"{API}/topology", headers=key)
    tag = first.headers["etag"]
    assert tag.startswith('W/"')
    same = http.get(f"{API}/topology", headers={**key, "If-None-Match": tag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == tag
    assert "content-type" not in same.headers
    # A change in what the read shows is a new tag and a whole answer.
    r = http.post(
        f"{API}/register",
        json={"name": "etag-check", "url": "http://127.0.0.1:9", "check": {"type": "tcp"}},
        headers=key,
    )
    assert r.status_code in (200, 201), r.text
    changed = http.get(f"{API}/topology", headers={**key, "If-None-Match": tag})
    assert changed.status_code == 200 and "etag-check" in changed.json()["services"]
    assert changed.headers["etag"] != tag
    # Not a credential's way around the chain: without one, a known tag still gets 401.
    assert http.get(f"{API}/topology", headers={"If-None-Match": tag}).status_code == 401
    # Writes and refusals carry no tag.
    assert "etag" not in r.headers
    assert "etag" not in http.get(f"{API}/services/nobody", headers=key).headers


def test_the_page_s_own_writes_pass_and_another_site_s_do_not(tmp_path: Path) -> None:
    """Served on a name (not loopback), the page's cancel and retry send their own origin:
    that passes; a page on another site cannot make the same request."""
    policy = '[mesh]\nallowed_hosts = ["mesh.internal", "127.0.0.1"]\n'
    with run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw:
        port = gw.url.rsplit(":", 1)[1]
        host = {"Host": f"mesh.internal:{port}"}
        body = {"target": {"server": "fault", "tool": "echo", "arguments": {"text": "x"}}}
        own = {**host, "Origin": f"http://mesh.internal:{port}"}
        r = gw.http.post(f"{API}/enqueue", json=body, headers=own)
        assert r.status_code == 202, r.text
        other = {**host, "Origin": "http://evil.example"}
        r = gw.http.post(f"{API}/enqueue", json=body, headers=other)
        assert r.status_code == 403 and r.json()["type"].endswith("/origin-not-allowed")
        # An origin that only looks like ours: another port, another scheme's default.
        for origin in (f"http://mesh.internal:{int(port) + 1}", "http://mesh.internal"):
            r = gw.http.post(f"{API}/enqueue", json=body, headers={**host, "Origin": origin})
            assert r.status_code == 403, origin


def test_with_any_host_answered_no_origin_counts_as_the_page_s_own(tmp_path: Path) -> None:
    """With `allowed_hosts = ["*"]` a page whose name was rebound to the gateway would send
    a Host and an Origin that agree: that is not taken as the gateway's own page."""
    with run_gateway(tmp_path, {"fault": fault_server()}, '[mesh]\nallowed_hosts = ["*"]\n') as gw:
        headers = {"Host": "rebound.example:80", "Origin": "http://rebound.example:80"}
        body = {"target": {"server": "fault", "tool": "echo", "arguments": {"text": "x"}}}
        r = gw.http.post(f"{API}/enqueue", json=body, headers=headers)
        assert r.status_code == 403 and r.json()["type"].endswith("/origin-not-allowed")


def test_the_dashboard_can_be_turned_off(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {}, "[mesh]\ndashboard = false\n") as gw:
        assert gw.http.get("/ui/").status_code == 404
        assert gw.http.get("/ui/app.js").status_code == 404
        r = httpx.get(f"{gw.url}{API}/health")
        assert r.status_code == 200


def test_the_page_s_paths_take_no_writes_bodies_or_urls(secured: Secured) -> None:
    """Writes to the page's files, a huge or deeply nested body, another site's origin and a
    URL naming the gateway itself: each a bounded refusal, never a file other than its own."""
    http = secured.gw.http
    huge = b"x" * (2 * 1024 * 1024)
    nested = b"[" * 100_000 + b"]" * 100_000
    for body in (huge, nested):
        r = http.post("/ui/", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code in (405, 413), r.status_code
    r = http.put("/ui/app.js", content=b"alert(1)", headers={"Origin": "http://evil.example"})
    assert r.status_code in (403, 405), r.status_code
    assert http.get("/ui/app.js").text.count("alert(1)") == 0
    back = f"/ui/{secured.gw.url}/api/v1/mesh/v2/services"
    r = http.get(back)
    assert r.status_code in (401, 404) and "items" not in r.text
    r = http.get("/ui/", params={"next": f"{secured.gw.url}/api/v1/mesh/v2/services"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
