"""The one search auto precision runs for every model kind: how many of the most harmful layers (ranked by the
blame table) to keep at higher precision (float, or 8 bits inside a 4-bit variant) for a variant to meet its
budget. Keeping more never hurts, so after the most the search may keep, a bisection finds the fewest: about
log2(layers) re-quantizations, not one per layer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Kept:
    count: int  # how many of the worst layers the variant on disk keeps
    violations: list[str]  # what it still misses ([]: the budget holds)
    candidates_tried: int  # variants written and judged on the way


def fewest_kept(most: int, attempt: Callable[[int], list[str]]) -> Kept:
    """attempt(n) rewrites the variant with the n worst layers kept and returns its violations. The most first:
    if even that misses, the miss is elsewhere and no choice of layers helps (the variant keeps `most`). The
    variant on disk is the chosen one when this returns."""
    tried: list[tuple[int, list[str]]] = []

    def run(count: int) -> list[str]:
        tried.append((count, attempt(count)))
        return tried[-1][1]

    count = most
    if not run(count):
        low = 1
        while low < count:
            middle = (low + count) // 2
            if run(middle):
                low = middle + 1
            else:
                count = middle
    if tried[-1][0] != count:  # the variant on disk is the last one tried: write the chosen one again
        run(count)
    return Kept(count, tried[-1][1], len(tried))
