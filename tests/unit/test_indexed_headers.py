"""IndexedHeaders answers as Starlette's Headers does, from a dict."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from meshgate.api.routing import IndexedHeaders, IndexedRequest

RAW = [
    (b"host", b"example"),
    (b"accept", b"application/json"),
    (b"x-dup", b"first"),
    (b"x-dup", b"second"),
    (b"x-latin", "é".encode("latin-1")),
]


def scope() -> dict[str, object]:
    return {"type": "http", "headers": list(RAW), "method": "POST", "path": "/mcp"}


@pytest.mark.parametrize("name", ["host", "Accept", "X-DUP", "x-latin", "absent"])
def test_lookups_agree_with_starlette(name: str) -> None:
    ours, theirs = IndexedHeaders(scope()), Headers(scope=scope())
    assert ours.get(name) == theirs.get(name)
    assert ours.get(name, "d") == theirs.get(name, "d")
    assert (name in ours) == (name in theirs)
    if name in theirs:
        assert ours[name] == theirs[name]
    else:
        with pytest.raises(KeyError):
            ours[name]
    assert ours.getlist(name) == theirs.getlist(name)
    assert ours.raw == theirs.raw and list(ours.items()) == list(theirs.items())


def test_a_request_reads_its_headers_through_the_index() -> None:
    request = IndexedRequest(scope())
    assert isinstance(request.headers, IndexedHeaders)
    assert request.headers is request.headers
    assert request.headers.get("x-dup") == "first"
    assert "absent" not in request.headers
