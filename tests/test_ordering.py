"""Orderings: which component pairs each resolution adds."""

import pytest

from layered.layering import Ordering, Partition, resolve_ordering


def test_anti_diagonal_adds_one_then_two_then_one_product():
    o = Ordering.anti_diagonal(2, 2)
    assert o.groups == (((0, 0),), ((0, 1), (1, 0)), ((1, 1),))
    assert [len(g) for g in Ordering.anti_diagonal(3, 3).groups] == [1, 2, 3, 2, 1]


def test_shells_give_products_of_the_leading_components():
    o = Ordering.shells(3, 3)
    for r in range(1, o.resolutions + 1):
        added = {p for g in o.groups[:r] for p in g}
        assert added == {(i, j) for i in range(r) for j in range(r)}


def test_one_per_resolution_goes_by_decreasing_significance_larger_w_first():
    pw = Partition((8, 4, 0))
    px = Partition((8, 4, 0))
    o = Ordering.one_per_resolution(pw, px)
    assert o.groups == (((0, 0),), ((0, 1),), ((1, 0),), ((1, 1),))
    # uneven: W components at 2^6 and 2^0, X components at 2^4 and 2^2
    o2 = Ordering.one_per_resolution(Partition((8, 6, 0)), Partition((6, 4, 2)))
    sig = [Partition((8, 6, 0)).exponents[i] + Partition((6, 4, 2)).exponents[j]
           for ((i, j),) in o2.groups]
    assert sig == sorted(sig, reverse=True)


def test_uneven_component_counts():
    o = Ordering.anti_diagonal(3, 1)
    assert o.groups == (((0, 0),), ((1, 0),), ((2, 0),))
    assert Ordering.shells(1, 2).groups == (((0, 0),), ((0, 1),))


def test_remaining_pairs_shrink_to_nothing():
    o = Ordering.anti_diagonal(2, 2)
    assert len(o.remaining(0)) == 4
    assert o.remaining(1) == ((0, 1), (1, 0), (1, 1))
    assert o.remaining(3) == ()


@pytest.mark.parametrize(
    "groups, message",
    [
        ([[(0, 0)], [(0, 0), (1, 1)], [(0, 1), (1, 0)]], "disjoint"),
        ([[(0, 0)], [(0, 1), (1, 0)]], r"incomplete: pairs \[\(1, 1\)\]"),
        ([[(0, 0), (2, 0)], [(0, 1), (1, 0), (1, 1)]], "out of range"),
        ([[(0, 0)], [], [(0, 1), (1, 0), (1, 1)]], "adds no pair"),
        ([[(0, 0, 1)]], "not an"),
    ],
)
def test_explicit_groups_are_validated(groups, message):
    with pytest.raises(ValueError, match=message):
        Ordering(groups, 2, 2)


def test_resolve_accepts_names_objects_and_groups():
    p = Partition((8, 4, 0))
    assert resolve_ordering("shells", p, p) == Ordering.shells(2, 2)
    groups = [[(1, 1)], [(0, 0), (0, 1), (1, 0)]]
    assert resolve_ordering(groups, p, p).groups[0] == ((1, 1),)
    with pytest.raises(ValueError, match="unknown ordering 'diagonal'"):
        resolve_ordering("diagonal", p, p)
    with pytest.raises(ValueError, match="3x2 components"):
        resolve_ordering(Ordering.shells(3, 2), p, p)
