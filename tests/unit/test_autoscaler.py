"""The autoscaler's decisions on sampled loads, with an injected clock, and the bounds and
settings it is configured with (each bad value refused with a clear message)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from meshgate.config import ServerPolicy, collect
from meshgate.upstream.autoscaler import Autoscaler, Load


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scaler(clock: Clock, **policy: Any) -> Autoscaler:
    return Autoscaler("s", ServerPolicy(**policy), clock=clock, wall=lambda: 1.0e9)


def busy(n: int, per: int, queued: int = 0, queued_for_s: float = 0.0) -> Load:
    return Load(n, n, n * per, queued, queued_for_s)


IDLE = Load(1, 1, 0)


def test_fixed_and_bounded_instances_and_the_default_target() -> None:
    fixed = ServerPolicy(instances=3)
    assert (fixed.instances.min, fixed.instances.max, fixed.instances.scales) == (3, 3, False)
    assert ServerPolicy(instances={"max": 4}).instances.min == 1
    assert ServerPolicy(instances={"min": 3}).instances.max == 3
    assert ServerPolicy(instances={"min": 0}).instances.max == 1
    assert ServerPolicy(max_in_flight=16).scale_up_in_flight == 12
    clock = Clock()
    assert scaler(clock, instances={"min": 0, "max": 2}).desired == 1  # to learn the catalog


def test_busy_for_the_window_grows_to_what_the_load_needs_never_past_max() -> None:
    clock = Clock()
    a = scaler(clock, instances={"min": 1, "max": 4}, max_in_flight=4)  # target 3
    assert a.decide(busy(1, 4)) is None
    clock.now = 0.9
    assert a.decide(busy(1, 4)) is None
    clock.now = 1.0
    d = a.decide(busy(1, 4, queued=6))  # 10 calls need 4 at 3 each
    assert d is not None and (d.before, d.after, d.reason, d.direction) == (1, 4, "in_flight", "up")
    assert d.line().startswith("s: scaling 1 -> 4 (4.00 calls in flight per instance > 3")
    clock.now = 10
    assert a.decide(busy(4, 4, queued=100)) is None  # at max
    assert a.desired == 4


def test_each_step_up_waits_a_window_and_is_at_least_one() -> None:
    clock = Clock()
    a = scaler(
        clock,
        instances={"min": 1, "max": 3},
        max_in_flight=2,
        autoscale={"scale_up_in_flight": 1, "scale_up_after_s": 2},
    )
    a.decide(busy(1, 2))
    clock.now = 2
    first = a.decide(busy(1, 2))
    assert first is not None and first.after == 2
    clock.now = 3
    assert a.decide(busy(2, 2)) is None  # a new window starts with the step
    clock.now = 4
    second = a.decide(busy(2, 2))
    assert second is not None and (second.before, second.after) == (2, 3)


def test_a_queue_that_waits_and_a_latency_over_target_are_busy_too() -> None:
    clock = Clock()
    a = scaler(
        clock,
        instances={"min": 1, "max": 2},
        max_in_flight=2,
        autoscale={"scale_up_in_flight": 2, "scale_up_after_s": 0, "scale_up_latency_s": 0.5},
    )
    assert a.decide(Load(1, 1, 2, queued=1, queued_for_s=0.05)) is None  # not long enough
    d = a.decide(Load(1, 1, 2, queued=1, queued_for_s=0.2))
    assert d is not None and d.reason == "queue_wait"
    b = scaler(
        clock,
        instances={"min": 1, "max": 2},
        autoscale={"scale_up_after_s": 0, "scale_up_latency_s": 0.5},
    )
    assert b.decide(Load(1, 1, 1, latency_s=0.4)) is None
    d = b.decide(Load(1, 1, 1, latency_s=0.9))
    assert d is not None and d.reason == "latency" and "latency 0.900s > 0.5s" in d.why


def test_a_cool_down_shrinks_to_the_most_it_needed_and_never_below_min() -> None:
    clock = Clock()
    a = scaler(
        clock,
        instances={"min": 2, "max": 6},
        max_in_flight=2,
        autoscale={"scale_up_in_flight": 2, "scale_up_after_s": 0, "scale_down_after_s": 10},
    )
    a.desired = 6
    assert a.decide(Load(6, 6, 6)) is None  # 6 calls need 3
    clock.now = 5
    assert a.decide(Load(6, 6, 2)) is None
    clock.now = 10
    d = a.decide(Load(6, 6, 0))
    assert d is not None and (d.after, d.reason, d.direction) == (3, "underused", "down")
    clock.now = 20
    a.decide(IDLE)
    clock.now = 30
    d = a.decide(IDLE)
    assert d is not None and (d.after, d.reason) == (2, "idle")
    clock.now = 100
    assert a.decide(IDLE) is None and a.desired == 2


def test_load_during_the_cool_down_restarts_it() -> None:
    clock = Clock()
    a = scaler(
        clock,
        instances={"min": 1, "max": 2},
        max_in_flight=2,
        autoscale={"scale_up_in_flight": 1, "scale_down_after_s": 10},
    )
    a.desired = 2
    a.decide(IDLE)
    clock.now = 9
    assert a.decide(busy(2, 1)) is None  # 2 calls need both
    clock.now = 15
    assert a.decide(IDLE) is None
    clock.now = 25
    d = a.decide(IDLE)
    assert d is not None and d.after == 1


def test_min_zero_reaches_zero_when_idle_and_a_call_asks_for_one_at_once() -> None:
    clock = Clock()
    a = scaler(clock, instances={"min": 0, "max": 2}, autoscale={"scale_down_after_s": 5})
    assert a.demand() is None  # an instance runs
    a.decide(Load(1, 1, 0))
    clock.now = 5
    d = a.decide(Load(1, 1, 0))
    assert d is not None and (d.after, d.reason) == (0, "idle")
    up = a.demand()
    assert up is not None and (up.before, up.after, up.reason) == (0, 1, "demand")
    assert a.view() == {
        "min": 0,
        "max": 2,
        "desired": 1,
        "last_decision": {
            "at": 1.0e9,
            "from": 0,
            "to": 1,
            "direction": "up",
            "reason": "demand",
            "why": "a call arrived with no instance running",
        },
    }


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"instances": 0}, "a fixed number of instances is 1 to 64"),
        ({"instances": 65}, "a fixed number of instances is 1 to 64"),
        ({"instances": {"min": 3, "max": 2}}, "min (3) is greater than max (2)"),
        ({"instances": {"min": -1, "max": 2}}, "greater than or equal to 0"),
        ({"instances": {"min": 0, "max": 65}}, "less than or equal to 64"),
        ({"instances": {"min": 0, "max": 0}}, "greater than or equal to 1"),
        ({"instances": {"max": 2, "most": 3}}, "Extra inputs are not permitted"),
        (
            {"max_in_flight": 4, "autoscale": {"scale_up_in_flight": 5}},
            "scale_up_in_flight (5) is above max_in_flight (4)",
        ),
        ({"autoscale": {"scale_up_in_flight": 0}}, "greater than 0"),
        ({"autoscale": {"scale_down_after_s": -1}}, "greater than or equal to 0"),
        ({"autoscale": {"interval_s": 0}}, "greater than 0"),
        ({"autoscale": {"scale_up_latency_s": 0}}, "greater than 0"),
    ],
)
def test_bad_bounds_and_settings_are_refused(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ServerPolicy(**policy)


def test_check_config_names_each_bad_bound(tmp_path: Path) -> None:
    cfg = tmp_path / ".mcp.json"
    cfg.write_text('{"mcpServers": {"a": {"command": "/bin/cat"}, "b": {"command": "/bin/cat"}}}')
    pol = tmp_path / "meshgate.toml"
    pol.write_text("[servers.a]\ninstances = {min = 3, max = 2}\n[servers.b]\ninstances = 0\n")
    settings, problems = collect(cfg, pol, environ={"PATH": "/usr/bin:/bin"})
    assert settings is None
    text = "\n".join(str(p) for p in problems)
    assert "servers.a.instances: min (3) is greater than max (2)" in text
    assert "servers.b.instances: a fixed number of instances is 1 to 64" in text
