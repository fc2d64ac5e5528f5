"""The Pareto report: built from a small run directory of *real* evaluations, rendered in headless Chromium.

The run directory is assembled the way ``autocomp.runner`` writes one (same columns, same row
contents, ResultsTable, pipeline.summarise), but without Ray: four small candidates are really scored
(build -> 2 training steps -> prune -> low-rank -> quantize -> ONNX -> accuracy) and really measured
with ``measure_onnx`` on the default device, and one candidate with an unknown precision (int4) really fails.

Synthesised on purpose (rendering logic only, and said so where it happens):
- a second run for ``--compare`` re-uses a subset of the same real rows under another budget;
- ``predicted_latency_ms``: no latency predictor exists in this stage yet, so a crude leave-one-out
  linear fit of measured latency on parameter count stands in for one (a real prediction, just a poor one);
- ``models/<id>/metrics.json`` of one winner: its ONNX is measured again for real and its test accuracy
  computed for real; only the file itself stands in for the later distil/export stage.
"""

from __future__ import annotations

import csv
import json
import random
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from autocomp.errors import UserError
from autocomp.evaluate import EvalSettings, measure_onnx, score
from autocomp.report import load_run, write_report
from autocomp.report.cli import app as report_app
from autocomp.report.png import chromium_command, export_png
from autocomp.rundir import RESULT_COLUMNS, ResultsTable, write_json

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium not installed (/usr/bin/chromium)")
BUDGET_MS = 1.0


# --------------------------------------------------------------------------- a real small run


def _row(trial: int, cand, **fields) -> dict:
    """A results row as the search writes it (runner.ResultsCallback)."""
    return {"predicted_latency_ms": None, **fields, "trial": trial, "id": cand.id, "summary": cand.summary(),
            "policy": cand.to_json(), "precision": cand.precision}


def _write_run(path: Path, rows: list[dict], budget_ms: float, settings: EvalSettings) -> Path:
    from autocomp.pipeline import SCHEMA_VERSION, summarise

    path.mkdir(parents=True)
    write_json(path / "config.json", {"schema_version": SCHEMA_VERSION, "budget_ms": budget_ms, "trials": len(rows), "seed": 0,
                                      "space": "mnist-mbv2", "device": "cpu-ort", "data": "mnist", "out": str(path),
                                      "controller": "fixture", "address": None, "concurrency": 1, "eval": settings.model_dump()})
    table = ResultsTable(path / "results.csv")
    for r in rows:
        table.append(r)
    table.close()
    write_json(path / "summary.json", summarise(rows, budget_ms))
    return path


@pytest.fixture(scope="session")
def evaluated(tmp_path_factory):
    """Four candidates really scored and measured, one real failure; returns (rows, onnx by id, data, settings)."""
    from autocomp.data import load_dataset
    from autocomp.space import get_space

    space = get_space("mnist-mbv2")
    data = load_dataset("mnist", (1, 28, 28))
    settings = EvalSettings(train_steps=2, val_size=500, batch_size=64, calib_images=64, seed=0)
    rng = random.Random(3)
    small = space.smallest("fp32")
    cands = [small, space.smallest("int8"), space.mutate(small, rng, prob=0.6), space.mutate(space.smallest("fp16"), rng, prob=0.6)]
    broken = replace(small, stem_precision="int4")  # a precision no quantizer knows: scoring it fails for real
    rows, onnx = [], {}
    for trial, cand in enumerate(cands[:2] + [broken] + cands[2:]):
        try:
            s = score(cand, space, data, settings)
        except Exception as e:  # the runner records the error the same way
            rows.append(_row(trial, cand, status="error", error=f"{type(e).__name__}: {e}"))
            continue
        m = measure_onnx(s.onnx, "cpu-ort", cand.precision)
        onnx[cand.id] = s.onnx
        rows.append(_row(trial, cand, status="ok", error="", accuracy=s.accuracy, params=s.params, onnx_bytes=s.onnx_bytes,
                         score_s=s.wall_s, latency_ms=m["median_ms"], latency_p90_ms=m["p90_ms"], latency_cv=m["cv"],
                         latency_flagged=m["flagged"],
                         **{k: m[k] for k in ("device", "backend", "backend_version", "batch", "threads", "warmup", "repeats", "host")}))
    assert sum(r["status"] == "error" for r in rows) == 1, [r.get("error") for r in rows]
    return rows, onnx, data, settings


@pytest.fixture(scope="session")
def run_dir(evaluated, tmp_path_factory):
    rows, _, _, settings = evaluated
    # the budget: between the fastest and the slowest measured candidate, so it binds
    lats = sorted(r["latency_ms"] for r in rows if r["status"] == "ok")
    budget = (lats[0] + lats[-1]) / 2
    return _write_run(tmp_path_factory.mktemp("runs") / "run-a", rows, budget, settings)


@pytest.fixture(scope="session")
def run_dir_b(evaluated, tmp_path_factory):
    """Comparison run (synthesised grouping of the same real rows: the first three evaluations, a looser budget)."""
    rows, _, _, settings = evaluated
    lats = sorted(r["latency_ms"] for r in rows if r["status"] == "ok")
    return _write_run(tmp_path_factory.mktemp("runs") / "run-b", rows[:3], lats[-1] * 1.5, settings)


@pytest.fixture(scope="session")
def run_with_predictions(evaluated, run_dir, tmp_path_factory):
    """run-a plus a predicted_latency_ms column (stand-in predictor, see module docstring) and one winner's metrics.json."""
    from autocomp.measure.onnxruntime import accuracy as ort_accuracy

    rows, onnx, data, settings = evaluated
    path = tmp_path_factory.mktemp("runs") / "run-p"
    shutil.copytree(run_dir, path)
    df = pd.read_csv(path / "results.csv", dtype=str, keep_default_na=False)
    ok = df[df.status == "ok"]
    x, y = ok["params"].astype(float), ok["latency_ms"].astype(float)
    pred = []
    for i, status in enumerate(df.status):
        if status != "ok":
            pred.append("")
            continue
        others = ok.index != i
        slope = ((x[others] - x[others].mean()) * (y[others] - y[others].mean())).sum() / max(((x[others] - x[others].mean()) ** 2).sum(), 1e-12)
        pred.append(f"{max(y[others].mean() + slope * (float(df.params[i]) - x[others].mean()), 1e-3):.6f}")
    df["predicted_latency_ms"] = pred
    df.to_csv(path / "results.csv", index=False)
    best = load_run(path).best_under_budget()
    (path / "models" / best["id"]).mkdir(parents=True)
    blob = onnx[best["id"]]
    m = measure_onnx(blob, "cpu-ort", "fp32")
    model = path / "models" / best["id"] / "model.onnx"
    model.write_bytes(blob)
    acc = ort_accuracy(model, data.batches(data.test.subset(500, seed=0), 250))
    write_json(path / "models" / best["id"] / "metrics.json", {
        "schema_version": 1, "id": best["id"], "measured_latency_ms": m["median_ms"], "accuracy_test": acc,
        "predicted_latency_ms": float(df.loc[df.id == best["id"], "predicted_latency_ms"].iloc[0])})
    return path


# --------------------------------------------------------------------------- Chromium


def _chromium_dom(html: Path, profile: Path) -> tuple[str, list[str]]:
    """Rendered DOM after plotly ran, and every console message / uncaught error of the page (network is off)."""
    cmd = chromium_command(CHROMIUM, profile, "--virtual-time-budget=15000", "--window-size=1300,900", "--enable-logging=stderr",
                           "--v=0", "--dump-dom", html.resolve().as_uri())
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def _points_in_first_trace(dom: str, div_id: str) -> int:
    """Rendered markers of the first scatter trace inside the plot div ``div_id``."""
    start = dom.index(f'id="{div_id}"')
    end = dom.find("<h2", start)
    region = dom[start:end if end > 0 else None]
    traces = region.split('class="trace scatter')
    assert len(traces) > 1, f"{div_id} has no rendered scatter trace"
    return len(re.findall(r'<path[^>]*class="point[ "]', traces[1]))


# --------------------------------------------------------------------------- tests


def _ok_rows(path: Path) -> list[dict]:
    with (path / "results.csv").open(newline="") as f:
        return [r for r in csv.DictReader(f) if r["status"] == "ok"]


def test_write_report_files(run_dir):
    html = write_report(run_dir)
    assert html == run_dir / "report.html"
    text = html.read_text()
    n_ok = len(_ok_rows(run_dir))
    assert f"data-candidates='{n_ok}'" in text
    for div in ("pareto-plot", "layers-plot", "progress-plot"):
        assert f'id="{div}"' in text
    assert 'id="predictor-plot"' not in text and "predictor quality cannot be shown" in text
    # offline: plotly.js inline exactly once, no external script or stylesheet
    assert not re.search(r"<script[^>]+src=", text) and not re.search(r"<link[^>]+href=[\"']?https?:", text)
    assert text.count("Plotly.newPlot") >= 3 and len(text) > 3_000_000
    # the real failure is listed with its error
    failed = [r for r in csv.DictReader((run_dir / "results.csv").open()) if r["status"] == "error"]
    assert failed and failed[0]["error"].split(":")[0] in text
    # hover carries the policy summary and the key genes of every candidate
    for r in _ok_rows(run_dir):
        assert r["summary"] in text
    assert "stem w16 fp32" in text  # the smallest fp32 candidate's stem gene
    # winners' per-layer view decodes the policy: stem, blocks, head
    assert "<b>stem</b>" in text and "<b>s1.b1</b>" in text and "<b>head</b>" in text
    md = (run_dir / "summary.md").read_text()
    assert "Pareto front" in md and "Best under" in md and "Failed evaluations (1)" in md
    pq = pd.read_parquet(run_dir / "results.parquet")
    assert len(pq) == 5 and list(pq.columns) == RESULT_COLUMNS
    assert pq["latency_ms"].dtype == float and str(pq["trial"].dtype) == "Int64"


def test_progress_and_winners(run_dir):
    from autocomp.report.summary import progress, winners

    run = load_run(run_dir)
    p = progress(run)
    assert list(p["trial"]) == sorted(p["trial"]) and len(p) == 5
    assert (p["hypervolume"].diff().dropna() >= -1e-12).all()  # never decreases
    best = run.best_under_budget()
    assert p["best_under_budget"].iloc[-1] == pytest.approx(best["accuracy"])
    w = winners(run)
    assert w and all(x["latency_ms"] <= run.budget_ms for x in w) and w[0]["id"] == best["id"]


def test_predictions_and_metrics(run_with_predictions):
    html = write_report(run_with_predictions).read_text()
    assert 'id="predictor-plot"' in html and "mean absolute percentage error" in html
    metrics = next((run_with_predictions / "models").glob("*/metrics.json"))
    m = json.loads(metrics.read_text())
    assert f"{m['measured_latency_ms']:.3f}" in html and f"{m['accuracy_test']:.4f}" in html
    assert "winners: exported, measured" in html


def test_the_latency_model_section_states_calibration_drift_live_error_and_audit(run_with_predictions, tmp_path):
    """What summary.json says of the run's latency model reaches the report and summary.md: how it was
    calibrated, the host's drift it was rescaled by, its live error, the skip audit."""
    from autocomp.report.markdown import render_markdown

    path = tmp_path / "run-lm"
    shutil.copytree(run_with_predictions, path)
    summary = json.loads((path / "summary.json").read_text())
    summary["latency_model"] = {
        "how": "cached", "fingerprint_id": "fp-here", "predictor_fingerprint_id": "fp-here",
        "calibration": {"k": 20, "n_fit": 20, "method": "profiled", "source_fingerprint_id": "fp-source"},
        "anchor": {"n": 4, "drift": 0.9134, "ratios": [0.9, 0.91, 0.92, 0.95], "ids": ["a", "b", "c", "d"]},
        "live_error": {"n": 16, "median_abs_error": 0.054, "within_10pct": 0.8125, "spearman": 0.94, "rmspe": 0.08}}
    summary["skip_audit"] = {"skipped": 30, "audited": 3, "fit_budget": 0, "rows": []}
    (path / "summary.json").write_text(json.dumps(summary))
    html = write_report(path).read_text()
    for text in ("<b>cached</b>", "(profiled)", "fp-source", "rescaled by 0.913, the host's drift since its table",
                 "within ±10 % 81%", "<b>0</b> in fact fit it"):
        assert text in html, text
    md = render_markdown(load_run(path))
    assert "profiled" in md and "rescaled by 0.913" in md and "within ±10 % 81%" in md and "3 of 30 skipped" in md


def test_cli_compare(run_dir, run_dir_b):
    res = CliRunner().invoke(report_app, [str(run_dir), "--compare", str(run_dir_b)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    html = (run_dir / "report.html").read_text()
    assert 'id="compare-plot"' in html and "run-b" in html
    md = (run_dir / "summary.md").read_text()
    assert "## Comparison" in md and "| run-a |" in md and "| run-b |" in md


def test_cli_mounted_in_main_app(run_dir, tmp_path):
    """`autocomp report RUN --compare X` as the lead mounts it: app.add_typer(report_app, name="report")."""
    import typer

    main = typer.Typer()

    @main.command()
    def other() -> None:  # a sibling command, as in autocomp.cli
        pass

    main.add_typer(report_app, name="report")
    res = CliRunner().invoke(main, ["report", str(run_dir), "--compare", str(run_dir), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert all((tmp_path / "o" / f).exists() for f in ("report.html", "summary.md", "results.parquet", "results.csv", "config.json"))
    assert load_run(tmp_path / "o").results.shape == load_run(run_dir).results.shape


def test_bad_input(run_dir, tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no results.csv"):
        write_report(tmp_path / "empty")
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    before = {p.name: p.read_bytes() for p in bad.iterdir() if p.is_file()}
    text = (bad / "results.csv").read_text().splitlines()
    cols = text[0].split(",")
    cells = next(csv.reader([text[1]]))
    cells[cols.index("latency_ms")] = "fast"
    buf = __import__("io").StringIO()
    csv.writer(buf).writerow(cells)
    (bad / "results.csv").write_text("\n".join([text[0], buf.getvalue().strip(), *text[2:]]) + "\n")
    with pytest.raises(UserError, match=r"row 2, column latency_ms.*'fast' is not a number"):
        write_report(bad)
    # nothing already written was lost or changed
    assert all((bad / n).read_bytes() == b for n, b in before.items() if n != "results.csv")
    (bad / "results.csv").write_bytes(b"\x00\xff garbage")
    with pytest.raises(UserError, match="results.csv"):
        write_report(bad)
    (bad / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="missing column"):
        write_report(bad)
    shutil.copy(run_dir / "results.csv", bad / "results.csv")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json"):
        write_report(bad)
    with pytest.raises(UserError, match="--compare"):
        write_report(run_dir, compare=[tmp_path / "nope"])
    # the CLI surfaces it as UserError (autocomp.cli.main prints one line, exit 2)
    res = CliRunner().invoke(report_app, [str(tmp_path / "nope")])
    assert isinstance(res.exception, UserError)


def test_interrupted_run_without_rows(run_dir, tmp_path):
    """A run stopped before its first row (header only, no summary.json) still gets a report, with notes instead of plots."""
    path = tmp_path / "early"
    path.mkdir()
    shutil.copy(run_dir / "config.json", path / "config.json")
    (path / "results.csv").write_text((run_dir / "results.csv").read_text().splitlines()[0] + "\n")
    text = write_report(path).read_text()
    assert "No candidate was evaluated successfully" in text and 'id="pareto-plot"' not in text
    assert "Plotly" in text  # plotly.js still inline: the page stays uniform and offline
    assert "no evaluated candidate fits" in (path / "summary.md").read_text()


@needs_chromium
def test_renders_in_chromium(run_dir, run_dir_b, run_with_predictions, tmp_path):
    for path, compare, plots in ((run_dir, [run_dir_b], ("pareto-plot", "layers-plot", "progress-plot", "compare-plot")),
                                 (run_with_predictions, [], ("pareto-plot", "layers-plot", "progress-plot", "predictor-plot"))):
        html = write_report(path, compare=compare)
        dom, console = _chromium_dom(html, tmp_path / f"profile-{path.name}")
        assert console == [], console  # no console errors, no failed (network) loads, no uncaught exceptions
        for div in plots:
            start = dom.index(f'id="{div}"')
            assert 'class="main-svg"' in dom[start:start + 5000], f"{div} did not render"
        n_ok = len(_ok_rows(path))
        assert _points_in_first_trace(dom, "pareto-plot") == n_ok


@needs_chromium
def test_png_export(run_dir, tmp_path):
    from PIL import Image

    png = export_png(run_dir, tmp_path / "pareto.png")
    img = Image.open(png).convert("RGB")
    assert img.size == (1200, 700)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # not a blank page: axes, markers, text
    # the Pareto-front line (#d62728) and the budget annotation were drawn
    assert any(abs(r - 0xD6) < 12 and abs(g - 0x27) < 12 and abs(b - 0x28) < 12 for _, (r, g, b) in colors)
