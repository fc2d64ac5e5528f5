"""The run directory: the results schema, its one typed reader, the one best-under-budget rule, load_context."""

from __future__ import annotations

import json

import pytest

from autocomp.errors import UserError
from autocomp.rundir import (
    RESULT_COLUMNS,
    ResultsTable,
    best_under_budget,
    budget_verdict,
    load_context,
    read_results,
    results_frame,
    under_budget,
    write_json,
)
from autocomp.space import get_space


def _rows():
    space = get_space("mnist-mbv2")
    small, large = space.smallest(), space.largest()
    base = {"summary": "", "error": "", "device": "cpu-ort", "batch": 1, "threads": 1, "latency_flagged": False}
    return [
        {**base, "trial": 0, "id": small.id, "policy": small.to_json(), "status": "ok", "accuracy": 0.9, "latency_ms": 1.5,
         "predicted_latency_ms": 1.4, "params": 1000},
        {**base, "trial": 1, "id": large.id, "policy": large.to_json(), "status": "ok", "accuracy": 0.95, "latency_ms": 3.0,
         "predicted_latency_ms": None, "params": 9000, "latency_flagged": True},
        {**base, "trial": 2, "id": "broken", "policy": "", "status": "error", "error": "RuntimeError: boom"},
    ]


def _table(path, rows):
    t = ResultsTable(path)
    for r in rows:
        t.append(r)
    t.close()
    return path


def test_rows_come_back_typed(tmp_path):
    path = _table(tmp_path / "results.csv", _rows())
    assert path.read_text().splitlines()[0].split(",") == RESULT_COLUMNS
    rows = read_results(path)
    assert [r["trial"] for r in rows] == [0, 1, 2]
    a, b, err = rows
    assert a["accuracy"] == 0.9 and a["latency_ms"] == 1.5 and a["params"] == 1000 and a["batch"] == 1
    assert a["latency_flagged"] is False and b["latency_flagged"] is True
    assert b["predicted_latency_ms"] is None and err["accuracy"] is None and err["error"] == "RuntimeError: boom"
    assert read_results(tmp_path / "none.csv") == []  # the search's first look at a new run
    df = results_frame(path)
    assert str(df["trial"].dtype) == "Int64" and df["latency_ms"].dtype == float and str(df["latency_flagged"].dtype) == "boolean"
    assert list(df.columns) == RESULT_COLUMNS and len(df) == 3


def test_bad_tables_are_one_line_errors(tmp_path):
    rows = _rows()
    rows[0]["latency_ms"] = "fast"
    path = _table(tmp_path / "results.csv", rows)
    with pytest.raises(UserError, match=r"row 2, column latency_ms: 'fast' is not a number"):
        read_results(path)
    rows[0]["latency_ms"], rows[1]["params"] = 1.5, "9000.5"
    _table(path.with_name("b.csv"), rows)
    with pytest.raises(UserError, match=r"row 3, column params: '9000.5' is not an integer"):
        read_results(path.with_name("b.csv"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert read_results(empty) == []
    with pytest.raises(UserError, match="is empty"):
        read_results(empty, check=True)
    rows[1]["params"] = 9000
    rows[2].update(status="ok")  # an ok row without an accuracy
    _table(tmp_path / "c.csv", rows)
    assert len(read_results(tmp_path / "c.csv")) == 3
    with pytest.raises(UserError, match=r"row 4, column accuracy"):
        read_results(tmp_path / "c.csv", check=True)


def test_one_rule_for_best_under_budget():
    rows = [
        {"id": "a", "status": "ok", "accuracy": 0.90, "latency_ms": 1.0},
        {"id": "b", "status": "ok", "accuracy": 0.93, "latency_ms": 2.0},
        {"id": "c", "status": "ok", "accuracy": 0.93, "latency_ms": 1.5},  # as accurate as b, faster
        {"id": "d", "status": "ok", "accuracy": 0.99, "latency_ms": 9.0},  # over budget
        {"id": "e", "status": "error", "accuracy": None, "latency_ms": None},
        {"id": "f", "status": "ok", "accuracy": 0.97, "latency_ms": float("nan")},  # no measurement: never fits
    ]
    assert [r["id"] for r in under_budget(rows, 2.0)] == ["c", "b", "a"]
    assert best_under_budget(rows, 2.0)["id"] == "c" and best_under_budget(rows, 0.5) is None
    ok = [r for r in rows if r["status"] == "ok" and r["id"] != "f"]
    v = budget_verdict(ok, 2.0)
    assert v.best_under_budget["id"] == "c" and v.best_overall["id"] == "d" and v.binding and v.n_over_budget == 1
    loose = budget_verdict(ok, 10.0)
    assert not loose.binding and loose.tightest_changing_budget_ms == 9.0 and "not binding" in loose.message(10.0)


def test_load_context(tmp_path):
    with pytest.raises(UserError, match="RUN: .* has no config.json"):
        load_context(tmp_path)
    write_json(tmp_path / "config.json", {"budget_ms": 2.0, "device": "cpu-ort", "space": "mnist-mbv2", "data": "mnist",
                                          "eval": {"val_size": 500, "not_a_setting": 1}})
    _table(tmp_path / "results.csv", _rows())
    run = load_context(tmp_path)
    assert run.budget_ms == 2.0 and run.device.name == "cpu-ort" and run.space.name == "mnist-mbv2"
    assert run.settings.val_size == 500 and [r["trial"] for r in run.rows] == [0, 1, 2]
    (tmp_path / "config.json").write_text(json.dumps({"device": "cpu-ort", "space": "mnist-mbv2"}))
    with pytest.raises(UserError, match="budget_ms"):
        load_context(tmp_path)


def test_a_torn_last_row_is_ignored_then_set_aside(tmp_path):
    """A crash mid-write leaves the last row without its line end: readers skip it, and
    set_aside_torn moves it to results.csv.torn so the next row starts on a line of its own."""
    from autocomp.rundir import set_aside_torn, torn_tail

    path = _table(tmp_path / "results.csv", _rows()[:2])
    whole = path.read_bytes()
    last = whole.splitlines(keepends=True)[-1]
    path.write_bytes(whole[: -len(last) // 2])  # the second row cut in the middle of a number
    torn = path.read_bytes()[len(whole) - len(last):]
    assert torn_tail(path) == torn and [r["trial"] for r in read_results(path)] == [0]
    assert set_aside_torn(path) == torn
    assert path.read_bytes() == whole[: len(whole) - len(last)] and (tmp_path / "results.csv.torn").read_bytes() == torn + b"\n"
    assert set_aside_torn(path) == b""  # nothing more to set aside
    _table(path, _rows()[1:2])  # the trial runs again: its row is whole
    assert [r["trial"] for r in read_results(path, check=True)] == [0, 1]


def test_a_row_is_one_line_whatever_its_text(tmp_path):
    rows = _rows()
    rows[2]["error"] = "RuntimeError: first\nsecond\r\nthird"
    path = _table(tmp_path / "results.csv", rows)
    assert len(path.read_bytes().splitlines()) == 4
    assert read_results(path)[2]["error"] == "RuntimeError: first second third"


def test_one_command_at_a_time_on_a_run_directory(tmp_path):
    """The lock holds across processes (another process is refused with one line), is re-entrant in
    one, leaves no file behind, and dies with its holder: a SIGKILLed holder leaves it free."""
    import os
    import signal
    import subprocess
    import sys

    from autocomp.rundir import LOCK_NAME, run_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom autocomp.rundir import run_lock\n"
         f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"RUN: .* is in use by another autocomp command \(pid {holder.pid}\)"):
            with run_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(tmp_path):  # free again: the kernel let go with the process
        with run_lock(tmp_path):  # re-entrant: a search writes its report under its own lock
            assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_row_that_cannot_be_written_stops_the_search(tmp_path):
    """results.csv turning unwritable mid-run: the row is not silently lost; the searcher suggests
    no new trial and the callback holds the failure run_tune reports (one line, exit 2)."""
    from autocomp.runner import ControllerFactory, ControllerSearcher, ResultsCallback

    space = get_space("mnist-mbv2")
    path = tmp_path / "results.csv"
    ResultsTable(path).close()
    searcher = ControllerSearcher(ControllerFactory("random", space, 0), 4, path)
    seen = []
    cb = ResultsCallback(path, seen.append, searcher)
    rows = _rows()
    cb._append(rows[0])
    assert [r["trial"] for r in read_results(path)] == [0] and len(seen) == 1
    path.unlink()
    path.mkdir()  # no longer a file this process can append to (even as root)
    cb._append(rows[1])
    assert cb.failed and "trial 1 could not be recorded" in cb.failed and len(seen) == 1
    assert searcher.suggest("t") == "FINISHED"
