"""summary.md: the run in a few lines and tables, for a pull request or a chat message."""

from __future__ import annotations

import pandas as pd

from autocomp.report.summary import Run, run_figures, winners


def _f(x, fmt: str = ".4f") -> str:
    return "—" if x is None or pd.isna(x) else format(x, fmt)


def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def render_markdown(run: Run, compare: list[Run] | None = None) -> str:
    cfg = run.config
    lines = [f"# autocomp run `{run.name}`", ""]
    lines.append(f"Budget **{run.budget_ms:.4g} ms** on `{cfg.get('device', '?')}`, space `{cfg.get('space', '?')}`, "
                 f"controller `{cfg.get('controller', '?')}`, seed {cfg.get('seed', '?')}: "
                 f"{len(run.results)} evaluated, {len(run.failed)} failed. Interactive report: [report.html](report.html); "
                 f"full table: [results.csv](results.csv), results.parquet.")
    lines.append("")
    if run.summary and run.summary.get("verdict"):
        lines += [f"> {run.summary['verdict']}", ""]
    best = run.best_under_budget()
    lines.append(f"**Best under {run.budget_ms:.4g} ms:** " + (
        f"`{best['id']}` accuracy {best['accuracy']:.4f}, {best['latency_ms']:.3f} ms — {best['summary']}" if best
        else "no evaluated candidate fits the budget."))
    lines.append("")
    front = run.front()
    lines += [f"## Pareto front ({len(front)})", ""]
    lines += _md_table(["id", "accuracy", "latency ms", "p90 ms", "params", "fits", "policy"],
                       [[f"`{r['id']}`", _f(r["accuracy"]), _f(r["latency_ms"], ".3f"), _f(r.get("latency_p90_ms"), ".3f"),
                         _f(r.get("params"), ","),
                         "yes" if r["latency_ms"] <= run.budget_ms else "no", r["summary"]] for r in front])
    wins = winners(run)
    if wins:
        lines += ["", f"## Winners ({'models/<id>/metrics.json' if run.metrics else 'front under budget'})", ""]
        lines += _md_table(["id", "val accuracy", "test accuracy", "search latency ms", "predicted ms", "measured after export ms"],
                           [[f"`{w['id']}`", _f(w.get("accuracy")), _f(w.get("accuracy_test")), _f(w.get("latency_ms"), ".3f"),
                             _f(w.get("predicted_latency_ms"), ".3f"), _f(w.get("measured_latency_ms"), ".3f")] for w in wins])
    if compare:
        runs = [run] + compare
        ref = max(r.budget_ms for r in runs)
        lines += ["", f"## Comparison (hypervolume reference {ref:.4g} ms)", ""]
        figs = [run_figures(r, ref) for r in runs]
        lines += _md_table(["run", "budget ms", "evaluated", "failed", "hypervolume", "best under budget", "latency ms", "id"],
                           [[f["run"], f"{f['budget_ms']:.4g}", f["evaluated"], f["failed"], _f(f["hypervolume"]),
                             _f(f["best_under_budget_accuracy"]), _f(f["best_under_budget_latency_ms"], ".3f"),
                             f"`{f['best_under_budget_id']}`" if f["best_under_budget_id"] else "—"] for f in figs])
    lm = (run.summary or {}).get("latency_model")
    if lm:
        live, cal, audit = lm.get("live_error") or {}, lm.get("calibration") or {}, (run.summary or {}).get("skip_audit") or {}
        lines += ["", "## Latency model", "", f"- device fingerprint `{lm.get('fingerprint_id')}`: {lm.get('how')}"
                  + (f", calibrated with {cal.get('n_fit', cal.get('k'))} measurements ({cal.get('method')}) from "
                     f"`{cal.get('source_fingerprint_id')}`" if cal else "")
                  + (f"; rescaled by {lm['anchor']['drift']:.3f}, the host's drift since its table ({lm['anchor']['n']} rows "
                     "re-measured)" if lm.get("anchor") else "")]
        if lm.get("int8_warning"):
            lines.append(f"- precision on this fingerprint: {lm['int8_warning']}")
        if live.get("n"):
            lines.append(f"- live error ({live['n']} evaluations): median |error| {live['median_abs_error']:.1%}, "
                         f"within ±10 % {live['within_10pct']:.0%}, Spearman {_f(live.get('spearman'), '.3f')}")
        if audit:
            lines.append(f"- skip audit: {audit.get('audited', 0)} of {audit.get('skipped', 0)} skipped candidates measured, "
                         f"{audit.get('fit_budget', 0)} fit the budget")
    if len(run.failed):
        lines += ["", f"## Failed evaluations ({len(run.failed)})", ""]
        lines += _md_table(["trial", "id", "error"], [[int(r["trial"]), f"`{r['id']}`", r["error"]] for r in run.failed.to_dict("records")])
    return "\n".join(lines) + "\n"
