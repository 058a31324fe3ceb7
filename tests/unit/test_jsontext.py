"""JSON text on the call path: orjson's speed, the standard library's answers."""

from __future__ import annotations

import json
import math

import pytest

from meshgate.wire import jsonrpc, jsontext
from meshgate.wire.jsonrpc import JSON

MESSAGES = [
    {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo"}},
    {"jsonrpc": "2.0", "id": "a-b", "result": {"content": [{"type": "text", "text": "é ✓ 😀"}]}},
    {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "x", "data": [1.5, True]}},
]


@pytest.mark.parametrize("msg", MESSAGES)
def test_ordinary_messages_come_out_as_the_standard_library_writes_them(msg: JSON) -> None:
    expected = json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()
    assert jsontext.dumps(msg) == expected
    assert jsonrpc.encode(msg) == expected + b"\n"
    assert jsontext.loads(expected) == msg


def test_integers_past_64_bits_stay_exact_both_ways() -> None:
    big = 12345678901234567890123
    assert jsontext.loads(b'{"id": 12345678901234567890123}') == {"id": big}
    assert jsontext.loads(b'{"id": -9223372036854775809}') == {"id": -9223372036854775809}
    assert jsontext.dumps({"id": big}) == b'{"id":12345678901234567890123}'
    reply = jsonrpc.decode(b'{"jsonrpc": "2.0", "id": 12345678901234567890123, "result": {}}')
    assert reply is not None and reply["id"] == big


def test_what_orjson_refuses_is_read_as_before() -> None:
    assert math.isnan(jsontext.loads(b'{"a": NaN}')["a"])
    assert jsontext.loads(b'{"a": "\\ud800"}') == {"a": "\ud800"}
    for bad in (b"nope", b'{"a": 1', b"", b'{"a": 1}}'):
        with pytest.raises(json.JSONDecodeError) as ours:
            jsontext.loads(bad)
        with pytest.raises(json.JSONDecodeError) as theirs:
            json.loads(bad)
        assert str(ours.value) == str(theirs.value)


def test_keys_that_are_not_strings_are_written_as_json_writes_them() -> None:
    assert jsontext.dumps({1: "a", "b": 2}) == b'{"1":"a","b":2}'
    with pytest.raises(TypeError):
        jsontext.dumps({"a": {1, 2}})
