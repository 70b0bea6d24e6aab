"""The one search auto precision runs for every model kind: how many of the most harmful layers (ranked by the
blame table) to keep at higher precision (float, or 8 bits inside a 4-bit variant) for a variant to meet its
budget. Keeping more never hurts, so after the most the search may keep, a bisection finds the fewest: about
log2(layers) re-quantizations, not one per layer. Then each kept layer is tried back at the quantized precision,
least harmful first, and stays quantized when the budget still holds: the kept set is minimal (no kept layer can
be quantized without missing the budget), not only the shortest prefix of the blame order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Kept:
    count: int  # how many of the worst layers the variant on disk keeps
    violations: list[str]  # what it still misses ([]: the budget holds)
    candidates_tried: int  # variants written and judged on the way


@dataclass
class KeptSet:
    indices: list[int]  # positions in the blame order of the layers the variant on disk keeps
    violations: list[str]
    candidates_tried: int
    put_back: int  # layers of the shortest meeting prefix that proved quantizable on their own


def fewest_kept_set(most: int, attempt: Callable[[list[int]], list[str]]) -> KeptSet:
    """fewest_kept, then each kept layer tried back (least harmful first). attempt(indices) rewrites the variant
    keeping those layers and returns its violations; the variant on disk is the chosen one when this returns."""
    prefix = fewest_kept(most, lambda count: attempt(list(range(count))))
    kept, tried, last = list(range(prefix.count)), prefix.candidates_tried, list(range(prefix.count))
    if prefix.violations or len(kept) < 2:
        return KeptSet(kept, prefix.violations, tried, 0)
    for index in reversed(list(kept)):
        trial = [k for k in kept if k != index]
        if not trial:  # nothing kept is the fully quantized variant, known to miss
            break
        last, tried = trial, tried + 1
        if not attempt(trial):
            kept = trial
    if last != kept:
        attempt(kept)
        tried += 1
    return KeptSet(kept, [], tried, prefix.count - len(kept))


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
