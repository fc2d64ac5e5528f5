"""Pareto report of a run: self-contained HTML (plotly.js inline), summary.md, results.parquet.

    from autocomp.report import write_report
    write_report("reports/<run>")                      # -> reports/<run>/report.html
    write_report("reports/a", compare=["reports/b"])   # fronts of both runs on one plot
"""

from autocomp.report.build import write_report
from autocomp.report.png import export_png, find_chromium
from autocomp.report.summary import Run, load_run

__all__ = ["Run", "export_png", "find_chromium", "load_run", "write_report"]
