"""Read a run directory and compute what the report shows: front, winners, per-layer policy, progress, predictor quality.

A run directory (see :mod:`autocomp.rundir`) holds ``config.json``, ``results.csv`` (one row per evaluated
candidate, columns ``autocomp.rundir.RESULT_COLUMNS``; read and checked by ``rundir.results_frame``),
``summary.json`` once the search finished, and ``models/<id>/metrics.json`` once winners were distilled,
exported and measured. Everything here is read-only; bad input raises :class:`autocomp.errors.UserError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from autocomp.errors import UserError
from autocomp.rundir import RUN_EXPECTED, best_under_budget, positive_ms, read_json, results_frame, run_budget, under_budget
from autocomp.search.pareto import hypervolume, pareto_front
from autocomp.space import Candidate

SCHEMA_VERSION = 1
MAX_AUTO_WINNERS = 5  # winners shown when no models/<id>/metrics.json exists yet


@dataclass
class Run:
    """One run directory, loaded and validated."""

    path: Path
    config: dict
    summary: dict | None
    budget_ms: float
    results: pd.DataFrame  # every row of results.csv, typed, sorted by trial
    metrics: dict[str, dict] = field(default_factory=dict)  # models/<id>/metrics.json by candidate id
    candidates: dict[str, Candidate] = field(default_factory=dict)  # decoded `policy` column by id

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ok(self) -> pd.DataFrame:
        return self.results[self.results["status"] == "ok"]

    @property
    def failed(self) -> pd.DataFrame:
        return self.results[self.results["status"] == "error"]

    def ok_records(self) -> list[dict]:
        return self.ok.to_dict("records")

    def front(self) -> list[dict]:
        return pareto_front(self.ok_records())

    def best_under_budget(self, budget_ms: float | None = None) -> dict | None:
        return best_under_budget(self.ok_records(), self.budget_ms if budget_ms is None else budget_ms)

    def has_predictions(self) -> bool:
        col = self.ok.get("predicted_latency_ms")
        return col is not None and col.notna().any()


# --------------------------------------------------------------------------- loading


def load_run(run_dir: str | Path) -> Run:
    """Load and validate a run directory."""
    path = Path(run_dir)
    if not path.exists():
        raise UserError("RUN", f"no such directory {str(path)!r}", RUN_EXPECTED)
    if not path.is_dir():
        raise UserError("RUN", f"{str(path)!r} is not a directory", RUN_EXPECTED)
    table = path / "results.csv"
    if not table.is_file():
        raise UserError("RUN", f"{str(path)!r} holds no results.csv", RUN_EXPECTED)
    config = read_json(path / "config.json", "run configuration") if (path / "config.json").exists() else {}
    summary = read_json(path / "summary.json", "run summary") if (path / "summary.json").exists() else None
    budget = run_budget(path, config, summary)
    df = results_frame(table)
    candidates: dict[str, Candidate] = {}
    for i, (cid, policy) in enumerate(zip(df["id"], df["policy"])):
        if not policy.strip():
            continue
        try:
            candidates[cid] = Candidate.from_json(policy)
        except UserError as e:
            raise UserError(f"{table}: trial {df['trial'].iloc[i]}, column policy", e.problem, e.expected) from None
    metrics: dict[str, dict] = {}
    models = path / "models"
    if models.is_dir():
        for f in sorted(models.glob("*/metrics.json")):
            m = read_json(f, "model metrics")
            metrics[f.parent.name] = m
    df = _merge_predictions(df, metrics)
    return Run(path=path, config=config, summary=summary, budget_ms=budget, results=df, metrics=metrics, candidates=candidates)


def _merge_predictions(df: pd.DataFrame, metrics: dict[str, dict]) -> pd.DataFrame:
    """Fill predicted_latency_ms from models/<id>/metrics.json where the table has none."""
    preds = {cid: positive_ms(m.get("predicted_latency_ms")) for cid, m in metrics.items()}
    preds = {k: v for k, v in preds.items() if v is not None}
    if "predicted_latency_ms" not in df.columns:
        if not preds:
            return df
        df = df.assign(predicted_latency_ms=float("nan"))
    if preds:
        fill = df["id"].map(preds)
        df = df.assign(predicted_latency_ms=df["predicted_latency_ms"].fillna(fill))
    return df


# --------------------------------------------------------------------------- analysis


def winners(run: Run) -> list[dict]:
    """The candidates the report calls winners, most accurate first.

    Those with ``models/<id>/metrics.json`` when a later stage wrote any; otherwise the Pareto-front
    members under the budget (at most MAX_AUTO_WINNERS), or the fastest front member when none fits.
    Each row carries the search figures plus ``predicted_latency_ms``, ``measured_latency_ms`` and
    ``accuracy_test`` when known, and ``source`` ('metrics.json' or 'search').
    """
    ok = {r["id"]: r for r in run.ok_records()}
    out = []
    if run.metrics:
        for cid, m in run.metrics.items():
            row = dict(ok.get(cid, {"id": cid, "accuracy": None, "latency_ms": None, "summary": "", "params": None}))
            for k in ("predicted_latency_ms", "measured_latency_ms", "accuracy_test"):
                v = m.get(k)
                row[k] = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else row.get(k)
            row["source"] = "metrics.json"
            out.append(row)
    else:
        front = run.front()
        pick = under_budget(front, run.budget_ms)[:MAX_AUTO_WINNERS] or front[:1]
        for r in pick:
            out.append({**r, "measured_latency_ms": None, "accuracy_test": None, "source": "search"})
    for r in out:
        p = r.get("predicted_latency_ms")
        r["predicted_latency_ms"] = None if p is None or (isinstance(p, float) and math.isnan(p)) else p
    return sorted(out, key=lambda r: -(r.get("accuracy") or r.get("accuracy_test") or 0.0))


def layer_groups(cand: Candidate) -> list[dict]:
    """Per layer group (stem, s<i>.b<j>, head): width, kernel, expansion, keep ratio, rank ratio, precision."""
    rows = [{"group": "stem", "width": cand.stem_width, "kernel": None, "expand": None, "keep": 1.0, "rank": 1.0,
             "precision": cand.stem_precision}]
    for i, st in enumerate(cand.stages, 1):
        for j, b in enumerate(st.blocks, 1):
            rows.append({"group": f"s{i}.b{j}", "width": st.width, "kernel": b.kernel, "expand": b.expand,
                         "keep": b.keep, "rank": b.rank, "precision": b.precision})
    rows.append({"group": "head", "width": cand.head_width, "kernel": None, "expand": None, "keep": 1.0, "rank": 1.0,
                 "precision": cand.head_precision})
    return rows


def genes_text(cand: Candidate, sep: str = "<br>") -> str:
    """Key genes, one line per layer-group family: stem, each stage's blocks, head."""
    lines = [f"stem w{cand.stem_width} {cand.stem_precision}"]
    for i, st in enumerate(cand.stages, 1):
        blocks = []
        for b in st.blocks:
            t = f"k{b.kernel}e{b.expand}"
            if b.keep < 1:
                t += f" keep{b.keep:g}"
            if b.rank < 1:
                t += f" r{b.rank:g}"
            blocks.append(f"{t} {b.precision}")
        lines.append(f"s{i} w{st.width}: " + " | ".join(blocks))
    lines.append(f"head w{cand.head_width} {cand.head_precision}")
    return sep.join(lines)


def progress(run: Run, ref_latency_ms: float | None = None) -> pd.DataFrame:
    """Per evaluation (in trial order): hypervolume of the front so far and best accuracy under the budget so far."""
    ref = run.budget_ms if ref_latency_ms is None else ref_latency_ms
    front: list[dict] = []
    best = float("nan")
    out = []
    for n, r in enumerate(run.results.to_dict("records"), 1):
        if r["status"] == "ok":
            front = pareto_front(front + [r])
            if r["latency_ms"] <= run.budget_ms and (math.isnan(best) or r["accuracy"] > best):
                best = r["accuracy"]
        out.append({"evaluation": n, "trial": int(r["trial"]), "status": r["status"],
                    "hypervolume": hypervolume(front, ref), "best_under_budget": best})
    return pd.DataFrame(out, columns=["evaluation", "trial", "status", "hypervolume", "best_under_budget"])


def predictor_quality(run: Run) -> dict | None:
    """Predicted against measured latency (ok rows with a prediction): errors, rank agreement, noise floor."""
    if not run.has_predictions():
        return None
    d = run.ok[run.ok["predicted_latency_ms"].notna()]
    pred, meas = d["predicted_latency_ms"].to_numpy(float), d["latency_ms"].to_numpy(float)
    rel = abs(pred - meas) / meas
    out = {"n": int(len(d)), "mape": float(rel.mean()), "median_ape": float(pd.Series(rel).median()),
           "max_ape": float(rel.max()), "spearman": None, "kendall": None, "noise_cv_median": None}
    if len(d) >= 3:
        from scipy.stats import kendalltau, spearmanr

        s, k = spearmanr(pred, meas).statistic, kendalltau(pred, meas).statistic
        out["spearman"] = None if math.isnan(s) else float(s)
        out["kendall"] = None if math.isnan(k) else float(k)
    if "latency_cv" in d.columns and d["latency_cv"].notna().any():
        out["noise_cv_median"] = float(d["latency_cv"].median())
    return out


def run_figures(run: Run, ref_latency_ms: float | None = None) -> dict:
    """The one-line figures of a run (for summary.md and the comparison table)."""
    ref = run.budget_ms if ref_latency_ms is None else ref_latency_ms
    best = run.best_under_budget()
    return {
        "run": run.name, "budget_ms": run.budget_ms, "evaluated": int(len(run.results)), "ok": int(len(run.ok)),
        "failed": int(len(run.failed)), "front_size": len(run.front()),
        "hypervolume": hypervolume(run.ok_records(), ref), "hv_ref_ms": ref,
        "best_under_budget_accuracy": best["accuracy"] if best else None,
        "best_under_budget_latency_ms": best["latency_ms"] if best else None,
        "best_under_budget_id": best["id"] if best else None,
        "device": run.config.get("device", ""),
    }


def typed_for_parquet(df: pd.DataFrame) -> pd.DataFrame:
    """The results table with one Arrow-friendly dtype per column (text columns as strings)."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].astype("string")
    return out
