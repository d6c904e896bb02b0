"""Which items belong together: :class:`UnionFind` and THE cluster rule, :func:`cluster_ids`.

The rule, used by pair datasets, training and retrieval evaluation alike:

* the two ids of a *positive* pair (label 1) are in one cluster;
* ids that carry the identical item (same :func:`metric_sim.items.item_id`, i.e. the
  same text for texts) are one item, so they are in one cluster too (QQP has identical
  questions under different qids: they embed to the same vector);
* clusters are numbered ``0..n-1`` in order of the first appearance of any of their
  ids, reading ``ids_a[0], ids_b[0], ids_a[1], ids_b[1], ...``; so the numbers are
  deterministic for a given input order.

Light on purpose: no torch, datasets or pyarrow.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any

from metric_sim.errors import InvalidArgumentError
from metric_sim.items import item_id

__all__ = ["UnionFind", "cluster_ids"]


class UnionFind:
    """Disjoint sets over hashable keys (path compression + union by size).

    ``union`` adds unknown keys; ``find`` raises ``KeyError`` for a key never added, so a
    typo cannot silently become a new singleton. Iteration and ``groups()`` follow
    insertion order, which keeps everything built on top deterministic.
    """

    def __init__(self, items: Iterator[Hashable] | Sequence[Hashable] = ()) -> None:
        self._parent: dict[Hashable, Hashable] = {}
        self._size: dict[Hashable, int] = {}
        for item in items:
            self.add(item)

    def add(self, x: Hashable) -> None:
        if x not in self._parent:
            self._parent[x] = x
            self._size[x] = 1

    def find(self, x: Hashable) -> Hashable:
        parent = self._parent
        if x not in parent:
            raise KeyError(f"{x!r} was never added to this UnionFind")
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression, iterative (no recursion limit)
            parent[x], x = root, parent[x]
        return root

    def union(self, a: Hashable, b: Hashable) -> Hashable:
        """Join the sets of ``a`` and ``b`` (adding them if new); return the new root."""
        self.add(a)
        self.add(b)
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self._size[ra] < self._size[rb]:  # the larger tree keeps its root; ties keep a's
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size.pop(rb)
        return ra

    def connected(self, a: Hashable, b: Hashable) -> bool:
        return self.find(a) == self.find(b)

    def groups(self) -> dict[Hashable, list]:
        """Root -> members, both in order of first insertion."""
        out: dict[Hashable, list] = {}
        for x in self._parent:
            out.setdefault(self.find(x), []).append(x)
        return out

    def __contains__(self, x: object) -> bool:
        return x in self._parent

    def __len__(self) -> int:
        return len(self._parent)

    def __iter__(self):
        return iter(self._parent)


def cluster_ids(
    ids_a: Sequence[Hashable],
    ids_b: Sequence[Hashable],
    labels: Iterable[Any],
    items_a: Sequence[Any] | None = None,
    items_b: Sequence[Any] | None = None,
) -> dict[Hashable, int]:
    """Id -> cluster number under the one cluster rule (see the module docstring).

    ``labels`` are 0/1 per pair (only 1 joins). ``items_a`` / ``items_b`` are the items the
    ids carry, row for row; give both or neither (without them only positives join, which
    is right when ids already are item ids, e.g. :func:`~metric_sim.items.text_id`).
    The result lists every id once, in order of first appearance, numbered ``0..n-1`` by
    the first appearance of each cluster.
    """
    n = len(ids_a)
    labels = list(labels)
    if len(ids_b) != n or len(labels) != n:
        raise InvalidArgumentError(
            f"ids_a, ids_b and labels must have one entry per pair, got lengths {n}, {len(ids_b)}, {len(labels)}"
        )
    if (items_a is None) != (items_b is None):
        raise InvalidArgumentError("give both items_a and items_b, or neither")

    uf = UnionFind()
    for ia, ib in zip(ids_a, ids_b, strict=True):  # insertion order = first appearance
        uf.add(ia)
        uf.add(ib)
    for ia, ib, label in zip(ids_a, ids_b, labels, strict=True):
        if label == 1:
            uf.union(ia, ib)
    if items_a is not None and items_b is not None:
        if len(items_a) != n or len(items_b) != n:
            raise InvalidArgumentError(
                f"items_a and items_b must have one entry per pair ({n}), got {len(items_a)} and {len(items_b)}"
            )
        first_id_of_item: dict[str, Hashable] = {}
        for ia, xa, ib, xb in zip(ids_a, items_a, ids_b, items_b, strict=True):
            for i, item in ((ia, xa), (ib, xb)):
                uf.union(first_id_of_item.setdefault(item_id(item), i), i)

    root_to_cluster: dict[Hashable, int] = {}
    return {i: root_to_cluster.setdefault(uf.find(i), len(root_to_cluster)) for i in uf}
