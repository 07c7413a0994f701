"""The k-regular neighbour graph of SecAgg+: a ring over a random order of the cohort."""

from __future__ import annotations

import random
from collections.abc import Sequence

from fedmarket.exceptions import InvalidInput


def neighbour_graph(nodes: Sequence[int], k: int, rng: random.Random) -> dict[int, frozenset[int]]:
    """Each node's k neighbours (itself excluded): k / 2 on each side in a shuffled ring.

    With k = n - 1 every node is every other node's neighbour.
    """
    n = len(nodes)
    if len(set(nodes)) != n:
        raise InvalidInput("the cohort lists a node twice")
    if k == n - 1:
        return {node: frozenset(nodes) - {node} for node in nodes}
    if k % 2 or not 2 <= k < n:
        raise InvalidInput(f"a ring graph needs an even k in [2, n - 1), got k={k}, n={n}")
    ring = list(nodes)
    rng.shuffle(ring)
    return {
        node: frozenset(ring[(i + d) % n] for d in range(-k // 2, k // 2 + 1) if d)
        for i, node in enumerate(ring)
    }
