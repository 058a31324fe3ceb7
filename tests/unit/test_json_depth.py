"""Request bodies parsed with a nesting bound, found before the parser recurses."""

from __future__ import annotations

import json

import pytest

from meshgate.api.problems import parse_json
from meshgate.errors import InvalidInput


def arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [1, 2, 63, 64])
def test_bodies_within_the_bound_parse(depth: int) -> None:
    assert parse_json(arrays(depth), 64) == json.loads(arrays(depth))
    body = b'{"a":' * depth + b"1" + b"}" * depth
    assert parse_json(body, 64) == json.loads(body)


@pytest.mark.parametrize("depth", [65, 66, 500, 5_000, 100_000])
def test_bodies_past_the_bound_are_invalid_input(depth: int) -> None:
    for body in (arrays(depth), b"[" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        with pytest.raises(InvalidInput, match="deeper than 64 levels"):
            parse_json(body, 64)


def test_depth_is_the_deepest_point_not_the_bracket_count() -> None:
    wide = json.dumps([[[i, {"k": [i]}] for i in range(1000)]]).encode()
    assert len(parse_json(wide, 5)[0]) == 1000
    with pytest.raises(InvalidInput):
        parse_json(wide, 4)
    # Depth that rises by steps between siblings: no run of opening brackets shows it.
    stairs = b"[[]," * 70 + b"1" + b"]" * 70  # [[],[[],[[],...1]]]
    assert parse_json(stairs, 71) is not None
    with pytest.raises(InvalidInput, match="deeper than 70"):
        parse_json(stairs, 70)


def test_brackets_in_strings_do_not_count() -> None:
    body = json.dumps({"s": "[" * 500, "t": '\\"{{{{' * 100, "u": ['"]]]]"']}).encode()
    assert parse_json(body, 2)["s"] == "[" * 500


def test_broken_bodies_are_invalid_input_not_a_crash() -> None:
    for body in (b"{", b'["unterminated', b'\\"' * 10_000, b"]]]]" + b"[" * 100, b"\xff"):
        with pytest.raises(InvalidInput):
            parse_json(body, 64)
