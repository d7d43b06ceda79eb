"""Positional matching of two point lists in a plane (pixels, or degrees on a tangent plane).

Pure numpy: the points are hashed into square cells of the matching radius, so only the 3x3
cells around a point are compared (memory and time grow with the number of close pairs, not
with the product of the list lengths).
"""

from __future__ import annotations

import numpy as np

__all__ = ["pairs_within", "nearest_one_to_one"]


def pairs_within(
    x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``(i, j)`` with ``hypot(x1[i] - x2[j], y1[i] - y2[j]) <= radius``.

    Returns ``(i, j, distance)``; coordinates must be finite, in the same unit as ``radius``.
    """
    x1, y1, x2, y2 = (np.asarray(a, dtype=np.float64) for a in (x1, y1, x2, y2))
    empty = (np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0))
    if x1.size == 0 or x2.size == 0 or not radius > 0:
        return empty
    x0 = min(x1.min(), x2.min()) - radius
    y0 = min(y1.min(), y2.min()) - radius
    gx1 = np.floor((x1 - x0) / radius).astype(np.int64)
    gy1 = np.floor((y1 - y0) / radius).astype(np.int64)
    gx2 = np.floor((x2 - x0) / radius).astype(np.int64)
    gy2 = np.floor((y2 - y0) / radius).astype(np.int64)
    stride = int(max(gy1.max(), gy2.max())) + 3
    key2 = gx2 * stride + gy2
    order = np.argsort(key2, kind="stable")
    sorted_keys = key2[order]
    found_i, found_j = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            key = (gx1 + dx) * stride + (gy1 + dy)
            lo = np.searchsorted(sorted_keys, key, side="left")
            hi = np.searchsorted(sorted_keys, key, side="right")
            counts = hi - lo
            total = int(counts.sum())
            if total == 0:
                continue
            i = np.repeat(np.arange(x1.size), counts)
            starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
            found_i.append(i)
            found_j.append(order[starts + np.arange(total)])
    if not found_i:
        return empty
    i = np.concatenate(found_i)
    j = np.concatenate(found_j)
    d = np.hypot(x1[i] - x2[j], y1[i] - y2[j])
    keep = d <= radius
    return i[keep], j[keep], d[keep]


def nearest_one_to_one(
    x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` where ``j`` is the nearest point of list 2 to ``i`` within ``radius``
    and ``i`` is also the nearest of the points of list 1 that chose ``j`` (each point is used
    at most once). Sorted by ``i``."""
    i, j, d = pairs_within(x1, y1, x2, y2, radius)
    if i.size == 0:
        return i, j
    # nearest j for each i
    order = np.lexsort((d, i))
    i, j, d = i[order], j[order], d[order]
    first = np.ones(i.size, dtype=bool)
    first[1:] = i[1:] != i[:-1]
    i, j, d = i[first], j[first], d[first]
    # among the i that chose the same j, the nearest
    order = np.lexsort((d, j))
    i, j = i[order], j[order]
    first = np.ones(j.size, dtype=bool)
    first[1:] = j[1:] != j[:-1]
    i, j = i[first], j[first]
    order = np.argsort(i, kind="stable")
    return i[order], j[order]
