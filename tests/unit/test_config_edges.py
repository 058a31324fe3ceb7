"""Settings added for the gateway's edges: trusted proxies and the JSON depth bound."""

from __future__ import annotations

from pathlib import Path

from meshgate.config import collect, load


def test_trusted_proxies_from_the_file_and_the_environment(tmp_path: Path) -> None:
    assert load(None, None, environ={}).mesh.trusted_proxies == []
    pol = tmp_path / "meshgate.toml"
    pol.write_text('[mesh]\ntrusted_proxies = ["10.0.0.0/8", "127.0.0.1", "::1"]\n')
    mesh = load(None, pol, environ={}).mesh
    assert mesh.trusted_proxies == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    env = {"MESHGATE_TRUSTED_PROXIES": "192.168.0.0/16, 127.0.0.1/32"}
    assert load(None, pol, environ=env).mesh.trusted_proxies == ["192.168.0.0/16", "127.0.0.1/32"]


def test_bad_trusted_proxies_are_problems_that_name_the_value(tmp_path: Path) -> None:
    pol = tmp_path / "meshgate.toml"
    pol.write_text('[mesh]\ntrusted_proxies = ["10.0.0.1/8"]\n')
    _, problems = collect(None, pol, environ={})
    [p] = problems
    assert p.key == "mesh.trusted_proxies" and "'10.0.0.1/8' is not an IP network" in p.reason
    _, problems = collect(None, None, environ={"MESHGATE_TRUSTED_PROXIES": "proxy.local"})
    [p] = problems
    assert p.file == "environment MESHGATE_TRUSTED_PROXIES" and "'proxy.local'" in p.reason


def test_json_depth_bound_is_a_bounded_setting(tmp_path: Path) -> None:
    assert load(None, None, environ={}).mesh.max_json_depth == 64
    assert load(None, None, environ={"MESHGATE_MAX_JSON_DEPTH": "16"}).mesh.max_json_depth == 16
    for bad in ("0", "100000", "deep"):
        _, problems = collect(None, None, environ={"MESHGATE_MAX_JSON_DEPTH": bad})
        assert [p.key for p in problems] == ["mesh.max_json_depth"], bad
