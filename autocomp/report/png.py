"""Static PNGs of plotly figures through headless Chromium (plotly's kaleido is not a dependency).

A figure is written to a small offline HTML page (plotly.js inline) and photographed with
``chromium --headless --screenshot``; network access is switched off for the browser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from autocomp.errors import UserError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
OFFLINE_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--mute-audio", "--host-resolver-rules=MAP * ~NOTFOUND",
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary: $AUTOCOMP_CHROMIUM, else the first on PATH, else None."""
    env = os.environ.get("AUTOCOMP_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CANDIDATES:
        p = shutil.which(name)
        if p:
            return p
    return None


def chromium_command(binary: str, profile: Path, *extra: str) -> list[str]:
    return [binary, *OFFLINE_FLAGS, f"--user-data-dir={profile}", *extra]


def screenshot(html_path: Path, png_path: Path, width: int = 1200, height: int = 700, budget_ms: int = 8000,
               timeout_s: float = 120) -> Path:
    """Photograph ``html_path`` (after ``budget_ms`` of virtual time for scripts to run) into ``png_path``."""
    binary = find_chromium()
    if binary is None:
        raise UserError("--png", "no Chromium/Chrome found (chromium not on PATH, AUTOCOMP_CHROMIUM unset)",
                        "chromium installed (apt-get install chromium) or AUTOCOMP_CHROMIUM=/path/to/chrome")
    png_path = Path(png_path).resolve()
    tmp_png = png_path.with_name(f".{png_path.name}.{os.getpid()}.tmp.png")
    with tempfile.TemporaryDirectory(prefix="autocomp-chromium-") as profile:
        cmd = chromium_command(binary, Path(profile), f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}",
                               f"--screenshot={tmp_png}", Path(html_path).resolve().as_uri())
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise UserError("--png", f"Chromium did not finish within {timeout_s:g} s", "a working headless Chromium") from None
    if proc.returncode != 0 or not tmp_png.exists() or tmp_png.stat().st_size == 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        tmp_png.unlink(missing_ok=True)
        raise UserError("--png", f"Chromium failed to write a screenshot (exit {proc.returncode}: {tail[0][:200]})", "a working headless Chromium")
    tmp_png.replace(png_path)
    return png_path


def figure_png(fig, png_path: str | Path, width: int = 1200, height: int = 700, div_id: str = "plot") -> Path:
    """A plotly figure as a static PNG: an offline page (plotly.js inline) photographed by Chromium.
    The one PNG path of autocomp (the report's pareto.png, ``autocomp sensitivity``'s plot)."""
    from autocomp.report.html import PLOT_CONFIG

    fig.update_layout(width=width, height=height)
    with tempfile.TemporaryDirectory(prefix="autocomp-png-") as tmp:
        page = Path(tmp) / "figure.html"
        page.write_text(fig.to_html(full_html=True, include_plotlyjs=True, div_id=div_id,
                                    config={**PLOT_CONFIG, "responsive": False, "staticPlot": True}), encoding="utf-8")
        return screenshot(page, Path(png_path), width=width, height=height)


def export_png(run_dir: str | Path, png_path: str | Path | None = None, width: int = 1200, height: int = 700) -> Path:
    """PNG of the run's accuracy/latency plot (front, budget, winners); default ``<run>/pareto.png``."""
    from autocomp.report.html import pareto_figure
    from autocomp.report.summary import load_run, winners

    run = load_run(run_dir)
    png = Path(png_path) if png_path is not None else run.path / "pareto.png"
    fig = pareto_figure(run, winners(run))
    fig.update_layout(title=f"{run.name}: accuracy against latency (budget {run.budget_ms:.4g} ms)")
    return figure_png(fig, png, width, height, div_id="pareto-plot")
