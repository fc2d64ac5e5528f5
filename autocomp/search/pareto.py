"""Pareto front of (accuracy up, latency down), hypervolume, and what the budget did."""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass
class BudgetVerdict:
    best_under_budget: dict | None
    best_overall: dict | None
    binding: bool
    n_over_budget: int
    tightest_changing_budget_ms: float | None  # any budget below this changes the answer

    def message(self, budget_ms: float) -> str:
        if self.best_overall is None:
            return "no candidate was evaluated successfully"
        if self.binding:
            return (f"the budget {budget_ms:g} ms is binding: the most accurate candidate "
                    f"({self.best_overall['accuracy']:.4f}) needs {self.best_overall['latency_ms']:.3f} ms; "
                    f"{self.n_over_budget} candidate(s) were over budget")
        return (f"the budget {budget_ms:g} ms is not binding: the most accurate candidate fits "
                f"({self.best_overall['latency_ms']:.3f} ms); a budget under {self.tightest_changing_budget_ms:.3f} ms "
                f"would change the answer")


def budget_verdict(rows: list[dict], budget_ms: float) -> BudgetVerdict:
    if not rows:
        return BudgetVerdict(None, None, False, 0, None)
    best = max(rows, key=lambda r: (r["accuracy"], -r["latency_ms"]))
    under = [r for r in rows if r["latency_ms"] <= budget_ms]
    best_under = max(under, key=lambda r: (r["accuracy"], -r["latency_ms"])) if under else None
    binding = best["latency_ms"] > budget_ms
    return BudgetVerdict(best_under, best, binding, len(rows) - len(under), None if binding else best["latency_ms"])
