"""The neighbour graph of SecAgg+: a ring lattice (Harary graph) over a seeded random order.

The order comes from a ChaCha20 stream keyed by the round's graph seed, which no party can
choose (:func:`fedmarket.secagg.roster.graph_seed`): every device and the server derive the
same graph from the same roster and seed, and a device checks its own neighbours that way.
Each node's neighbours are the k / 2 nodes on each side of it in the ring; with k >= n - 1 the
graph is complete. Source: Bell et al. 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", §3 (random Harary graphs).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fedmarket.exceptions import InvalidInput
from fedmarket.secagg.masks import stream


@dataclass(frozen=True)
class Graph:
    """``ring`` lists the roster's nodes in ring order; ``k`` is each node's neighbour count."""

    ring: tuple[int, ...]
    k: int

    def __post_init__(self) -> None:
        n = len(self.ring)
        if len(set(self.ring)) != n:
            raise InvalidInput("the roster lists a node twice")
        if self.complete:
            return
        if self.k % 2 or self.k < 2:
            raise InvalidInput(f"a ring lattice needs an even k >= 2, got k={self.k}, n={n}")

    @property
    def complete(self) -> bool:
        return self.k >= len(self.ring) - 1

    @cached_property
    def _positions(self) -> dict[int, int]:
        return {node: i for i, node in enumerate(self.ring)}

    def neighbours(self, node: int) -> frozenset[int]:
        """The k nodes that hold ``node``'s shares (``node`` itself excluded)."""
        return self.within(node, 1 if self.complete else self.k // 2)

    def holders(self, node: int) -> tuple[int, ...]:
        """Who holds ``node``'s shares, sorted: its neighbours and itself. A holder's Shamir
        index is its position in this tuple plus one."""
        return tuple(sorted(self.neighbours(node) | {node}))

    def window(self, node: int) -> frozenset[int]:
        """Every holder of every secret ``node`` holds: the nodes within k ring steps."""
        return self.within(node, 1 if self.complete else self.k) | {node}

    def within(self, node: int, steps: int) -> frozenset[int]:
        n = len(self.ring)
        if self.complete or 2 * steps >= n - 1:
            return frozenset(self.ring) - {node}
        i = self._positions[node]
        return frozenset(self.ring[(i + d) % n] for d in range(-steps, steps + 1) if d)

    def connected(self, alive: Collection[int]) -> bool:
        """Whether the graph restricted to ``alive`` is connected (empty or one node: True).

        In a ring lattice the alive nodes stay connected unless two gaps of k / 2 or more
        consecutive missing nodes split the ring.
        """
        alive_set = set(alive)
        if self.complete or len(alive_set) <= 1:
            return True
        half = self.k // 2
        marks = [node in alive_set for node in self.ring]
        gaps, run = 0, 0
        start = marks.index(True)  # count runs of missing nodes around the ring from an alive one
        for offset in range(1, len(marks) + 1):
            if marks[(start + offset) % len(marks)]:
                gaps += run >= half
                run = 0
            else:
                run += 1
        return gaps < 2


def ring_order(nodes: Sequence[int], seed: bytes) -> tuple[int, ...]:
    """``nodes`` in the ring order fixed by ``seed`` (32 bytes): a uniformly random
    permutation, sorting the nodes by 64-bit ChaCha20 words (ties are negligible and broken
    by node id)."""
    if len(seed) != 32:
        raise InvalidInput("a graph seed is 32 bytes")
    ordered = sorted(nodes)
    words = stream(seed, 2 * len(ordered)).view(np.uint64)
    return tuple(ordered[i] for i in np.lexsort((np.array(ordered, dtype=np.uint64), words)))
