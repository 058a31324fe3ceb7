"""Properties of the balancing strategies."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.balancer import STRATEGIES, ConsistentHash, Ewma, make_balancer

pytestmark = pytest.mark.timeout(60)


@dataclass
class Node:
    id: str
    weight: int = 1
    in_flight: int = 0
    latency_ewma: float = 0.0


nodes = st.lists(
    st.builds(
        Node,
        id=st.text("abcdefgh", min_size=1, max_size=4),
        weight=st.integers(0, 5),
        in_flight=st.integers(0, 20),
        latency_ewma=st.floats(0, 1),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda n: n.id,
)


@given(strategy=st.sampled_from(STRATEGIES), candidates=nodes, key=st.none() | st.text())
def test_every_strategy_picks_one_of_the_candidates(
    strategy: str, candidates: list[Node], key: str | None
) -> None:
    b = make_balancer(strategy, rng=random.Random(1))
    for _ in range(5):
        assert b.pick(candidates, key) in candidates


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty_candidates_is_an_error(strategy: str) -> None:
    with pytest.raises(ValueError, match="no candidates"):
        make_balancer(strategy).pick([])


def test_unknown_strategy_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="round_robin"):
        make_balancer("fastest")


@given(n=st.integers(1, 8), rounds=st.integers(1, 5))
def test_round_robin_is_fair(n: int, rounds: int) -> None:
    candidates = [Node(str(i)) for i in range(n)]
    b = make_balancer("round_robin")
    counts = Counter(b.pick(candidates).id for _ in range(n * rounds))
    assert set(counts.values()) == {rounds}


@given(candidates=nodes)
def test_least_connections_picks_a_least_loaded_candidate(candidates: list[Node]) -> None:
    b = make_balancer("least_connections")
    low = min(c.in_flight for c in candidates)
    for _ in range(3):
        assert b.pick(candidates).in_flight == low


def test_least_connections_spreads_ties() -> None:
    candidates = [Node("a"), Node("b"), Node("c")]
    b = make_balancer("least_connections")
    assert {b.pick(candidates).id for _ in range(3)} == {"a", "b", "c"}


@given(weights=st.lists(st.integers(1, 6), min_size=1, max_size=6), rounds=st.integers(1, 3))
def test_weighted_gives_exact_shares_over_a_cycle(weights: list[int], rounds: int) -> None:
    candidates = [Node(str(i), weight=w) for i, w in enumerate(weights)]
    b = make_balancer("weighted")
    counts = Counter(b.pick(candidates).id for _ in range(sum(weights) * rounds))
    assert counts == {str(i): w * rounds for i, w in enumerate(weights)}


def test_weighted_is_smooth() -> None:
    b = make_balancer("weighted")
    picks = [
        b.pick([Node("a", weight=5), Node("b", weight=1), Node("c", weight=1)]).id for _ in range(7)
    ]
    # nginx's example: a a b a c a a; never five a's in a row.
    assert picks == ["a", "a", "b", "a", "c", "a", "a"]


@given(candidates=nodes, keys=st.lists(st.text(min_size=1), min_size=1, max_size=20))
@settings(max_examples=50)
def test_consistent_hash_is_stable_and_moves_only_removed_keys(
    candidates: list[Node], keys: list[str]
) -> None:
    b = ConsistentHash()
    before = {k: b.pick(candidates, k).id for k in keys}
    assert before == {k: b.pick(candidates, k).id for k in keys}
    if len(candidates) < 2:
        return
    gone = candidates[0]
    rest = candidates[1:]
    after = {k: b.pick(rest, k).id for k in keys}
    for k in keys:
        if before[k] != gone.id:
            assert after[k] == before[k]


def test_consistent_hash_spreads_keys() -> None:
    candidates = [Node(str(i)) for i in range(4)]
    b = make_balancer("ip_hash")
    counts = Counter(b.pick(candidates, f"10.0.0.{i}").id for i in range(4000))
    assert all(600 < c < 1400 for c in counts.values()), counts


@given(a=st.integers(0, 50), b=st.integers(0, 50), la=st.floats(0.001, 1), lb=st.floats(0.001, 1))
def test_p2c_with_two_never_picks_the_strictly_worse(a: int, b: int, la: float, lb: float) -> None:
    x, y = Node("x", in_flight=a, latency_ewma=la), Node("y", in_flight=b, latency_ewma=lb)
    cost = {"x": (a + 1) * la, "y": (b + 1) * lb}
    pick = make_balancer("p2c", rng=random.Random(0)).pick([x, y])
    other = "y" if pick.id == "x" else "x"
    assert cost[pick.id] <= cost[other]


def test_ewma_follows_samples() -> None:
    e = Ewma(alpha=0.5)
    assert e.update(10.0) == 10.0
    assert e.update(20.0) == 15.0
