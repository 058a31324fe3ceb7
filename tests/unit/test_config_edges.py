"""Settings added for the gateway's edges: the JSON depth bound."""

from __future__ import annotations

from pathlib import Path

from meshgate.config import collect, load


def test_json_depth_bound_is_a_bounded_setting(tmp_path: Path) -> None:
    assert load(None, None, environ={}).mesh.max_json_depth == 64
    assert load(None, None, environ={"MESHGATE_MAX_JSON_DEPTH": "16"}).mesh.max_json_depth == 16
    for bad in ("0", "100000", "deep"):
        _, problems = collect(None, None, environ={"MESHGATE_MAX_JSON_DEPTH": bad})
        assert [p.key for p in problems] == ["mesh.max_json_depth"], bad
