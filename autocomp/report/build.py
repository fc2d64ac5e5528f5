"""write_report: load the run(s), render report.html, and write summary.md and results.parquet beside it."""

from __future__ import annotations

import os
from pathlib import Path

from autocomp.errors import UserError
from autocomp.report.html import render
from autocomp.report.summary import load_run, typed_for_parquet
from autocomp.report.markdown import render_markdown


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    tmp.replace(path)


def write_report(run_dir: str | Path, compare: list[str | Path] | tuple = (), out_dir: str | Path | None = None) -> Path:
    """Write ``report.html``, ``summary.md`` and ``results.parquet`` for the run in ``run_dir``; return the HTML path.

    ``compare``: other run directories whose fronts are drawn on one plot and tabulated beside this one.
    ``out_dir``: where to write (default: the run directory itself, i.e. ``reports/<run>/``); elsewhere, the run's
    results.csv, config.json and summary.json are copied beside the report so the copy is a run directory too.
    Bad input (missing directory, no results.csv, corrupt table or JSON) raises UserError; files
    already in the run directory are only ever replaced atomically, never truncated.
    """
    run = load_run(run_dir)
    others = []
    for c in compare:
        if Path(c).resolve() == run.path.resolve():
            continue
        try:
            others.append(load_run(c))
        except UserError as e:
            raise UserError(f"--compare {c}: {e.field}", e.problem, e.expected) from None
    out = Path(out_dir) if out_dir is not None else run.path
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError("--out", f"cannot create {str(out)!r} ({e.strerror})", "a writable directory") from None
    page = render(run, others)
    _atomic_write(out / "summary.md", render_markdown(run, others))
    import io

    buf = io.BytesIO()
    typed_for_parquet(run.results).to_parquet(buf, index=False)
    _atomic_write(out / "results.parquet", buf.getvalue())
    if out.resolve() != run.path.resolve():  # the copy is itself a run directory: `autocomp report OUT` works on it
        for name in ("results.csv", "config.json", "summary.json"):
            if (run.path / name).is_file():
                _atomic_write(out / name, (run.path / name).read_bytes())
    html_path = out / "report.html"
    _atomic_write(html_path, page)
    return html_path
