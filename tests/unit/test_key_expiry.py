"""How `--expires` and `expires_at` are read: durations, times, and clear refusals."""

from __future__ import annotations

import pytest

from meshgate.errors import InvalidArguments
from meshgate.security.keys import parse_expires, parse_time, timestamp

NOW = 1_900_000_000.0  # 2030-03-17T17:46:40Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("12h", 43200), ("30d", 2_592_000), ("2w", 1_209_600)],
)
def test_durations_count_from_now(text: str, seconds: int) -> None:
    assert parse_expires(text, NOW) == NOW + seconds
    assert parse_expires(text.upper(), NOW) == NOW + seconds


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("2031-01-01T00:00:00Z", "2031-01-01T00:00:00Z"),
        ("2031-01-01", "2031-01-01T00:00:00Z"),
        ("2031-01-01T02:00:00+02:00", "2031-01-01T00:00:00Z"),
        ("2031-01-01T00:00:00", "2031-01-01T00:00:00Z"),  # no offset: UTC
    ],
)
def test_times_are_read_as_rfc_3339(text: str, shown: str) -> None:
    assert timestamp(parse_expires(text, NOW)) == shown
    assert timestamp(parse_time(text)) == shown


@pytest.mark.parametrize("text", ["3q", "soon", "30", "-5d", "d", "2031-13-01"])
def test_anything_else_is_refused_with_the_forms_accepted(text: str) -> None:
    with pytest.raises(InvalidArguments) as e:
        parse_expires(text, NOW)
    assert e.value.detail == (
        f"expiry {text!r} is neither a duration (90s, 30m, 12h, 30d, 2w) nor a time "
        "(2027-01-01T00:00:00Z, 2027-01-01)"
    )


@pytest.mark.parametrize("text", ["0s", "2020-01-01", "2030-03-17T17:46:40Z"])
def test_an_expiry_must_lie_ahead(text: str) -> None:
    with pytest.raises(InvalidArguments, match="is not in the future"):
        parse_expires(text, NOW)
