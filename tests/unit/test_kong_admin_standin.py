"""The stand-in of Kong's Admin API answers as Kong documents it: create-or-replace by PUT,
Kong's defaults filled in, 404s, a duplicate target 409, paged target lists, 204 deletes."""

from __future__ import annotations

import httpx

from meshgate.testing.kong_admin import KongAdmin
from tests.gateway import serve_app


def test_the_endpoints_answer_as_kong_documents_them() -> None:
    admin = KongAdmin(page_size=2)
    with serve_app(admin.app) as url, httpx.Client(base_url=url, timeout=10) as http:
        r = http.get("/upstreams/u")
        assert (r.status_code, r.json()) == (404, {"message": "Not found"})
        assert http.post("/upstreams/u/targets", json={"target": "a:1"}).status_code == 404
        assert http.put("/upstreams/u", json={"name": "other"}).status_code == 400
        r = http.put("/upstreams/u", json={"name": "u", "healthchecks": {"active": {"timeout": 3}}})
        assert r.status_code == 200
        created = r.json()
        assert created["algorithm"] == "round-robin"
        assert created["healthchecks"]["active"]["timeout"] == 3
        assert created["healthchecks"]["active"]["http_path"] == "/"  # Kong's default kept
        again = http.put("/upstreams/u", json={"name": "u"}).json()
        assert again["id"] == created["id"]  # replaced, not a second one
        assert http.get(f"/upstreams/{created['id']}").json()["name"] == "u"
        r = http.post("/upstreams/u/targets", json={"target": "a"})
        assert r.status_code == 201 and r.json()["target"] == "a:8000"
        assert r.json()["weight"] == 100
        assert http.post("/upstreams/u/targets", json={"target": "a:8000"}).status_code == 409
        assert http.post("/upstreams/u/targets", json={"weight": 1}).status_code == 400
        for t in ("b:1", "c:1"):
            assert http.post("/upstreams/u/targets", json={"target": t}).status_code == 201
        page = http.get("/upstreams/u/targets").json()
        assert [t["target"] for t in page["data"]] == ["a:8000", "b:1"]
        page = http.get(page["next"]).json()
        assert ([t["target"] for t in page["data"]], page["next"]) == (["c:1"], None)
        assert http.delete("/upstreams/u/targets/b:1").status_code == 204
        assert http.delete("/upstreams/u/targets/b:1").status_code == 404
        assert admin.target_weights("u") == {"a:8000": 100, "c:1": 100}
        admin.fail_with = 500
        assert http.get("/upstreams/u").status_code == 500
        assert admin.writes()[-1] == ("DELETE", "/upstreams/u/targets/b:1")
