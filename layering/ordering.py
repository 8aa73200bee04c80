"""Orderings: which component products each resolution adds.

An ordering splits the index pairs ``(i, j)`` (component ``i`` of W, component ``j`` of X,
both 0-based) into disjoint groups; resolution ``r`` adds group ``r``. Every pair appears
exactly once, so after the last resolution the estimate is the product of the truncated
operands.

Examples
--------
>>> Ordering.anti_diagonal(2, 2).groups
(((0, 0),), ((0, 1), (1, 0)), ((1, 1),))
>>> Ordering.shells(2, 2).groups
(((0, 0),), ((0, 1), (1, 0), (1, 1)))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .partition import Partition

__all__ = ["Ordering", "ORDERING_NAMES", "resolve_ordering"]

Pair = tuple[int, int]

ORDERING_NAMES = ("anti-diagonal", "one-per-resolution", "shells")


@dataclass(frozen=True)
class Ordering:
    """Disjoint, complete groups of component pairs, one group per resolution.

    Parameters
    ----------
    groups : sequence of sequences of (i, j)
        ``groups[r]`` lists the pairs resolution ``r + 1`` adds.
    m_w, m_x : int
        Number of components of W and of X.

    Raises
    ------
    ValueError
        If a group is empty, a pair is out of range or repeated, or a pair is missing.
    """

    groups: tuple[tuple[Pair, ...], ...]
    m_w: int
    m_x: int

    def __init__(self, groups: Iterable[Iterable[Sequence[int]]], m_w: int, m_x: int) -> None:
        if m_w < 1 or m_x < 1:
            raise ValueError(f"component counts must be >= 1, got m_w={m_w}, m_x={m_x}")
        norm: list[tuple[Pair, ...]] = []
        seen: dict[Pair, int] = {}
        for r, group in enumerate(groups):
            pairs: list[Pair] = []
            for pair in group:
                if len(pair) != 2:
                    raise ValueError(f"resolution {r + 1}: {pair!r} is not an (i, j) pair")
                i, j = int(pair[0]), int(pair[1])
                if not (0 <= i < m_w and 0 <= j < m_x):
                    raise ValueError(
                        f"resolution {r + 1}: pair {(i, j)} is out of range for"
                        f" {m_w} W components and {m_x} X components (0-based)"
                    )
                if (i, j) in seen:
                    raise ValueError(
                        f"pair {(i, j)} appears in resolution {seen[(i, j)] + 1} and again in"
                        f" resolution {r + 1}; groups must be disjoint"
                    )
                seen[(i, j)] = r
                pairs.append((i, j))
            if not pairs:
                raise ValueError(f"resolution {r + 1} adds no pair; every group must be non-empty")
            norm.append(tuple(pairs))
        missing = [(i, j) for i in range(m_w) for j in range(m_x) if (i, j) not in seen]
        if missing:
            raise ValueError(
                f"ordering is incomplete: pairs {missing} are never added, so the final"
                " resolution would not equal the product"
            )
        object.__setattr__(self, "groups", tuple(norm))
        object.__setattr__(self, "m_w", int(m_w))
        object.__setattr__(self, "m_x", int(m_x))

    @property
    def resolutions(self) -> int:
        """Number of resolutions R."""
        return len(self.groups)

    def remaining(self, r: int) -> tuple[Pair, ...]:
        """Pairs not yet added after resolution ``r`` (``r = 0`` means none added)."""
        return tuple(p for g in self.groups[r:] for p in g)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def anti_diagonal(cls, m_w: int, m_x: int) -> Ordering:
        """Resolution r adds every pair with ``i + j = r - 1``: ``m_w + m_x - 1`` resolutions."""
        groups = [
            [(i, s - i) for i in range(m_w) if 0 <= s - i < m_x] for s in range(m_w + m_x - 1)
        ]
        return cls(groups, m_w, m_x)

    @classmethod
    def shells(cls, m_w: int, m_x: int) -> Ordering:
        """Resolution r adds every pair with ``max(i, j) = r - 1``, so ``Ω_r = W_{≤r} X_{≤r}``."""
        groups = [
            [(i, j) for i in range(m_w) for j in range(m_x) if max(i, j) == s]
            for s in range(max(m_w, m_x))
        ]
        return cls(groups, m_w, m_x)

    @classmethod
    def one_per_resolution(cls, pw: Partition, px: Partition) -> Ordering:
        """One pair per resolution, by decreasing significance ``p^W_{i+1} + p^X_{j+1}``.

        Ties go to the pair with the larger W component first (smaller ``i``).
        """
        pairs = [(i, j) for i in range(pw.m) for j in range(px.m)]
        pairs.sort(key=lambda ij: (-(pw.exponents[ij[0]] + px.exponents[ij[1]]), ij[0]))
        return cls([[p] for p in pairs], pw.m, px.m)


def resolve_ordering(
    ordering: str | Ordering | Iterable[Iterable[Sequence[int]]],
    pw: Partition,
    px: Partition,
) -> Ordering:
    """Turn a name, an :class:`Ordering` or an explicit list of groups into an Ordering."""
    if isinstance(ordering, Ordering):
        if (ordering.m_w, ordering.m_x) != (pw.m, px.m):
            raise ValueError(
                f"ordering is for {ordering.m_w}x{ordering.m_x} components but the partitions"
                f" have {pw.m} (W) and {px.m} (X)"
            )
        return ordering
    if isinstance(ordering, str):
        if ordering == "anti-diagonal":
            return Ordering.anti_diagonal(pw.m, px.m)
        if ordering == "shells":
            return Ordering.shells(pw.m, px.m)
        if ordering == "one-per-resolution":
            return Ordering.one_per_resolution(pw, px)
        raise ValueError(
            f"unknown ordering {ordering!r}; use one of {ORDERING_NAMES} or explicit groups"
        )
    return Ordering(ordering, pw.m, px.m)
