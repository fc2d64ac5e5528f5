"""A run directory: what ``autocomp search`` writes and every later stage reads.

    <run>/config.json       the run's configuration (:func:`write_json`; read back by :func:`load_context`)
    <run>/results.csv       one row per evaluated candidate, columns :data:`RESULT_COLUMNS`, append-only
                            (:class:`ResultsTable`); read by :func:`read_results` (rows) or
                            :func:`results_frame` (a validated DataFrame, for the report)
    <run>/summary.json      the search's summary, once it finished
    <run>/latency_model/    the run's latency model (see autocomp.predictor.calibrate)
    <run>/models/<id>/      the winners, distilled, exported and measured (autocomp.deploy)
    <run>/.lock             while a command works on the run: its lock (flock; :func:`run_lock`)
    <run>/results.csv.torn  rows cut short by a crash, set aside on resume (:func:`set_aside_torn`)

results.csv is the one source of truth of a run: a run is resumed from it (and config.json) alone;
nothing else in a run directory is trusted, and nothing in it is ever unpickled. The one rule for "best under the budget" is here
too (:func:`under_budget`, :func:`best_under_budget`, :func:`budget_verdict`): the summary, the
report and the deployment of winners all pick by it.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from autocomp.errors import UserError, clip

if TYPE_CHECKING:  # for annotations only
    import pandas as pd

    from autocomp.data import Dataset
    from autocomp.evaluate import EvalSettings
    from autocomp.measure import Device
    from autocomp.space import SearchSpace

RESULT_COLUMNS = [
    "trial", "id", "status", "accuracy", "latency_ms", "latency_p90_ms", "latency_cv", "latency_flagged",
    "params", "onnx_bytes", "score_s", "summary", "policy", "error",
    "device", "backend", "backend_version", "precision", "batch", "threads", "warmup", "repeats", "host",
    "predicted_latency_ms", "measure_node", "measure_pid", "fingerprint_id", "fingerprint", "latency_state",
    "accuracy_se",  # binomial standard error of accuracy (validation subset)
    "int8_export",  # how int8 layers were exported: fused | fused-7bit | dequant (autocomp.measure.base.Int8Scheme.label)
]
REQUIRED_COLUMNS = ("trial", "id", "status", "accuracy", "latency_ms", "summary", "policy", "error")
FLOAT_COLUMNS = ("accuracy", "accuracy_se", "latency_ms", "latency_p90_ms", "latency_cv", "score_s", "predicted_latency_ms")
INT_COLUMNS = ("trial", "params", "onnx_bytes", "batch", "threads", "warmup", "repeats")
BOOL_COLUMNS = ("latency_flagged",)
RUN_EXPECTED = "a run directory written by `autocomp search` (config.json, results.csv)"
_BOOLS = {"true": True, "false": False, "1": True, "0": False}


# --------------------------------------------------------------------------- writing


class ResultsTable:
    """Append-only CSV, one row per evaluated candidate, flushed and fsynced as each arrives."""

    def __init__(self, path: Path):
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        # a table written before a column was added keeps its header: new rows fill its columns only
        fields = RESULT_COLUMNS if new else (_header(path) or RESULT_COLUMNS)
        self._f = path.open("a", newline="", encoding="utf-8")
        self._w = csv.DictWriter(self._f, fieldnames=fields, extrasaction="ignore")
        if new:
            self._w.writeheader()
            self._flush()

    def _flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def append(self, row: dict) -> None:
        # one row, one line: a crash mid-write leaves a last line without its end (see set_aside_torn)
        self._w.writerow({k: " ".join(v.splitlines()) if isinstance(v, str) else v for k, v in row.items()})
        self._flush()

    def close(self) -> None:
        self._f.close()


def _header(path: Path) -> list[str] | None:
    """The header row of a results table (None when it cannot be read)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (a temporary file, then a rename): never a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


# --------------------------------------------------------------------------- one writer


LOCK_NAME = ".lock"
_held: dict[str, list[int]] = {}  # resolved run directory -> [fd, depth] of the locks this process holds


@contextmanager
def run_lock(run_dir: Path, field: str = "RUN") -> Iterator[Path]:
    """Hold ``<run_dir>/.lock`` (an exclusive, non-blocking flock) while the block runs: a second
    command on the same directory (search, report, distill) is refused with one line. Re-entrant in
    one process (a search writes its report under its own lock); the kernel drops the lock when the
    process dies, so a killed run never leaves it held, and the file is removed on release (a
    waiting command checks that the file it locked is still the one at the path). The directory
    must exist."""
    key = str(Path(run_dir).resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield Path(run_dir)
        finally:
            _held[key][1] -= 1
        return
    path = Path(run_dir) / LOCK_NAME
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UserError(field, f"cannot lock {str(run_dir)!r} ({e.strerror or type(e).__name__})", "a writable run directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise UserError(field, f"{str(run_dir)!r} is in use by another autocomp command"
                            + (f" (pid {clip(holder, 20)})" if holder else ""), "one command at a time on a run directory") from None
        try:  # the holder before us removes the file as it lets go: ours must still be the one at the path
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    else:
        raise UserError(field, f"cannot lock {str(run_dir)!r} (its lock file keeps changing)", "one command at a time on a run directory")
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[key] = [fd, 1]
    try:
        yield Path(run_dir)
    finally:
        del _held[key]
        try:
            path.unlink()  # while still holding it: a command leaves no lock file behind
        except OSError:
            pass
        os.close(fd)  # releases the flock


def holds_run(path: Path) -> bool:
    """Whether ``path`` holds a run (config.json or results.csv)."""
    return (Path(path) / "config.json").exists() or (Path(path) / "results.csv").exists()


def check_out_dir(out: Path, field: str = "--out") -> None:
    """``out`` can become (or is) a directory this user may write: not a file, its nearest existing
    ancestor a writable directory. Checks only; writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(field, f"{str(out)!r} is a file", "a directory (new, or the run's own)")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(field, f"{str(probe)!r} in {str(out)!r} is a file", "a path whose parents are directories")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(field, f"{str(probe)!r} is not writable", "a directory this user can write")


def make_dirs(path: Path) -> list[Path]:
    """``mkdir -p path``; returns the directories it created (outermost first), for :func:`remove_dirs`."""
    path, made = Path(path), []
    probe = path
    while not probe.exists():
        made.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_dirs(made[::-1], lock_file=False)
        raise UserError("--out", f"cannot create {str(path)!r} ({e.strerror or type(e).__name__})", "a directory this user can write") from None
    return made[::-1]


def remove_dirs(made: list[Path], lock_file: bool = True) -> None:
    """Undo :func:`make_dirs`: only directories still empty (but for our own lock file, with ``lock_file``)."""
    for d in reversed(made):
        try:
            if lock_file:
                (d / LOCK_NAME).unlink(missing_ok=True)
            d.rmdir()
        except OSError:
            return


# --------------------------------------------------------------------------- reading


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; UserError naming the file when it is unreadable or not an object."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(str(path), f"unreadable {what} ({type(e).__name__}: {e})", "a JSON object") from None
    if not isinstance(obj, dict):
        raise UserError(str(path), f"{what} is a JSON {type(obj).__name__}", "a JSON object")
    return obj


def _typed(value: str | None, col: str, where: str) -> Any:
    """One cell of results.csv as its column's type; empty numeric or boolean cells are None."""
    if value is None:  # a row shorter than the header
        return None
    if col in BOOL_COLUMNS:
        return _BOOLS.get(value.strip().lower())
    if col not in FLOAT_COLUMNS and col not in INT_COLUMNS:
        return value
    text = value.strip()
    if text == "":
        return None
    try:
        num = float(text)
    except ValueError:
        raise UserError(f"{where}, column {col}", f"{value!r} is not a number", "a number or an empty cell") from None
    if col in INT_COLUMNS:
        if not math.isfinite(num) or num != round(num):
            raise UserError(f"{where}, column {col}", f"{value!r} is not an integer", "an integer")
        return int(num)
    return num


def _read(path: Path, check: bool) -> tuple[list[str], list[dict]]:
    """(header, typed rows in file order) of a results table; see :func:`read_results`."""
    path = Path(path)
    if not path.exists():
        if check:
            raise UserError("RUN", f"{str(path.parent)!r} holds no results.csv", RUN_EXPECTED)
        return [], []
    try:
        text = _complete_lines(path.read_bytes()).decode("utf-8")
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        raw = list(reader)
    except (csv.Error, UnicodeDecodeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(str(path), f"not a readable CSV table ({first})", "the results.csv written by `autocomp search`") from None
    if header is None:
        if check:
            raise UserError(str(path), "is empty (not even a header)", "a results table with columns " + ", ".join(REQUIRED_COLUMNS))
        return [], []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if check and missing:
        raise UserError(str(path), f"missing column(s) {', '.join(missing)}", "a results table with columns " + ", ".join(REQUIRED_COLUMNS))
    rows = []
    for i, cells in enumerate(raw):
        where = f"{path}: row {i + 2}"
        if len(cells) > len(header):
            raise UserError(where, f"{len(cells)} cells for {len(header)} columns", "one cell per column of the header")
        cells = cells + [None] * (len(header) - len(cells))
        rows.append({col: _typed(v, col, where) for col, v in zip(header, cells)})
        if check:
            _check_row(rows[-1], where)
    if check:
        seen: set[int] = set()
        for r in rows:
            if r["trial"] in seen:
                raise UserError(f"{path}, column trial", f"trial {r['trial']} appears twice", "one row per trial")
            seen.add(r["trial"])
    return header, rows


def _complete_lines(data: bytes) -> bytes:
    """``data`` up to its last line end: a last line without one is a row a crash cut short."""
    return data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]


def torn_tail(path: Path) -> bytes:
    """The bytes after the last complete line of ``path`` (a row cut short by a crash), or b""."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return b""
    return data[len(_complete_lines(data)):]


def set_aside_torn(path: Path) -> bytes:
    """Move a torn last row of results table ``path`` into ``<path>.torn`` (appended, fsynced) and cut
    it from the table, so the next row starts on a line of its own; its trial runs again. Returns
    what was set aside (b"" when the table ends with a complete row)."""
    tail = torn_tail(path)
    if tail:
        with open(str(path) + ".torn", "ab") as f:
            f.write(tail + b"\n")
            f.flush()
            os.fsync(f.fileno())
        with open(path, "r+b") as f:
            f.truncate(Path(path).stat().st_size - len(tail))
            f.flush()
            os.fsync(f.fileno())
    return tail


def _check_row(r: dict, where: str) -> None:
    if r["status"] not in ("ok", "error"):
        raise UserError(f"{where}, column status", f"{r['status']!r}", "'ok' or 'error'")
    if r["trial"] is None:
        raise UserError(f"{where}, column trial", "empty", "the trial number")
    if r["status"] == "ok":
        acc, lat = r["accuracy"], r["latency_ms"]
        if acc is None or not 0.0 <= acc <= 1.0:
            raise UserError(f"{where}, column accuracy", f"{acc!r} on an ok row", "an accuracy in [0, 1]")
        if lat is None or not math.isfinite(lat) or lat <= 0:
            raise UserError(f"{where}, column latency_ms", f"{lat!r} on an ok row", "a positive latency in ms")


def read_results(path: Path, *, check: bool = False) -> list[dict]:
    """The rows of a results table in file order (arrival order), each cell typed by its column:
    :data:`FLOAT_COLUMNS` float, :data:`INT_COLUMNS` int, :data:`BOOL_COLUMNS` bool, empty ones
    None, the rest text. A cell that is not of its column's type is a UserError naming row and column.

    Without ``check`` (the search, resuming): a missing or empty file has no rows. With ``check``
    (what a report needs): the file and :data:`REQUIRED_COLUMNS` must be there, status is ok or
    error, an ok row has an accuracy in [0, 1] and a positive latency, and a trial appears once.
    """
    return _read(path, check)[1]


def results_frame(path: Path) -> "pd.DataFrame":
    """results.csv checked (``read_results(check=True)``) as a DataFrame sorted by trial: float
    columns float, integer columns Int64, boolean columns boolean, the rest text."""
    import pandas as pd

    header, rows = _read(path, check=True)

    def column(col: str):
        values = [r[col] for r in rows]
        if col in INT_COLUMNS:
            return pd.array(values, dtype="Int64")
        if col in FLOAT_COLUMNS:
            return pd.array([math.nan if v is None else v for v in values], dtype=float)
        if col in BOOL_COLUMNS:
            return pd.array(values, dtype="boolean")
        return pd.Series(values, dtype=str)

    df = pd.DataFrame({col: column(col) for col in header}, columns=header)
    return df.sort_values("trial", kind="stable").reset_index(drop=True)


def positive_ms(v: Any) -> float | None:
    """``v`` as a finite positive number of milliseconds, else None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def run_budget(path: Path, config: dict, summary: dict | None = None) -> float:
    """The run's latency budget in ms: config.json's, else summary.json's; UserError when neither has one."""
    budget = positive_ms(config.get("budget_ms"))
    if budget is None and summary is not None:
        budget = positive_ms(summary.get("budget_ms"))
    if budget is None:
        where = Path(path) / ("config.json" if (Path(path) / "config.json").exists() else "summary.json")
        raise UserError(f"{where}: budget_ms", "missing or not a positive number", "the run's latency budget in ms (config.json)")
    return budget


# --------------------------------------------------------------------------- the budget rule


def _fits(latency_ms: Any, budget_ms: float) -> bool:
    return latency_ms is not None and latency_ms == latency_ms and latency_ms <= budget_ms  # NaN never fits


def under_budget(rows: list[dict], budget_ms: float) -> list[dict]:
    """The rule for "best under the budget": successful rows whose measured latency fits the budget,
    most accurate first; equal accuracy, the faster first; then in the given order."""
    fit = [r for r in rows if r.get("status", "ok") == "ok" and _fits(r.get("latency_ms"), budget_ms)]
    return sorted(fit, key=lambda r: (-r["accuracy"], r["latency_ms"]))


def best_under_budget(rows: list[dict], budget_ms: float) -> dict | None:
    """The first of :func:`under_budget`, or None when nothing fits."""
    ranked = under_budget(rows, budget_ms)
    return ranked[0] if ranked else None


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
    """What the budget did to the successful ``rows``: the best under it and overall, whether it binds."""
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    if not ok:
        return BudgetVerdict(None, None, False, 0, None)
    best = best_under_budget(ok, math.inf)
    fit = under_budget(ok, budget_ms)
    binding = best["latency_ms"] > budget_ms
    return BudgetVerdict(fit[0] if fit else None, best, binding, len(ok) - len(fit), None if binding else best["latency_ms"])


# --------------------------------------------------------------------------- a finished run, to act on


@dataclass
class RunContext:
    """A finished run as a later stage (distil, export) needs it, rebuilt from its config.json."""

    path: Path
    config: dict
    rows: list[dict]  # results.csv, typed, in file order
    budget_ms: float
    device: "Device"
    space: "SearchSpace"  # restricted to the device's precisions, as the search was
    settings: "EvalSettings"

    @cached_property
    def data(self) -> "Dataset":
        from autocomp.data import load_dataset

        sp = self.space
        return load_dataset(self.config["data"], (sp.input.channels, sp.input.height, sp.input.width))


def load_context(run_dir: Path) -> RunContext:
    """The run in ``run_dir``: configuration, rows, budget, device, space and evaluation settings
    (the dataset loads on first use). UserError when it is not a run directory."""
    from autocomp.evaluate import EvalSettings
    from autocomp.families.network import space_for
    from autocomp.measure import get_device

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError("RUN", f"{run_dir} has no config.json", RUN_EXPECTED)
    cfg = read_json(cfg_path, "run configuration")
    device = get_device(cfg["device"])
    space = space_for(cfg["space"], cfg.get("model"), cfg.get("weights"), cfg.get("input")).restrict_precisions(list(device.precisions))
    settings = EvalSettings(**{k: v for k, v in cfg.get("eval", {}).items() if k in EvalSettings.model_fields})
    return RunContext(run_dir, cfg, read_results(run_dir / "results.csv"), run_budget(run_dir, cfg), device, space, settings)
