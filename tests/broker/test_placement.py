"""Choosing an edge for a file: a stable rendezvous spread weighted by capacity, closeness to
the file's replicas first, and no edge at all when none can hold the file."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ess_broker.placement import Candidate, choose_edge

GB = 10**9
KEYS = [f"mc16_13TeV:EVNT.{i:06d}.pool.root.1" for i in range(10_000)]


def edge(
    name: str,
    *,
    capacity: int = 100 * GB,
    available: int | None = None,
    site: str = "SITE-A",
    region: str = "europe",
) -> Candidate:
    return Candidate(
        name=name,
        site=site,
        region=region,
        available_bytes=capacity if available is None else available,
        capacity_bytes=capacity,
        queued=0,
    )


def place(keys: Sequence[str], edges: Sequence[Candidate], size: int = GB) -> dict[str, str]:
    placed = {}
    for key in keys:
        chosen = choose_edge(key, size, edges)
        assert chosen is not None
        placed[key] = chosen.name
    return placed


def test_the_spread_is_stable_and_ignores_the_order_of_the_edges() -> None:
    edges = [edge(f"edge-{i:02d}") for i in range(10)]
    first = place(KEYS[:2000], edges)
    assert place(KEYS[:2000], edges) == first
    assert place(KEYS[:2000], list(reversed(edges))) == first
    # Equal edges share the work about equally (expected 200 each).
    shares = Counter(first.values())
    assert set(shares) == {e.name for e in edges}
    assert all(140 <= n <= 260 for n in shares.values()), shares


def test_removing_one_of_50_edges_moves_only_the_files_it_held() -> None:
    edges = [edge(f"edge-{i:02d}") for i in range(50)]
    before = place(KEYS, edges)
    gone = "edge-17"
    after = place(KEYS, [e for e in edges if e.name != gone])
    moved = {key for key in KEYS if before[key] != after[key]}
    held = {key for key in KEYS if before[key] == gone}
    assert moved == held
    # About 1/50 of the 10,000 keys: 200 expected, sigma about 14.
    assert 140 <= len(moved) <= 260, len(moved)
    # What it held is spread over the others, not dumped on one.
    assert len({after[key] for key in moved}) > 30


def test_adding_an_edge_takes_files_only_for_itself() -> None:
    edges = [edge(f"edge-{i:02d}") for i in range(20)]
    before = place(KEYS[:5000], edges)
    after = place(KEYS[:5000], [*edges, edge("edge-new")])
    moved = {key for key in before if before[key] != after[key]}
    assert moved
    assert {after[key] for key in moved} == {"edge-new"}
    assert 160 <= len(moved) <= 320, len(moved)  # expected 5000/21, about 238


def test_a_larger_edge_gets_a_share_in_proportion_to_its_capacity() -> None:
    edges = [edge("big", capacity=300 * GB), edge("small", capacity=100 * GB)]
    shares = Counter(place(KEYS, edges).values())
    # Expected 3/4 of the keys (7500, sigma about 43).
    assert 7200 <= shares["big"] <= 7800, shares


def test_available_space_does_not_shift_the_spread() -> None:
    # The spread follows capacity, not how full an edge is this minute: a heartbeat with
    # a little less free space must not reshuffle every file.
    full = [edge("a", available=2 * GB), edge("b", available=90 * GB)]
    empty = [edge("a"), edge("b")]
    assert place(KEYS[:1000], full) == place(KEYS[:1000], empty)


def test_an_edge_at_the_replica_site_wins_over_a_larger_one_elsewhere() -> None:
    near = edge("near", capacity=10 * GB, site="BNL-ATLAS", region="us")
    far = edge("far", capacity=1000 * GB, site="CERN-PROD", region="europe")
    for key in KEYS[:200]:
        chosen = choose_edge(key, GB, [far, near], replica_sites=["BNL-ATLAS"])
        assert chosen == near


def test_site_beats_region_and_region_beats_nothing() -> None:
    same_site = edge("same-site", capacity=GB * 2, site="BNL-ATLAS", region="us")
    same_region = edge("same-region", capacity=GB * 500, site="MWT2", region="us")
    elsewhere = edge("elsewhere", capacity=GB * 5000, site="CERN-PROD", region="europe")
    edges = [elsewhere, same_region, same_site]
    for key in KEYS[:200]:
        assert choose_edge(key, GB, edges, replica_sites=["BNL-ATLAS"], replica_regions=["us"]) == (
            same_site
        )
        # Region beats nothing, however larger the edge elsewhere; between the two edges of
        # the region, the spread decides.
        assert choose_edge(key, GB, [elsewhere, same_region], replica_regions=["us"]) == (
            same_region
        )
        assert choose_edge(key, GB, edges, replica_regions=["us"]) != elsewhere
    # Without replica information the spread decides among all three (among edges of these
    # capacities "same-site" would win about 1 key in 2,750: of equal ones, a third).
    equal = [edge(e.name, site=e.site, region=e.region) for e in edges]
    assert {choose_edge(key, GB, equal) for key in KEYS[:2000]} == set(equal)


def test_a_close_edge_without_room_loses_to_one_that_fits() -> None:
    near = edge("near", available=GB // 2, site="BNL-ATLAS")
    far = edge("far", site="CERN-PROD")
    assert choose_edge(KEYS[0], GB, [near, far], replica_sites=["BNL-ATLAS"]) == far


def test_an_edge_with_exactly_the_room_needed_fits() -> None:
    only = edge("only", available=GB)
    assert choose_edge(KEYS[0], GB, [only]) == only
    assert choose_edge(KEYS[0], GB + 1, [only]) is None


def test_no_fitting_edge_gives_none() -> None:
    assert choose_edge(KEYS[0], GB, []) is None
    edges = [edge("a", available=GB - 1), edge("b", available=0)]
    assert choose_edge(KEYS[0], GB, edges) is None
    assert choose_edge(KEYS[0], GB, edges, replica_sites=["SITE-A"]) is None
