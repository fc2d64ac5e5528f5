"""The self-contained HTML report: plotly figures with plotly.js inline (no CDN, no network), plain HTML tables.

Figures (each a ``<div>`` with a stable id, so tests and reviewers can find them):
``pareto-plot`` (every ok candidate, the front, the budget, the winners), ``layers-plot`` (per-layer
policy of the winners), ``progress-plot`` (hypervolume and best accuracy under budget per evaluation),
``predictor-plot`` (predicted against measured latency, when predictions exist) and ``compare-plot``
(fronts of several runs). The first trace of ``pareto-plot`` holds exactly one point per ok candidate;
its wrapper carries ``data-candidates`` with that count.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from autocomp.report.summary import MAX_AUTO_WINNERS, Run, genes_text, layer_groups, predictor_quality, progress, run_figures, winners

PLOT_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png", "scale": 2}}
PRECISION_BITS = {"fp32": 32, "fp16": 16, "int8": 8}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.2em;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums} .muted{color:#777}
.note{background:#fff8e1;border-left:4px solid #f0c36d;padding:6px 10px;margin:8px 0}
.verdict{background:#eef6ff;border-left:4px solid #5b9bd5;padding:6px 10px;margin:8px 0}
code{font-size:12px} details{margin:8px 0} .mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _missing(x) -> bool:
    return x is None or bool(pd.isna(x))


def _num(x, fmt: str = ".4f") -> str:
    return "—" if _missing(x) else format(x, fmt)


def _int(x) -> str:
    return "—" if _missing(x) else f"{int(x):,}"


def _table(headers: list[str], rows: list[list[str]], num_cols: set[int] = frozenset(), raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw``."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = "".join(f"<td{' class=num' if i in num_cols else ''}>{c if raw else _e(c)}</td>" for i, c in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _log_axis(values: list[float]) -> bool:
    v = [x for x in values if x and x > 0]
    return bool(v) and max(v) / min(v) > 20


def _budget_line(fig: go.Figure, budget_ms: float, log_x: bool) -> None:
    """Dashed vertical line at the budget, labelled (annotations on a log axis take log10 coordinates)."""
    fig.add_vline(x=budget_ms, line=dict(color="#555", dash="dash"))
    fig.add_annotation(x=math.log10(budget_ms) if log_x else budget_ms, xref="x", y=1, yref="paper", text=f"budget {budget_ms:.4g} ms",
                       showarrow=False, xanchor="right", yanchor="bottom", font=dict(size=11, color="#555"))


# --------------------------------------------------------------------------- figures


def pareto_figure(run: Run, wins: list[dict]) -> go.Figure:
    ok = run.ok_records()
    front_ids = {r["id"] for r in run.front()}
    fig = go.Figure()
    custom = []
    for r in ok:
        cand = run.candidates.get(r["id"])
        custom.append([r["id"], r["summary"], genes_text(cand) if cand else "", _int(r.get("params")),
                       _num(r.get("latency_p90_ms"), ".3f"), int(r["trial"]), "yes" if r["id"] in front_ids else "no"])
    fig.add_trace(go.Scatter(
        x=[r["latency_ms"] for r in ok], y=[r["accuracy"] for r in ok], mode="markers", name=f"evaluated ({len(ok)})",
        customdata=custom,
        marker=dict(size=9, color=[math.log10(r["params"]) if not _missing(r.get("params")) and r["params"] > 0 else 0 for r in ok], colorscale="Viridis",
                    colorbar=dict(title="log10 params", thickness=12), showscale=bool(ok),
                    line=dict(width=0)),
        hovertemplate=("<b>%{customdata[0]}</b> (trial %{customdata[5]})<br>accuracy %{y:.4f}<br>latency %{x:.3f} ms "
                       "(p90 %{customdata[4]} ms)<br>params %{customdata[3]} · on front: %{customdata[6]}<br>"
                       "%{customdata[1]}<br><span style='font-size:11px'>%{customdata[2]}</span><extra></extra>"),
    ))
    front = run.front()
    if front:
        # the staircase bounding the dominated region, carried on to the slowest candidate
        xs = [r["latency_ms"] for r in front] + [max(r["latency_ms"] for r in ok)]
        ys = [r["accuracy"] for r in front] + [front[-1]["accuracy"]]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(shape="hv", color="#d62728", width=2),
                                 name=f"Pareto front ({len(front)})", legendgroup="front", hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=xs[:-1], y=ys[:-1], mode="markers", legendgroup="front", showlegend=False, hoverinfo="skip",
                                 marker=dict(symbol="circle-open", size=15, color="#d62728", line=dict(width=2))))
    if wins:
        fig.add_trace(go.Scatter(
            x=[w["latency_ms"] for w in wins if not _missing(w.get("latency_ms"))],
            y=[w["accuracy"] for w in wins if not _missing(w.get("latency_ms"))],
            mode="markers", name="winners", marker=dict(symbol="star-open", size=24, color="#e6a700", line=dict(width=2)),
            text=[w["id"] for w in wins if not _missing(w.get("latency_ms"))], hovertemplate="winner %{text}<extra></extra>"))
        pred = [w for w in wins if not _missing(w.get("predicted_latency_ms")) and not _missing(w.get("accuracy"))]
        if pred:
            fig.add_trace(go.Scatter(x=[w["predicted_latency_ms"] for w in pred], y=[w["accuracy"] for w in pred], mode="markers",
                                     name="winners: predicted latency", marker=dict(symbol="x-thin-open", size=12, line=dict(width=2, color="#9467bd")),
                                     text=[w["id"] for w in pred], hovertemplate="%{text}: predicted %{x:.3f} ms<extra></extra>"))
        meas = [w for w in wins if not _missing(w.get("measured_latency_ms"))
                and not (_missing(w.get("accuracy_test")) and _missing(w.get("accuracy")))]
        if meas:
            fig.add_trace(go.Scatter(
                x=[w["measured_latency_ms"] for w in meas],
                y=[w["accuracy"] if _missing(w.get("accuracy_test")) else w["accuracy_test"] for w in meas], mode="markers",
                name="winners: exported, measured (test accuracy)", marker=dict(symbol="diamond", size=12, color="#ff7f0e", line=dict(width=1, color="#000")),
                text=[w["id"] for w in meas], hovertemplate="%{text}: measured %{x:.3f} ms, accuracy %{y:.4f}<extra></extra>"))
    lats = [r["latency_ms"] for r in ok] + [run.budget_ms]
    _budget_line(fig, run.budget_ms, _log_axis(lats))
    fig.update_layout(title="Accuracy against latency", xaxis_title=f"latency on {run.config.get('device', 'the device')} (ms, median)",
                      yaxis_title="validation accuracy", height=560, hovermode="closest", template="plotly_white",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    if _log_axis(lats):
        fig.update_xaxes(type="log")
    return fig


def layers_figure(run: Run, wins: list[dict]) -> go.Figure | None:
    rows = [(w, run.candidates[w["id"]]) for w in wins if w["id"] in run.candidates]
    if not rows:
        return None
    order: list[str] = []
    for _, c in rows:
        for g in layer_groups(c):
            if g["group"] not in order and g["group"] != "head":
                order.append(g["group"])
    order = ["stem"] + sorted((g for g in order if g != "stem"), key=lambda g: tuple(int(x[1:]) for x in g.split("."))) + ["head"]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("precision (bits)", "channel keep ratio (pruning)", "rank ratio (low-rank)"))
    for k, (w, c) in enumerate(rows):
        groups = layer_groups(c)
        color = COLORS[k % len(COLORS)]
        x = [g["group"] for g in groups]
        hover = [f"{w['id']} {g['group']}: w{g['width']}" + (f" k{g['kernel']} e{g['expand']}" if g["kernel"] else "")
                 + f" keep {g['keep']:g} rank {g['rank']:g} {g['precision']}" for g in groups]
        for row, key in ((1, "bits"), (2, "keep"), (3, "rank")):
            y = [PRECISION_BITS.get(g["precision"], None) for g in groups] if key == "bits" else [g[key] for g in groups]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=w["id"], legendgroup=w["id"], showlegend=row == 1,
                                     line=dict(color=color), marker=dict(size=8), text=hover, hovertemplate="%{text}<extra></extra>"),
                          row=row, col=1)
    fig.update_xaxes(categoryorder="array", categoryarray=order)
    fig.update_yaxes(tickvals=[8, 16, 32], range=[4, 36], row=1, col=1)
    fig.update_yaxes(range=[0, 1.08], row=2, col=1)
    fig.update_yaxes(range=[0, 1.08], row=3, col=1)
    fig.update_layout(title="Per-layer policy of the winners (stem, each block s<stage>.b<block>, head)", height=620,
                      template="plotly_white", legend=dict(orientation="h", yanchor="bottom", y=1.04, x=0))
    return fig


def progress_figure(run: Run) -> go.Figure:
    p = progress(run)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=(f"hypervolume of the front under the budget (accuracy × ms, reference {run.budget_ms:.4g} ms)",
                                        f"best accuracy under {run.budget_ms:.4g} ms"))
    text = [f"trial {t} ({s})" for t, s in zip(p["trial"], p["status"])]
    fig.add_trace(go.Scatter(x=p["evaluation"], y=p["hypervolume"], mode="lines+markers", line=dict(shape="hv"), name="hypervolume",
                             text=text, hovertemplate="evaluation %{x}, %{text}<br>hypervolume %{y:.4f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=p["evaluation"], y=p["best_under_budget"], mode="lines+markers", line=dict(shape="hv", color="#2ca02c"),
                             name="best under budget", text=text,
                             hovertemplate="evaluation %{x}, %{text}<br>best accuracy %{y:.4f}<extra></extra>"), row=2, col=1)
    fail = p[p["status"] != "ok"]
    if len(fail):
        fig.add_trace(go.Scatter(x=fail["evaluation"], y=fail["hypervolume"], mode="markers", name="failed evaluation",
                                 marker=dict(symbol="x", color="#d62728", size=9), hovertemplate="evaluation %{x} failed<extra></extra>"),
                      row=1, col=1)
    fig.update_xaxes(title_text="evaluations (in trial order)", row=2, col=1)
    fig.update_yaxes(rangemode="tozero")
    if len(p) <= 25:
        fig.update_xaxes(dtick=1)
    fig.update_layout(title="Search progress", height=520, template="plotly_white", showlegend=False)
    return fig


def predictor_figure(run: Run, q: dict) -> go.Figure:
    d = run.ok[run.ok["predicted_latency_ms"].notna()]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=d["latency_ms"], y=d["predicted_latency_ms"], mode="markers", name="candidates",
                             text=d["id"], hovertemplate="%{text}<br>measured %{x:.3f} ms<br>predicted %{y:.3f} ms<extra></extra>"))
    lo = float(min(d["latency_ms"].min(), d["predicted_latency_ms"].min())) * 0.9
    hi = float(max(d["latency_ms"].max(), d["predicted_latency_ms"].max())) * 1.1
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="#888", dash="dot"), name="predicted = measured",
                             hoverinfo="skip"))
    fig.add_vline(x=run.budget_ms, line=dict(color="#555", dash="dash"))
    fig.add_hline(y=run.budget_ms, line=dict(color="#555", dash="dash"))
    fig.update_layout(title=f"Latency predictor: predicted against measured ({q['n']} candidates)", height=480, template="plotly_white",
                      xaxis_title="measured latency (ms)", yaxis_title="predicted latency (ms)")
    if _log_axis([lo, hi]):
        fig.update_xaxes(type="log")
        fig.update_yaxes(type="log")
    return fig


def compare_figure(runs: list[Run]) -> go.Figure:
    fig = go.Figure()
    for k, r in enumerate(runs):
        color = COLORS[k % len(COLORS)]
        ok = r.ok_records()
        front = r.front()
        fig.add_trace(go.Scatter(x=[p["latency_ms"] for p in ok], y=[p["accuracy"] for p in ok], mode="markers", name=f"{r.name}: evaluated",
                                 legendgroup=r.name, marker=dict(color=color, size=6, opacity=0.35), text=[p["summary"] for p in ok],
                                 hovertemplate=f"{_e(r.name)}<br>%{{x:.3f}} ms, %{{y:.4f}}<br>%{{text}}<extra></extra>"))
        fig.add_trace(go.Scatter(x=[p["latency_ms"] for p in front], y=[p["accuracy"] for p in front], mode="lines+markers",
                                 name=f"{r.name}: front", legendgroup=r.name, line=dict(shape="hv", color=color, width=2),
                                 marker=dict(color=color, size=8), text=[p["id"] for p in front],
                                 hovertemplate=f"{_e(r.name)} front %{{text}}<br>%{{x:.3f}} ms, %{{y:.4f}}<extra></extra>"))
    lats = [p["latency_ms"] for r in runs for p in r.ok_records()] + [r.budget_ms for r in runs]
    for b in sorted({r.budget_ms for r in runs}):
        _budget_line(fig, b, _log_axis(lats))
    fig.update_layout(title="Pareto fronts of the compared runs", xaxis_title="latency (ms, median)", yaxis_title="validation accuracy",
                      height=520, template="plotly_white", legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    if _log_axis(lats):
        fig.update_xaxes(type="log")
    return fig


# --------------------------------------------------------------------------- page


def _fig_html(fig: go.Figure, div_id: str, first: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=first, div_id=div_id, config=PLOT_CONFIG)


def render(run: Run, compare: list[Run] | None = None) -> str:
    """The whole report page as one HTML string (plotly.js inline once, before the first figure)."""
    compare = compare or []
    wins = winners(run)
    cfg, summ = run.config, run.summary or {}
    first_ok = run.ok_records()[0] if len(run.ok) else {}
    parts: list[str] = []
    figs_done = 0

    def fig(f: go.Figure, div_id: str) -> str:
        nonlocal figs_done
        figs_done += 1
        return _fig_html(f, div_id, figs_done == 1)

    setting = [
        ("budget", f"{run.budget_ms:.4g} ms"), ("device", cfg.get("device", "—")), ("space", cfg.get("space", "—")),
        ("controller", cfg.get("controller", "—")), ("seed", cfg.get("seed", "—")), ("trials asked", cfg.get("trials", "—")),
        ("data", cfg.get("data", "—")), ("train steps", (cfg.get("eval") or {}).get("train_steps", "—")),
        ("evaluated", len(run.results)), ("ok / failed", f"{len(run.ok)} / {len(run.failed)}"),
    ]
    if first_ok:
        setting.append(("protocol", f"{first_ok.get('backend', '')} {first_ok.get('backend_version', '')}, batch {first_ok.get('batch', '')}, "
                                    f"{first_ok.get('threads', '')} thread(s), warm-up {first_ok.get('warmup', '')}, "
                                    f"≥{first_ok.get('repeats', '')} repeats, median (p90, CV kept), host {first_ok.get('host', '')}"))
    if summ.get("wall_s") is not None:
        setting.append(("wall time", f"{summ['wall_s']} s"))
    parts.append(f"<h1>autocomp report — {_e(run.name)}</h1>"
                 f"<p class=muted>generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from <code>{_e(run.path)}</code>; "
                 f"full table: <a href='results.csv'>results.csv</a> · <a href='results.parquet'>results.parquet</a> · "
                 f"<a href='summary.md'>summary.md</a></p>")
    parts.append(_table(["setting", "value"], [[k, v] for k, v in setting]))
    if summ.get("verdict"):
        parts.append(f"<div class=verdict>{_e(summ['verdict'])}</div>")
    best = run.best_under_budget()
    parts.append(f"<div class=verdict>best under {run.budget_ms:.4g} ms: " + (
        f"<b>{_e(best['id'])}</b> accuracy {best['accuracy']:.4f}, {best['latency_ms']:.3f} ms — {_e(best['summary'])}" if best
        else "<b>no evaluated candidate fits the budget</b>") + "</div>")

    parts.append("<h2>Accuracy against latency</h2>")
    if len(run.ok):
        parts.append(f"<p class=muted>Every successfully evaluated candidate (hover for its policy); red ring = on the Pareto front (red staircase), open star = winner. "
                     f"Dashed line = budget.</p><div class=figure data-candidates='{len(run.ok)}'>{fig(pareto_figure(run, wins), 'pareto-plot')}</div>")
    else:
        parts.append("<div class=note>No candidate was evaluated successfully; nothing to plot.</div>")

    parts.append("<h2>Winners</h2>")
    if wins:
        src = ("from <code>models/&lt;id&gt;/metrics.json</code> (distilled, exported and measured)" if run.metrics
               else f"the Pareto-front members under the budget (at most {MAX_AUTO_WINNERS}); no <code>models/&lt;id&gt;/metrics.json</code> yet")
        parts.append(f"<p class=muted>Winners: {src}.</p>")
        parts.append(_table(
            ["id", "val accuracy", "test accuracy", "latency in search (ms)", "predicted (ms)", "measured after export (ms)", "params", "policy"],
            [[w["id"], _num(w.get("accuracy")), _num(w.get("accuracy_test")), _num(w.get("latency_ms"), ".3f"),
              _num(w.get("predicted_latency_ms"), ".3f"), _num(w.get("measured_latency_ms"), ".3f"),
              _int(w.get("params")), w.get("summary", "")] for w in wins],
            num_cols={1, 2, 3, 4, 5, 6}))
        lf = layers_figure(run, wins)
        if lf is not None:
            parts.append(f"<h2>Per-layer policy of the winners</h2><div class=figure>{fig(lf, 'layers-plot')}</div>")
            parts.append(_layers_table(run, wins))
    else:
        parts.append("<div class=note>No winners: no candidate was evaluated successfully.</div>")

    parts.append("<h2>Search progress</h2>")
    parts.append(f"<div class=figure>{fig(progress_figure(run), 'progress-plot')}</div>" if len(run.results)
                 else "<div class=note>No evaluations yet.</div>")

    parts.append("<h2>Latency predictor quality</h2>")
    parts.append(_latency_model_html((run.summary or {}).get("latency_model"), (run.summary or {}).get("skip_audit")))
    q = predictor_quality(run)
    if q:
        noise = f"; measurement noise floor: median CV {q['noise_cv_median']:.1%}" if q.get("noise_cv_median") is not None else ""
        parts.append(f"<p>{q['n']} candidates with a prediction: mean absolute percentage error {q['mape']:.1%} "
                     f"(median {q['median_ape']:.1%}, max {q['max_ape']:.1%}); Spearman {_num(q['spearman'], '.3f')}, "
                     f"Kendall τ {_num(q['kendall'], '.3f')}{noise}.</p>")
        parts.append(f"<div class=figure>{fig(predictor_figure(run, q), 'predictor-plot')}</div>")
    else:
        parts.append("<div class=note>No predicted latencies in this run (no <code>predicted_latency_ms</code> column in results.csv "
                     "and none in <code>models/&lt;id&gt;/metrics.json</code>), so predictor quality cannot be shown.</div>")

    if compare:
        runs = [run] + compare
        ref = max(r.budget_ms for r in runs)
        parts.append("<h2>Run comparison</h2>")
        parts.append(f"<p class=muted>Hypervolume with a common reference latency of {ref:.4g} ms (the largest budget); "
                     f"best under budget uses each run's own budget.</p>")
        parts.append(comparison_table_html([run_figures(r, ref) for r in runs]))
        parts.append(f"<div class=figure>{fig(compare_figure(runs), 'compare-plot')}</div>")

    parts.append(f"<h2>Failed evaluations ({len(run.failed)})</h2>")
    if len(run.failed):
        parts.append(_table(["trial", "id", "policy", "error"],
                            [[int(r["trial"]), r["id"], r["summary"], r["error"]] for r in run.failed.to_dict("records")], num_cols={0}))
    else:
        parts.append("<p class=muted>None.</p>")

    parts.append(f"<h2>All evaluated candidates ({len(run.ok)})</h2><details><summary>show the table (sorted by latency)</summary>")
    front_ids = {r["id"] for r in run.front()}
    parts.append(_table(
        ["trial", "id", "accuracy", "latency (ms)", "p90 (ms)", "CV", "params", "front", "policy"],
        [[int(r["trial"]), r["id"], _num(r["accuracy"]), _num(r["latency_ms"], ".3f"), _num(r.get("latency_p90_ms"), ".3f"),
          _num(r.get("latency_cv"), ".1%"), _int(r.get("params")),
          "yes" if r["id"] in front_ids else "", r["summary"]] for r in sorted(run.ok_records(), key=lambda r: r["latency_ms"])],
        num_cols={0, 2, 3, 4, 5, 6}))
    parts.append("</details>")
    if figs_done == 0:  # keep the page self-contained and uniform: plotly.js is always there
        import plotly.offline

        parts.insert(0, f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset='utf-8'><meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>autocomp report — {_e(run.name)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _latency_model_html(lm: dict | None, audit: dict | None) -> str:
    """Which latency model filtered the run (its device fingerprint, how it was calibrated), its live
    error on this run and the skip audit (see autocomp/predictor/calibrate.py)."""
    if not lm:
        return "<div class=note>This run records no latency model (written before fingerprints, or given a predictor directly).</div>"
    cal = lm.get("calibration") or {}
    out = [f"<p>Device fingerprint <code>{_e(lm.get('fingerprint_id'))}</code>; latency model: <b>{_e(lm.get('how'))}</b>"]
    if lm.get("predictor_fingerprint_id"):
        out.append(f" (predictor of <code>{_e(lm['predictor_fingerprint_id'])}</code>)")
    if cal:
        out.append(f"; calibrated with {_e(cal.get('n_fit', cal.get('k')))} measurements ({_e(cal.get('method'))}) "
                   f"from <code>{_e(cal.get('source_fingerprint_id'))}</code>")
    anchor = lm.get("anchor") or {}
    if anchor:
        out.append(f"; rescaled by {anchor['drift']:.3f}, the host's drift since its table ({_e(anchor['n'])} of its rows "
                   "re-measured before the search)")
    if lm.get("notice"):
        out.append(f". {_e(lm['notice'])}")
    out.append(".</p>")
    if lm.get("int8_warning"):
        out.append(f"<div class=note>Precision on this fingerprint (measured by benchmarks/precision_latency.py): "
                   f"{_e(lm['int8_warning'])}.</div>")
    live = lm.get("live_error") or {}
    if live.get("n"):
        out.append(f"<p>Live error on this run ({live['n']} evaluations, each predicted before it was measured): median |error| "
                   f"{live['median_abs_error']:.1%}, within ±10 % {live['within_10pct']:.0%}, Spearman {_num(live.get('spearman'), '.3f')}.")
        online = lm.get("online") or {}
        if online:
            out.append(f" Online adaptation at the end: log-linear correction a={online['a']:.3f}, b={online['b']:.3f}, "
                       f"filter margin {online['margin']:.0%} over the budget.")
        out.append("</p>")
    if audit:
        rows = [[_e(r["id"]), _num(r["predicted_ms"], ".3f"), _num(r["measured_ms"], ".3f"), "yes" if r["fits"] else "no"]
                for r in audit.get("rows", [])]
        out.append(f"<p>Skip audit: {audit.get('skipped', 0)} candidate(s) predicted over the budget were skipped; "
                   f"{audit.get('audited', 0)} of them (those predicted nearest the budget) were measured anyway and "
                   f"<b>{audit.get('fit_budget', 0)}</b> in fact fit it.</p>")
        if rows:
            out.append(_table(["id", "predicted ms", "measured ms", "fits"], rows, {1, 2}, raw=True))
    return "".join(out)


def _layers_table(run: Run, wins: list[dict]) -> str:
    rows = []
    for w in wins:
        c = run.candidates.get(w["id"])
        if c is None:
            continue
        cells = []
        for g in layer_groups(c):
            arch = f"w{g['width']}" + (f" k{g['kernel']} e{g['expand']}" if g["kernel"] else "")
            comp = f"{g['precision']}" + (f" keep {g['keep']:g}" if g["keep"] < 1 else "") + (f" rank {g['rank']:g}" if g["rank"] < 1 else "")
            cells.append(f"<b>{_e(g['group'])}</b> {_e(arch)}<br>{_e(comp)}")
        rows.append([f"<span class=mono>{_e(w['id'])}</span>", " </td><td> ".join(cells)])
    if not rows:
        return ""
    return "<details><summary>per-layer table</summary>" + _table(["winner", "layer groups (stem, blocks, head)"], rows, raw=True) + "</details>"


def comparison_table_html(figs: list[dict]) -> str:
    return _table(
        ["run", "device", "budget (ms)", "evaluated", "failed", "front size", "hypervolume", "best under budget: accuracy", "latency (ms)", "id"],
        [[f["run"], f["device"], f"{f['budget_ms']:.4g}", f["evaluated"], f["failed"], f["front_size"], _num(f["hypervolume"]),
          _num(f["best_under_budget_accuracy"]), _num(f["best_under_budget_latency_ms"], ".3f"), f["best_under_budget_id"] or "—"] for f in figs],
        num_cols={2, 3, 4, 5, 6, 7, 8})
