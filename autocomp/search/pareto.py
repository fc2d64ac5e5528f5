"""Pareto front of (accuracy up, latency down), hypervolume, and NSGA-II's sorting maths.

What the budget did to a run (best under it, binding or not) is :func:`autocomp.rundir.budget_verdict`.
"""

from __future__ import annotations


def pareto_front(points: list[dict], acc: str = "accuracy", lat: str = "latency_ms") -> list[dict]:
    """Non-dominated rows (higher ``acc``, lower ``lat``), sorted by latency."""
    rows = sorted(points, key=lambda r: (r[lat], -r[acc]))
    front: list[dict] = []
    best = float("-inf")
    for r in rows:
        if r[acc] > best:
            front.append(r)
            best = r[acc]
    return front


def hypervolume(points: list[dict], ref_latency_ms: float, acc: str = "accuracy", lat: str = "latency_ms") -> float:
    """Area dominated by the front, bounded by accuracy 0 and latency ``ref_latency_ms``."""
    front = [r for r in pareto_front(points, acc, lat) if r[lat] < ref_latency_ms]
    area = 0.0
    for i, r in enumerate(front):
        right = front[i + 1][lat] if i + 1 < len(front) else ref_latency_ms
        area += (right - r[lat]) * r[acc]
    return area


# --------------------------------------------------------------------------- multi-objective (NSGA-II)


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a`` dominates ``b`` (all objectives minimised): no worse anywhere, better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def non_dominated_sort(points: list[tuple[float, ...]]) -> list[list[int]]:
    """Fronts of indices into ``points`` (minimisation), best front first (Deb's fast sort).

    Indices inside each front are ascending, so the result is deterministic.
    """
    n = len(points)
    dominated_by: list[list[int]] = [[] for _ in range(n)]  # i dominates these
    count = [0] * n  # how many dominate i
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominated_by[i].append(j)
                count[j] += 1
            elif dominates(points[j], points[i]):
                dominated_by[j].append(i)
                count[i] += 1
    front = [i for i in range(n) if count[i] == 0]
    fronts: list[list[int]] = []
    while front:
        fronts.append(sorted(front))
        nxt = []
        for i in front:
            for j in dominated_by[i]:
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(j)
        front = nxt
    return fronts


def crowding_distance(points: list[tuple[float, ...]]) -> list[float]:
    """NSGA-II crowding distance of each point within one front (boundary points: infinity)."""
    n = len(points)
    if n <= 2:
        return [float("inf")] * n
    dist = [0.0] * n
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: (points[i][m], i))
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = float("inf")
        if hi == lo:
            continue
        for k in range(1, n - 1):
            dist[order[k]] += (points[order[k + 1]][m] - points[order[k - 1]][m]) / (hi - lo)
    return dist
